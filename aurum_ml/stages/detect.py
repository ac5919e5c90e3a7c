"""detect: the job's image → the one face to score (box, 5 landmarks), or a rejection."""

from __future__ import annotations

import time

from aurum_ml.backends import Detection, FaceBackend
from aurum_ml.errors import BadInput
from aurum_ml.schemas import Face, Job
from aurum_ml.settings import Settings
from aurum_ml.state import PipelineState


def detect(job: Job, *, state: PipelineState, backend: FaceBackend, settings: Settings) -> Job:
    """Find faces; keep the largest. Rejects with ``invalid_image``, ``no_face``,
    ``multiple_faces`` (unless the job allows several) or ``face_too_small``."""
    if job.status == "rejected":
        return job
    started = time.perf_counter()
    try:
        faces = backend.detect(state.get_image(job.image_sha256))
    except BadInput as exc:
        return job.reject(exc.reason, exc.message)
    elapsed = (time.perf_counter() - started) * 1000
    job = job.model_copy(
        update={
            "model": backend.model,
            "degraded": job.degraded or backend.source == "simulated",
            "timings_ms": job.timings_ms.model_copy(update={"detect": round(elapsed, 1)}),
        }
    )
    if not faces:
        return job.reject("no_face", "no face was found in the image")
    if len(faces) > 1 and not job.allow_multiple_faces:
        return job.reject(
            "multiple_faces", f"{len(faces)} faces were found; send a photo of one person"
        )
    face = faces[0]
    job = job.model_copy(update={"face": face_of(face)})
    if min(face.width, face.height) < settings.min_face_px:
        return job.reject(
            "face_too_small",
            f"the face is {face.width}×{face.height} px; at least {settings.min_face_px} px "
            "is needed",
        )
    return job


def face_of(detection: Detection) -> Face:
    return Face(
        box=list(detection.box),
        landmarks=[list(p) for p in detection.landmarks],
        detection_score=detection.score,
    )


def detection_of(face: Face) -> Detection:
    x1, y1, x2, y2 = face.box
    return Detection(
        box=(x1, y1, x2, y2),
        landmarks=tuple((int(p[0]), int(p[1])) for p in face.landmarks),
        score=face.detection_score,
    )
