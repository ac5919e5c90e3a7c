"""A worker survives a Redis restart that catches its channel mid-close.

The state is the one a worker reached in our Redis-restart runs, made with kombu's own
calls on a real redis-server: a message delivered and not acked on the default channel,
Redis gone, the transport already released (Celery's collect() after a connection loss)
while the channel is still open; then Celery closes the connection. Plain kombu raises
AttributeError there, which Celery treats as unrecoverable: the worker stopped consuming
for good. aurum_ml's connection lets that close go; the message stays in Redis's unacked
set and comes back after the visibility timeout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from kombu import Connection, Consumer, Exchange, Queue

from aurum_ml.celery_app import BrokerConnection, app

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos  # noqa: E402


def _mid_close(tmp_path: Path, connection_class: type[Connection]) -> tuple[Connection, object]:
    server = chaos.RedisServer(tmp_path).start()
    conn = connection_class(server.url)
    queue = Queue("jobs", Exchange("jobs"), "jobs")
    with conn.Producer(conn.default_channel) as producer:
        producer.publish({"job": 1}, exchange="jobs", routing_key="jobs", declare=[queue])
    delivered: list = []
    consumer = Consumer(conn.default_channel, [queue], callbacks=[lambda b, m: delivered.append(m)])
    consumer.consume()
    conn.drain_events(timeout=5)
    assert len(delivered) == 1  # taken, not acked
    server.stop()  # Redis goes away
    conn._do_close_transport()  # collect() released the transport; the channel stayed open
    return conn, server


def test_plain_kombu_fails_that_close(tmp_path):
    """The failure this guards against (if kombu fixes it, this test says so)."""
    conn, _ = _mid_close(tmp_path, Connection)
    with pytest.raises(AttributeError):
        conn.close()


def test_our_connection_closes_and_the_message_stays_unacked_in_redis(tmp_path):
    conn, server = _mid_close(tmp_path, BrokerConnection)
    conn.close()  # no AttributeError: Celery reconnects instead of giving up
    server.start()  # the same data folder: the AOF brings the unacked message back
    assert server.client().hlen("unacked") == 1  # restored after the visibility timeout
    server.stop()


def test_the_app_uses_it():
    assert isinstance(app.connection_for_read(), BrokerConnection)
