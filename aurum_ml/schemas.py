"""The contract between tasks and callers: pydantic models, units and box order on each field.

``Result`` is what ``score_face.delay(...).get()`` returns (as a plain dict). ``Job`` is the
small JSON payload the chain's stages hand to each other: the result so far plus the
references a later stage needs. Neither ever carries image bytes or an embedding: the image
is stored in Redis under its content hash, the embedding under the job id.

Fields may be added by later versions; none is renamed.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    model_validator,
)

from aurum_ml.errors import Reason
from aurum_ml.request import USER_ID_MAX, check_user_id

__all__ = [
    "DetectRequest",
    "DetectResponse",
    "DetectedFace",
    "Distribution",
    "ExtractRequest",
    "ExtractResponse",
    "Face",
    "GivenFace",
    "Health",
    "Job",
    "Match",
    "Quality",
    "Result",
    "ServiceErrorBody",
    "Status",
    "Timings",
    "USER_ID_MAX",
    "UserId",
    "check_user_id",
]

UserId = Annotated[StrictStr, AfterValidator(check_user_id)]

Status = Literal["pending", "scored", "rejected"]
Source = Literal["service", "local", "simulated"]


class Face(BaseModel):
    """The face that was scored."""

    box: list[int] = Field(
        ..., min_length=4, max_length=4, description="[x1, y1, x2, y2] px, clipped to the image"
    )
    landmarks: list[list[int]] = Field(
        ..., description="5 × [x, y] px: two corners of each eye, then the base of the nose"
    )
    detection_score: float = Field(..., description="detector confidence (HOG ~0.7–2.4)")


class Quality(BaseModel):
    """Measurements of the face; the quality gate (thresholds) uses them."""

    face_width_px: int = Field(..., description="box width, px")
    face_height_px: int = Field(..., description="box height, px")
    sharpness: float = Field(
        ...,
        description="100 × mean |Laplacian| / mean |gradient| of the face crop at its own "
        "scale (≤ 192 px, never enlarged): independent of size and exposure (sharp ~16–25, "
        "blurred < 10)",
    )
    brightness: float = Field(..., description="mean luma of the face crop, 0–255")
    highlights: float = Field(
        255.0, description="95th percentile of the face crop's luma, 0–255 (exposure)"
    )
    overexposed: float = Field(0.0, description="share of the crop's pixels at luma ≥ 250")
    roll_deg: float = Field(..., description="eye-line angle from horizontal, degrees")
    nose_offset: float = Field(
        ..., description="nose off the eyes' midpoint along the eye line, in eye distances"
    )
    issues: list[str] = Field(
        default_factory=list,
        description="quality-gate codes failed (see aurum_ml.pipeline.quality)",
    )


class Distribution(BaseModel):
    """Stored scores (0–100) of the population, as of the last re-rank."""

    count: int
    mean: float
    std: float
    p10: float
    p25: float
    p50: float
    p75: float
    p90: float
    p95: float
    p99: float


class Match(BaseModel):
    """Another user's face within the same-person distance."""

    user_id: str
    point_id: str
    distance: float = Field(..., description="Euclidean distance of the embeddings")


class Timings(BaseModel):
    """Milliseconds spent in each stage; ``total`` is wall time from intake to stored
    (queue waits included)."""

    detect: float = 0.0
    embed: float = 0.0
    score: float = 0.0
    store: float = 0.0
    total: float = 0.0


class Result(BaseModel):
    """What the caller gets. ``status="rejected"`` comes with ``reason`` and ``message``."""

    model_config = ConfigDict(extra="ignore")

    job_id: str | None = Field(..., description="the score_face task id; null if never queued")
    status: Status
    reason: Reason | None = None
    message: str | None = None
    user_id: str
    face: Face | None = None
    quality: Quality | None = None
    score: float | None = Field(None, description="0–100: percentile of averageness")
    percentile: float | None = Field(None, description="0–1; score / 100")
    rank: int | None = Field(None, description="1 = most typical face of the population")
    total_faces: int | None = Field(None, description="faces in the population, this one included")
    point_id: str | None = Field(None, description="Qdrant point id (uuid5)")
    model: str | None = None
    source: Source | None = None
    timings_ms: Timings = Field(default_factory=Timings)
    confidence: float | None = Field(
        None, description="0–1: 0.7 × weighted quality + 0.3 × min(1, total_faces / 1000)"
    )
    distribution: Distribution | None = None
    vibes: list[str] = Field(default_factory=list, description="up to 3 vibe tags")
    matches: list[Match] = Field(
        default_factory=list, description="other users' faces within the same-person distance"
    )
    next_allowed_at: str | None = Field(
        None, description="with reason cooldown: ISO time from which a new photo is scored"
    )
    pending_job_id: str | None = Field(
        None, description="with reason in_progress: the job of the photo still being scored"
    )
    degraded: bool = Field(
        False,
        description="made by the simulated fallback: no score yet; re-scored through the "
        "services once they recover (same job id)",
    )


