"""Benchmark of the whole chain against the raw model loop, on the same photos, the same
number of processes, in one run.

    python bench/pipeline.py [--jobs 60] [--quick]

- raw: the plain library loop a user would write, on 2 processes (a multiprocessing pool):
  decode the file, HOG on a ≤ DETECT_MAX_SIDE copy, 5 landmarks, dlib's ResNet descriptor
  on the full image — one decode per photo; and the same loop with the descriptor on ONNX
  Runtime (what the chain runs), to show what the chain itself costs or saves;
- chain: ``score_face`` through real Redis and real worker processes (detect/embed/score on a
  prefork pool of 2, store on its own single-thread worker, as with a local Qdrant folder),
  with detect/embed/score in intake's task (the default for stages sharing a worker) and
  with a message per stage (``INLINE_LOCAL_STAGES=false``): saturated (jobs submitted at
  once, in blocks alternating with the raw loop's: faces/s) and at low load (one job at a
  time: p50 end to end), and the median / p95 of each stage.

Both on the test photos at their real sizes (0.9–3.3 MP) and resized to 640 px. Not a test:
reports medians and ratios measured in one run. Uses a Redis
database of its own (tests/redisdb.py), emptied at the end.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")
PROCESSES = 2
BLOCKS = 3  # saturated blocks of each way, alternating


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))]


_models: dict[str, object] = {}


def _raw_one(blob: bytes, engine: str = "dlib") -> float:
    """One photo the plain way: decode once, detect, landmarks, descriptor (``engine``:
    dlib's own, or the chain's ONNX Runtime one)."""
    from aurum_ml.pipeline.backends.local import LocalFaceModel
    from aurum_ml.pipeline.imaging import decode_image
    from aurum_ml.settings import Settings

    model = _models.get(engine)
    if model is None:  # the plain library search: the whole HOG pyramid, no coarse pass
        model = LocalFaceModel(Settings(DETECT_COARSE_LEVELS=0, EMBED_ENGINE=engine))
        model.warm_up()
        _models[engine] = model
    assert isinstance(model, LocalFaceModel)
    started = time.perf_counter()
    image = decode_image(blob, model.settings)
    face = model.detect_image(image)[0]
    model.embed_image(image, face)
    return time.perf_counter() - started


def _raw_onnx(blob: bytes) -> float:
    return _raw_one(blob, "onnx")


def _resized(photos: Path, side: int) -> list[bytes]:
    out = []
    for name in PHOTOS:
        image = cv2.imread(str(photos / name))
        scale = side / max(image.shape[:2])
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        out.append(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes())
    return out


def photo_sets(photos: Path) -> dict[str, list[bytes]]:
    """The bench photos at their real sizes and resized to 640 px."""
    return {
        "real size (0.9–3.3 MP)": [(photos / n).read_bytes() for n in PHOTOS],
        "640 px": _resized(photos, 640),
    }


def bench_env(prefix: str) -> tuple[dict[str, str], Path, Any]:
    """A Redis database of the bench's own (claimed and emptied: tests/redisdb.py) and a
    throw-away folder for the local Qdrant folder: the workers' environment, also set in
    this process (it submits with the same settings), the folder and a Redis client."""
    import redis
    from redisdb import CLAIM_KEY, claim_redis_db

    broker = os.environ.get("AURUM_BENCH_REDIS") or claim_redis_db()
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AURUM_", "QDRANT_"))}
    env.update(AURUM_BROKER_URL=broker, QDRANT_PATH=str(folder / "qdrant"), COOLDOWN_DAYS="0")
    os.environ.update(env)
    client = redis.Redis.from_url(broker)
    client.flushdb()
    client.set(CLAIM_KEY, os.getpid(), ex=7200)  # still ours after the flush
    return env, folder, client


def workers(env: dict[str, str], store_queues: str = "store,maintenance") -> list[subprocess.Popen]:
    """The benchmarks' workers: detect/embed/score on a prefork pool of PROCESSES, the store
    (and ``store_queues``) on one thread, as with a local Qdrant folder."""
    celery = str(Path(sys.executable).parent / "celery")
    return [
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
            ("stages", "detect,embed,score", PROCESSES, "prefork"),
            ("store", store_queues, 1, "threads"),
        )
    ]


def _both(pool, blobs: list[bytes], jobs: int, rounds: int, low_load: int, tag: str) -> dict:
    """The raw loop and the chain on the same photos, saturated, in alternating blocks
    (BLOCKS of each): the machine's speed drifts over the minutes of a run (±25 % seen
    here), and alternating puts that drift on both alike. Then the chain one job at a
    time."""
    from aurum_ml.pipeline.tasks import score_face

    images = [base64.b64encode(b).decode() for b in blobs]
    pool.map(_raw_one, blobs * PROCESSES)  # warm: models loaded in both
    pool.map(_raw_onnx, blobs * PROCESSES)
    warm = [score_face.delay(images[i % 4], user_id=f"warm-{tag}-{i}") for i in range(4)]
    for job in warm:  # loads the models in every worker process
        job.get(timeout=120)
    raw_s = chain_s = onnx_s = 0.0
    raw_times: list[float] = []
    onnx_times: list[float] = []
    results: list[dict] = []
    for block in range(BLOCKS):
        photos = [blobs[i % len(blobs)] for i in range(rounds // BLOCKS)]
        started = time.perf_counter()
        raw_times += pool.map(_raw_one, photos, chunksize=1)
        raw_s += time.perf_counter() - started
        started = time.perf_counter()
        onnx_times += pool.map(_raw_onnx, photos, chunksize=1)
        onnx_s += time.perf_counter() - started
        started = time.perf_counter()
        sent = [
            score_face.delay(images[i % 4], user_id=f"sat-{tag}-{block}-{i}")
            for i in range(jobs // BLOCKS)
        ]
        results += [job.get(timeout=600) for job in sent]
        chain_s += time.perf_counter() - started
    assert all(r["status"] == "scored" for r in results), "every bench job must score"
    one_by_one = []
    for i in range(low_load):
        started = time.perf_counter()
        out = score_face.delay(images[i % 4], user_id=f"low-{tag}-{i}").get(timeout=120)
        assert out["status"] == "scored", out
        one_by_one.append(time.perf_counter() - started)
    return {
        "raw_rate": len(raw_times) / raw_s,
        "raw_p50": statistics.median(raw_times),
        "onnx_rate": len(onnx_times) / onnx_s,
        "onnx_p50": statistics.median(onnx_times),
        "rate": len(results) / chain_s,
        "low_p50": statistics.median(one_by_one),
        "results": results,
    }


_IMPORT = """
import json, sys, time
started = time.perf_counter()
import aurum_ml.client as client
imported = time.perf_counter() - started
client.Caller(client.CallerSettings("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0",
                                    "redis://127.0.0.1:6379/0"))
