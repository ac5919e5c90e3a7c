"""A population that grows: the score and store stages, the same-person search, the
re-rank, start-up and disk at 1 000, 100 000 and 1 000 000 stored faces on a local folder
(Qdrant Edge), beside qdrant-client's local mode (the engine before it) at 1 000 and
10 000.

    python bench/population.py [--quick]      # --quick: Edge at 1 000 and 100 000

Filler faces are generated vectors around a common centre (as dlib embeddings share one),
each size in a folder of its own (in a probe, a folder grown from 100 000 to 975 000 faces
in one step, its segments merged by the engine, found 0.5 of the planted pairs against 0.9
for the same faces indexed at once), loaded through the vector store's batch path and indexed
(Edge: ``optimize``); 2.5 % more
arrive after the index build, and the hourly re-rank places them all and indexes the new
ones; then real jobs — a real photo's detected face and embedding, under
new job ids and users — run through the real score and store stages. Recall: of 20
planted people with two faces a same-person distance apart, the share the search finds.
Memory: how far the process's anonymous memory (heap, buffers) rose during the re-rank,
sampled every 10 ms, and the resident size after it (the engine's own memory). Not a
test: medians measured in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

CENTRE = np.random.default_rng(7).normal(size=128) * 0.08
MONTH_AGO = time.time() - 30 * 86400  # filler is old: a start-up restores no cached result
ARRIVED = 0.025  # share of each size's faces stored after its index build (the hourly upkeep)


def _load(store, start: int, stop: int, batch: int = 2000) -> float:
    rng = np.random.default_rng(start)
    began = time.perf_counter()
    for first in range(start, stop, batch):
        count = min(batch, stop - first)
        vectors = (CENTRE + rng.normal(scale=0.05, size=(count, 128))).astype(np.float32)
        store.upsert_many(
            [
                (
                    str(uuid.UUID(int=first + i + 1)),
                    vectors[i],
                    {"user_id": f"filler-{first + i}", "job_id": f"filler-{first + i}",
                     "image_sha256": "f", "stored_at": MONTH_AGO},
                )
                for i in range(count)
            ]
        )  # fmt: skip
    return time.perf_counter() - began


def _jobs(runtime, template, vector, n: int, tag: str):
    """n jobs as the embed stage leaves them: the face, quality, the vector in Redis."""
    for i in range(n):
        job = template.model_copy(
            update={"job_id": f"bench-{tag}-{i}", "user_id": f"bench-{tag}-{i}", "epoch": 0}
        )
        runtime.state.put_image(job.image_sha256, b"x", job.job_id)
        runtime.state.put_embedding(job.job_id, vector)
        yield job


def _plant_pairs(store, n: int = 20) -> list[tuple[np.ndarray, str]]:
    """``n`` people with two faces each under two users, 0.3–0.4 apart (a same-person
    distance); returns each second face with the first face's point id."""
    rng = np.random.default_rng(5)
    pairs, points = [], []
    for i in range(n):
        first = (CENTRE + rng.normal(scale=0.05, size=128)).astype(np.float32)
        step = rng.normal(size=128)
        second = (first + step / np.linalg.norm(step) * rng.uniform(0.3, 0.4)).astype(np.float32)
        pid = str(uuid.UUID(int=(1 << 64) + i))
        payload = {"user_id": f"pair-a-{i}", "job_id": f"pair-{i}", "image_sha256": "p",
                   "stored_at": MONTH_AGO}  # fmt: skip
        points.append((pid, first, payload))
        pairs.append((second, pid))
    store.upsert_many(points)
    return pairs


def _recall(store, pairs: list[tuple[np.ndarray, str]]) -> float:
    """Share of the planted same-person faces the indexed search finds within 0.6."""
    found = [
        pid in {h[0] for h in store.nearest_others(second, "someone", 10, 0.6)}
        for second, pid in pairs
    ]
    return float(np.mean(found))


