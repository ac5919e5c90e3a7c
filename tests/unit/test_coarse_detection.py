"""Detection coarse to fine (DETECT_COARSE_LEVELS) finds what the full search finds: on
every test photo and on each shrunk until its face is small (the full search then runs),
the same number of faces, boxes with IoU ≥ 0.8 (in fact the same to the pixel), the same
detection scores, and embeddings within 0.05 of the full search's (in fact equal)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from aurum_ml.pipeline.backends.local import LocalFaceModel

from photos import NAMES
from samples import no_face, read_rgb, two_faces

SHRINK = (1.0, 0.85, 0.7, 0.6, 0.5, 0.42, 0.35, 0.3, 0.25, 0.18)


@pytest.fixture(scope="module")
def full(settings, model):
    exhaustive = LocalFaceModel(settings.model_copy(update={"detect_coarse_levels": 0}))
    exhaustive.warm_up()
    return exhaustive


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def _shrunk(image: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return image
    h, w = image.shape[:2]
    return cv2.resize(image, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("name", NAMES)
def test_coarse_to_fine_finds_the_same_faces(name, model, full, settings, photos):
    assert settings.detect_coarse_levels > 0  # the default searches coarse to fine
    original = read_rgb(photos / name)
    before = model.searches.copy()
    for factor in SHRINK:
        image = _shrunk(original, factor)
        coarse, exhaustive = model.detect_image(image), full.detect_image(image)
        assert len(coarse) == len(exhaustive), (name, factor)
        for a, b in zip(coarse, exhaustive, strict=True):
            assert _iou(a.box, b.box) >= 0.8, (name, factor, a.box, b.box)
            assert a.box == b.box, (name, factor)  # in fact the very same window, to the pixel
            assert a.score == b.score, (name, factor)
            distance = np.linalg.norm(model.embed_image(image, a) - full.embed_image(image, b))
            assert distance < 0.05, (name, factor, distance)
    assert (model.searches - before)["full"] >= 1  # shrunk far enough: the full search ran


@pytest.mark.parametrize(
    ("name", "search"),
    [
        ("obama.jpg", "coarse"),  # faces of 150–310 px in a 1280 px copy: coarse answers
        ("obama2.jpg", "coarse"),
        ("biden.jpg", "coarse"),
        ("obama3.jpg", "coarse"),  # 150 px: just above the coarse search's floor
        ("obama_partial_face.jpg", "full"),  # cut by the image's edge
        ("obama2.jpg@0.3", "full"),  # a 93 px face: below the floor
    ],
)
def test_which_search_answers(name, search, model, photos):
    name, _, factor = name.partition("@")
    before = model.searches.copy()
    model.detect_image(_shrunk(read_rgb(photos / name), float(factor or 1)))
    assert model.searches - before == {search: 1}


def test_no_face_and_two_faces_as_before(model, full, photos):
    for data in (no_face(photos), two_faces(photos)):
        image = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), 1), cv2.COLOR_BGR2RGB)
        found = len(full.detect_image(image))
        assert found == (0 if data != two_faces(photos) else 2)
        assert len(model.detect_image(image)) == found
