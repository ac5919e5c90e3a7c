"""Fault injection against real processes: lose nothing when a worker is SIGKILLed or Redis
restarts.

`make chaos` runs every scenario at full size and writes docs/reliability.md; the test suite
(tests/integration/test_faults.py) runs the same scenarios small. Everything stays on
loopback: a Redis of our own (AOF on) on a free port in a temporary folder, celery workers
and the calling app as subprocesses with their own environment, a local Qdrant folder.
Bounded: every wait has a deadline, every process is stopped at the end.

    python bench/chaos.py [--jobs N] [--report docs/reliability.md]
    python bench/chaos.py caller --jobs N --progress FILE --out FILE   (the calling app)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")
MODEL_QUEUES = "detect,embed,score"
STORE_QUEUES = "store,maintenance"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, what: str, seconds: float, every: float = 0.1) -> float:
    """Poll until ``condition()`` is true; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise TimeoutError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - started


# --- the pieces ---------------------------------------------------------------------------------


class RedisServer:
    """redis-server with AOF on, in its own folder, on a free loopback port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed")
        self.process = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(self.up, "redis-server to start", 10, 0.05)
        return self

    def up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """A graceful shutdown (the AOF is flushed), as an operator's restart does."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(20)
        self.process = None

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)


@dataclass
class Stack:
    """The environment every process of one scenario shares."""

    folder: Path
    redis: RedisServer
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, folder: Path, **overrides: str) -> Stack:
        (folder / "redis").mkdir(parents=True, exist_ok=True)
        redis_server = RedisServer(folder / "redis").start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AURUM_", "QDRANT_"))}
        env.update(
            AURUM_BROKER_URL=redis_server.url,
            AURUM_DATA_DIR=str(folder / "data"),
            QDRANT_PATH=str(folder / "qdrant"),
            COOLDOWN_DAYS="0",
            PYTHONPATH=str(ROOT),
        )
        env.update(overrides)
        return cls(folder, redis_server, env)


class Worker:
    """`celery -A aurum_ml worker` in a process group of its own (so it can be killed whole)."""

    def __init__(self, stack: Stack, name: str, queues: str, pool: str, concurrency: int):
        self.stack, self.name, self.queues = stack, name, queues
        self.pool, self.concurrency = pool, concurrency
        self.log = stack.folder / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self, seconds: float = 90) -> Worker:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [str(BIN / "celery"), "-A", "aurum_ml", "worker", "-Q", self.queues,
                 "-P", self.pool, "-c", str(self.concurrency), "-n", f"{self.name}@%h",
                 "--without-mingle", "--without-gossip", "--loglevel", "INFO"],
                env=self.stack.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        wait_for(
            lambda: "ready." in self.log.read_text(errors="replace")[offset:],
            f"worker {self.name}",
            seconds,
            0.2,
        )
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and every pool child."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None


class Caller:
    """The calling app: a process that submits jobs and waits for every result."""

    def __init__(self, stack: Stack, jobs: int, photos: Path, prefix: str) -> None:
        self.stack, self.jobs, self.prefix = stack, jobs, prefix
        self.progress = stack.folder / f"{prefix}.progress"
        self.out = stack.folder / f"{prefix}.json"
        self.log = stack.folder / f"{prefix}.caller.log"
        self.photos = photos
        self.process: subprocess.Popen | None = None

    def start(
        self, deadline_s: float, rate: float = 0, hook: str = "", keep: bool = False
    ) -> Caller:
        self.started = time.monotonic()
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__)), "caller", "--jobs", str(self.jobs),
                 "--photos", str(self.photos), "--prefix", self.prefix,
                 "--progress", str(self.progress), "--out", str(self.out),
                 "--deadline", str(deadline_s), "--rate", str(rate), "--hook", hook,
                 *(["--keep"] if keep else [])],
                env=self.stack.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip
        return self

    def finished(self) -> int:
        return len(self.progress.read_text().splitlines()) if self.progress.exists() else 0

    def wait(self, seconds: float) -> dict[str, Any]:
        assert self.process is not None
        self.process.wait(seconds)
        if not self.out.exists():
            raise RuntimeError(f"the caller died: {self.log.read_text()[-3000:]}")
        return json.loads(self.out.read_text())