def _status_mb(field: str) -> float:
    """A size from /proc/self/status: ``VmRSS`` (resident), ``RssAnon`` (its anonymous part:
    heap and buffers, not the mapped files)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb() -> float:
    return _status_mb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _anon_mb() -> float:
    return _status_mb("RssAnon")


@contextlib.contextmanager
def _anon_growth(every_s: float = 0.01):
    """Yields a dict whose ``mb`` is, on exit, how far the anonymous resident memory rose
    above its level at entry (sampled every ``every_s``). Not the resident size: reading a
    memory-mapped vector file adds its pages to that, and the kernel can drop them."""
    out, done = {"mb": 0.0}, threading.Event()
    start, peak = _anon_mb(), [0.0]

    def sample() -> None:
        while not done.wait(every_s):
            peak[0] = max(peak[0], _anon_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        done.set()
        sampler.join()
        out["mb"] = max(peak[0], _anon_mb()) - start


def _disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="Edge at 1 000 and 100 000 only")
    parser.add_argument("--samples", type=int, default=25)
    args = parser.parse_args()
    edge_sizes = (1_000, 100_000) if args.quick else (1_000, 100_000, 1_000_000)
    local_sizes = () if args.quick else (1_000, 10_000)

    from redisdb import CLAIM_KEY, claim_redis_db

    from photos import fetch
    from report import write_section

    broker = os.environ.get("AURUM_BENCH_REDIS") or claim_redis_db()
    folder = Path(tempfile.mkdtemp(prefix="aurum-bench-pop-"))
    os.environ.update(AURUM_BROKER_URL=broker, QDRANT_PATH=str(folder / "edge"),
                      COOLDOWN_DAYS="0", RERANK_BATCH="2000")  # fmt: skip
    import redis

    client = redis.Redis.from_url(broker)
    client.flushdb()
    client.set(CLAIM_KEY, os.getpid(), ex=7200)

    from aurum_ml.pipeline.imaging import decode_image
    from aurum_ml.pipeline.runtime import get_runtime
    from aurum_ml.pipeline.stages.detect import detection_of
    from aurum_ml.population.index import ScoreIndex
    from aurum_ml.population.rerank import rerank
    from aurum_ml.population.vectors import VectorStore
    from aurum_ml.population.vibes import reference_from
    from aurum_ml.schemas import Job
    from aurum_ml.surfaces.embedded import restore

    base_runtime = get_runtime()
    photo = (fetch() / "obama.jpg").read_bytes()
    image_job = Job(job_id="t", status="pending", user_id="t", image_sha256="b" * 64,
                    submitted_at=time.time())  # fmt: skip
    base_runtime.state.put_image(image_job.image_sha256, photo, "t")
    detected = base_runtime.detect(image_job, base_runtime.local)
    vector = base_runtime.local.embed_image(
        decode_image(photo, base_runtime.settings), detection_of(detected.face)
    )
    template = detected.model_copy(update={"source": "local"})
    rows: list[dict] = []
    began = time.perf_counter()
    # the vibe reference, frozen before any filler is stored, as a deployment's is from its
    # first VIBE_REFERENCE_MIN_FACES faces on: no re-rank then rewrites the filler's
    # payloads (the first freeze on a population that arrived all at once would)
    sample = CENTRE + np.random.default_rng(11).normal(scale=0.05, size=(5_000, 128))
    vibe_reference = reference_from(sample / np.linalg.norm(sample, axis=1, keepdims=True), True)

    def new_store(engine: str, name: str) -> VectorStore:
        """A vector store of ``engine`` ("edge" or "local mode") in its own folder."""
        name = name.replace(" ", "-")
        settings = base_runtime.settings.model_copy(update={"qdrant_path": folder / name})
        kind = "edge" if engine == "edge" else "client"
        return VectorStore(settings, base_runtime.local.model, base_runtime.local.dim, kind)

    def reference(engine: str, runtime):
        """A second population of 1 000 in a folder and score index of its own: each job on
        the measured population is paired with one on it, so the ratio compares the two
        in the same minute (the machine's speed drifts over a 20-minute run)."""
        store = new_store(engine, f"ref-{engine}")
        _load(store, 0, 1_000)
        store.optimize()
        name = f"bench-reference-{engine.replace(' ', '-')}"
        index = ScoreIndex(runtime.index.redis, name, runtime.local.dim)
        index.clear()
        paired = dataclasses.replace(runtime, vectors=store, index=index)
        rerank(paired)
        return paired

    def timed(runtime, job):
        """score, same-person search, store (ms) of one job, and its result."""
        t0 = time.perf_counter()
        scored = runtime.score(job)
        t1 = time.perf_counter()
        runtime.vectors.nearest_others(vector, job.user_id, limit=10, max_distance=0.6)
        t2 = time.perf_counter()
        out = runtime.store(scored)
        t3 = time.perf_counter()
        assert out.status == "scored", out
        return (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000, out

    def measure(engine: str, sizes) -> None:
        """Each size in a folder of its own, indexed at once as an import indexes it (a
        folder grown tenfold in one step searches worse: the module docstring)."""
        paired = reference(engine, base_runtime)
        for size in sizes:
            store = new_store(engine, f"{engine}-{size}")
            runtime = dataclasses.replace(base_runtime, vectors=store)
            pairs = _plant_pairs(store)
            row: dict = {"engine": engine, "faces": size}
            indexed = size - max(1, round(size * ARRIVED))
            row["load_s"] = _load(store, 0, indexed)
            started = time.perf_counter()
            store.optimize()
            row["build_s"] = time.perf_counter() - started
            row["load_s"] += _load(store, indexed, size)  # stored since the index build
            runtime.index.clear()  # every face is placed by the hourly re-rank's rebuild
            runtime.index.freeze_vibe_reference(vibe_reference)
            with _anon_growth() as growth:
                started = time.perf_counter()
                report = rerank(runtime)  # the hourly one: places all, indexes the new faces
                row["rerank_s"] = time.perf_counter() - started
            row["rerank_index_s"] = report.index_seconds
            row["peak_mb"] = growth["mb"]
            row["rss_mb"] = _rss_mb()
            score_ms, store_ms, search_ms, ref_ms = [], [], [], []
            tag = f"{engine}{size}"
            for job, twin in zip(
                _jobs(runtime, template, vector, args.samples, tag),
                _jobs(paired, template, vector, args.samples, f"ref-{tag}"),
                strict=True,
            ):
                score, search, stored, out = timed(runtime, job)
                score_ms.append(score)
                search_ms.append(search)
                store_ms.append(stored)
                ref_score, _, ref_store, _ = timed(paired, twin)
                ref_ms.append(ref_score + ref_store)
            row["score_ms"] = statistics.median(score_ms)
            row["store_ms"] = statistics.median(store_ms)
            row["search_ms"] = statistics.median(search_ms)
            row["ratio"] = statistics.median(
                a + b for a, b in zip(score_ms, store_ms, strict=True)
            ) / statistics.median(ref_ms)
            row["recall"] = _recall(store, pairs)
            started = time.perf_counter()  # an erasure: the point goes, and off the disk
            store.delete([out.point_id])
            row["erase_s"] = time.perf_counter() - started
            store.close()
            started = time.perf_counter()  # start-up: open the folder, first search
            store.nearest_others(vector, "nobody", limit=10)
            row["open_s"] = time.perf_counter() - started
            started = time.perf_counter()
            restore(runtime)  # the embedded default's start: index rebuilt from the folder
            row["restore_s"] = time.perf_counter() - started
            row["disk_mb"] = _disk_mb(Path(store.where))
            store.close()
            shutil.rmtree(store.settings.qdrant_path, ignore_errors=True)
            rows.append(row)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()},
                  flush=True)  # fmt: skip
        paired.vectors.close()
        paired.index.clear()

    try:
        measure("edge", edge_sizes)
        if local_sizes:
            measure("local mode", local_sizes)
    finally:
        client.flushdb()
        shutil.rmtree(folder, ignore_errors=True)
    total_min = (time.perf_counter() - began) / 60

    lines = [
        "Generated filler faces, each size in a folder of its own, loaded in batches of "
        "2 000, indexed (Edge: `optimize`, "
        "HNSW m 32 over int8 copies, searched with ef 256 and re-scored on the full "
        f"vectors); {ARRIVED:.1%} more stored after the build, and the vibe reference frozen "
        "before any filler (as a deployment's is from its first faces on). Then real jobs "
        f"(obama.jpg's face and embedding, new users) through the score and store stages "
        f"({args.samples} each, medians), each paired with a job on a second population of "
        "1 000 faces (its own folder and score index) run right after it: score+store × at "
        "1 000 is the ratio of the two medians, measured in the same minutes. The same-person "
        "search is top 10 of other users' "
        "faces within 0.6; its recall: of 20 planted people with two faces 0.3–0.4 apart "
        "under two users, the share whose other face it finds (local mode searches "
        "exactly). Re-rank = the hourly one (batch 2 000): every face placed in a new score "
        f"index and the {ARRIVED:.1%} stored since the build indexed (in brackets: that "
        "index upkeep, during which the store worker's other threads wait); its memory: how "
        "far the process's anonymous memory (heap and buffers, not mapped files) rose "
        "during it, sampled every 10 ms, and the "
        "process's resident size after it (RSS: the engine's indexes and the benchmark's "
        "own). "
        "Start-up = opening "
        "the folder and a first search; erase = deleting one face, which rewrites the "
        "segment that held it (Edge; local mode deletes its SQLite row); "
        "restore = the embedded default's start (the score index rebuilt from the folder). "
        f"This run took {total_min:.1f} min.",
        "",
        "| engine | faces | search p50 | same-person recall | score p50 | store p50 | "
        "score+store × at 1 000 | index build | re-rank | re-rank memory | RSS | "
        "start-up | restore | erase | disk |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        recall = f"{r['recall']:.2f}"
        build = f"{r['build_s']:.1f} s" if r["engine"] == "edge" else "—"
        lines.append(
            f"| {r['engine']} | {r['faces']:,} | {r['search_ms']:.1f} ms | {recall} | "
            f"{r['score_ms']:.1f} ms | {r['store_ms']:.1f} ms | "
            f"{r['ratio']:.2f} | {build} | "
            f"{r['rerank_s']:.1f} s ({r['rerank_index_s']:.1f} s) | {r['peak_mb']:.0f} MB | "
            f"{r['rss_mb']:.0f} MB | "
            f"{r['open_s']:.2f} s | {r['restore_s']:.1f} s | {r['erase_s']:.2f} s | "
            f"{r['disk_mb']:.0f} MB |"
        )
    write_section("population", "A growing population (`make bench-population`)", lines)


if __name__ == "__main__":
    main()
