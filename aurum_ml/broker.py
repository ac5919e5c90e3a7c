"""kombu's Redis transport, with one failure turned into the connection error it is.

When a worker loses Redis, Celery collects the broker connection (the transport lets go
of its client) and reconnects on a new one. Work still holding the *old* channel — a task
that finishes during the outage and acks its message, or the old channel being closed a
second time, or a task publishing its next stage on a pooled producer whose channel was
closed under it — then reaches kombu's channel with no client or no connection: kombu
raises AttributeError. Celery calls that unrecoverable, and the worker stops consuming for
good; in a publish, kombu does not reconnect and the task fails (a lost job). Our
Redis-restart runs hit all three paths.

Here those calls raise redis's ConnectionError instead, which kombu and Celery already
handle: the ack is logged as failed and the message, still in Redis's unacked set, comes
back after the visibility timeout (every stage is idempotent); the close is given up; the
publish reconnects and is sent.

:func:`held` closes a window of the same transport. Its BRPOP takes a message off the
queue in Redis; the worker records it as unacked (so the visibility timeout can bring it
back) only once it has read the reply. A process that freezes in between — native code
holding the GIL for seconds, like Qdrant Edge's index build during the re-rank — and is
killed there takes the message with it: nothing in Redis knows it was handed out. Inside
``held()`` this process sends no BRPOP, and the block starts once the one in flight (at
most ``brpop_timeout``, 1 s) has been read and its message recorded.

:func:`install` makes ``redis://`` and ``rediss://`` URLs use this transport (kombu's
``TRANSPORT_ALIASES`` is its registry of transports); aurum_ml.pipeline.celery_app calls it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport", "held", "install"]

log = logging.getLogger("aurum_ml.broker")
_hold = threading.Lock()
_holders = 0  # blocks of held() under way in this process
_channels: weakref.WeakSet[Channel] = weakref.WeakSet()


def _closed() -> redis.exceptions.ConnectionError:
    return redis.exceptions.ConnectionError("the broker connection was closed")


class Channel(kombu_redis.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _channels.add(self)

    def _brpop_start(self, timeout: Any = None) -> Any:
        # held(): no new BRPOP (the poller asks again at its next tick). Not by refusing
        # credit (qos.can_consume): kombu then leaves a BRPOP in flight unread, its
        # message popped in Redis and unrecorded — the very window held() closes.
        if _holders:
            return None
        return super()._brpop_start(timeout)

    def _connparams(self, asynchronous: bool = False) -> Any:
        # the channel was closed (no connection), or its transport released (no client)
        if self.connection is None or self.connection.client is None:
            raise _closed()
        return super()._connparams(asynchronous=asynchronous)

    @property
    def state(self) -> Any:
        if self.connection is None:  # a publish on a channel closed under it
            raise _closed()
        return super().state


class Transport(kombu_redis.Transport):
    Channel = Channel


@contextlib.contextmanager
def held(wait_s: float = 5.0) -> Iterator[None]:
    """This process takes no message from a Redis queue inside the block, and none is
    half-taken when it starts: every BRPOP in flight has been read, its message recorded
    as unacked. Waits at most ``wait_s`` for that (a BRPOP returns within its 1 s
    timeout); for a process without a Redis broker connection it is free."""
    global _holders
    with _hold:
        _holders += 1
    try:
        deadline, quiet = time.monotonic() + wait_s, 0
        # twice quiet, 50 ms apart: the poller may have passed can_consume() just before
        while quiet < 2 and time.monotonic() < deadline:
            quiet = 0 if any(c._in_poll for c in list(_channels)) else quiet + 1
            time.sleep(0.05)
        if quiet < 2:
            log.warning("a BRPOP is still unread after %.0f s; holding anyway", wait_s)
        yield
    finally:
        with _hold:
            _holders -= 1


def install() -> None:
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
