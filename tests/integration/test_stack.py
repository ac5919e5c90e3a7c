"""`make up` / `make down` (#13): the whole stack from deploy/Procfile under honcho, on
loopback, on a Redis database and ports of this run's own — scored through the API, watched
through Flower and the exporter, then stopped with nothing left listening."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
import requests
from promnames import served_metric_names, used_metric_names
from redisdb import CLAIM_KEY, claim_redis_db

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import chaos  # noqa: E402

PORTS = ("API_PORT", "DETECTION_PORT", "EMBEDDING_PORT", "FLOWER_PORT", "METRICS_PORT")
_OURS = ("AURUM_", "QDRANT_", "TASK_", "RETRY_", "COOLDOWN_", "FACE_", "ML_SERVICE", "FLOWER_")


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _processes_of(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (this stack's data folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _until(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while True:
        try:
            out = check()
            if out:
                return out
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.5)


def test_make_up_runs_the_stack_and_make_down_stops_it(tmp_path, photos):
    broker = claim_redis_db(exclude=(os.environ["AURUM_BROKER_URL"],))
    client = redis.Redis.from_url(broker)
    client.flushdb()
    client.set(CLAIM_KEY, os.getpid(), ex=7200)
    ports = {name: str(chaos.free_port()) for name in PORTS}
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    env.update(ports, AURUM_BROKER_URL=broker, AURUM_DATA_DIR=str(tmp_path / "data"))
    make = ["make", "--no-print-directory", f"STACK={tmp_path / 'stack'}"]

    def run(target: str) -> subprocess.CompletedProcess:
        return subprocess.run(make + [target], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    up = run("up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "up (honcho pid" in up.stdout and "Flower" in up.stdout
        creds = dict(
            line.split("=", 1) for line in (tmp_path / "stack" / "env").read_text().splitlines()
        )
        key = creds["AURUM_API_KEYS"].split(":", 1)[1]
        api = f"http://127.0.0.1:{ports['API_PORT']}"
        _until(lambda: requests.get(f"{api}/readyz", timeout=2).ok, 90, "the API ready")
        assert len(_processes_of(str(tmp_path / "data"))) >= 13  # honcho and its 12 processes

        def submit(name: str, user_id: str) -> requests.Response:
            return requests.post(
                f"{api}/v1/score?wait=30",
                files={"image": (name, (photos / name).read_bytes(), "image/jpeg")},
                data={"user_id": user_id},
                headers={"X-API-Key": key},
                timeout=60,
            )

        submitted = submit("obama.jpg", "u-stack").json()
        view = _until(
            lambda: (
                (
                    v := requests.get(
                        api + submitted["status_url"], headers={"X-API-Key": key}, timeout=5
                    ).json()
                )["state"]
                in ("done", "failed")
                and v
            ),
            180,
            "the job through the stack",
        )
        assert view["state"] == "done" and view["result"]["status"] == "scored", view
        assert view["result"]["source"] == "service"  # through the ML services it started

        flower = f"http://127.0.0.1:{ports['FLOWER_PORT']}"
        user, password = creds["FLOWER_BASIC_AUTH"].split(":", 1)
        assert requests.get(f"{flower}/api/tasks", timeout=10).status_code == 401
        _until(lambda: requests.get(f"{flower}/healthcheck", timeout=5).ok, 60, "Flower up")
        time.sleep(2)  # its event receiver is subscribed
        again_job = submit("biden.jpg", "u-stack-2")
        assert again_job.json()["state"] == "done", again_job.text
        seen = _until(
            lambda: requests.get(f"{flower}/api/tasks", auth=(user, password), timeout=10).json(),
            30,
            "Flower to have seen the job's tasks",
        )
        assert {t["name"] for t in seen.values()} >= {"aurum_ml.detect", "aurum_ml.store"}
        # #24: task events carry no user id, face, score or match: Flower keeps none
        shown = json.dumps(seen)
        assert "u-stack" not in shown and "matches" not in shown and "landmarks" not in shown
        ended = [t for t in seen.values() if t.get("state") == "SUCCESS"]
        assert ended and all(str(t.get("result")).startswith("<") for t in ended), ended
        assert {"<job=" + again_job.json()["job_id"] + " status=scored>"} <= {
            str(t.get("result")) for t in ended
        }
        # every metric the alerts and the dashboard read is served, live: the exporter,
        # Flower and the API (after a re-rank, so its time and the score quantiles exist)
        rerank = subprocess.run(
            [str(ROOT / ".venv/bin/aurum-ml"), "rerank"], env=env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert rerank.returncode == 0 and "re-ranked 2 faces" in rerank.stdout, rerank.stderr
        exporter = f"http://127.0.0.1:{ports['METRICS_PORT']}/metrics"
        _until(lambda: "aurum_service_up{" in requests.get(exporter, timeout=30).text, 90,
               "beat's first health probe in the exporter")  # fmt: skip
        served: set[str] = set()
        for port in (ports["METRICS_PORT"], ports["FLOWER_PORT"], ports["API_PORT"]):
            page = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
            assert page.ok, (port, page.status_code)
            served |= served_metric_names(page.text)
        assert used_metric_names() - served == set()

        pid = (tmp_path / "stack" / "honcho.pid").read_text()
        again = run("up")
        assert "already up" in again.stdout
        assert (tmp_path / "stack" / "honcho.pid").read_text() == pid  # no second stack
    finally:
        down = run("down")
        client.flushdb()
    assert "down" in down.stdout, down.stdout + down.stderr
    assert not any(_listening(int(port)) for port in ports.values())
    _until(lambda: not _processes_of(str(tmp_path / "data")), 15, "every process gone")
    assert "not running" in run("down").stdout
