"""The README's cluster recipe, run as written (#8): its shell block, line by line, in a
shell — subprocess workers on Redis, beat, every CLI command it lists — with no
QDRANT_URL, so the local-folder rule is what makes leaderboard, similar, rerank and forget
work. Only the Redis database is changed, to the tests' own."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redisdb import CLAIM_KEY, claim_redis_db

ROOT = Path(__file__).resolve().parents[2]

_OURS = ("AURUM_", "QDRANT_", "TASK_", "RETRY_", "COOLDOWN_")


def recipe() -> str:
    """The first sh block under "### Running a cluster" in the README."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Running a cluster", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the README's cluster section has no sh block"
    return match.group(1)


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    env["AURUM_DATA_DIR"] = str(data_dir)
    return env


@pytest.fixture()
def recipe_redis() -> Iterator[str]:
    """A second Redis database of this run's own (the recipe's processes flush nothing of
    the suite's), emptied at the end."""
    url = os.environ.get("AURUM_TEST_RECIPE_REDIS") or claim_redis_db(
        exclude=(os.environ["AURUM_BROKER_URL"],)
    )
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.set(CLAIM_KEY, os.getpid(), ex=7200)  # still ours
    yield url
    client.flushdb()


def test_the_cluster_recipe_runs_as_written(recipe_redis, photos, tmp_path):
    block = recipe()
    assert "redis://127.0.0.1:6379/0" in block and "QDRANT_URL=" not in block.replace(
        "# export QDRANT_URL", ""
    )
    script = tmp_path / "recipe.sh"
    script.write_text(
        "set -eo pipefail\n"
        "trap 'rc=$?; kill $(jobs -p) 2>/dev/null || true; wait; exit $rc' EXIT\n"
        + block.replace("redis://127.0.0.1:6379/0", recipe_redis)
        + "wait\n"
    )
    done = subprocess.run(
        ["bash", str(script)],
        cwd=ROOT,
        env=_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=400,
    )
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, f"{out}\n{err[-4000:]}"
    assert "refusing to start" not in err and "held by another process" not in err
    lines = out.splitlines()
    scored = [line for line in lines if " scored " in line]
    assert len(scored) == 2 and scored[0].startswith("obama.jpg"), out
    assert any(line.startswith("obama: score") for line in lines), out  # get-score
    assert "biden" in out.split("obama: score", 1)[1]  # similar and leaderboard name biden
    assert "re-ranked 2 faces" in out and "forgot obama: 1 faces" in out
    assert (tmp_path / "data" / "qdrant").is_dir()


def _start_worker(args: list[str], data_dir: Path, broker: str) -> subprocess.Popen:
    env = _env(data_dir) | {"AURUM_BROKER_URL": broker}
    return subprocess.Popen(
        ["celery", "-A", "aurum_ml", "worker", "-l", "warning", *args],
        cwd=ROOT,
        env=env | {"PATH": f"{Path(os.sys.executable).parent}:{env['PATH']}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _refused(process: subprocess.Popen) -> str:
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the worker started instead of refusing")
    assert process.returncode == 2, err[-2000:]
    return err


def test_a_store_worker_that_cannot_own_the_folder_refuses_to_start(recipe_redis, tmp_path):
    from qdrant_folders import held

    prefork = _refused(
        _start_worker(["-Q", "store", "-n", "store1@%h"], tmp_path / "a", recipe_redis)
    )
    assert "refusing to start" in prefork and "--pool threads" in prefork

    with held(tmp_path / "b" / "qdrant"):  # another process's store worker, say
        second = _start_worker(
            ["-Q", "store", "--pool", "threads", "-n", "s2@%h"], tmp_path / "b", recipe_redis
        )
        err = _refused(second)
    assert "held by another process" in err and "QDRANT_URL" in err

    # a worker without the store queue never opens the folder: it starts
    model = _start_worker(
        ["-Q", "detect", "-n", "detect1@%h", "-c", "1"], tmp_path / "a", recipe_redis
    )
    try:
        time.sleep(8)
        assert model.poll() is None, model.communicate()[1][-2000:]
    finally:
        model.terminate()
        model.wait(30)
