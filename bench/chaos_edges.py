"""The #25 fault scenarios of `make chaos`: webhooks under a notify-worker kill and a long
receiver outage, a store worker killed during the re-rank's index build, an erasure
during the re-score of degraded results, and a flapping ML service.

Each runs on its own Redis (AOF on), workers and beat as subprocesses, as bench/chaos.py's
scenarios do, and returns its figures: jobs, lost, duplicated deliveries, recovery seconds.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from chaos import (
    BIN,
    ROOT,
    Caller,
    Service,
    Stack,
    Worker,
    _settled_leftovers,
    finish,
    key_values,
    redis_mentions,
    wait_for,
    workers,
)

NOTIFY_QUEUES = "notify"


class Receiver:
    """The app's webhook endpoint on loopback: answers 503 until ``up_at`` (monotonic),
    then 200, each answer after ``delay_s``; records every POST."""

    def __init__(self, down_s: float = 0.0, delay_s: float = 0.0) -> None:
        self.up_at = time.monotonic() + down_s
        self.delay_s = delay_s
        self.posts: list[tuple[str, int, float]] = []  # job id, status, when (monotonic)
        self.arrived: Counter[str] = Counter()  # POSTs received, answered or not (yet)
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner._lock:
                    owner.arrived[self.headers.get("X-Aurum-Job-Id", "")] += 1
                time.sleep(owner.delay_s)
                status = 200 if time.monotonic() >= owner.up_at else 503
                with owner._lock:
                    owner.posts.append((self.headers.get("X-Aurum-Job-Id", ""), status,
                                        time.monotonic()))  # fmt: skip
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ok(self) -> Counter[str]:
        with self._lock:
            return Counter(job for job, status, _ in self.posts if status == 200)

    def sent(self) -> Counter[str]:
        with self._lock:
            return Counter(self.arrived)

    def last_ok_at(self) -> float:
        with self._lock:
            return max((at for _, status, at in self.posts if status == 200), default=0.0)

    def stop(self) -> None:
        self.server.shutdown()


def _hook_env(*receivers: Receiver) -> dict[str, str]:
    return {
        "AURUM_WEBHOOK_SECRET": "chaos-webhook-secret",
        "AURUM_WEBHOOK_ALLOWED_HOSTS": ",".join(f"127.0.0.1:{r.port}" for r in receivers),
    }


def _deliveries(stack: Stack, receiver: Receiver, job_ids: list[str]) -> dict[str, Any]:
    """Per job: successful deliveries, POSTs received, and the attempts the job's hook
    record counts (every POST that left must be counted)."""
    from aurum_ml.pipeline.webhooks import HookRecords

    hooks = HookRecords(stack.redis.client(), keep_s=3600)
    ok, sent = receiver.ok(), receiver.sent()
    counted = {job: (hooks.get(job).attempts if hooks.get(job) else 0) for job in job_ids}
    return {
        "jobs": len(job_ids),
        "delivered_once": sum(ok[j] == 1 for j in job_ids),
        "not_delivered": sum(ok[j] == 0 for j in job_ids),
        "duplicated_deliveries": sum(max(0, ok[j] - 1) for j in job_ids),
        "posts": sum(sent[j] for j in job_ids),
        "attempts_counted": sum(counted.values()),
        "max_attempts": max(counted.values(), default=0),
    }


def notify_worker_kill(folder: Path, photos: Path, jobs: int) -> dict[str, Any]:
    """Jobs with webhooks to a receiver that takes 2 s to answer; the notify worker is
    SIGKILLed (whole process group) after a third of the deliveries, mid-POST, and
    restarted. Every job must get its webhook; a duplicate only for a POST the kill cut."""
    receiver = Receiver(delay_s=2.0)
    stack = Stack.create(folder, **_hook_env(receiver))
    try:
        with workers(stack, beat=True):
            notify = Worker(stack, "notify", NOTIFY_QUEUES, "threads", 4).start()
            try:
                caller = Caller(stack, jobs, photos, "notify")
                caller.start(600, hook=receiver.url, keep=True)
                wait_for(lambda: sum(receiver.ok().values()) >= jobs // 3, "deliveries", 300)
                in_flight = sum(receiver.sent().values()) - len(receiver.posts)
                notify.kill()
                killed_at = time.monotonic()
                notify.start()
                summary = finish(stack, caller, 660)
                ids = summary["job_ids"]
                wait_for(lambda: all(receiver.ok()[j] for j in ids), "every webhook", 300, 0.5)
                # a copy the kill left unacked comes back after the visibility timeout
                time.sleep(max(5.0, killed_at + 130 - time.monotonic()))
                delivered = _deliveries(stack, receiver, ids)
            finally:
                notify.stop()
    finally:
        receiver.stop()
    return summary | {
        "webhooks": delivered,
        "posts_in_flight_at_kill": in_flight,
        "recovered_s": round(receiver.last_ok_at() - killed_at, 1),
    }


def receiver_outage(folder: Path, photos: Path, jobs: int, outages: tuple[float, ...]) -> dict:
    """Jobs with webhooks to receivers answering 503 for each of ``outages`` seconds (longer
    than the 100 s visibility timeout), then 200; production back-off (1 s doubling to
    5 min). Each job's webhook must succeed exactly once, every POST counted."""
    receivers = [Receiver(down_s=s) for s in outages]
    stack = Stack.create(folder, **_hook_env(*receivers))
    out: dict[str, Any] = {"outages_s": list(outages)}
    try:
        with workers(stack, beat=True):
            notify = Worker(stack, "notify", NOTIFY_QUEUES, "threads", 4).start()
            try:
                callers = [
                    Caller(stack, jobs, photos, f"outage{i}").start(600, hook=r.url, keep=True)
                    for i, r in enumerate(receivers)
                ]
                summaries = [finish(stack, c, 660) for c in callers]
                for receiver, summary in zip(receivers, summaries, strict=True):
                    ids = summary["job_ids"]
                    wait_for(
                        lambda r=receiver, ids=ids: all(r.ok()[j] for j in ids),
                        "every webhook after the outage", max(outages) + 900, 1.0,
                    )  # fmt: skip
                time.sleep(10)  # a late copy would land by now
                for i, (receiver, summary) in enumerate(zip(receivers, summaries, strict=True)):
                    out[f"outage_{round(outages[i])}s"] = {
                        "unresolved": summary["unresolved"],
                        "webhooks": _deliveries(stack, receiver, summary["job_ids"]),
                        "last_delivery_s_after_up": round(
                            receiver.last_ok_at() - receiver.up_at, 1
                        ),
                    }
            finally:
                notify.stop()
    finally:
        for receiver in receivers:
            receiver.stop()
    return out


