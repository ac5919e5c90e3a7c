"""What a stored face's Qdrant point carries beside its vector: one declared payload,
written by :func:`face_payload` (the store stage) and read by :func:`read_payload` (the
queries, the embedded default's restore, export and import).

A payload is the job's outcome on the day it was stored, with the ids an erasure and a
restore need. A point written before a field existed reads with that field's default.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypedDict

from aurum_ml.schemas import Job

__all__ = ["FacePayload", "face_payload", "read_payload"]


class FacePayload(TypedDict):
    user_id: str
    job_id: str | None
    image_sha256: str | None
    score: float | None  # score, percentile, rank and total as on the day it was stored
    percentile: float | None
    rank: int | None
    total_faces: int | None
    typicality: float | None
    confidence: float | None
    vibes: list[str]
    face: dict[str, Any] | None
    quality: dict[str, Any] | None
    model: str | None
    source: str | None
    created_at: str | None  # ISO time the job was submitted
    stored_at: float  # unix time the job was submitted: the user's latest face is the largest
    erasure_epoch: int  # an import skips the face if the user was erased since


_DEFAULTS: dict[str, Any] = {
    "user_id": "",
    "vibes": [],
    "stored_at": 0.0,
    "erasure_epoch": 0,
}


def face_payload(job: Job) -> FacePayload:
    """The payload of the face a scored job stores."""
    return FacePayload(
        user_id=job.user_id,
        job_id=job.job_id,
        image_sha256=job.image_sha256,
        score=job.score,
        percentile=job.percentile,
        rank=job.rank,
        total_faces=job.total_faces,
        typicality=job.typicality,
        confidence=job.confidence,
        vibes=list(job.vibes),
        face=job.face.model_dump() if job.face else None,
        quality=job.quality.model_dump() if job.quality else None,
        model=job.model,
        source=job.source,
        created_at=datetime.fromtimestamp(job.submitted_at, UTC).isoformat(),
        stored_at=job.submitted_at,
        erasure_epoch=job.epoch,
    )


def read_payload(raw: Mapping[str, Any]) -> FacePayload:
    """A stored payload as declared: every field, a default where the point has none."""
    fields = FacePayload.__annotations__
    return FacePayload(**{name: raw.get(name, _DEFAULTS.get(name)) for name in fields})  # type: ignore[typeddict-item]
