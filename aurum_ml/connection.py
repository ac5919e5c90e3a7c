"""The one way to Redis for the pipeline's state and the population's records: a client
built from the settings, and the translation of redis-py's transport errors into ours.

Core: imported by the pipeline, the population and the surfaces alike; imports neither.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import redis

from aurum_ml.errors import StateUnavailable
from aurum_ml.settings import Settings

__all__ = ["connect", "redis_errors"]

_fake_server = None
_fake_lock = threading.Lock()


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    """Translate redis-py's transport errors into our retryable error."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StateUnavailable(f"Redis unavailable: {type(exc).__name__}") from None


def connect(settings: Settings) -> redis.Redis:
    """A client for the pipeline-state Redis; in-process (fakeredis) when embedded."""
    url = settings.state_url
    if url:
        return redis.Redis.from_url(
            url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
        )
    import fakeredis

    global _fake_server
    with _fake_lock:
        if _fake_server is None:
            _fake_server = fakeredis.FakeServer()
    return fakeredis.FakeRedis(server=_fake_server)