# --- the calling app (runs in its own process) ----------------------------------------------


def run_caller(args: argparse.Namespace) -> None:
    """Submit ``jobs`` photos for distinct users, wait for all, write a summary. Survives a
    Redis restart: a result read that fails is read again until the deadline."""
    from celery.result import AsyncResult
    from celery.utils import uuid

    from aurum_ml.pipeline.runtime import get_runtime
    from aurum_ml.pipeline.tasks import forget_user, score_face, stats

    photos = [base64.b64encode((Path(args.photos) / n).read_bytes()).decode() for n in PHOTOS]
    submitted_at: dict[str, float] = {}
    users_of: dict[str, str] = {}
    latencies: list[float] = []
    degraded = 0
    started = time.monotonic()
    deadline = started + args.deadline
    pending: dict[str, str] = {}
    caller_errors: Counter[str] = Counter()
    outcomes: dict[str, str] = {}
    sources: Counter[str] = Counter()
    progress = open(args.progress, "a")  # noqa: SIM115 (kept open for the whole run)
    submitted = 0
    while (submitted < args.jobs or pending) and time.monotonic() < deadline:
        # submit what is due (all at once without a rate), then read what is ready
        while submitted < args.jobs and (
            args.rate <= 0 or time.monotonic() >= started + submitted / args.rate
        ):
            user = f"{args.prefix}-{submitted}"
            try:
                job_id = uuid()
                if args.hook:  # as the HTTP API does: the webhook recorded, then the job sent
                    get_runtime().hooks.register(job_id, args.hook)
                result = score_face.apply_async(
                    (photos[submitted % len(photos)],), {"user_id": user}, task_id=job_id
                )
                submitted_at[job_id] = time.monotonic()
            except Exception as exc:  # the broker is down longer than the publish retries
                caller_errors[f"submit: {type(exc).__name__}"] += 1
                time.sleep(1)
                break
            pending[result.id] = users_of[result.id] = user
            submitted += 1
        for job_id in list(pending):
            try:
                result = AsyncResult(job_id)
                if not result.ready():
                    continue
                try:
                    out = result.get(timeout=5, disable_sync_subtasks=False)
                    outcome = out["status"] if out.get("reason") is None else out["reason"]
                    sources[str(out.get("source"))] += 1
                    degraded += bool(out.get("degraded"))
                except Exception as exc:  # the job itself failed
                    if type(exc).__module__.startswith(("redis", "kombu")):
                        raise
                    outcome = f"failed: {type(exc).__name__}: {exc}"[:200]
            except Exception as exc:  # reaching the backend failed: try again
                caller_errors[f"read: {type(exc).__name__}"] += 1
                time.sleep(0.5)
                continue
            outcomes[job_id] = outcome
            latencies.append(time.monotonic() - submitted_at.get(job_id, started))
            del pending[job_id]
            progress.write(f"{job_id} {outcome}\n")
            progress.flush()
        time.sleep(0.05)
    pending_total = len(pending) + (args.jobs - submitted)
    stuck = {}
    if pending:
        import redis

        url = os.environ.get("AURUM_REDIS_URL") or os.environ["AURUM_BROKER_URL"]
        stuck = stuck_snapshot(redis.Redis.from_url(url, socket_timeout=5), sorted(pending))
    resolved_s = round(time.monotonic() - started, 1)
    # the app still works afterwards: one more round trip, tried as an app would (3 times;
    # a transient error is counted in caller_errors, a dead app fails all three)
    after, faces = "no answer", -1
    for _ in range(3):
        try:
            count = stats.delay().get(timeout=60)["models"]
            after, faces = "ok", sum(m["count"] for m in count.values())
            break
        except Exception as exc:
            caller_errors[f"after: {type(exc).__name__}: {exc}"[:120]] += 1
            time.sleep(1)
    # erasure after the faults: forget every user of the run, then count what is left
    forgotten = 0
    for i in range(0 if args.keep else args.jobs):
        try:
            forget_user.delay(f"{args.prefix}-{i}").get(timeout=60)
            forgotten += 1
        except Exception as exc:
            caller_errors[f"forget: {type(exc).__name__}"] += 1
    try:
        count = stats.delay().get(timeout=60)["models"]
        faces_after_forget = sum(m["count"] for m in count.values())
    except Exception:
        faces_after_forget = -1
    summary = {
        "jobs": args.jobs,
        "forgotten": forgotten,
        "faces_after_forget": faces_after_forget,
        "outcomes": dict(Counter(outcomes.values())),
        "sources": dict(sources),
        "degraded": degraded,
        "job_ids": sorted(outcomes),
        "users": {job_id: user for job_id, user in users_of.items() if job_id in outcomes},
        "latency_s": _quantiles(latencies),
        "unresolved": pending_total,
        "unresolved_ids": sorted(pending)[:20],
        "stuck": stuck,
        "seconds": resolved_s,  # until every job had resolved
        "caller_errors": dict(caller_errors),
        "after": after,
        "faces_in_index": faces,
    }
    Path(args.out).write_text(json.dumps(summary, indent=2))


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        f"p{q}": round(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 1)
        for q in (50, 95, 100)
    }


