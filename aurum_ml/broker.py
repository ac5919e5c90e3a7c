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

:func:`install` makes ``redis://`` and ``rediss://`` URLs use this transport (kombu's
``TRANSPORT_ALIASES`` is its registry of transports); aurum_ml.celery_app calls it.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport", "install"]


def _closed() -> redis.exceptions.ConnectionError:
    return redis.exceptions.ConnectionError("the broker connection was closed")


class Channel(kombu_redis.Channel):
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


def install() -> None:
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