print(json.dumps([imported, time.perf_counter() - started - imported]))
"""
_FULL_IMPORT = """
import json, time
started = time.perf_counter()
import aurum_ml.pipeline.tasks
print(json.dumps(time.perf_counter() - started))
"""


def import_times(runs: int = 7) -> dict[str, float]:
    """Median seconds, each in a fresh interpreter: ``import aurum_ml.client`` in a venv
    with only celery[redis] (tests/thin_venv.py), what its first submission adds (celery
    and redis-py imported, the publisher built), and ``import aurum_ml.pipeline.tasks`` with the
    whole package."""
    from thin_venv import thin_python

    thin = str(thin_python())
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PYTHONNOUSERSITE": "1"}
    client, first, full = [], [], []
    for _ in range(runs):
        out = subprocess.run([thin, "-c", _IMPORT], env=env, capture_output=True, text=True,
                             check=True)  # fmt: skip
        a, b = (float(x) for x in out.stdout.strip().strip("[]").split(","))
        client.append(a)
        first.append(b)
        out = subprocess.run([sys.executable, "-c", _FULL_IMPORT], capture_output=True,
                             text=True, check=True)  # fmt: skip
        full.append(float(out.stdout))
    return {
        "client": statistics.median(client),
        "first": statistics.median(first),
        "full": statistics.median(full),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="fewer jobs (a smoke run)")
    args = parser.parse_args()
    jobs, low, rounds = (12, 4, 12) if args.quick else (args.jobs, 12, 42)

    from photos import fetch
    from report import write_section

    imports = import_times()
    sets = photo_sets(fetch())
    env, folder, client = bench_env("aurum-bench-")
    layouts = {  # the workers' settings
        "one task": {"INLINE_LOCAL_STAGES": "true"},
        "a message per stage": {"INLINE_LOCAL_STAGES": "false"},
        "one task, dlib's descriptor": {"INLINE_LOCAL_STAGES": "true", "EMBED_ENGINE": "dlib"},
    }
    chains: dict[str, dict] = {}
    try:
        for n, (layout, overrides) in enumerate(layouts.items()):
            started = workers(env | overrides)
            try:
                with multiprocessing.get_context("fork").Pool(PROCESSES) as pool:
                    chains[layout] = {
                        label: _both(pool, blobs, jobs, rounds, low, f"{n}{i}")
                        for i, (label, blobs) in enumerate(sets.items())
                    }
            finally:
                for worker in started:
                    worker.terminate()
                for worker in started:
                    worker.wait(60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        client.flushdb()

    from aurum_ml.settings import Settings

    lines = [
        f"Photos: {', '.join(PHOTOS)} in turn, at their real sizes and resized to 640 px. Both "
        f"ways on {PROCESSES} processes on the same {os.cpu_count()} cores, in one run, "
        f"saturated in {BLOCKS} alternating blocks of each (the machine's speed drifts). "
        "Raw loop: "
        "decode once, HOG over its whole pyramid on a ≤ 1280 px copy, 5 landmarks, dlib's "
        f"descriptor (a multiprocessing pool of {PROCESSES}); raw loop, ONNX: the same loop "
        "with the descriptor on ONNX Runtime, as the chain runs it (EMBED_ENGINE=onnx), so the "
        "last ratio is what the chain itself adds or saves. Chain (detection coarse to fine, "
        f"DETECT_COARSE_LEVELS={Settings().detect_coarse_levels}): `score_face` through real "
        "Redis (the image stored by the caller, the message naming it), detect/embed/score on a "
        f"prefork pool of {PROCESSES}, store on one thread (local Qdrant folder); detect, embed "
        "and score in intake's task (the default when one worker runs them in-process), a "
        "message per stage (INLINE_LOCAL_STAGES=false), or in one task with dlib's own "
        "descriptor (EMBED_ENGINE=dlib: the chain before ONNX Runtime); saturated = "
        f"{jobs // BLOCKS} jobs submitted at once per block ({jobs} in all), low load = one job "
        "at a time. Python "
        f"{platform.python_version()}.",
        "",
        "| photos | stages | raw loop faces/s | chain faces/s | × raw | raw s/photo (p50) | "
        "chain one job at a time (p50) | − raw | raw loop, ONNX faces/s | chain × that |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in sets:
        for layout, chain in chains.items():
            c = chain[label]
            rate, per_photo = c["raw_rate"], c["raw_p50"]
            lines.append(
                f"| {label} | {layout} | {rate:.1f} | {c['rate']:.1f} | {c['rate'] / rate:.2f} | "
                f"{per_photo * 1000:.0f} ms | {c['low_p50'] * 1000:.0f} ms | "
                f"{(c['low_p50'] - per_photo) * 1000:+.0f} ms | {c['onnx_rate']:.1f} | "
                f"{c['rate'] / c['onnx_rate']:.2f} |"
            )
    before, after = "one task, dlib's descriptor", "one task"
    lines += [
        "",
        "Per stage at saturation, real-size photos, one task, before (dlib's descriptor) and",
        "after (ONNX Runtime's), ms; `total` counts from intake, so it includes the wait for",
        "the store stage:",
        "",
        "| stage | before: median | p95 | after: median | p95 |",
        "|---|---:|---:|---:|---:|",
    ]
    first = next(iter(sets))
    for stage in ("detect", "embed", "score", "store", "total"):
        cells = []
        for layout in (before, after):
            values = [r["timings_ms"][stage] for r in chains[layout][first]["results"]]
            cells += [f"{statistics.median(values):.0f}", f"{_p95(values):.0f}"]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The thin caller (`from aurum_ml.client import score_face`, in a venv with only "
        "celery[redis]), median of 7 fresh interpreters: its import "
        f"{imports['client'] * 1000:.0f} ms; its first submission adds "
        f"{imports['first'] * 1000:.0f} ms once (celery and redis-py imported, the publisher "
        f"built). `import aurum_ml.tasks` with the whole package: {imports['full'] * 1000:.0f} ms.",
    ]
    write_section("pipeline", "The whole chain vs the raw model loop (`make bench`)", lines)


if __name__ == "__main__":
    main()