def _fill(stack: Stack, faces: int) -> float:
    """``faces`` generated faces in the scenario's Qdrant folder (unindexed, as after a
    day of arrivals), the vibe reference frozen first (as a deployment's is)."""
    from aurum_ml.pipeline.backends.local import MODEL_ID
    from aurum_ml.population.index import ScoreIndex
    from aurum_ml.population.vectors import VectorStore
    from aurum_ml.population.vibes import reference_from
    from aurum_ml.settings import get_settings

    folder = Path(stack.env["QDRANT_PATH"])
    settings = get_settings().model_copy(update={"qdrant_path": folder, "qdrant_url": None})
    store = VectorStore(settings, MODEL_ID, 128)
    rng = np.random.default_rng(7)
    centre = rng.normal(size=128) * 0.08
    sample = centre + rng.normal(scale=0.05, size=(5_000, 128))
    index = ScoreIndex(stack.redis.client(), MODEL_ID, 128)
    index.freeze_vibe_reference(
        reference_from(sample / np.linalg.norm(sample, axis=1, keepdims=True), True)
    )
    started = time.perf_counter()
    for first in range(0, faces, 2000):
        count = min(2000, faces - first)
        vectors = (centre + rng.normal(scale=0.05, size=(count, 128))).astype(np.float32)
        store.upsert_many(
            [
                (str(uuid.UUID(int=first + i + 1)), vectors[i],
                 {"user_id": f"filler-{first + i}", "job_id": f"filler-{first + i}",
                  "image_sha256": "f", "stored_at": 0.0})
                for i in range(count)
            ]
        )  # fmt: skip
    store.close()
    return time.perf_counter() - started


