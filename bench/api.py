"""Benchmark of the HTTP API against the Python call it wraps, on the same photos and workers.

    python bench/api.py [--jobs 40]

Both ways run in one run on the same workers (detect/embed/score on a prefork pool of 2, store
on one thread, local Qdrant folder, a Redis database of its own):

- one job at a time: ``score_face.delay().get()`` vs ``POST /v1/score?wait=30`` — the
  median wall time per job, and the API's added cost (difference of the medians);
- throughput: ``--jobs`` jobs in flight at once (the API from 8 client threads).

Not a test: reports medians and ratios measured in one run.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")
KEY = "bench-key-0123456789abcdef"


def _start(env: dict[str, str], port: int) -> list[subprocess.Popen]:
    from pipeline import workers

    processes = workers(env, "store,maintenance,notify")
    processes.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aurum_ml.surfaces.cli",
                "serve",
                "api",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
    )
    return processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--sequential", type=int, default=16)
    args = parser.parse_args()

    import redis
    import requests
    from chaos import free_port
    from redisdb import CLAIM_KEY, claim_redis_db

    from photos import fetch
    from report import write_section

    broker = os.environ.get("AURUM_BENCH_REDIS") or claim_redis_db()

    photos = fetch()
    folder = Path(tempfile.mkdtemp(prefix="aurum-bench-api-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AURUM_", "QDRANT_"))}
    env.update(
        AURUM_BROKER_URL=broker,
        QDRANT_PATH=str(folder / "qdrant"),
        COOLDOWN_DAYS="0",
        AURUM_API_KEYS=f"bench:{KEY}",
        AURUM_API_RATE_LIMIT="100000/minute",
    )
    os.environ.update(env)  # this process submits with the same settings
    redis.Redis.from_url(broker).flushdb()
    redis.Redis.from_url(broker).set(CLAIM_KEY, os.getpid(), ex=7200)  # still ours
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    processes = _start(env, port)
    session = requests.Session()
    session.headers["X-API-Key"] = KEY
    images = [base64.b64encode((photos / n).read_bytes()).decode() for n in PHOTOS]
    counter = iter(range(10**9))

    def by_delay() -> float:
        from aurum_ml.pipeline.tasks import score_face

        i = next(counter)
        started = time.perf_counter()
        out = score_face.delay(images[i % 4], user_id=f"b-{i}").get(timeout=120)
        assert out["status"] == "scored", out
        return time.perf_counter() - started

    def by_api(client: requests.Session = session) -> float:
        i = next(counter)
        started = time.perf_counter()
        body = {"image_base64": images[i % 4], "user_id": f"b-{i}"}
        r = client.post(f"{api}/v1/score?wait=30", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["result"]["status"] == "scored", r.text
        return time.perf_counter() - started

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if session.get(f"{api}/readyz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
        for _ in range(4):  # models loaded in every worker process, connections warm
            by_delay()
            by_api()
        delay_times, api_times = [], []
        for _ in range(args.sequential):  # interleaved: both see the same machine
            delay_times.append(by_delay())
            api_times.append(by_api())

        from aurum_ml.pipeline.tasks import score_face

        started = time.perf_counter()
        jobs = [score_face.delay(images[i % 4], user_id=f"t-{i}") for i in range(args.jobs)]
        assert all(j.get(timeout=600)["status"] == "scored" for j in jobs)
        delay_rate = args.jobs / (time.perf_counter() - started)

        clients = [requests.Session() for _ in range(8)]
        for client in clients:
            client.headers["X-API-Key"] = KEY
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: by_api(clients[i % 8]), range(args.jobs)))
        api_rate = args.jobs / (time.perf_counter() - started)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(60)
        shutil.rmtree(folder, ignore_errors=True)
        redis.Redis.from_url(broker).flushdb()

    d50, a50 = statistics.median(delay_times) * 1000, statistics.median(api_times) * 1000
    added = a50 - d50
    lines = [
        f"Photos: {', '.join(PHOTOS)} in turn; the same workers for both ways (detect/embed/"
        f"score on a prefork pool of 2, store on one thread, local Qdrant folder), real Redis, "
        f"`aurum-ml serve api` with 1 uvicorn worker. Machine: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}.",
        "",
        f"One job at a time ({args.sequential} each, interleaved), wall time per job:",
        "",
        "| way | p50 ms |",
        "|---|---:|",
        f"| `score_face.delay().get()` | {d50:.0f} |",
        f"| `POST /v1/score?wait=30` | {a50:.0f} |",
        f"| the API's added cost | {added:.0f} ({added / d50:+.1%} of the job) |",
        "",
        f"Throughput, {args.jobs} jobs in flight (the API from 8 client threads):",
        "",
        "| way | jobs/s | × delay |",
        "|---|---:|---:|",
        f"| `score_face.delay()` | {delay_rate:.2f} | 1.00 |",
        f"| HTTP API | {api_rate:.2f} | {api_rate / delay_rate:.2f} |",
        "",
        "Target: the API adds ≤ 10 % to the job time. What it adds: the HTTP round trip, "
        "JSON of a base64 image, the key check, the rate-limit hit and the job records in "
        "Redis, and polling the result backend while it waits (every 10 ms for half a "
        "second, then backing off to 250 ms).",
    ]
    write_section("api", "The HTTP API vs the Python call (`make bench-api`)", lines)


if __name__ == "__main__":
    main()
