"""Redis persistence after erasure: rewrite the append-only file so erased data leaves disk.

With ``appendonly yes`` Redis logs every write — images in broker messages and in the
pipeline state, user ids in keys and results — and a deleted key stays in the AOF until
Redis rewrites it. :func:`compact` asks every Redis the deployment uses (broker, result
backend, pipeline state; each once) for ``BGREWRITEAOF``, at most once per
``COMPACT_MIN_INTERVAL`` seconds (a rewrite copies the whole dataset: cheap enough after an
erasure, not after every one of a thousand). RDB snapshots (``save``) hold erased data until
the next snapshot the same way: see docs/runbook.md.
"""

from __future__ import annotations

from typing import Any

import redis

from aurum_ml.settings import Settings

__all__ = ["compact", "redis_urls"]

_LOCK = "aurum:compact:last"


def redis_urls(settings: Settings) -> list[str]:
    """The distinct Redis URLs of the deployment (none on the embedded default)."""
    urls = [settings.broker_url, settings.result_backend, settings.state_url]
    seen: list[str] = []
    for url in urls:
        if url and url.startswith(("redis://", "rediss://")) and url not in seen:
            seen.append(url)
    return seen


def _server(url: str) -> str:
    """host:port only: a URL may carry a password."""
    tail = url.split("@")[-1].split("://")[-1]
    return tail.split("/")[0]


def compact(settings: Settings, min_interval_s: int | None = None) -> dict[str, Any]:
    """Start an AOF rewrite on each Redis with AOF on, unless one was started by us within
    the interval. Returns what happened per server (``rewriting``, ``aof_off``,
    ``too_soon`` with seconds to wait, or ``error`` with a message)."""
    interval = settings.compact_min_interval_s if min_interval_s is None else min_interval_s
    report: dict[str, Any] = {}
    servers: set[str] = set()
    for url in redis_urls(settings):
        server = _server(url)
        if server in servers:  # two databases of one server share one AOF
            continue
        servers.add(server)
        client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        try:
            if not int(client.info("persistence").get("aof_enabled", 0)):
                report[server] = {"status": "aof_off"}
                continue
            if interval > 0 and not client.set(_LOCK, "1", nx=True, ex=interval):
                report[server] = {"status": "too_soon", "retry_in_s": int(client.ttl(_LOCK))}
                continue
            client.bgrewriteaof()
            report[server] = {"status": "rewriting"}
        except redis.ResponseError as exc:  # e.g. a rewrite already running
            report[server] = {"status": "error", "message": str(exc)}
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            report[server] = {"status": "error", "message": f"unreachable: {type(exc).__name__}"}
        finally:
            client.close()
    return {"servers": report}