def store_kill_during_rerank(folder: Path, photos: Path, faces: int, jobs: int) -> dict:
    """``faces`` stored, jobs arriving at 2/s; the re-rank sent, and the store worker (it
    runs the re-rank: a local folder) SIGKILLed during its index build, then restarted.
    Every job must resolve within 120 s of the kill, the re-rank be redone, and the index's
    n equal the stored faces."""
    from aurum_ml.pipeline.backends.local import MODEL_ID
    from aurum_ml.population.index import ScoreIndex

    stack = Stack.create(folder)
    load_s = _fill(stack, faces)
    client = stack.redis.client()
    run_key = f"aurum:index:{MODEL_ID}:rank:run"
    with workers(stack) as (_, store):
        caller = Caller(stack, jobs, photos, "rerank").start(600, rate=2.0, keep=True)
        wait_for(lambda: caller.finished() >= 5, "the first results", 120)
        subprocess.run(
            [str(BIN / "python"), "-c",
             "from aurum_ml.pipeline.tasks import rerank; rerank.delay()"],
            env=stack.env, cwd=ROOT, check=True, timeout=60,
        )  # fmt: skip
        wait_for(lambda: client.hget(run_key, "phase") == b"index", "the index build", 600, 0.01)
        done_at_kill = caller.finished()
        store.kill()
        killed_at = time.monotonic()
        store.start()
        summary = finish(stack, caller, 660)
        resolved_after_kill = caller.started + summary["seconds"] - killed_at
        wait_for(lambda: client.exists("aurum:rerank:last"), "the re-rank redone", 600, 0.5)
        return summary | {
            "faces": faces,
            "load_s": round(load_s, 1),
            "jobs_done_at_kill": done_at_kill,
            "resolved_s_after_kill": round(resolved_after_kill, 1),
            "rerank_lost": int(client.get("aurum:rerank:lost") or 0),
            "rerank_redone": bool(client.exists("aurum:rerank:last")),
            "staging_left": bool(client.exists(f"aurum:index:{MODEL_ID}:rank:next")),
            "index_n": ScoreIndex(client, MODEL_ID, 128).counted(),
            "index_members": client.zcard(f"aurum:index:{MODEL_ID}:rank"),
            "expected_n": faces + summary["outcomes"].get("scored", 0),
        }


def _naming(client: Any, user: str) -> list[str]:
    """Keys naming the user exactly (``rescore-1`` is not ``rescore-12``): as a part of the
    key's name, a whole value, or a quoted JSON string in a value."""
    exact, quoted = user.encode(), f'"{user}"'.encode()
    found = []
    for key in client.scan_iter(count=1000):
        if exact in key.split(b":") or any(
            v == exact or quoted in v for v in key_values(client, key)
        ):
            found.append(key.decode())
    return found


def _services(stack: Stack) -> dict[str, Service]:
    services = {kind: Service(stack, kind).start() for kind in ("detection", "embedding")}
    stack.env.update(
        FACE_DETECTION_SERVICE=services["detection"].url,
        FACE_EMBEDDING_SERVICE=services["embedding"].url,
    )
    return services


