"""The production path with real processes: `celery -A aurum_ml worker` as a subprocess on
RabbitMQ (broker) + Redis (results and state), and `aurum-ml score` submitting to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from samples import no_face

BIN = Path(sys.executable).parent
TEST_REDIS = os.environ["AURUM_BROKER_URL"]  # set by tests/conftest.py


@pytest.fixture(scope="module")
def rabbit() -> Iterator[str]:
    """A RabbitMQ vhost of this run's own (deleted at the end), or AURUM_TEST_AMQP."""
    if os.environ.get("AURUM_TEST_AMQP"):
        yield os.environ["AURUM_TEST_AMQP"]
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import chaos

    with chaos.Vhost("aurum-test") as vhost:
        yield vhost.url


@pytest.fixture()
def cluster_env(tmp_path, redis_client, rabbit) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AURUM_", "QDRANT_"))}
    env.update(
        AURUM_BROKER_URL=rabbit,
        AURUM_RESULT_BACKEND=TEST_REDIS,
        AURUM_REDIS_URL=TEST_REDIS,
        QDRANT_PATH=str(tmp_path / "qdrant"),
        INLINE_LOCAL_STAGES="false",  # every stage through RabbitMQ, though one worker runs all
    )
    return env


@pytest.fixture()
def worker_process(cluster_env, tmp_path):
    log = (tmp_path / "worker.log").open("w")
    queues = "detect,embed,score,store,maintenance"
    command = [str(BIN / "celery"), "-A", "aurum_ml", "worker", "-Q", queues, "-P", "threads",
               "-c", "2", "-n", "cluster-test@%h", "--without-mingle", "--without-gossip",
               "--loglevel", "INFO"]  # fmt: skip
    process = subprocess.Popen(command, env=cluster_env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while "ready." not in (tmp_path / "worker.log").read_text():
        assert process.poll() is None and time.monotonic() < deadline, "worker did not start"
        time.sleep(0.2)
    yield tmp_path / "worker.log"
    process.terminate()
    process.wait(30)
    log.close()


def test_cli_submits_to_a_worker_process_over_rabbitmq(
    worker_process, cluster_env, photos, tmp_path
):
    blank = tmp_path / "no_face.jpg"
    blank.write_bytes(no_face(photos))
    out = subprocess.run(
        [str(BIN / "aurum-ml"), "score", "--json", str(photos / "obama.jpg"), str(blank)],
        env=cluster_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    scored, rejected = json.loads(out.stdout)
    assert scored["status"] == "scored" and scored["face"]["box"] == [366, 136, 624, 394]
    assert (rejected["status"], rejected["reason"]) == ("rejected", "no_face")
    log = worker_process.read_text()
    for task in ("score_face", "detect", "embed", "score", "store"):
        assert f"aurum_ml.{task}[" in log
    assert "/9j/" not in log  # no base64 JPEG in the worker's log, even at INFO
