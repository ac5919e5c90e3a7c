"""Re-rank: recompute every face's typicality against today's centroid, so rankings converge.

Placing a new face is O(log N) because it compares against stored typicalities, which were
computed against the centroid of their day. The re-rank (beat-scheduled on the maintenance
queue, ``RERANK_INTERVAL``) reads every vector from Qdrant in batches, recomputes the
centroid, the typicalities, the scores (midrank percentiles) and the vibe tags, swaps the
new index into Redis atomically, writes changed vibe tags into the Qdrant payloads and
folds the faces stored since the last run into Qdrant's vector index. It also rebuilds a
lost index (Redis flushed) from Qdrant, and the embedded default runs it at start.

Memory: one batch of unit embeddings (float64: 1 KiB a face) and one float per face — 8 MB
at a million faces, where holding every vector took 1 GB. The sorted set itself lives in
Redis. The centroid is summed batch by batch, so its last bits may differ from a sum over
all rows at once: faces whose typicalities differ by less than ~1e-12 may swap places.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from aurum_ml.errors import StateUnavailable
from aurum_ml.index import midrank_percentiles, score_of, unit
from aurum_ml.runtime import Runtime
from aurum_ml.vibes import ReferenceMoments, vibes_of

__all__ = ["RerankReport", "rerank", "summarize"]

_ATTEMPTS = 3  # a face erased during the passes makes the re-rank run them again

_PERCENTILES = (10, 25, 50, 75, 90, 95, 99)


@dataclass(frozen=True)
class RerankReport:
    model: str
    faces: int
    seconds: float
    vibe_reference_frozen: bool
    payloads_updated: int = 0
    index_seconds: float = 0.0  # of ``seconds``: the vector index's upkeep (pauses the store)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "faces": self.faces,
            "seconds": round(self.seconds, 3),
            "vibe_reference_frozen": self.vibe_reference_frozen,
            "payloads_updated": self.payloads_updated,
            "index_seconds": round(self.index_seconds, 3),
        }


def summarize(scores: np.ndarray, typicalities: np.ndarray) -> dict[str, Any]:
    """Distribution of scores (0–100) and the typicality needed for the top 1/5/10 %."""
    if len(scores) == 0:
        return {"distribution": None, "thresholds": {}}
    distribution: dict[str, Any] = {
        "count": len(scores),
        "mean": round(float(scores.mean()), 2),
        "std": round(float(scores.std()), 2),
    }
    for p in _PERCENTILES:
        distribution[f"p{p}"] = round(float(np.percentile(scores, p)), 2)
    thresholds = {
        f"top_{p}pct": {
            "score": round(float(np.percentile(scores, 100 - p)), 1),
            "typicality": round(float(np.percentile(typicalities, 100 - p)), 6),
        }
        for p in (1, 5, 10)
    }
    return {"distribution": distribution, "thresholds": thresholds}


def _batches(
    runtime: Runtime, skip: set[str], with_payload: bool = False
) -> Iterator[tuple[list[str], np.ndarray, list[dict[str, Any]]]]:
    """The stored faces as (point ids, unit embeddings as float64 rows, payloads — empty
    dicts unless ``with_payload``), a batch at a time."""
    size = runtime.settings.rerank_batch
    ids: list[str] = []
    rows: list[np.ndarray] = []
    payloads: list[dict[str, Any]] = []
    for pid, vector, payload in runtime.vectors.points(batch=size, with_payload=with_payload):
        if pid in skip:
            continue
        ids.append(pid)
        rows.append(unit(vector))
        payloads.append(payload)
        if len(ids) == size:
            yield ids, np.vstack(rows), payloads
            ids, rows, payloads = [], [], []
    if ids:
        yield ids, np.vstack(rows), payloads


def rerank(runtime: Runtime, update_payloads: bool = True) -> RerankReport:
    """Recompute and swap in the index of ``runtime``'s model; update the stored payloads'
    vibe tags unless ``update_payloads`` is false (a start-up restore).

    Streamed, in up to three passes over Qdrant, so memory follows the batch
    (``RERANK_BATCH``), not the population — but for one float per face:
    1. the centroid (sum of unit embeddings) and the vibe reference's statistics;
    2. every typicality against that centroid, into a staging sorted set in Redis, swapped
       in atomically with the sum of exactly the rows staged (faces stored meanwhile keep
       theirs; faces erased meanwhile stay out), so the index's sum and count always
       match its members;
    3. with ``update_payloads``, until the vibe reference is frozen: each face's vibe tags,
       written to the payloads where they changed, a batch at a time; then the vector
       index is brought up to date. Scores and ranks are not written back: they are read
       live from the sorted set, and Qdrant rewrites (and un-indexes) every point whose
       payload changes, so a re-rank writing every face would rebuild the whole index.
    """
    started = time.perf_counter()
    settings, index, vectors = runtime.settings, runtime.index, runtime.vectors
    for _attempt in range(_ATTEMPTS):
        gone = index.gone()
        moments = ReferenceMoments(index.dim)
        for _, units, _ in _batches(runtime, gone):  # pass 1
            moments.add(units)
        total, count = moments.total, moments.count
        centroid = unit(total)
        index.stage_clear()
        chunks = []
        # the running sum swapped in is that of exactly the faces staged: a face stored
        # or erased between the passes is in pass 2's rows or not, never in one only
        staged_total, staged_count = np.zeros(index.dim), 0
        for ids, units, _ in _batches(runtime, gone):  # pass 2
            typicality = units @ centroid
            index.stage(ids, typicality)
            chunks.append(typicality)
            staged_total += units.sum(axis=0)
            staged_count += len(ids)
        typicalities = np.concatenate(chunks) if chunks else np.zeros(0)
        scores = np.array([score_of(p) for p in midrank_percentiles(typicalities)])
        stats = summarize(scores, typicalities)
        faces = index.swap_staged(staged_total, staged_count, stats, gone, vectors)
        if faces is not None:
            break
    else:  # erasures kept landing during the passes: leave the live index as it was
        index.stage_clear()
        raise StateUnavailable("the re-rank kept racing erasures; the next one will run")

    frozen = False
    reference = None
    tags_fixed = False  # a frozen reference never changes a face's tags: nothing to write
    if count:
        reference = index.vibe_reference()
        tags_fixed = reference is not None and reference.frozen
        if not tags_fixed:
            reference = moments.reference()
            if count >= settings.vibe_reference_min_faces:
                frozen = index.freeze_vibe_reference(reference)
                reference = index.vibe_reference() or reference
    changed = 0
    if count and update_payloads and reference is not None and not tags_fixed:
        for ids, units, payloads in _batches(runtime, gone | index.gone(), True):  # pass 3
            updates = []
            for i, pid in enumerate(ids):
                vibes = vibes_of(units[i], reference)
                if payloads[i].get("vibes") != vibes:
                    updates.append((pid, {"vibes": vibes}))
            vectors.set_payloads(updates)
            changed += len(updates)
    indexing = time.perf_counter()
    vectors.optimize()  # fold the faces stored since the last re-rank into the vector index
    index_s = time.perf_counter() - indexing
    return RerankReport(
        model=index.model,
        faces=faces,
        seconds=time.perf_counter() - started,
        vibe_reference_frozen=frozen,
        payloads_updated=changed,
        index_seconds=index_s,
    )