def _beat(stack: Stack) -> subprocess.Popen[bytes]:
    log = (stack.folder / "beat.log").open("a")
    return subprocess.Popen(
        [str(BIN / "celery"), "-A", "aurum_ml", "beat", "-s", str(stack.folder / "schedule"),
         "--loglevel", "INFO"],
        env=stack.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip


def erasure_during_rescore(folder: Path, photos: Path, jobs: int, erased: int) -> dict:
    """The services down, the simulated fallback answers ``jobs`` jobs (degraded); the
    services come back and the re-score runs; ``erased`` of the users are erased while it
    runs. No id of an erased user's jobs may be left anywhere in Redis, nor their faces in
    Qdrant; the others are re-scored."""
    from aurum_ml.pipeline import health
    from aurum_ml.population.index import ScoreIndex

    stack = Stack.create(folder, ML_SERVICE_TOKEN="chaos-token", HEALTH_PROBE_INTERVAL="1",
                         FALLBACK_BACKEND="simulated")  # fmt: skip
    services = _services(stack)
    client = stack.redis.client()
    try:
        # threads × 4 as deployed: the erasures run beside the re-score, not after it
        with workers(stack, store_threads=4):
            beat = _beat(stack)
            try:
                wait_for(lambda: health.fallback_state(client).active is False, "a probe", 60)
                for service in services.values():
                    service.kill()
                wait_for(lambda: health.fallback_state(client).active is True, "fallback", 60)
                caller = Caller(stack, jobs, photos, "rescore").start(600, keep=True)
                summary = finish(stack, caller, 660)
                users = [f"rescore-{i}" for i in range(jobs)]
                for service in services.values():
                    service.start()
                wait_for(lambda: client.exists("aurum:degraded:lock"), "the re-score", 120, 0.01)
                gone = users[:erased]
                erasing_at = time.monotonic()
                subprocess.run(
                    [str(BIN / "python"), "-c",
                     "import sys; from aurum_ml.pipeline.tasks import forget_user\n"
                     "for u in sys.argv[1:]: forget_user.delay(u).get(timeout=120)", *gone],
                    env=stack.env, cwd=ROOT, check=True, timeout=600,
                )  # fmt: skip
                erase_s = time.monotonic() - erasing_at
                during = bool(client.exists("aurum:degraded:lock"))
                wait_for(lambda: not client.exists("aurum:degraded:lock"), "the re-score", 600)
                wait_for(lambda: client.zcard("aurum:degraded") == 0, "nothing pending", 120)
            finally:
                beat.terminate()
                beat.wait(20)
            # the erased users' jobs: is any id or user still named anywhere in Redis?
            gone_jobs = [j for j, u in summary["users"].items() if u in gone]
            left = {k for job in gone_jobs for k in redis_mentions(client, job)}  # uuids
            left |= {k for user in gone for k in _naming(client, user)}
            from aurum_ml.pipeline.backends.local import MODEL_ID

            return summary | {
                "erased_users": erased,
                "erased_jobs": len(gone_jobs),
                "erasure_during_rescore": during,
                "erase_s": round(erase_s, 1),
                "keys_naming_an_erased_user_or_job": sorted(left),
                "expired_list": client.zcard("aurum:degraded:expired"),
                "faces_in_index": ScoreIndex(client, MODEL_ID, 128).counted(),
                "leftovers_after_rescore": _settled_leftovers(stack),
                "rescored_expected": summary["degraded"] - erased,
            }
    finally:
        for service in services.values():
            service.kill()


def flapping_service(
    folder: Path, photos: Path, seconds: float, period: float, adaptive: bool, down_s: float = 6
) -> dict[str, Any]:
    """The detection service SIGKILLed every ``period`` s (and started again ``down_s`` later) for
    ``seconds``, a job a second, beat probing every 2 s: how often the flag flips, how the
    jobs were answered and how long they took — with the adaptive hold, or without it
    (FALLBACK_FLAP_WINDOW=0: the plain hold, as before #25)."""
    from aurum_ml.pipeline import health

    stack = Stack.create(
        folder, ML_SERVICE_TOKEN="chaos-token", HEALTH_PROBE_INTERVAL="2",
        FALLBACK_FLAP_WINDOW="900" if adaptive else "0",
    )  # fmt: skip
    services = _services(stack)
    client = stack.redis.client()
    kills = 0
    try:
        with workers(stack):
            beat = _beat(stack)
            try:
                wait_for(lambda: health.fallback_state(client).active is False, "a probe", 60)
                jobs = round(seconds)
                caller = Caller(stack, jobs, photos, "flap").start(600, rate=1.0)
                began = time.monotonic()
                while time.monotonic() - began < seconds:
                    time.sleep(max(0.0, began + (kills + 1) * period - time.monotonic()))
                    services["detection"].kill()
                    kills += 1
                    time.sleep(down_s)
                    services["detection"].start()
                summary = finish(stack, caller, 660)
            finally:
                beat.terminate()
                beat.wait(20)
            return summary | {
                "adaptive": adaptive,
                "period_s": period,
                "kills": kills,
                "down_s": down_s,
                "transitions": health.transitions(client),
            }
    finally:
        for service in services.values():
            service.kill()
