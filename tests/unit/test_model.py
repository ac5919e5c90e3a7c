"""The in-process dlib backend on the real photos: boxes, landmarks, embedding distances."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from aurum_ml.pipeline.imaging import decode_image

from photos import NAMES
from samples import no_face, read_rgb, two_faces


def _faces(model, settings, data):
    return model.detect_image(decode_image(data, settings))


@pytest.mark.parametrize("name", NAMES)
def test_one_face_inside_the_image(name, model, settings, photos):
    image = read_rgb(photos / name)
    height, width = image.shape[:2]
    (face,) = model.detect_image(image)
    x1, y1, x2, y2 = face.box
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert 0.7 <= face.score <= 3.0
    assert len(face.landmarks) == 5
    for x, y in face.landmarks:  # landmarks fall in (or at the clipped edge of) the box
        assert x1 - 60 <= x <= x2 + 5 and y1 <= y <= y2


def test_known_box_on_obama(model, photos):
    (face,) = model.detect_image(read_rgb(photos / "obama.jpg"))
    assert face.box == (366, 136, 624, 394)


def test_large_photo_is_detected_on_a_downscaled_copy_and_mapped_back(model, photos):
    image = read_rgb(photos / "obama.jpg")  # 910×1137
    (small_face,) = model.detect_image(image)
    big = cv2.resize(image, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)  # 2730×3411
    (big_face,) = model.detect_image(big)
    assert big_face.box[2] <= big.shape[1] and big_face.box[3] <= big.shape[0]
    assert _iou(big_face.box, tuple(3 * v for v in small_face.box)) > 0.75
    # landmarks come from the full-resolution image: within 2 % of the face width
    error = np.abs(np.array(big_face.landmarks) - np.array(small_face.landmarks) * 3).max()
    assert error <= 0.02 * big_face.width


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_same_person_is_near_and_another_person_is_far(model, photos):
    vectors = {}
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"):
        image = read_rgb(photos / name)
        (face,) = model.detect_image(image)
        vectors[name] = model.embed_image(image, face)
        assert vectors[name].shape == (128,) and vectors[name].dtype == np.float32
    for a, b in itertools.combinations(["obama.jpg", "obama2.jpg", "obama3.jpg"], 2):
        assert np.linalg.norm(vectors[a] - vectors[b]) < 0.5, (a, b)
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
        assert np.linalg.norm(vectors[name] - vectors["biden.jpg"]) > 0.6, name


def test_embedding_is_deterministic(model, photos):
    image = read_rgb(photos / "obama2.jpg")
    (face,) = model.detect_image(image)
    assert np.array_equal(model.embed_image(image, face), model.embed_image(image, face))


def test_photo_without_face_finds_none(model, settings, photos):
    assert _faces(model, settings, no_face(photos)) == []


def test_two_people_largest_first(model, settings, photos):
    faces = _faces(model, settings, two_faces(photos))
    assert len(faces) == 2
    assert faces[0].width * faces[0].height >= faces[1].width * faces[1].height
    assert faces[0].box[0] > faces[1].box[0]  # Biden, on the right, is the larger


def test_weak_detections_are_dropped_by_the_minimum_score(runtime, photos):
    from aurum_ml.pipeline.backends.local import LocalFaceModel

    image = read_rgb(photos / "obama_partial_face2.jpg")  # scores ~0.96
    strict = LocalFaceModel(runtime.settings.model_copy(update={"detect_min_score": 1.5}))
    assert strict.detect_image(image) == []


def test_the_cnn_detector_option_finds_the_same_face(runtime, photos):
    from aurum_ml.pipeline.backends.local import LocalFaceModel

    image = cv2.resize(read_rgb(photos / "obama.jpg"), (455, 568))  # CNN is slow: a small copy
    hog_face = LocalFaceModel(runtime.settings).detect_image(image)[0]
    cnn = LocalFaceModel(runtime.settings.model_copy(update={"detector": "cnn"}))
    (cnn_face,) = cnn.detect_image(image)
    assert _iou(cnn_face.box, hog_face.box) > 0.5
    assert np.abs(np.array(cnn_face.landmarks) - np.array(hog_face.landmarks)).max() < 10
