"""score: quality measurements of the face and its place in the population."""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from aurum_ml.errors import ImageExpired
from aurum_ml.imaging import decode_image
from aurum_ml.index import ScoreIndex
from aurum_ml.schemas import Face, Job, Quality
from aurum_ml.settings import Settings
from aurum_ml.state import PipelineState
from aurum_ml.vectors import point_id

CROP_SIDE = 128  # px; the face crop is resized to this so sharpness compares across sizes


def measure_quality(image: np.ndarray, face: Face) -> Quality:
    """Cheap measurements of an RGB image's face: size, sharpness, brightness, pose proxies."""
    x1, y1, x2, y2 = face.box
    crop = cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_RGB2GRAY)
    crop = cv2.resize(crop, (CROP_SIDE, CROP_SIDE), interpolation=cv2.INTER_AREA)
    sharpness = float(cv2.Laplacian(crop, cv2.CV_64F).var())
    brightness = float(crop.mean())
    points = np.asarray(face.landmarks, dtype=np.float64)
    # dlib's 5 points: 0–1 one eye's corners, 2–3 the other's, 4 the base of the nose.
    eyes = sorted([points[0:2].mean(axis=0), points[2:4].mean(axis=0)], key=lambda p: p[0])
    (lx, ly), (rx, ry) = eyes
    roll = math.degrees(math.atan2(ry - ly, rx - lx))
    eye_distance = math.hypot(rx - lx, ry - ly) or 1.0
    nose_offset = (points[4][0] - (lx + rx) / 2) / eye_distance
    return Quality(
        face_width_px=x2 - x1,
        face_height_px=y2 - y1,
        sharpness=round(sharpness, 1),
        brightness=round(brightness, 1),
        roll_deg=round(roll, 1),
        nose_offset=round(float(nose_offset), 3),
    )


def score(job: Job, *, state: PipelineState, index: ScoreIndex, settings: Settings) -> Job:
    """Averageness percentile (0–100) among the stored faces of the same model."""
    if job.status == "rejected" or job.face is None or job.model is None:
        return job
    started = time.perf_counter()
    vector = state.get_embedding(job.job_id)
    if vector is None:
        raise ImageExpired("the job's embedding is no longer stored (its TTL passed)")
    quality = measure_quality(decode_image(state.get_image(job.image_sha256), settings), job.face)
    pid = point_id(job.user_id, job.image_sha256, 0, job.model)
    place = index.place(pid, vector)
    elapsed = (time.perf_counter() - started) * 1000
    return job.model_copy(
        update={
            "quality": quality,
            "point_id": pid,
            "typicality": round(place.typicality, 6),
            "percentile": round(place.percentile, 4),
            "score": round(100 * place.percentile, 1),
            "rank": place.rank,
            "total_faces": place.total,
            "timings_ms": job.timings_ms.model_copy(update={"score": round(elapsed, 1)}),
        }
    )
