"""A worker survives a Redis restart that catches work on its old channel.

The state is the one workers reached in our Redis-restart runs, made with kombu's own
calls on a real redis-server: a message delivered and not acked, Redis gone, the
transport released (Celery's collect() after a connection loss) while the channel lives
on. Then the task finishes and acks, or Celery closes the channel again. Plain kombu raises
AttributeError in both, which Celery treats as unrecoverable: the worker stopped consuming
for good. aurum_ml's transport raises a connection error there, which kombu and Celery
handle; the message stays in Redis's unacked set and comes back after the visibility
timeout."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from kombu import Connection, Consumer, Exchange, Queue
from kombu.transport import redis as kombu_redis

from aurum_ml import broker
from aurum_ml.pipeline.celery_app import app

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos  # noqa: E402


def _released_with_a_message_in_hand(tmp_path: Path, transport: type | None):
    server = chaos.RedisServer(tmp_path).start()
    conn = Connection(server.url, transport=transport)
    queue = Queue("jobs", Exchange("jobs"), "jobs")
    with conn.Producer(conn.default_channel) as producer:
        producer.publish({"job": 1}, exchange="jobs", routing_key="jobs", declare=[queue])
    delivered: list = []
    Consumer(conn.default_channel, [queue], callbacks=[lambda b, m: delivered.append(m)]).consume()
    conn.drain_events(timeout=5)
    (message,) = delivered  # taken, not acked
    server.stop()  # Redis goes away
    conn._do_close_transport()  # collect() released the transport; the channel lives on
    return conn, message, server


def test_plain_kombu_fails_there(tmp_path):
    """The failure guarded against (if kombu fixes it, this test says so)."""
    conn, message, _ = _released_with_a_message_in_hand(tmp_path, kombu_redis.Transport)
    with pytest.raises(AttributeError):
        conn.close()  # Celery's second close
    with pytest.raises(AttributeError):
        message.ack()  # the task that was running finishes


def test_our_transport_turns_both_into_connection_errors(tmp_path):
    conn, message, server = _released_with_a_message_in_hand(tmp_path, None)
    assert isinstance(conn.transport, broker.Transport)  # redis:// URLs use ours
    conn.close()  # given up like any close on a lost connection
    errors = conn.connection_errors + conn.channel_errors
    message.ack_log_error(logging.getLogger("test"), errors)  # logged, not raised
    server.start()  # the same folder: the AOF brings the unacked message back
    assert server.client().hlen("unacked") == 1  # delivered again after the timeout
    server.stop()


def test_the_app_connects_through_it():
    assert isinstance(app.connection_for_read().transport, broker.Transport)


def _publishing_on_a_channel_closed_under_it(tmp_path: Path, transport: type | None):
    """A pooled producer (bound to its connection, as Celery's are) whose channel was closed
    when the connection was lost: the state a task publishing its next stage met."""
    from kombu import Producer

    server = chaos.RedisServer(tmp_path).start()
    conn = Connection(server.url, transport=transport)
    queue = Queue("jobs", Exchange("jobs"), "jobs")
    producer = Producer(conn)
    producer.publish({"job": 1}, exchange="jobs", routing_key="jobs", declare=[queue])
    conn.transport.close_connection(conn.connection)  # the lost connection's channels close
    return producer, server


def test_plain_kombu_cannot_publish_there(tmp_path):
    producer, server = _publishing_on_a_channel_closed_under_it(tmp_path, kombu_redis.Transport)
    with pytest.raises(AttributeError):
        producer.publish({"job": 2}, exchange="jobs", routing_key="jobs", retry=True)
    server.stop()


def test_our_transport_reconnects_and_publishes(tmp_path):
    producer, server = _publishing_on_a_channel_closed_under_it(tmp_path, None)
    producer.publish({"job": 2}, exchange="jobs", routing_key="jobs", retry=True)
    assert server.client().llen("jobs") == 2  # nothing lost
    server.stop()