def run_corpus(args: argparse.Namespace) -> None:
    """Send the bad-input corpus through score_face and a pickle message to every queue;
    write what each case got."""
    import pickle

    sys.path.insert(0, str(ROOT / "tests"))
    from aurum_ml.errors import InvalidRequest
    from aurum_ml.pipeline.celery_app import app, config
    from aurum_ml.pipeline.tasks import score_face

    from samples import bad_images, bad_texts

    cases: dict[str, object] = {
        name: base64.b64encode(data).decode()
        for name, data in bad_images(Path(args.photos)).items()
    }
    cases |= bad_texts(Path(args.photos))
    answers: dict[str, str] = {}
    for i, (name, image) in enumerate(cases.items()):
        try:
            out = score_face.delay(image, user_id=f"{args.prefix}-{i}").get(timeout=120)
            answers[name] = out["status"] if out["status"] == "scored" else str(out["reason"])
        except InvalidRequest as refused:
            answers[name] = f"refused {refused.reason}"
        except Exception as exc:
            answers[name] = f"UNTYPED {type(exc).__name__}"
    with app.producer_or_acquire() as producer:
        for queue in config.QUEUES:
            producer.publish(
                pickle.dumps((("chaos",), {}, {})),
                routing_key=queue, exchange="aurum", serializer=None,
                content_type="application/x-python-serialize", content_encoding="binary",
                headers={"task": "aurum_ml.stats", "id": f"pickle-{queue}"},
            )  # fmt: skip
    Path(args.out).write_text(json.dumps({"answers": answers, "pickles": list(config.QUEUES)}))


def group_rss_mb(pid: int) -> float:
    """Resident memory of a process group (a worker and its pool children), MB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ProcessLookupError, ValueError):
            continue
    return round(total / 1024, 1)


# --- scenarios ------------------------------------------------------------------------------------


def leftovers(stack: Stack) -> dict[str, int]:
    """Biometric keys still in Redis (images, face chips, vectors) once every job has ended."""
    client = stack.redis.client()
    return {
        "images": len(list(client.scan_iter("aurum:img:*"))),
        "chips": len(list(client.scan_iter("aurum:chip:*"))),
        "vectors": len(list(client.scan_iter("aurum:vec:*"))),
    }


def key_values(client: Any, key: bytes) -> list[bytes]:
    """Every value a key holds, whatever its type (a hash: its fields and values)."""
    kind = client.type(key)
    if kind == b"string":
        return [client.get(key) or b""]
    if kind == b"hash":
        return [b for pair in client.hgetall(key).items() for b in pair]
    if kind == b"set":
        return list(client.smembers(key))
    if kind == b"zset":
        return list(client.zrange(key, 0, -1))
    if kind == b"list":
        return list(client.lrange(key, 0, -1))
    return []


def redis_mentions(client: Any, needle: str) -> list[str]:
    """Keys whose name or value holds ``needle``, every type, the whole database."""
    raw = needle.encode()
    return [
        key.decode()
        for key in client.scan_iter(count=1000)
        if raw in key or any(raw in v for v in key_values(client, key))
    ]


def mentions(stack: Stack, needle: str) -> int:
    """How many keys of the scenario's Redis name ``needle``."""
    return len(redis_mentions(stack.redis.client(), needle))


