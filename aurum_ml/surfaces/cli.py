"""``aurum-ml``: score photos from the command line.

With no ``AURUM_BROKER_URL`` the whole chain runs in this process on the embedded default
(memory broker, a worker thread, the local Qdrant folder under ``AURUM_DATA_DIR``); with it,
jobs go to the cluster and the command waits for their results.

Exit status (every command): 0 done — for ``score``, every image got a result, scored or
rejected; 1 the infrastructure failed (broker or Redis unreachable, a job failed or timed
out); 2 a usage or configuration error (a path that is not a file, a bad option, bad
settings), reported before anything is sent; 3 not found (``get-score``, ``similar``: the
user has no stored face).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from aurum_ml.errors import AurumError, BadInput, ConfigError
from aurum_ml.schemas import Result, check_user_id
from aurum_ml.settings import Settings, get_settings


def _read(path: Path, settings: Settings) -> str:
    """The file as base64; BadInput when it cannot be read or is over the byte limit."""
    try:
        with path.open("rb") as handle:
            data = handle.read(settings.image_max_bytes + 1)
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > settings.image_max_bytes:
        raise BadInput(
            f"image is over the {settings.image_max_bytes} byte limit", reason="image_too_large"
        )
    return base64.b64encode(data).decode("ascii")


def _failure(exc: BaseException) -> dict[str, Any]:
    return {"status": "error", "error": type(exc).__name__, "message": str(exc)}


HEADER = f"{'photo':<28} {'status':<9} {'score':>5}  {'rank/of':>9}  {'face':>6}  {'time':>7}"


def _row(path: str, out: dict[str, Any]) -> str:
    """One line of the score table (see HEADER); rejections and errors say why."""
    name = Path(path).name[:28]
    if out["status"] == "scored" and (out.get("degraded") or out.get("score") is None):
        return f"{name:<28} {'degraded':<9} {'-':>5}  {out.get('message') or ''}"
    if out["status"] == "scored":
        quality = out.get("quality") or {}
        place = f"{out['rank']}/{out['total_faces']}"
        face = f"{quality.get('face_width_px', '?')} px"
        return (
            f"{name:<28} {'scored':<9} {out['score']:>5.1f}  {place:>9}  {face:>6}  "
            f"{out['timings_ms']['total']:>4.0f} ms"
        )
    if out["status"] == "rejected":
        return f"{name:<28} {'rejected':<9} {out['reason']}: {out['message']}"
    return f"{name:<28} {'ERROR':<9} {out['error']}: {out['message']}"


def _settings() -> Settings:
    """The settings, or exit 2 with what is wrong in one line per problem (no traceback)."""
    from pydantic import ValidationError

    try:
        return get_settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "__root__")
            message = str(error.get("msg", "")).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise _Exit(2, "configuration: " + "; ".join(problems)) from None


class _Exit(click.ClickException):
    """A one-line message and an exit code (click prints it as "Error: …")."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click reads it per instance


