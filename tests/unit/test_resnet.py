"""dlib's ResNet on ONNX Runtime (aurum_ml.pipeline.backends.resnet) against dlib's own descriptor,
on the aligned chip of every face in the test photos."""

from __future__ import annotations

import numpy as np
import pytest

from aurum_ml.errors import ConfigError
from aurum_ml.pipeline.backends.local import LocalFaceModel, face_chip, model_dir
from aurum_ml.pipeline.backends.resnet import FILE, ResNetDescriptor, read_layers

from photos import NAMES
from samples import read_rgb, two_faces


@pytest.fixture(scope="module")
def dlib_model(settings):
    model = LocalFaceModel(settings.model_copy(update={"embed_engine": "dlib"}))
    model.warm_up()
    return model


@pytest.fixture(scope="module")
def chips(model, photos):
    import cv2

    out = []
    images = [read_rgb(photos / name) for name in NAMES]
    pair = cv2.imdecode(np.frombuffer(two_faces(photos), np.uint8), cv2.IMREAD_COLOR)
    images.append(cv2.cvtColor(pair, cv2.COLOR_BGR2RGB))
    for image in images:
        out.extend(face_chip(image, face) for face in model.detect_image(image))
    assert len(out) == len(NAMES) + 2  # one face a photo, two in the pair
    return out


def test_the_default_engine_is_onnx(model):
    assert model.settings.embed_engine == "onnx"
    assert model._onnx is not None  # noqa: SLF001  (the default really runs it)


def test_every_chip_gets_dlibs_vector(model, dlib_model, chips):
    for chip in chips:
        ours, dlibs = model.embed_chip(chip), dlib_model.embed_chip(chip)
        assert ours.shape == (128,) and ours.dtype == np.float32
        assert np.max(np.abs(ours - dlibs)) < 1e-5
        assert abs(np.linalg.norm(dlibs) - 1.4) < 0.1  # a real descriptor, not a zero vector


def test_a_batch_equals_one_chip_at_a_time(chips):
    descriptor = ResNetDescriptor(model_dir())
    batch = descriptor.describe(np.stack(chips))
    for row, chip in zip(batch, chips, strict=True):
        assert np.max(np.abs(row - descriptor.describe(chip[None])[0])) < 1e-6


def test_the_network_read_from_dlibs_file():
    layers = read_layers(model_dir() / FILE)
    convs = [layer for layer in layers if layer.kind == "con_4"]
    assert len(convs) == 29  # the stem and two in each of the 14 residual blocks
    assert convs[0].weights.shape == (32, 3, 7, 7) and convs[0].stride == (2, 2)
    assert layers[-1].weights.shape == (256, 128)
    assert layers[0].mean == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)


def test_a_file_that_is_not_the_resnet_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not dlib's face-recognition ResNet"):
        read_layers(model_dir() / "shape_predictor_5_face_landmarks.dat")
    cut = tmp_path / FILE
    cut.write_bytes((model_dir() / FILE).read_bytes()[:3_000_000])
    with pytest.raises(ConfigError):
        ResNetDescriptor(tmp_path).describe(np.zeros((1, 150, 150, 3), np.uint8))
    with pytest.raises(ConfigError, match="cannot read"):
        read_layers(tmp_path / "missing.dat")
