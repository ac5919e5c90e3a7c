"""kombu's Redis transport, with one failure turned into the connection error it is.

When a worker loses Redis, Celery collects the broker connection (the transport lets go
of its client) and reconnects on a new one. Work still holding the *old* channel — a task
that finishes during the outage and acks its message, or the old channel being closed a
second time — then reaches kombu's ``Channel._connparams`` with no client: kombu raises
AttributeError, Celery calls that unrecoverable, and the worker stops consuming for good.
Our Redis-restart runs hit both paths (a model worker dead, its queues never drained).

Here that call raises redis's ConnectionError instead, which kombu and Celery already
handle: the ack is logged as failed and the message, still in Redis's unacked set, comes
back after the visibility timeout (every stage is idempotent); the close is given up.

:func:`install` makes ``redis://`` and ``rediss://`` URLs use this transport (kombu's
``TRANSPORT_ALIASES`` is its registry of transports); aurum_ml.celery_app calls it.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport", "install"]


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:  # the transport was released: a closed connection
            raise redis.exceptions.ConnectionError("the broker connection was closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