def _reach_cluster(settings: Settings) -> None:
    """Fail in seconds, in one line, when the broker or the result backend cannot be
    reached (Celery would retry for minutes, then print a traceback)."""
    from kombu.utils.url import maybe_sanitize_url

    from aurum_ml.pipeline.celery_app import app

    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0.5, timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure to connect is said the same way
        where = maybe_sanitize_url(settings.celery_broker_url)
        raise _Exit(1, f"cannot reach the broker at {where}: {_reason(exc)}") from None
    client = getattr(app.backend, "client", None)
    if client is not None:
        try:
            client.ping()
        except Exception as exc:  # noqa: BLE001
            where = maybe_sanitize_url(settings.celery_result_backend)
            raise _Exit(1, f"cannot reach the result backend at {where}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rstrip(".").lower() if "refused" in text.lower() else text


EXIT_CODES = """\b
Exit status, for every command:
  0  done; for score: every image got a result (scored or rejected)
  1  the infrastructure failed: broker or Redis unreachable, a job failed or timed out
  2  a usage or configuration error, said before anything is sent
  3  not found: get-score or similar for a user with no stored face
"""


@click.group(epilog=EXIT_CODES)
@click.version_option(package_name="aurum-ml")
def main() -> None:
    """Aurum Circle face scoring."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command("score")
@click.argument(
    "images",
    nargs=-1,
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False, readable=True),
)
@click.option("--user-id", help="User id for every image (default: each file's name).")
@click.option("--allow-multiple-faces", is_flag=True, help="Score the largest of several faces.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of results.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait per image.")
def score_command(
    images: tuple[Path, ...],
    user_id: str | None,
    allow_multiple_faces: bool,
    as_json: bool,
    timeout: float,
) -> None:
    """Score the face in each IMAGE; results come in input order. Several images of one
    user are sent one after another, in input order (one new photo per cooldown period:
    the first is the one that may be scored)."""
    if user_id is not None:
        try:
            check_user_id(user_id)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--user-id") from None
    settings = _settings()
    if not settings.embedded:
        _reach_cluster(settings)
    from aurum_ml.pipeline.celery_app import app
    from aurum_ml.pipeline.runtime import get_runtime
    from aurum_ml.pipeline.tasks import score_face
    from aurum_ml.surfaces.embedded import start_embedded

    try:
        session = (
            start_embedded(app, get_runtime()) if settings.embedded else contextlib.nullcontext()
        )
        owners = [path.stem if user_id is None else user_id for path in images]

        def submit(i: int) -> Any:
            try:
                return score_face.delay(
                    _read(images[i], settings),
                    user_id=owners[i],
                    allow_multiple_faces=allow_multiple_faces or None,
                )
            except BadInput as exc:  # unreadable, or refused before it was sent
                return Result(
                    job_id=None,
                    status="rejected",
                    reason=exc.reason,
                    message=exc.message,
                    user_id=owners[i],
                ).model_dump(mode="json")

        with session:
            results = _collect(
                owners,
                submit,
                timeout,
                progress=not as_json and len(images) > 1 and sys.stderr.isatty(),
                watch_for_workers=not settings.embedded,
            )
    except ConfigError as exc:
        click.echo(f"configuration: {exc}", err=True)
        sys.exit(2)

    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(HEADER)
        for path, out in zip(images, results, strict=True):
            click.echo(_row(str(path), out))
    if any(out["status"] == "error" for out in results):
        sys.exit(1)


def _query(task_name: str, function: Callable[..., Any], *args: Any) -> Any:
    """Run a query on the embedded default (directly, on the restored state) or as a task
    on the cluster's maintenance queue, waiting QUERY_TIMEOUT for its answer."""
    settings = _settings()
    timeout = settings.query_timeout_s
    if not settings.embedded:
        _reach_cluster(settings)
    from celery.exceptions import TimeoutError as CeleryTimeoutError

    from aurum_ml.pipeline.celery_app import app
    from aurum_ml.pipeline.runtime import get_runtime

    try:
        if settings.embedded:
            from aurum_ml.surfaces.embedded import restore

            runtime = get_runtime()
            try:
                restore(runtime, with_results=False)
                return function(runtime, *args)
            finally:
                runtime.vectors.close()
        import aurum_ml.pipeline.tasks  # noqa: F401  (registers the tasks)

        result = app.tasks[task_name].delay(*args)
        try:
            return result.get(timeout=timeout)
        except (TimeoutError, CeleryTimeoutError):  # celery's is not the built-in one
            queue = app.amqp.router.route({}, task_name)["queue"].name
            raise _Exit(1, f"no answer within {timeout:g} s: {_no_worker(queue)}") from None
        finally:
            result.forget()  # read once: no user data left behind in the result backend
    except ConfigError as exc:
        raise _Exit(2, f"configuration: {exc}") from None
    except AurumError as exc:
        raise _Exit(1, f"{type(exc).__name__}: {exc}") from None


def _no_worker(queue: str) -> str:
    return (
        f"is a worker consuming the {queue!r} queue? Start one, e.g. "
        f"`celery -A aurum_ml worker -Q {queue} -n {queue}@%h` (see the README's cluster recipe)"
    )


def _emit(data: Any, as_json: bool, lines: Callable[[Any], list[str]]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for line in lines(data):
            click.echo(line)


_SAME = "  same person?"
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@main.command("get-score")
@click.argument("user_id")
@_json_option
def get_score_command(user_id: str, as_json: bool) -> None:
    """The latest score of USER_ID, as it stands now."""
    from aurum_ml.population.queries import get_score

    out = _query("aurum_ml.get_score", get_score, user_id)
    if out is None:
        raise _Exit(3, f"no stored face for {user_id}")
    _emit(
        out,
        as_json,
        lambda r: [
            f"{r['user_id']}: score {r['score']} (rank {r['rank']}/{r['total_faces']}), "
            f"confidence {r.get('confidence')}, vibes {', '.join(r.get('vibes') or [])}"
        ],
    )


@main.command("similar")
@click.argument("user_id")
@click.option("-k", default=10, show_default=True, help="How many other users.")
@_json_option
def similar_command(user_id: str, k: int, as_json: bool) -> None:
    """The other users whose faces are nearest to USER_ID's latest face."""
    from aurum_ml.population.queries import similar

    out = _query("aurum_ml.similar", similar, user_id, k)
    if out is None:
        raise _Exit(3, f"no stored face for {user_id}")
    _emit(
        out,
        as_json,
        lambda rows: (
            [
                f"{r['user_id']:<30} {r['distance']:.3f}{_SAME if r['same_person'] else ''}"
                for r in rows
            ]
            or [f"no other faces near {user_id}"]
        ),
    )


@main.command("leaderboard")
@click.option("--limit", default=10, show_default=True)
@_json_option
def leaderboard_command(limit: int, as_json: bool) -> None:
    """The most typical faces, one per user."""
    from aurum_ml.population.queries import leaderboard

    out = _query("aurum_ml.leaderboard", leaderboard, limit)
    _emit(
        out,
        as_json,
        lambda rows: [f"{r['position']:>3}. {r['user_id']:<30} {r['score']:>5.1f}" for r in rows],
    )


def stats_lines(data: dict[str, Any]) -> list[str]:
    """``stats`` as text: what is known — the count always, the distribution once a
    re-rank has computed it."""
    rows = []
    for model, entry in data["models"].items():
        dist = entry["distribution"]
        if dist is None:
            rows.append(
                f"{model}: {entry['count']} faces; the score distribution exists after the "
                "first re-rank (beat runs one every RERANK_INTERVAL; `aurum-ml rerank` now)"
            )
            continue
        rows.append(
            f"{model}: {entry['count']} faces; scores mean {dist['mean']}, std {dist['std']}, "
            f"median {dist['p50']} (as of the last re-rank, {dist['count']} faces)"
        )
        tops = entry.get("thresholds") or {}
        if tops:
            ordered = sorted(tops.items(), key=lambda item: int(item[0][4:-3]))  # top_5pct
            needed = ", ".join(f"{name[4:-3]} %: {t['score']}" for name, t in ordered)
            rows.append(f"  score needed for the top {needed}")
    return rows


@main.command("stats")
@_json_option
def stats_command(as_json: bool) -> None:
    """Population statistics per model."""
    from aurum_ml.population.queries import stats

    out = _query("aurum_ml.stats", stats)
    _emit(out, as_json, stats_lines)


@main.command("rerank")
@_json_option
def rerank_command(as_json: bool) -> None:
    """Recompute every face's score against today's population."""
    from aurum_ml.population.rerank import rerank

    out = _query("aurum_ml.rerank", lambda runtime: rerank(runtime).as_dict())
    _emit(out, as_json, lambda r: [f"re-ranked {r['faces']} faces in {r['seconds']} s"])


@main.command("forget")
@click.argument("user_id")
@click.option(
    "--compact",
    is_flag=True,
    help="Then rewrite the Redis append-only files, so the erased data leaves disk too "
    "(at most once per COMPACT_MIN_INTERVAL).",
)
@_json_option
def forget_command(user_id: str, compact: bool, as_json: bool) -> None:
    """Erase everything held about USER_ID."""
    from aurum_ml.population.forget import forget_user

    out = _query("aurum_ml.forget_user", forget_user, user_id)
    if compact:
        from aurum_ml.population.persistence import compact as compact_redis

        out["compact"] = compact_redis(get_settings())

    def lines(r: dict[str, Any]) -> list[str]:
        shown = [f"forgot {user_id}: {r['points']} faces, {r['results']} results"]
        if "compact" in r:
            servers = r["compact"]["servers"]
            if not servers:
                shown.append("compact: the embedded default keeps no Redis files")
            for server, state in servers.items():
                detail = {
                    "rewriting": "append-only file rewrite started",
                    "aof_off": "AOF is off: nothing to rewrite",
                    "too_soon": f"rewritten recently; again in {state.get('retry_in_s')} s",
                }.get(state["status"], f"error: {state.get('message')}")
                shown.append(f"compact {server}: {detail}")
        return shown

    _emit(out, as_json, lines)


@contextlib.contextmanager
def _vector_store_access() -> Any:
    """The runtime for a command that reads or writes the vector store itself (not through
    a worker): errors as exit codes, the store closed after."""
    _settings()
    from aurum_ml.pipeline.runtime import get_runtime

    runtime = get_runtime()
    try:
        yield runtime
    except ConfigError as exc:
        raise _Exit(2, f"configuration: {exc}") from None
    except BadInput as exc:
        raise _Exit(2, str(exc)) from None
    except AurumError as exc:
        where = runtime.vectors.where
        raise _Exit(1, f"{type(exc).__name__}: {exc} (the store: {where})") from None
    finally:
        runtime.vectors.close()


@main.command("export-vectors")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_json_option
def export_vectors_command(file: Path, as_json: bool) -> None:
    """Write every stored face (ids, vectors, payloads) to FILE (JSON Lines; .gz to
    compress), to move the collection to another engine with import-vectors. FILE holds
    biometric data: it is created readable by you only; delete it once imported. On a
    cluster with a local folder, stop the store worker first (it holds the folder)."""
    from aurum_ml.population.transfer import export_vectors

    if file.exists():
        raise _Exit(2, f"{file} exists: choose a new file (an export never overwrites one)")
    if not file.parent.is_dir():
        raise _Exit(2, f"no such folder: {file.parent}")
    with _vector_store_access() as runtime:
        count = export_vectors(runtime, file)
        where = runtime.vectors.where
    out = {"exported": count, "file": str(file), "from": where}
    _emit(out, as_json, lambda r: [f"exported {r['exported']} faces from {r['from']} to {file}"])


@main.command("import-vectors")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_json_option
def import_vectors_command(file: Path, as_json: bool) -> None:
    """Write the faces of an export-vectors FILE into this deployment's store (QDRANT_URL
    or the local folder), under the same ids: importing twice is harmless. Faces of users
    erased since they were stored are skipped. The file is checked whole first."""
    from aurum_ml.population.rerank import rerank
    from aurum_ml.population.transfer import import_vectors

    if not file.is_file():
        raise _Exit(2, f"no such file: {file}")
    with _vector_store_access() as runtime:
        report = import_vectors(runtime, file).as_dict()
        report["into"] = runtime.vectors.where
        if not runtime.settings.embedded:  # place them in the cluster's score index now
            report["reranked"] = rerank(runtime).faces

    def lines(r: dict[str, Any]) -> list[str]:
        shown = [f"imported {r['imported']} faces into {r['into']} ({r['engine']})"]
        if r["skipped_erased"]:
            shown.append(f"skipped {r['skipped_erased']} faces of users erased since")
        return shown

    _emit(report, as_json, lines)


def _watches_a_cluster(settings: Settings, command: str) -> None:
    """status and metrics read a running cluster's shared state; the embedded default has
    none between runs."""
    if settings.embedded:
        raise _Exit(
            2,
            f"`aurum-ml {command}` watches a cluster (set AURUM_BROKER_URL): the embedded "
            "default keeps no state between runs; `aurum-ml stats` reports its stored faces",
        )


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


_SCORING_PATH = {"detection": "/detect", "embedding": "/extract"}


@main.command("health")
@_json_option
def health_command(as_json: bool) -> None:
    """Probe the ML services now: status, latency, availability over the probe window.
    Exit 1 when a configured service is not healthy."""
    from aurum_ml.connection import connect
    from aurum_ml.errors import AurumError
    from aurum_ml.pipeline.backends.http import ServiceClient
    from aurum_ml.pipeline.health import last_probes, services_of

    settings = _settings()
    try:
        window = last_probes(connect(settings), settings)
    except AurumError:
        window = {}
    report: dict[str, Any] = {}
    entry: dict[str, Any]
    for name, url in services_of(settings).items():
        client = ServiceClient(url, settings.health_timeout_s, settings.ml_service_token)
        try:
            health, latency = client.health()
            entry = {
                "status": health.status if health else "ok",
                "latency_ms": round(latency * 1000, 1),
            }
            entry |= {"model": health.model, "version": health.version} if health else {}
            # /health needs no token; the jobs do: prove ours is accepted
            if not client.token_accepted(_SCORING_PATH[name]):
                entry["status"] = "token refused"
                entry["error"] = "ML_SERVICE_TOKEN is not accepted: jobs would fail with 401"
        except AurumError as exc:
            entry = {"status": "down", "error": str(exc)}
        report[name] = {
            "url": url,
            **entry,
            "availability": window.get(name, {}).get("availability"),
        }
    _emit(
        report,
        as_json,
        lambda r: (
            [
                f"{name:<10} {e['status']:<8} {e.get('latency_ms', '-')!s:>7} ms  "
                f"availability {_or_dash(e['availability'])}  {e['url']}"
                for name, e in r.items()
            ]
            or ["no ML service configured (FACE_DETECTION_SERVICE, FACE_EMBEDDING_SERVICE)"]
        ),
    )
    if any(e["status"] != "ok" for e in report.values()):
        sys.exit(1)


@main.command("status")
@_json_option
def status_command(as_json: bool) -> None:
    """The fallback flag (null = no fresh flag: the probe is not running), its age, the
    last probe of each service, and degraded jobs waiting to be re-scored."""
    from aurum_ml.connection import connect
    from aurum_ml.errors import AurumError
    from aurum_ml.pipeline.health import fallback_state, last_probes, transitions
    from aurum_ml.pipeline.state import DegradedJobs

    settings = _settings()
    _watches_a_cluster(settings, "status")
    client = connect(settings)
    try:
        state = fallback_state(client)
        degraded = DegradedJobs(client, keep_s=settings.result_expires_s)
        report = {
            "fallback": state.as_dict(),
            "services": last_probes(client, settings),
            "transitions": transitions(client),
            "degraded": {"pending": len(degraded.pending()), "expired": len(degraded.expired())},
        }
    except AurumError as exc:
        raise click.ClickException(str(exc)) from None

    def lines(r: dict[str, Any]) -> list[str]:
        flag = r["fallback"]
        active = {True: "ON", False: "off", None: "unknown (no fresh flag)"}[flag["active"]]
        out = [f"fallback: {active}"]
        if flag["age_s"] is not None:
            ago = round(time.time() - flag["last_probe"], 1)
            out[0] += f" for {flag['age_s']} s; last probe {ago} s ago"
        if flag["reason"]:
            out.append(f"  reason: {flag['reason']}")
        if flag["active"] and flag.get("hold_probes"):
            out.append(f"  turns off after {flag['hold_probes']} good probes in a row")
        for name, e in r["services"].items():
            out.append(
                f"{name}: last probe {'ok' if e['ok'] else 'failed'}, "
                f"availability {_or_dash(e['availability'])}"
            )
        out.append(
            f"degraded jobs: {r['degraded']['pending']} pending, {r['degraded']['expired']} expired"
        )
        return out

    _emit(report, as_json, lines)


@main.command("metrics")
@click.option("--port", type=int, help="Serve them over HTTP on this port instead.")
@click.option("--host", default="127.0.0.1", show_default=True)
def metrics_command(port: int | None, host: str) -> None:
    """Prometheus metrics Flower lacks: fallback flag, probes, queue depth, degraded jobs."""
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server

    from aurum_ml.pipeline.celery_app import config
    from aurum_ml.pipeline.runtime import get_runtime
    from aurum_ml.surfaces.metrics import PipelineCollector

    _watches_a_cluster(_settings(), "metrics")
    registry = CollectorRegistry()
    registry.register(PipelineCollector(get_runtime(), config.QUEUES, _queue_workers))
    if port is None:
        click.echo(generate_latest(registry).decode(), nl=False)
        return
    start_http_server(port, addr=host, registry=registry)
    click.echo(f"serving metrics on http://{host}:{port}/metrics", err=True)
    import threading

    threading.Event().wait()


def _queue_workers() -> dict[str, int]:
    """How many workers consume each queue (they answer over the broker within 1 s)."""
    from aurum_ml.pipeline.celery_app import app

    counts: dict[str, int] = {}
    try:
        answers = app.control.inspect(timeout=1.0).active_queues() or {}
    except Exception:  # noqa: BLE001 - no broker: no consumer can be seen either
        return counts
    for queues in answers.values():
        for queue in queues or []:
            counts[queue["name"]] = counts.get(queue["name"], 0) + 1
    return counts


_SERVICES = {"detection": 8001, "embedding": 8002, "api": 8000}
_FACTORIES = {
    "detection": "aurum_ml.surfaces.services.detection:create_app",
    "embedding": "aurum_ml.surfaces.services.embedding:create_app",
    "api": "aurum_ml.surfaces.api:create_app",
}


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@main.command("serve")
@click.argument("service", type=click.Choice(sorted(_SERVICES)))
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 in a container.")
@click.option("--port", type=int, help="Default: 8000 (api), 8001 (detection), 8002 (embedding).")
@click.option("--workers", default=1, show_default=True, help="uvicorn worker processes.")
@click.option("--log-level", default="info", show_default=True)
def serve_command(service: str, host: str, port: int | None, workers: int, log_level: str) -> None:
    """Run the HTTP API (api) or an ML service (detection, embedding) with uvicorn."""
    from aurum_ml.surfaces import serving

    settings = _settings()
    if service == "api":
        if settings.embedded:
            raise click.ClickException(
                "the API publishes to a cluster: set AURUM_BROKER_URL (see the README's "
                "cluster recipe)"
            )
        if not settings.api_key_table and not _loopback(host):
            raise click.ClickException(
                f"refusing to serve the API on {host} without keys: set AURUM_API_KEYS "
                "(name:key,...) or serve on 127.0.0.1"
            )
        if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # several worker processes: /metrics sums them all (prometheus_client's
            # multiprocess mode, through a folder they share), not whichever one answers
            folder = tempfile.mkdtemp(prefix="aurum-api-metrics-")
            atexit.register(shutil.rmtree, folder, True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    elif not settings.ml_service_token and not _loopback(host):
        raise click.ClickException(
            f"refusing to serve the {service} service on {host} without a token: set "
            "ML_SERVICE_TOKEN (the workers send it as a bearer token) or serve on 127.0.0.1"
        )
    serving.run(  # with header, body and keep-alive timeouts and a connection cap
        _FACTORIES[service],
        host=host,
        port=port or _SERVICES[service],
        workers=workers,
        log_level=log_level,
        access_log=service != "api",  # the API logs route templates, never user ids
    )


def _collect(
    owners: list[str],
    submit: Callable[[int], Any],
    timeout: float,
    progress: bool,
    watch_for_workers: bool = False,
) -> list[dict[str, Any]]:
    """Submit every user's first image at once, each next image of a user once the one
    before it has its result; the results in input order. Progress counts finished jobs;
    with ``watch_for_workers``, says so when no job has started after a few seconds."""
    results: dict[int, dict[str, Any]] = {}
    sent: dict[int, tuple[Any, float]] = {}
    later: dict[str, deque[int]] = {}

    def send(i: int) -> None:
        item = submit(i)
        if isinstance(item, dict):  # refused before it was sent
            finish(i, item)
        else:
            sent[i] = (item, time.monotonic())

    def finish(i: int, out: dict[str, Any]) -> None:
        results[i] = out
        if later[owners[i]]:
            send(later[owners[i]].popleft())

    first = []
    for i, owner in enumerate(owners):
        if owner in later:
            later[owner].append(i)
        else:
            later[owner] = deque()
            first.append(i)
    for i in first:
        send(i)
    bar = (
        click.progressbar(length=len(owners), label="scoring", file=sys.stderr)
        if progress
        else contextlib.nullcontext()
    )
    warned = False
    started = time.monotonic()
    with bar as ticks:
        shown = 0
        while len(results) < len(owners):
            for i, (job, since) in list(sent.items()):
                if job.ready():
                    del sent[i]
                    try:
                        finish(i, job.get(timeout=10))
                    except Exception as exc:  # AurumError after retries, a crash
                        finish(i, _failure(exc))
                elif time.monotonic() - since > timeout:
                    del sent[i]
                    _let_go(job)
                    finish(i, _failure(TimeoutError(f"no result within {timeout:g} s")))
            if ticks is not None and len(results) > shown:
                ticks.update(len(results) - shown)
                shown = len(results)
            if (
                watch_for_workers
                and not warned
                and time.monotonic() - started > NO_WORKER_AFTER_S
                and sent
                and all(job.state == "PENDING" for job, _ in sent.values())
            ):
                warned = True
                click.echo(
                    f"\nno job has started after {NO_WORKER_AFTER_S:g} s: "
                    f"{_no_worker('detect')}; waiting up to {timeout:g} s per image",
                    err=True,
                )
            time.sleep(0.05)
    return [results[i] for i in range(len(owners))]


NO_WORKER_AFTER_S = 5.0


def _let_go(job: Any) -> None:
    """Stop listening for a job given up on (no "Exception ignored in __del__" at exit)."""
    with contextlib.suppress(Exception):
        job.backend.remove_pending_result(job)
    with contextlib.suppress(Exception):
        job.forget()


if __name__ == "__main__":
    main()
