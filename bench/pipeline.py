"""Benchmark of the whole chain against the raw model loop, on the same photos.

    python bench/pipeline.py [--jobs 60]

- raw: detect + embed in one process, one photo after another (the model's own ceiling);
- chain: `score_face` through real Redis and real worker processes (detect/embed/score on a
  prefork pool of 2, store on its own single-thread worker, as with a local Qdrant folder),
  all jobs submitted at once: faces/s, and the median / p95 of each stage and of the total.

Not a test: reports medians and ratios measured in one run. Uses Redis database 13.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

BROKER = os.environ.get("AURUM_BENCH_REDIS", "redis://127.0.0.1:6379/13")
PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))]


def _raw(photos: Path, rounds: int) -> float:
    from aurum_ml.backends.local import LocalFaceModel
    from aurum_ml.settings import Settings

    model = LocalFaceModel(Settings())
    model.warm_up()
    data = [(photos / name).read_bytes() for name in PHOTOS]
    started = time.perf_counter()
    for i in range(rounds):
        blob = data[i % len(data)]
        model.embed(blob, model.detect(blob)[0])
    return rounds / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=60)
    args = parser.parse_args()

    from photos import fetch
    from report import write_section

    photos = fetch()
    raw_rate = _raw(photos, rounds=20)
    folder = Path(tempfile.mkdtemp(prefix="aurum-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AURUM_", "QDRANT_"))}
    env.update(AURUM_BROKER_URL=BROKER, QDRANT_PATH=str(folder / "qdrant"), COOLDOWN_DAYS="0")
    os.environ.update(env)  # this process submits with the same settings

    import redis

    redis.Redis.from_url(BROKER).flushdb()
    celery = str(Path(sys.executable).parent / "celery")
    workers = [
        subprocess.Popen(
            [
                celery,
                "-A",
                "aurum_ml",
                "worker",
                "-Q",
                queues,
                "-c",
                str(c),
                "-P",
                pool,
                "-n",
                f"{name}@%h",
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                "WARNING",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for name, queues, c, pool in (
            ("stages", "detect,embed,score", 2, "prefork"),
            ("store", "store,maintenance", 1, "threads"),
        )
    ]
    try:
        from aurum_ml.tasks import score_face

        images = [base64.b64encode((photos / n).read_bytes()).decode() for n in PHOTOS]
        warm = [score_face.delay(images[i % 4], user_id=f"warm-{i}") for i in range(4)]
        for job in warm:  # loads the models in every worker process
            job.get(timeout=120)
        started = time.perf_counter()
        jobs = [score_face.delay(images[i % 4], user_id=f"bench-{i}") for i in range(args.jobs)]
        results = [job.get(timeout=600) for job in jobs]
        wall = time.perf_counter() - started
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(60)
        shutil.rmtree(folder, ignore_errors=True)
        redis.Redis.from_url(BROKER).flushdb()

    assert all(r["status"] == "scored" for r in results), "every bench job must score"
    rate = args.jobs / wall
    rows = []
    for stage in ("detect", "embed", "score", "store", "total"):
        values = [r["timings_ms"][stage] for r in results]
        rows.append(f"| {stage} | {statistics.median(values):.0f} | {_p95(values):.0f} |")
    lines = [
        f"Photos: {', '.join(PHOTOS)} in turn (0.9–3.3 MP JPEGs); {args.jobs} jobs submitted at "
        f"once to real Redis; workers: detect/embed/score on a prefork pool of 2, store on one "
        f"thread (local Qdrant folder). Machine: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}.",
        "",
        "| | faces/s | × raw loop |",
        "|---|---:|---:|",
        f"| raw loop (detect + embed, 1 process) | {raw_rate:.1f} | 1.00 |",
        f"| full chain (Celery, Redis, Qdrant) | {rate:.1f} | {rate / raw_rate:.2f} |",
        "",
        f"The chain runs 2 model processes on the 2 cores: {rate / 2:.1f} faces/s each, "
        f"{rate / 2 / raw_rate:.0%} of the raw loop's rate (the rest: decoding the image in "
        "each stage, quality, Redis, Qdrant, and the Celery round trips on the same cores).",
        "",
        "Per job (ms); `total` includes queue waits, so with every job submitted at once it",
        "grows with the backlog:",
        "",
        "| stage | median | p95 |",
        "|---|---:|---:|",
        *rows,
    ]
    write_section("pipeline", "The whole chain vs the raw model loop (`make bench`)", lines)


if __name__ == "__main__":
    main()
