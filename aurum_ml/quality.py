"""Face quality: cheap measurements, a gate with reason codes, and the confidence figure.

Like AWS Rekognition's quality filter: every measurement has a configurable threshold, and
a face failing any of them is rejected as ``low_quality`` with ``quality.issues`` listing
the codes. ``QUALITY_GATE=false`` keeps measuring and listing but rejects nothing.

Measured on our photos (see tests): sharp frontal photos 240–620 sharpness and 110–150
brightness; a σ=8 blur drops sharpness to ~3, a ×0.15 darkening brightness to ~22.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from aurum_ml.schemas import Face, Quality
from aurum_ml.settings import Settings

__all__ = [
    "ISSUES",
    "MESSAGES",
    "confidence",
    "describe",
    "gate",
    "measure_quality",
    "weighted_quality",
]

ISSUES = (
    "SMALL_FACE",
    "LOW_SHARPNESS",
    "LOW_BRIGHTNESS",
    "HIGH_BRIGHTNESS",
    "EXTREME_POSE",
    "LOW_DETECTION_SCORE",
)
MESSAGES = {
    "SMALL_FACE": "the face is too small",
    "LOW_SHARPNESS": "the photo is blurred",
    "LOW_BRIGHTNESS": "the face is too dark",
    "HIGH_BRIGHTNESS": "the face is over-exposed",
    "EXTREME_POSE": "the head is turned or tilted too far",
    "LOW_DETECTION_SCORE": "the face is hard to make out",
}
CROP_SIDE = 128  # px: the face crop is resized to this so sharpness compares across sizes
SATURATED = 250  # luma at or above which a pixel counts as over-exposed


def measure_quality(image: np.ndarray, face: Face) -> Quality:
    """Measurements of the face in an RGB image: size, sharpness, exposure, pose proxies."""
    x1, y1, x2, y2 = face.box
    crop = cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_RGB2GRAY)
    crop = cv2.resize(crop, (CROP_SIDE, CROP_SIDE), interpolation=cv2.INTER_AREA)
    points = np.asarray(face.landmarks, dtype=np.float64)
    # dlib's 5 points: 0–1 one eye's corners, 2–3 the other's, 4 the base of the nose.
    left, right = sorted([points[0:2].mean(axis=0), points[2:4].mean(axis=0)], key=lambda p: p[0])
    eye_line = right - left
    eye_distance = float(np.hypot(*eye_line)) or 1.0
    roll = math.degrees(math.atan2(eye_line[1], eye_line[0]))
    # yaw proxy: the nose's offset from the eyes' midpoint along the eye line (roll-free)
    nose_offset = float((points[4] - (left + right) / 2) @ eye_line) / eye_distance**2
    return Quality(
        face_width_px=x2 - x1,
        face_height_px=y2 - y1,
        sharpness=round(float(cv2.Laplacian(crop, cv2.CV_64F).var()), 1),
        brightness=round(float(crop.mean()), 1),
        overexposed=round(float((crop >= SATURATED).mean()), 3),
        roll_deg=round(roll, 1),
        nose_offset=round(nose_offset, 3),
        issues=[],
    )


def gate(quality: Quality, detection_score: float, settings: Settings) -> list[str]:
    """The issue codes this face fails, in the order of :data:`ISSUES`."""
    issues = []
    if min(quality.face_width_px, quality.face_height_px) < settings.quality_min_face_px:
        issues.append("SMALL_FACE")
    if quality.sharpness < settings.quality_min_sharpness:
        issues.append("LOW_SHARPNESS")
    if quality.brightness < settings.quality_min_brightness:
        issues.append("LOW_BRIGHTNESS")
    if (
        quality.brightness > settings.quality_max_brightness
        or quality.overexposed > settings.quality_max_overexposed
    ):
        issues.append("HIGH_BRIGHTNESS")
    if (
        abs(quality.roll_deg) > settings.quality_max_roll_deg
        or abs(quality.nose_offset) > settings.quality_max_yaw
    ):
        issues.append("EXTREME_POSE")
    if detection_score < settings.quality_min_detection_score:
        issues.append("LOW_DETECTION_SCORE")
    return issues


def describe(issues: list[str]) -> str:
    """A human sentence for a low_quality rejection."""
    return "the photo did not pass the quality check: " + "; ".join(MESSAGES[i] for i in issues)


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


def weighted_quality(quality: Quality, detection_score: float) -> float:
    """0–1: size 25 %, sharpness 25 %, exposure 20 %, pose 20 %, detection 10 %."""
    size = _clamp(min(quality.face_width_px, quality.face_height_px) / 160)
    sharpness = _clamp(quality.sharpness / 200)
    exposure = _clamp(1 - abs(quality.brightness - 128) / 128) * (1 - quality.overexposed)
    pose = _clamp(1 - max(abs(quality.roll_deg) / 45, abs(quality.nose_offset) / 0.6))
    detection = _clamp(detection_score / 1.5)
    return 0.25 * size + 0.25 * sharpness + 0.2 * exposure + 0.2 * pose + 0.1 * detection


def confidence(quality: Quality, detection_score: float, total_faces: int) -> float:
    """0.7 × weighted quality + 0.3 × min(1, population / 1000), two decimals."""
    population = min(1.0, total_faces / 1000)
    return round(0.7 * weighted_quality(quality, detection_score) + 0.3 * population, 2)
