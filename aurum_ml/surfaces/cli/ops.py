"""The operators' commands: health, status, metrics (the exporter) and serve (the API and
the ML services under uvicorn)."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import click

from aurum_ml.errors import AurumError
from aurum_ml.surfaces.cli.common import (
    emit,
    json_option,
    load_settings,
    or_dash,
    watches_a_cluster,
)

_SCORING_PATH = {"detection": "/detect", "embedding": "/extract"}


@click.command("health")
@json_option
def health_command(as_json: bool) -> None:
    """Probe the ML services now: status, latency, availability over the probe window.
    Exit 1 when a configured service is not healthy."""
    from aurum_ml.connection import connect
    from aurum_ml.pipeline.backends.http import ServiceClient
    from aurum_ml.pipeline.health import last_probes, services_of

    settings = load_settings()
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
    emit(
        report,
        as_json,
        lambda r: (
            [
                f"{name:<10} {e['status']:<8} {e.get('latency_ms', '-')!s:>7} ms  "
                f"availability {or_dash(e['availability'])}  {e['url']}"
                for name, e in r.items()
            ]
            or ["no ML service configured (FACE_DETECTION_SERVICE, FACE_EMBEDDING_SERVICE)"]
        ),
    )
    if any(e["status"] != "ok" for e in report.values()):
        sys.exit(1)


@click.command("status")
@json_option
def status_command(as_json: bool) -> None:
    """The fallback flag (null = no fresh flag: the probe is not running), its age, the
    last probe of each service, and degraded jobs waiting to be re-scored."""
    from aurum_ml.connection import connect
    from aurum_ml.pipeline.health import fallback_state, last_probes, transitions
    from aurum_ml.pipeline.state import DegradedJobs

    settings = load_settings()
    watches_a_cluster(settings, "status")
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
                f"availability {or_dash(e['availability'])}"
            )
        out.append(
            f"degraded jobs: {r['degraded']['pending']} pending, {r['degraded']['expired']} expired"
        )
        return out

    emit(report, as_json, lines)


@click.command("metrics")
@click.option("--port", type=int, help="Serve them over HTTP on this port instead.")
@click.option("--host", default="127.0.0.1", show_default=True)
def metrics_command(port: int | None, host: str) -> None:
    """Prometheus metrics Flower lacks: fallback flag, probes, queue depth, degraded jobs."""
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server

    from aurum_ml.pipeline.celery_app import config
    from aurum_ml.pipeline.runtime import get_runtime
    from aurum_ml.surfaces.metrics import PipelineCollector

    watches_a_cluster(load_settings(), "metrics")
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


@click.command("serve")
@click.argument("service", type=click.Choice(sorted(_SERVICES)))
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 in a container.")
@click.option("--port", type=int, help="Default: 8000 (api), 8001 (detection), 8002 (embedding).")
@click.option("--workers", default=1, show_default=True, help="uvicorn worker processes.")
@click.option("--log-level", default="info", show_default=True)
def serve_command(service: str, host: str, port: int | None, workers: int, log_level: str) -> None:
    """Run the HTTP API (api) or an ML service (detection, embedding) with uvicorn."""
    from aurum_ml.surfaces import serving

    settings = load_settings()
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
