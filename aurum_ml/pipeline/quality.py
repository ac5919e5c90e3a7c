"""Face quality: cheap measurements, a gate with reason codes, and the confidence figure.

Like AWS Rekognition's quality filter: every measurement has a configurable threshold, and
a face failing any of them is rejected as ``low_quality`` with ``quality.issues`` listing
the codes. ``QUALITY_GATE=false`` keeps measuring and listing but rejects nothing.

Sharpness and exposure are measured so that neither depends on the face's size nor on the
photo's exposure (the thresholds come from a calibration set of the test photos' faces at
64–300 px, sharp, blurred, darkened and brightened: docs/quality-calibration.md, rebuilt by
tests/unit/test_quality_calibration.py):

- *sharpness* = 100 × mean |Laplacian| / mean |Sobel gradient| of the face crop at its own
  scale, shrunk to at most ``SHARPNESS_MAX_SIDE`` (192 px) and **never enlarged** (enlarging
  a small face smooths it: 70–90 px faces read as blurred). The cap makes the measure
  about what a viewer sees: an upscaled photo's face is not called blurred for lacking
  detail it never had, while a σ = 3 px blur of a face up to 300 px still fails. A ratio of
  two derivatives, so contrast and exposure cancel out: a darkened photo is dark, not
  blurred. Sharp faces ~16–25; blurred (σ = 1.5 or 3 px) ≤ 9.2.
- *highlights* = the 95th percentile of the crop's luma: a well-exposed face of any skin
  tone has some bright pixels (forehead, nose, eyes), an under-exposed photo has none.
  LOW_BRIGHTNESS is ``highlights < QUALITY_MIN_HIGHLIGHTS`` or a mean luma under the floor
  ``QUALITY_MIN_BRIGHTNESS``.
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
SATURATED = 250  # luma at or above which a pixel counts as over-exposed
SHARPNESS_MAX_SIDE = 192  # px: larger face crops are shrunk to this for sharpness
HIGHLIGHTS_PERCENTILE = 95


def sharpness_of(gray: np.ndarray) -> float:
    """100 × mean |Laplacian| / mean |gradient| of a grey face crop at its own scale: the
    share of fine detail in its edges; 0 for a flat crop."""
    g = gray.astype(np.float32)
    gradient = cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))
    edges = float(gradient.mean())
    if edges < 1e-3:
        return 0.0
    return 100 * float(np.abs(cv2.Laplacian(g, cv2.CV_32F)).mean()) / edges


def measure_quality(image: np.ndarray, face: Face) -> Quality:
    """Measurements of the face in an RGB image: size, sharpness, exposure, pose proxies."""
    x1, y1, x2, y2 = face.box
    crop = cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_RGB2GRAY)
    shrink = SHARPNESS_MAX_SIDE / max(crop.shape)
    detail = (
        crop
        if shrink >= 1  # never enlarged
        else cv2.resize(crop, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
    )
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
        sharpness=round(sharpness_of(detail), 1),
        brightness=round(float(crop.mean()), 1),
        highlights=round(float(np.percentile(crop, HIGHLIGHTS_PERCENTILE)), 1),
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
    if (
        quality.brightness < settings.quality_min_brightness
        or quality.highlights < settings.quality_min_highlights
    ):
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
    sharpness = _clamp(quality.sharpness / 20)
    exposure = _clamp(1 - abs(quality.brightness - 128) / 128) * (1 - quality.overexposed)
    pose = _clamp(1 - max(abs(quality.roll_deg) / 45, abs(quality.nose_offset) / 0.6))
    detection = _clamp(detection_score / 1.5)
    return 0.25 * size + 0.25 * sharpness + 0.2 * exposure + 0.2 * pose + 0.1 * detection


def confidence(quality: Quality, detection_score: float, total_faces: int) -> float:
    """0.7 × weighted quality + 0.3 × min(1, population / 1000), two decimals."""
    population = min(1.0, total_faces / 1000)
    return round(0.7 * weighted_quality(quality, detection_score) + 0.3 * population, 2)
