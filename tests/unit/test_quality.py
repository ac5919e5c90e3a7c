"""The quality gate and confidence on real photos and real edits of them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from aurum_ml.pipeline.quality import confidence, gate, measure_quality, weighted_quality
from aurum_ml.pipeline.stages.detect import face_of

from samples import read_rgb

SHARP = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg",
         "obama_partial_face2.jpg", "biden.jpg"]  # fmt: skip


def _measure(model, image):
    faces = model.detect_image(image)
    if not faces:
        return None, None
    face = face_of(faces[0])
    return measure_quality(image, face), face.detection_score


@pytest.mark.parametrize("name", SHARP)
def test_sharp_frontal_photos_pass(name, model, settings, photos):
    quality, score = _measure(model, read_rgb(photos / name))
    assert gate(quality, score, settings) == []


@pytest.mark.parametrize("width", [80, 100])
def test_faces_of_80_px_pass(width, model, settings, photos):
    image = read_rgb(photos / "obama.jpg")  # its face is 258 px wide
    scale = width / 258
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    quality, score = _measure(model, small)
    assert quality is not None, "the detector must still find an 80 px face"
    assert gate(quality, score, settings) == []


@pytest.mark.parametrize("sigma", [8, 12])
def test_heavy_blur_is_rejected(sigma, model, settings, photos):
    image = cv2.GaussianBlur(read_rgb(photos / "obama.jpg"), (0, 0), sigma)
    quality, score = _measure(model, image)
    assert quality is None or "LOW_SHARPNESS" in gate(quality, score, settings)


def test_darkened_copy_is_rejected_as_too_dark(model, settings, photos):
    image = (read_rgb(photos / "obama.jpg") * 0.15).astype(np.uint8)
    quality, score = _measure(model, image)
    assert quality is None or "LOW_BRIGHTNESS" in gate(quality, score, settings)


def test_overexposed_copy_is_rejected(model, settings, photos):
    image = np.clip(read_rgb(photos / "obama.jpg").astype(int) * 2.4, 0, 255).astype(np.uint8)
    quality, score = _measure(model, image)
    assert quality is not None and "HIGH_BRIGHTNESS" in gate(quality, score, settings)


def test_roll_is_measured_and_the_yaw_proxy_ignores_it(model, photos):
    image = read_rgb(photos / "obama.jpg")
    h, w = image.shape[:2]
    rotated = cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), 25, 1), (w, h))
    upright, _ = _measure(model, image)
    tilted, _ = _measure(model, rotated)
    assert abs(upright.roll_deg) < 3 and 20 < abs(tilted.roll_deg) < 30
    assert abs(tilted.nose_offset - upright.nose_offset) < 0.05


def test_each_threshold_has_its_code(model, settings, photos):
    quality, score = _measure(model, read_rgb(photos / "obama.jpg"))
    strict = settings.model_copy(
        update={
            "quality_min_face_px": 1000,
            "quality_min_sharpness": 1e6,
            "quality_min_brightness": 250,
            "quality_max_brightness": 10,
            "quality_max_roll_deg": 0,
            "quality_max_yaw": 0,
            "quality_min_detection_score": 10,
        }
    )
    assert gate(quality, score, strict) == [
        "SMALL_FACE", "LOW_SHARPNESS", "LOW_BRIGHTNESS", "HIGH_BRIGHTNESS", "EXTREME_POSE",
        "LOW_DETECTION_SCORE",
    ]  # fmt: skip


def test_confidence_follows_the_formula(model, photos):
    quality, score = _measure(model, read_rgb(photos / "obama.jpg"))
    q = weighted_quality(quality, score)
    assert 0.8 < q <= 1.0
    assert confidence(quality, score, 1) == round(0.7 * q + 0.3 * 0.001, 2)
    assert confidence(quality, score, 500) == round(0.7 * q + 0.15, 2)
    assert confidence(quality, score, 5000) == round(0.7 * q + 0.3, 2)