@contextlib.contextmanager
def workers(
    stack: Stack, beat: bool = False, store_threads: int = 1
) -> Iterator[tuple[Worker, Worker]]:
    """The scenario's model and store workers, and beat if asked (its sweep sends lost
    jobs again: aurum_ml.pipeline.redrive); everything (Redis too) stopped at the end."""
    store = Worker(stack, "store", STORE_QUEUES, "threads", store_threads).start()
    model = Worker(stack, "model", MODEL_QUEUES, "prefork", 2).start()
    beat_process = None
    if beat:
        with (stack.folder / "beat.log").open("a") as log:
            beat_process = subprocess.Popen(
                [str(BIN / "celery"), "-A", "aurum_ml", "beat", "-s",
                 str(stack.folder / "schedule"), "--loglevel", "INFO"],
                env=stack.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip
    try:
        yield model, store
    finally:
        if beat_process is not None:
            beat_process.terminate()
            beat_process.wait(30)
        model.stop()
        store.stop()
        stack.redis.stop()


def stuck_snapshot(client: Any, job_ids: list[str]) -> dict[str, Any]:
    """Where unresolved jobs stand, taken by the caller at its deadline (before it erases
    the run's users): each queue's length, the broker's unacked messages and the keys each
    job still has (image refs, chip, vector, a pending placement, a result)."""
    from aurum_ml.pipeline.celery_app import config

    found: dict[str, Any] = {}
    try:
        found["queues"] = {q: client.llen(q) for q in config.QUEUES}
        found["unacked"] = client.hlen("unacked")
        found["jobs"] = {
            job_id: sorted(
                key.decode().replace(job_id, "{id}")
                for key in client.scan_iter(f"*{job_id}*", count=1000)
            )
            for job_id in job_ids[:5]
        }
    except Exception as exc:  # noqa: BLE001 - a snapshot never hides the failure itself
        found["error"] = f"{type(exc).__name__}: {exc}"
    return found


def log_tails(stack: Stack, lines: int = 12) -> dict[str, list[str]]:
    return {
        log.name: [line[:240] for line in log.read_text(errors="replace").splitlines()[-lines:]]
        for log in sorted(stack.folder.glob("*.log"))
    }


def finish(stack: Stack, caller: Caller, seconds: float) -> dict[str, Any]:
    """The caller's summary, plus what is left in Redis once the jobs and erasures ran."""
    summary = caller.wait(seconds)
    if summary["unresolved"]:
        summary["logs"] = log_tails(stack)
    summary["leftovers"] = _settled_leftovers(stack)
    summary["mentions_after_forget"] = mentions(stack, f"{caller.prefix}-")
    return summary


def kill_model_worker(
    folder: Path, photos: Path, jobs: int, kill_after: int, **env: str
) -> dict[str, Any]:
    """SIGKILL the model worker's process group mid-run, restart it; count what came back."""
    stack = Stack.create(folder, **env)
    with workers(stack, beat=True) as (model, _):
        caller = Caller(stack, jobs, photos, "kill").start(deadline_s=600)
        wait_for(lambda: caller.finished() >= kill_after, "jobs before the kill", 300)
        model.kill()
        killed_at = time.monotonic()
        model.start()
        restarted = time.monotonic() - killed_at
        summary = finish(stack, caller, 600)
        summary["recovered_s_after_restart"] = round(
            caller.started + summary["seconds"] - killed_at - restarted, 1
        )
        summary["restart_s"] = round(restarted, 1)
        return summary


def restart_redis(
    folder: Path,
    photos: Path,
    jobs: int,
    stop_after: int,
    down_s: float,
    deadline_s: float = 600,
    **env: str,
) -> dict[str, Any]:
    """Shut Redis (broker, results, state; AOF on) down mid-run and start it again."""
    stack = Stack.create(folder, **env)
    with workers(stack, beat=True):
        caller = Caller(stack, jobs, photos, "redis").start(deadline_s=deadline_s)
        wait_for(lambda: caller.finished() >= stop_after, "jobs before the restart", 300)
        stack.redis.stop()
        time.sleep(down_s)
        stack.redis.start()
        return finish(stack, caller, deadline_s + 60) | {"down_s": down_s}


class Vhost:
    """A RabbitMQ vhost of our own (rabbitmqctl), deleted at the end."""

    def __init__(self, prefix: str = "aurum-chaos") -> None:
        self.name = f"{prefix}-{os.getpid()}-{int(time.time())}"
        self.url = f"amqp://guest:guest@127.0.0.1:5672/{self.name}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)

    def __enter__(self) -> Vhost:
        self._ctl("add_vhost", self.name)
        self._ctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    def close_connections(self) -> None:
        self._ctl("close_all_connections", "--vhost", self.name, "aurum chaos: broker failure")

    def __exit__(self, *exc: object) -> None:
        self._ctl("delete_vhost", self.name)


def rabbitmq_connections(
    folder: Path, photos: Path, jobs: int, close_after: int, **env: str
) -> dict[str, Any]:
    """RabbitMQ as broker (a vhost of our own): close every connection mid-run, as a node
    restart does; Redis keeps the results and state."""
    with Vhost() as vhost:
        stack = Stack.create(folder, **env)
        redis_url = stack.redis.url
        stack.env.update(
            AURUM_BROKER_URL=vhost.url, AURUM_RESULT_BACKEND=redis_url, AURUM_REDIS_URL=redis_url
        )
        with workers(stack, beat=True):
            caller = Caller(stack, jobs, photos, "rabbit").start(deadline_s=600)
            wait_for(lambda: caller.finished() >= close_after, "jobs before the failure", 300)
            vhost.close_connections()
            return finish(stack, caller, 660)


class Service:
    """`aurum-ml serve KIND` on a fixed loopback port, stopped and started again."""

    def __init__(self, stack: Stack, kind: str) -> None:
        self.stack, self.kind = stack, kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> Service:
        import requests

        with (self.stack.folder / f"{self.kind}.log").open("a") as log:
            self.process = subprocess.Popen(
                [str(BIN / "aurum-ml"), "serve", self.kind, "--port", str(self.port),
                 "--log-level", "warning"],
                env=self.stack.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip

        def healthy() -> bool:
            try:
                return requests.get(f"{self.url}/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(healthy, f"the {self.kind} service", 90, 0.2)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


def services_down(
    folder: Path, photos: Path, jobs: int, rate: float, down_s: float, interval: float
) -> dict[str, Any]:
    """Both ML services SIGKILLed for ``down_s`` while jobs keep coming and beat probes every
    ``interval`` s: the fallback flag turns on, jobs go on in-process, and back."""
    from aurum_ml.pipeline import health

    stack = Stack.create(folder, ML_SERVICE_TOKEN="chaos-token",
                         HEALTH_PROBE_INTERVAL=str(interval))  # fmt: skip
    services = {kind: Service(stack, kind).start() for kind in ("detection", "embedding")}
    stack.env.update(
        FACE_DETECTION_SERVICE=services["detection"].url,
        FACE_EMBEDDING_SERVICE=services["embedding"].url,
    )
    beat_log = (stack.folder / "beat.log").open("a")
    client = stack.redis.client()

    def flag() -> bool | None:
        return health.fallback_state(client).active

    try:
        with workers(stack):
            beat = subprocess.Popen(
                [str(BIN / "celery"), "-A", "aurum_ml", "beat", "-s",
                 str(stack.folder / "schedule"), "--loglevel", "INFO"],
                env=stack.env, stdout=beat_log, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip
            try:
                wait_for(lambda: flag() is False, "a first healthy probe", 60, 0.2)
                caller = Caller(stack, jobs, photos, "services").start(600, rate=rate)
                wait_for(lambda: caller.finished() >= 3, "the first results", 120)
                for service in services.values():
                    service.kill()
                down_at = time.monotonic()
                to_fallback = wait_for(lambda: flag() is True, "the fallback flag", 60, 0.1)
                time.sleep(max(0.0, down_at + down_s - time.monotonic()))
                for service in services.values():
                    service.start()
                up_at = time.monotonic()
                back = wait_for(lambda: flag() is False, "the flag to turn off", 120, 0.1)
                return finish(stack, caller, 660) | {
                    "down_s": down_s,
                    "probe_interval_s": interval,
                    "fallback_after_s": round(to_fallback, 1),
                    "back_after_s": round(back, 1),
                    "services_restart_s": round(up_at - down_at - down_s, 1),
                }
            finally:
                beat.terminate()
                beat.wait(20)
    finally:
        beat_log.close()
        for service in services.values():
            service.kill()


def bad_input(folder: Path, photos: Path) -> dict[str, Any]:
    """The bad-input corpus and a pickle per queue against worker processes, their memory
    watched; nothing may be stored, no worker may die."""
    stack = Stack.create(folder)
    out = stack.folder / "corpus.json"
    with workers(stack) as (model, store):
        assert model.process is not None and store.process is not None
        before = group_rss_mb(model.process.pid)
        sender = subprocess.Popen(
            [sys.executable, str(Path(__file__)), "corpus", "--photos", str(photos),
             "--prefix", "corpus", "--out", str(out)],
            env=stack.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        peak = before
        while sender.poll() is None:
            peak = max(peak, group_rss_mb(model.process.pid))
            time.sleep(0.2)
        answers = json.loads(out.read_text())["answers"]
        time.sleep(2)  # the pickles reach the workers
        refused = [
            line
            for w in (model, store)
            for line in w.log.read_text(errors="replace").splitlines()
            if "Refusing to deserialize" in line or "ContentDisallowed" in line
        ]
        alive = model.process.poll() is None and store.process.poll() is None
        client = stack.redis.client()
        return {
            "cases": len(answers),
            "typed": sum(not a.startswith("UNTYPED") for a in answers.values()),
            "answers": dict(Counter(answers.values())),
            "pickles_refused": len(refused),
            "workers_alive": alive,
            "stored_faces": len(list(client.zrange("aurum:index:dlib-resnet-v1:rank", 0, -1))),
            "rss_mb": {"before": before, "peak": peak, "after": group_rss_mb(model.process.pid)},
            "leftovers": _settled_leftovers(stack),
        }


def _settled_leftovers(stack: Stack) -> dict[str, int]:
    """Image and vector keys once in-flight releases have run (a few seconds at most)."""
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not any(leftovers(stack).values()), "images to be released", 15, 0.5)
    return leftovers(stack)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command")
    caller = sub.add_parser("caller")
    caller.add_argument("--jobs", type=int, required=True)
    caller.add_argument("--photos", required=True)
    caller.add_argument("--prefix", required=True)
    caller.add_argument("--progress", required=True)
    caller.add_argument("--out", required=True)
    caller.add_argument("--deadline", type=float, default=600)
    caller.add_argument("--rate", type=float, default=0, help="jobs per second (0: all now)")
    caller.add_argument("--hook", default="", help="a webhook URL for every job")
    caller.add_argument("--keep", action="store_true", help="do not forget the users")
    corpus = sub.add_parser("corpus")
    corpus.add_argument("--photos", required=True)
    corpus.add_argument("--prefix", required=True)
    corpus.add_argument("--out", required=True)
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--report", default=str(ROOT / "docs" / "reliability.md"))
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--faces", type=int, default=100_000, help="stored before the re-rank")
    parser.add_argument("--outages", default="130,600", help="receiver outages, seconds")
    args = parser.parse_args()
    if args.command == "caller":
        run_caller(args)
        return
    if args.command == "corpus":
        run_corpus(args)
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from photos import fetch

    photos = fetch()
    sys.path.insert(0, str(ROOT / "bench"))
    import chaos_edges as edges

    outages = tuple(float(s) for s in args.outages.split(","))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="aurum-chaos-") as tmp:
        scenarios = {
            "kill": lambda f: kill_model_worker(f, photos, args.jobs, args.jobs // 3),
            "redis": lambda f: restart_redis(f, photos, 100, 30, 3.0),
            "redis_60s": lambda f: restart_redis(f, photos, 100, 30, 60.0),
            "rabbitmq": lambda f: rabbitmq_connections(f, photos, 100, 30),
            "services": lambda f: services_down(f, photos, 90, 1.5, 30.0, 2.0),
            "bad_input": lambda f: bad_input(f, photos),
            # #25: delivery, maintenance and flapping (bench/chaos_edges.py)
            "notify_kill": lambda f: edges.notify_worker_kill(f, photos, 60),
            "receiver_outage": lambda f: edges.receiver_outage(f, photos, 20, outages),
            "rerank_kill": lambda f: edges.store_kill_during_rerank(f, photos, args.faces, 60),
            "erasure_rescore": lambda f: edges.erasure_during_rescore(f, photos, 40, 10),
            "flapping_plain": lambda f: edges.flapping_service(f, photos, 110, 16, False),
            "flapping_adaptive": lambda f: edges.flapping_service(f, photos, 110, 16, True),
        }
        only = [n for n in args.only.split(",") if n]
        if unknown := set(only) - set(scenarios):
            parser.error(f"unknown scenarios: {sorted(unknown)}; known: {sorted(scenarios)}")
        for name, run in scenarios.items():
            if only and name not in only:
                continue
            print(f"--- {name}", flush=True)
            results[name] = run(Path(tmp) / name)
            print(json.dumps(results[name], indent=2), flush=True)
    write_report(Path(args.report), results)


def write_report(path: Path, results: dict[str, Any]) -> None:
    from aurum_ml.pipeline.celery_app import config as celeryconfig

    settings = celeryconfig._settings
    lines = [
        "# Reliability: what faults do to jobs (`make chaos`)",
        "",
        "One run of `bench/chaos.py` on this machine (2 cores). Each scenario has its own",
        "Redis 7 with AOF on (broker, result backend and state) on a free loopback port — for",
        "RabbitMQ, its own vhost — a model worker (detect, embed, score; prefork × 2) and a",
        "store worker (store, maintenance; threads × 1) as `celery worker` subprocesses, and",
        "the calling app as a subprocess that submits the jobs and waits for every result, then",
        "forgets every user. Production settings: visibility timeout "
        f"{celeryconfig.VISIBILITY_TIMEOUT} s, {settings.task_max_retries} retries capped at "
        f"{settings.retry_backoff_max_s} s, {settings.publish_max_retries} publish retries.",
        "",
        "| scenario | jobs | outcomes | lost | stored | img/vec left | after forget "
        "| what happened |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("kill", "redis", "redis_60s", "rabbitmq", "services"):
        if name not in results:
            continue
        r = results[name]
        notes = {
            "kill": f"model worker's process group SIGKILLed after {r['jobs'] // 3} results, "
            f"restarted in {r.get('restart_s')} s; every job resolved "
            f"{r.get('recovered_s_after_restart')} s after the restart",
            "redis": f"Redis shut down and started again {r.get('down_s')} s later; caller "
            f"errors: {r['caller_errors'] or 'none'}; the app afterwards: {r['after']}",
            "redis_60s": f"the same, Redis down for {r.get('down_s')} s; caller errors: "
            f"{r['caller_errors'] or 'none'}; the app afterwards: {r['after']}",
            "rabbitmq": "RabbitMQ broker: every connection of the vhost closed by the broker "
            f"(as a node restart does); caller errors: {r['caller_errors'] or 'none'}",
            "services": f"both ML services SIGKILLed for {r.get('down_s')} s under "
            f"{r['jobs']} jobs at 1.5/s, beat probing every {r.get('probe_interval_s')} s: "
            f"fallback on after {r.get('fallback_after_s')} s, off "
            f"{r.get('back_after_s')} s after the services were back; results by source "
            f"{r.get('sources')}",
        }[name]
        lines.append(
            f"| {name} | {r['jobs']} | {r['outcomes']} | {r['unresolved']} | "
            f"{r['faces_in_index']} | {r['leftovers']['images']}/{r['leftovers']['vectors']} | "
            f"{r['faces_after_forget']} faces, {r['mentions_after_forget']} keys naming a user "
            f"| {notes} |"
        )
    if "bad_input" in results:
        b = results["bad_input"]
        lines += [
            "",
            f"**Bad input**: {b['cases']} cases (tests/samples.py `bad_images`, `bad_texts`) "
            f"through `score_face.delay` against worker processes: {b['typed']} typed answers "
            f"({b['answers']}); the scored ones are the real photos among them (BMP, WebP, "
            f"16-bit PNG, …), {b['stored_faces']} stored. A pickle message published to each "
            f"queue: {b['pickles_refused']} refusal lines in the worker logs, none run. "
            f"Workers alive: {b['workers_alive']}. Model worker group RSS (main + 2 children, "
            f"MB): {b['rss_mb']}. Images/vectors left: {b['leftovers']}.",
        ]
    lines += _edge_rows(results)
    lines += [
        "",
        "The kill and Redis scenarios also run small in `make test` "
        "(tests/integration/test_faults.py, visibility timeout cut to 10 s), beside the",
        "corpus through score_face and both services (tests/services/test_corpus.py).",
    ]
    path.write_text("\n".join(lines) + "\n")


def _edge_rows(results: dict[str, Any]) -> list[str]:
    """The #25 scenarios (bench/chaos_edges.py): jobs, lost, duplicated deliveries, recovery."""
    rows = []
    if "notify_kill" in results:
        r = results["notify_kill"]
        w = r["webhooks"]
        rows.append(
            f"| notify worker SIGKILL | {r['jobs']} | {r['unresolved']} | "
            f"{w['duplicated_deliveries']} | {r['recovered_s']} | receiver answering in 2 s; "
            f"the notify worker (threads × 4) killed after a third of the deliveries with "
            f"{r['posts_in_flight_at_kill']} POSTs in flight, restarted; {w['delivered_once']} "
            f"delivered once, {w['not_delivered']} never; {w['posts']} POSTs received, "
            f"{w['attempts_counted']} attempts counted |"
        )
    if "receiver_outage" in results:
        r = results["receiver_outage"]
        for outage in r["outages_s"]:
            o = r[f"outage_{round(outage)}s"]
            w = o["webhooks"]
            rows.append(
                f"| receiver down {round(outage)} s | {w['jobs']} | {o['unresolved']} | "
                f"{w['duplicated_deliveries']} | {o['last_delivery_s_after_up']} | 503 for "
                f"{round(outage)} s, then 200 (visibility timeout 100 s, back-off to 5 min): "
                f"{w['delivered_once']} delivered exactly once, {w['not_delivered']} never; "
                f"{w['posts']} POSTs received, {w['attempts_counted']} attempts counted, at "
                f"most {w['max_attempts']} for a job; recovery = last delivery after the "
                f"receiver was back |"
            )
    if "rerank_kill" in results:
        r = results["rerank_kill"]
        rows.append(
            f"| store worker SIGKILL in the re-rank | {r['jobs']} | {r['unresolved']} | — | "
            f"{r['resolved_s_after_kill']} | {r['faces']:,} faces stored, jobs at 2/s; killed "
            f"in the re-rank's index build, restarted: every job resolved "
            f"{r['resolved_s_after_kill']} s after the kill; re-rank lost {r['rerank_lost']}, "
            f"redone: {r['rerank_redone']}, staging set left: {r['staging_left']}; index n "
            f"{r['index_n']:,} = members {r['index_members']:,} (stored faces "
            f"{r['expected_n']:,}) |"
        )
    if "erasure_rescore" in results:
        r = results["erasure_rescore"]
        rows.append(
            f"| erasure during the re-score | {r['jobs']} | {r['unresolved']} | — | — | "
            f"services down, {r['degraded']} degraded answers; services back, "
            f"{r['erased_users']} users erased while the re-score ran "
            f"({r['erasure_during_rescore']}): keys still naming an erased user or one of "
            f"their {r['erased_jobs']} jobs: {len(r['keys_naming_an_erased_user_or_job'])}; "
            f"expired list: {r['expired_list']}; faces in the index: {r['faces_in_index']} "
            f"(expected {r['rescored_expected']}) |"
        )
    for name in ("flapping_plain", "flapping_adaptive"):
        if name in results:
            r = results[name]
            hold = "adaptive hold" if r["adaptive"] else "plain hold (before #25)"
            rows.append(
                f"| flapping service, {hold} | {r['jobs']} | {r['unresolved']} | — | — | "
                f"detection SIGKILLed every {r['period_s']} s ({r['kills']} times), down "
                f"{r['down_s']} s each, a job a second, probes every 2 s: flag transitions "
                f"{r['transitions']}; answers by source {r['sources']}; latency "
                f"{r['latency_s']} |"
            )
    if not rows:
        return []
    return [
        "",
        "## Delivery, maintenance and a flapping service (#25)",
        "",
        "Same set-up, plus a notify worker (threads × 4) and webhooks to a receiver of the",
        "run's own on loopback (bench/chaos_edges.py). Lost = jobs without a result (or, for",
        "webhooks, without a successful delivery); recovery in seconds.",
        "",
        "| scenario | jobs | lost | duplicated deliveries | recovery s | what happened |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


if __name__ == "__main__":
    main()
