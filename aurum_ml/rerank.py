"""Re-rank: recompute every face's typicality against today's centroid, so rankings converge.

Placing a new face is O(log N) because it compares against stored typicalities, which were
computed against the centroid of their day. The re-rank (beat-scheduled on the maintenance
queue, ``RERANK_INTERVAL``) reads every vector from Qdrant in batches, recomputes the
centroid, the typicalities, the scores (midrank percentiles) and the vibe tags, swaps the
new index into Redis atomically and writes the new scores into the Qdrant payloads. It also
rebuilds a lost index (Redis flushed) from Qdrant, and the embedded default runs it at start.

Memory: the unit embeddings are held as float64 (so near-ties rank exactly as a fresh
computation ranks them), 1 KiB a face: 100 k faces ≈ 100 MB.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from aurum_ml.index import midrank_percentiles, score_of, unit
from aurum_ml.runtime import Runtime
from aurum_ml.vibes import reference_from, vibes_of

__all__ = ["RerankReport", "rerank", "summarize"]

_PERCENTILES = (10, 25, 50, 75, 90, 95, 99)


@dataclass(frozen=True)
class RerankReport:
    model: str
    faces: int
    seconds: float
    vibe_reference_frozen: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "faces": self.faces,
            "seconds": round(self.seconds, 3),
            "vibe_reference_frozen": self.vibe_reference_frozen,
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


def rerank(runtime: Runtime, update_payloads: bool = True) -> RerankReport:
    """Recompute and swap in the index of ``runtime``'s model; update the stored payloads'
    scores and vibes unless ``update_payloads`` is false (a start-up restore)."""
    started = time.perf_counter()
    settings, index, vectors = runtime.settings, runtime.index, runtime.vectors
    ids: list[str] = []
    rows: list[np.ndarray] = []
    for pid, vector, _ in vectors.points(batch=settings.rerank_batch):
        ids.append(pid)
        rows.append(unit(vector))
    scanned = dict(zip(ids, rows, strict=True))
    result: dict[str, Any] = {}

    def build(live: set[str]) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, Any]]:
        # Membership: what Qdrant held, less what was forgotten meanwhile, plus what was
        # stored into the live index after the scan, plus faces scored and not yet stored
        # (the store stage confirms them; a failed job withdraws them).
        gone = index.gone()
        late = sorted(live - scanned.keys() - gone)
        fetched = vectors.vectors_of(late)
        fetched |= index.pending_units(p for p in late if p not in fetched)
        members = [pid for pid in ids if pid not in gone] + [p for p in late if p in fetched]
        if not members:
            result.update(members=[], units=np.zeros((0, index.dim)), typ=np.zeros(0))
            return [], np.zeros((0, index.dim)), np.zeros(0), summarize(np.zeros(0), np.zeros(0))
        units = np.vstack([scanned[p] if p in scanned else unit(fetched[p]) for p in members])
        typicalities = units @ unit(units.sum(axis=0))
        scores = np.array([score_of(p) for p in midrank_percentiles(typicalities)])
        result.update(members=members, units=units, typ=typicalities, scores=scores)
        return members, units, typicalities, summarize(scores, typicalities)

    index.replace(build)
    members: list[str] = result["members"]
    frozen = False
    reference = None
    if members:
        units, typicalities, scores = result["units"], result["typ"], result["scores"]
        reference = index.vibe_reference()
        if reference is None or not reference.frozen:
            reference = reference_from(units)
            if len(members) >= settings.vibe_reference_min_faces:
                frozen = index.freeze_vibe_reference(reference)
                reference = index.vibe_reference() or reference
    if members and update_payloads and reference is not None:
        percentiles = midrank_percentiles(typicalities)
        # rank = 1 + the faces strictly more typical (as ScoreIndex.standing counts)
        ranks = (
            len(typicalities) - np.searchsorted(np.sort(typicalities), typicalities, "right") + 1
        )
        updates = [
            (
                pid,
                {
                    "score": float(scores[i]),
                    "percentile": round(float(percentiles[i]), 4),
                    "rank": int(ranks[i]),
                    "total_faces": len(members),
                    "typicality": round(float(typicalities[i]), 6),
                    "vibes": vibes_of(units[i], reference),
                },
            )
            for i, pid in enumerate(members)
        ]
        for start in range(0, len(updates), settings.rerank_batch):
            vectors.set_payloads(updates[start : start + settings.rerank_batch])
    return RerankReport(
        model=index.model,
        faces=len(members),
        seconds=time.perf_counter() - started,
        vibe_reference_frozen=frozen,
    )
