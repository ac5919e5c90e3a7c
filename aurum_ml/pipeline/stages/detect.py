"""detect: the job's image → the one face to score (box, 5 landmarks), or a rejection.

The only stage that decodes the image: while the pixels are decoded it also computes what
the later stages need from them — the quality measurements (carried in the job) and the
aligned 150 px face chip (``aurum:chip:{job_id}``, for the embed stage). Embed then runs the
descriptor on the chip alone, and score needs no pixels at all."""

from __future__ import annotations

import time

from aurum_ml.errors import BadInput
from aurum_ml.pipeline.backends import Detection, FaceBackend
from aurum_ml.pipeline.backends.local import face_chip
from aurum_ml.pipeline.imaging import decode_scaled
from aurum_ml.pipeline.quality import measure_quality
from aurum_ml.pipeline.state import PipelineState
from aurum_ml.schemas import Face, Job
from aurum_ml.settings import Settings


def detect(job: Job, *, state: PipelineState, backend: FaceBackend, settings: Settings) -> Job:
    """Find faces; keep the largest. Rejects with ``invalid_image``, ``no_face``,
    ``multiple_faces`` (unless the job allows several) or ``face_too_small``."""
    if job.status == "rejected":
        return job
    started = time.perf_counter()
    data = state.get_image(job.image_sha256)
    try:
        decoded = decode_scaled(data, settings)
        in_process = getattr(backend, "detect_decoded", None)  # local, simulated: no 2nd decode
        faces = in_process(decoded) if in_process else backend.detect(data)
    except BadInput as exc:
        return job.reject(exc.reason, exc.message)
    elapsed = (time.perf_counter() - started) * 1000
    job = job.model_copy(
        update={
            "model": backend.model,
            "source": backend.source,  # the embed stage's replaces it once it runs
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
    seen = face.scaled(1 / decoded.scale)  # in decoded pixels
    quality = measure_quality(decoded.image, face_of(seen))
    if decoded.scale > 1:  # sizes are reported in the full image's pixels
        quality.face_width_px, quality.face_height_px = face.width, face.height
    state.put_chip(job.job_id, face_chip(decoded.image, seen))
    elapsed = (time.perf_counter() - started) * 1000
    return job.model_copy(
        update={
            "quality": quality,
            "timings_ms": job.timings_ms.model_copy(update={"detect": round(elapsed, 1)}),
        }
    )


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
