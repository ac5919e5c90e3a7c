"""Shared fixtures: real Redis, a real in-process Celery worker, real models, real photos.

The environment is set here, before any test imports aurum_ml, so that the process-wide
settings (and celeryconfig) point at the test Redis database and a throw-away Qdrant folder.

Each test run takes a Redis database of its own on 127.0.0.1:6379: the first empty one from
15 down to 8, claimed with a key (SET NX) so two runs on one machine never share one; it is
flushed at the start and at the end. ``AURUM_TEST_REDIS`` names one instead. RabbitMQ tests
create a vhost of their own and delete it (tests/integration/test_cluster.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from redisdb import CLAIM_KEY, claim_redis_db  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# the webhook receiver's port: the allow-list names exact host and port (aurum_ml.callbacks)
WEBHOOK_RECEIVER_PORT = _free_port()
TEST_REDIS = os.environ.get("AURUM_TEST_REDIS") or claim_redis_db()
_QDRANT_DIR = tempfile.mkdtemp(prefix="aurum-test-qdrant-")
for _name in ("QDRANT_URL", "QDRANT_API_KEY", "AURUM_DATA_DIR"):
    os.environ.pop(_name, None)
os.environ.update(
    {
        "AURUM_BROKER_URL": TEST_REDIS,
        "AURUM_RESULT_BACKEND": TEST_REDIS,
        "AURUM_REDIS_URL": TEST_REDIS,
        "QDRANT_PATH": _QDRANT_DIR,
        "TASK_MAX_RETRIES": "2",
        "RETRY_BACKOFF_MAX": "2",
        "COOLDOWN_DAYS": "0",
        # webhooks (the API's tests): a loopback receiver, a test secret
        "AURUM_WEBHOOK_SECRET": "test-webhook-secret",
        "AURUM_WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{WEBHOOK_RECEIVER_PORT}",
        "AURUM_TEST_WEBHOOK_PORT": str(WEBHOOK_RECEIVER_PORT),
        "WEBHOOK_RETRY_FOR": "60",
    }
)
for _name in ("AURUM_API_KEYS", "AURUM_WEBHOOK_URL", "AURUM_API_RATE_LIMIT"):
    os.environ.pop(_name, None)

from photos import fetch  # noqa: E402  (after the environment is set)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_QDRANT_DIR, ignore_errors=True)
    import redis

    with contextlib.suppress(redis.ConnectionError):  # leave nothing behind in our database
        redis.Redis.from_url(TEST_REDIS).flushdb()


@pytest.fixture(scope="session")
def photos() -> Path:
    return fetch()


@pytest.fixture(scope="session")
def redis_client():
    import redis

    client = redis.Redis.from_url(TEST_REDIS)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.exit(f"Redis is not running at {TEST_REDIS} (start it: see README)", returncode=3)
    client.flushdb()
    client.set(CLAIM_KEY, os.getpid(), ex=7200)  # still ours after the flush
    return client


@pytest.fixture(scope="session")
def runtime(redis_client):
    from aurum_ml.pipeline.runtime import get_runtime

    return get_runtime()


@pytest.fixture(scope="session")
def settings(runtime):
    return runtime.settings


@pytest.fixture(scope="session")
def model(runtime):
    runtime.local.warm_up()
    return runtime.local


@pytest.fixture(scope="module")
def pipeline_worker(runtime, model) -> Iterator[object]:
    """A real worker thread consuming every queue of the pipeline, on the test Redis."""
    from aurum_ml.pipeline.celery_app import app, config
    from aurum_ml.surfaces.embedded import run_worker

    with run_worker(app, config.QUEUES, hostname="test-all@localhost") as worker:
        yield worker


@pytest.fixture()
def tasks_run() -> Iterator[list[str]]:
    """Names of the tasks the worker starts during the test, in order (retries included)."""
    from celery.signals import task_prerun

    names: list[str] = []

    def record(sender=None, **_):
        names.append(sender.name)

    task_prerun.connect(record, weak=False)
    yield names
    task_prerun.disconnect(record)
