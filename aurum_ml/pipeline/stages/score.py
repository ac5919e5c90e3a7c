"""score: quality (measured and gated), the face's place in the population, vibe tags."""

from __future__ import annotations

import time

import numpy as np

from aurum_ml.errors import ImageExpired
from aurum_ml.pipeline.quality import confidence, describe, gate
from aurum_ml.pipeline.state import PipelineState
from aurum_ml.population.index import ScoreIndex, score_of, unit
from aurum_ml.population.vectors import point_id
from aurum_ml.population.vibes import VibeReference, vibes_of
from aurum_ml.schemas import Job
from aurum_ml.settings import Settings


def score(job: Job, *, state: PipelineState, index: ScoreIndex, settings: Settings) -> Job:
    """Averageness percentile (0–100) among the stored faces of the same model; rejects as
    ``low_quality`` when the quality gate is on and the face fails it."""
    if job.status == "rejected" or job.face is None or job.model is None:
        return job
    started = time.perf_counter()
    vector = state.get_embedding(job.job_id)
    if vector is None:
        raise ImageExpired("the job's embedding is no longer stored (its TTL passed)")
    if job.quality is None:  # measured once, by the detect stage, on the pixels it decoded
        raise ImageExpired("the job's face was found without its quality measured; submit again")
    quality = job.quality.model_copy()
    quality.issues = gate(quality, job.face.detection_score, settings)
    timings = job.timings_ms.model_copy(
        update={"score": round((time.perf_counter() - started) * 1000, 1)}
    )
    if job.degraded:  # a simulated face and vector: measured, never ranked
        return job.model_copy(
            update={
                "quality": quality,
                "timings_ms": timings,
                "message": "scored on the simulated fallback: the score follows when the "
                "ML services are back",
            }
        )
    if quality.issues and settings.quality_gate:
        return job.model_copy(update={"quality": quality, "timings_ms": timings}).reject(
            "low_quality", describe(quality.issues)
        )
    pid = point_id(job.user_id, job.image_sha256, 0, job.model)
    place = index.enter(pid, vector)  # counted in now; the store stage confirms it
    reference = index.vibe_reference() or VibeReference(unit(vector), np.ones(10))
    elapsed = (time.perf_counter() - started) * 1000
    return job.model_copy(
        update={
            "quality": quality,
            "point_id": pid,
            "typicality": round(place.typicality, 6),
            "percentile": round(place.percentile, 4),
            "score": score_of(place.percentile),
            "rank": place.rank,
            "total_faces": place.total,
            "confidence": confidence(quality, job.face.detection_score, place.total),
            "distribution": index.distribution(),
            "vibes": vibes_of(unit(vector), reference),
            "timings_ms": timings.model_copy(update={"score": round(elapsed, 1)}),
        }
    )