class Job(Result):
    """The payload between stages: the result so far plus references."""

    job_id: str
    image_sha256: str = Field(..., description="key of the image bytes in Redis")
    allow_multiple_faces: bool = False
    submitted_at: float = Field(..., description="unix time of intake, s")
    typicality: float | None = Field(None, description="cosine similarity to the centroid")
    epoch: int = Field(
        0, description="the user's erasure epoch at admission (aurum_ml.population.users)"
    )

    def reject(self, reason: Reason, message: str) -> Job:
        return self.model_copy(update={"status": "rejected", "reason": reason, "message": message})

    def result(self) -> Result:
        return Result.model_validate(self.model_dump())


# --- the ML services' HTTP contract (docs/ml-services.md) -------------------------------------


class ServiceErrorBody(BaseModel):
    """Every error answer of the services: a code and a sentence."""

    error: str = Field(..., description="invalid_image | image_too_large | invalid_request | …")
    message: str


class DetectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_base64: str = Field(..., description="the image, base64 (a data: URL is accepted)")
    min_confidence: float | None = Field(None, description="minimum detector score")
    max_faces: int | None = Field(None, ge=1, le=100, description="at most this many, largest")
    upsample: int | None = Field(None, ge=0, le=2, description="detector upsampling (0–2)")


class DetectedFace(BaseModel):
    bounding_box: list[int] = Field(
        ..., min_length=4, max_length=4, description="[x1, y1, x2, y2] px, clipped to the image"
    )
    score: float = Field(..., description="detector score")
    landmarks: list[list[int]] = Field(
        ..., min_length=5, max_length=5, description="5 × [x, y] px (dlib's 5-point model)"
    )


class DetectResponse(BaseModel):
    faces: list[DetectedFace] = Field(..., description="largest first")
    image_width: int = Field(..., description="px, after EXIF orientation")
    image_height: int = Field(..., description="px, after EXIF orientation")
    model: str
    processing_time_ms: float


# a coordinate sent to a service: px, within what any accepted image can hold
Coordinate = Annotated[int, Field(ge=-100_000, le=100_000)]
Point = Annotated[list[Coordinate], Field(min_length=2, max_length=2, description="[x, y] px")]


class GivenFace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bounding_box: list[Coordinate] = Field(
        ..., min_length=4, max_length=4, description="[x1, y1, x2, y2] px"
    )
    landmarks: list[Point] = Field(..., min_length=5, max_length=5)


class ExtractRequest(BaseModel):
    """The whole image (with ``face``, or the largest face), or the aligned chip alone."""

    model_config = ConfigDict(extra="forbid")

    image_base64: str | None = Field(None, description="the image, base64")
    face: GivenFace | None = Field(
        None, description="align from these landmarks; without it, embed the largest face"
    )
    chip_base64: str | None = Field(
        None,
        description="instead of the image: the aligned 150 × 150 RGB face chip as a PNG, "
        "base64 — the descriptor runs on it directly (what the pipeline sends: ~40 KB)",
    )

    @model_validator(mode="after")
    def _one_input(self) -> ExtractRequest:
        if (self.image_base64 is None) == (self.chip_base64 is None):
            raise ValueError("send exactly one of image_base64 and chip_base64")
        if self.chip_base64 is not None and self.face is not None:
            raise ValueError("face goes with image_base64; a chip is already aligned")
        return self


class ExtractResponse(BaseModel):
    embedding: list[float] = Field(..., description="the face descriptor")
    dim: int
    model: str
    processing_time_ms: float


class Health(BaseModel):
    status: Literal["ok", "loading"]
    service: str
    model: str
    version: str
    uptime_s: float
