"""dlib models in this process: HOG (or mmod CNN) detector → 5-point landmarks → ResNet.

The ResNet descriptor runs on ONNX Runtime by default (:mod:`aurum_ml.pipeline.backends.resnet`:
dlib's weights from the same file, the same vector to 1e-6, ~20× faster than dlib-bin's
loops); ``EMBED_ENGINE=dlib`` runs dlib's own.

Model files come from the ``face_recognition_models`` package (CC0); nothing is downloaded.
The 68-point landmark model in that package is never loaded: its training data's licence
excludes commercial use.

Models load lazily, once per process, on first use. Detection runs on a copy downscaled to
at most ``detect_max_side`` px; boxes are mapped back, and landmarks and the descriptor are
taken from the full-resolution image.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from aurum_ml.errors import ConfigError
from aurum_ml.pipeline.backends import Detection
from aurum_ml.pipeline.backends.resnet import ResNetDescriptor
from aurum_ml.pipeline.imaging import Decoded, decode_scaled
from aurum_ml.settings import Settings

__all__ = ["DETECTOR_ID", "MODEL_ID", "LocalFaceModel", "model_dir"]

MODEL_ID = "dlib-resnet-v1"  # the embedding model: names the Qdrant collection
DETECTOR_ID = {"hog": "dlib-hog-5pt", "cnn": "dlib-mmod-5pt"}
DIM = 128
CHIP_SIZE = 150  # px; what the ResNet was trained on
CHIP_PADDING = 0.25


def model_dir() -> Path:
    """The folder of ``face_recognition_models``' files, found without importing it
    (its ``__init__`` imports the deprecated ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("face_recognition_models is not installed (pip install the project)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


# dlib's frontal face detector scans an 80 × 80 window and reports a box of about 72 px
# at the pyramid level it matched (72 × (6/5)^level in the image)
HOG_BOX_PX = 72


class LocalFaceModel:
    """The in-process backend. Thread-safe: one lock around the dlib calls."""

    model = MODEL_ID
    dim = DIM
    source = "local"

    @property
    def detector_id(self) -> str:
        return DETECTOR_ID[self._detector_kind]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._detector_kind = settings.detector
        self._upsample = settings.detect_upsample
        self._max_side = settings.detect_max_side
        self._min_score = settings.detect_min_score
        self._coarse_levels = settings.detect_coarse_levels
        self.searches: Counter[str] = Counter()  # HOG searches answered "coarse" / "full"
        self._lock = threading.Lock()
        self._models: dict[str, Any] | None = None
        self._onnx = (
            ResNetDescriptor(model_dir, settings.embed_threads)
            if settings.embed_engine == "onnx"
            else None
        )  # dlib's descriptor otherwise (in _load)

    def _load(self) -> dict[str, Any]:
        if self._models is None:
            import dlib  # imported here: a process that never scores never pays for it

            folder = model_dir()
            models: dict[str, Any] = {
                "landmarks": dlib.shape_predictor(
                    str(folder / "shape_predictor_5_face_landmarks.dat")
                ),
            }
            if self._onnx is None:
                models["resnet"] = dlib.face_recognition_model_v1(
                    str(folder / "dlib_face_recognition_resnet_model_v1.dat")
                )
            if self._detector_kind == "cnn":
                models["cnn"] = dlib.cnn_face_detection_model_v1(
                    str(folder / "mmod_human_face_detector.dat")
                )
            else:
                models["hog"] = dlib.get_frontal_face_detector()
            self._models = models
        return self._models

    def warm_up(self) -> None:
        """Load the models now (a worker calls this at start to keep the first job fast)."""
        with self._lock:
            self._load()
        if self._onnx is not None:
            self._onnx.warm_up()  # the session is built outside dlib's lock

    def detect(self, data: bytes) -> list[Detection]:
        """Decode (limits checked, far larger images at reduced scale) and find faces; see
        :meth:`detect_image`. Coordinates are those of the full-size image."""
        return self.detect_decoded(decode_scaled(data, self.settings))

    def embed(self, data: bytes, face: Detection) -> np.ndarray:
        """Decode as :meth:`detect` does and describe ``face`` (full-size coordinates)."""
        decoded = decode_scaled(data, self.settings)
        return self.embed_image(decoded.image, face.scaled(1 / decoded.scale))

    def detect_image(
        self, image: np.ndarray, upsample: int | None = None, min_score: float | None = None
    ) -> list[Detection]:
        """Faces in an RGB uint8 image scoring at least ``min_score`` (default
        ``DETECT_MIN_SCORE``), largest first."""
        import dlib

        upsample = self._upsample if upsample is None else upsample
        min_score = self._min_score if min_score is None else min_score
        height, width = image.shape[:2]
        scale = min(1.0, self._max_side / max(height, width))
        small = (
            image
            if scale == 1.0
            else cv2.resize(
                image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
            )
        )
        with self._lock:
            models = self._load()
            found: list[tuple[Any, float]] = []
            if "cnn" in models:
                found = [(d.rect, float(d.confidence)) for d in models["cnn"](small, upsample)]
            else:
                found = self._hog(models["hog"], small, upsample)
            faces = []
            for rect, score in found:
                if score < min_score:
                    continue
                full = dlib.rectangle(
                    round(rect.left() / scale),
                    round(rect.top() / scale),
                    round(rect.right() / scale),
                    round(rect.bottom() / scale),
                )
                shape = models["landmarks"](image, full)
                box = (
                    max(0, full.left()),
                    max(0, full.top()),
                    min(width, full.right()),
                    min(height, full.bottom()),
                )
                points = tuple((p.x, p.y) for p in shape.parts())
                faces.append(Detection(box=box, landmarks=points, score=round(score, 4)))
        faces.sort(key=lambda f: f.width * f.height, reverse=True)
        return faces

    def _hog(self, detector: Any, image: np.ndarray, upsample: int) -> list[tuple[Any, float]]:
        """HOG, coarse to fine, finding exactly what the full search finds.

        dlib scans an image pyramid, each level 5/6 of the one before, with an 80 px window:
        the finest levels — most of the pixels — look for the smallest faces. A profile
        photo's face is rarely small, so the search first starts ``DETECT_COARSE_LEVELS``
        levels down, on the very pixels dlib's own pyramid has there (``dlib.pyramid_down``):
        the same windows get the same scores. Each box is mapped back as the full search maps
        it: down to the window's own pyramid level (its size says which), where it is an
        exact integer rectangle, then up all the levels at once — the same box to the pixel.
        The coarse answer stands when every face it found sits at least one level above the
        coarse search's finest (a finer level could not have held a better window for it)
        and inside the image; otherwise — no face, a small face, a face the image's edge cuts
        — the whole pyramid is searched. A face below that floor beside a larger one is not
        looked for (it does not make a photo ``multiple_faces``)."""
        import dlib

        levels = self._coarse_levels if upsample == 0 else 0
        if levels:
            pyramid = dlib.pyramid_down(6)
            coarse = image
            for _ in range(levels):
                coarse = pyramid(coarse)
            rects, scores, _ = detector.run(coarse, 0, 0.0)
            height, width = image.shape[:2]
            found, settled = [], True
            for rect, score in zip(rects, scores, strict=True):
                level = max(0, round(math.log(max(rect.width(), 1) / HOG_BOX_PX, 6 / 5)))
                box = pyramid.rect_up(pyramid.rect_down(rect, level), level + levels)
                found.append((box, float(score)))
                inside = box.left() >= 0 and box.top() >= 0
                inside = inside and box.right() < width and box.bottom() < height
                settled = settled and level >= 1 and inside
            if found and settled:
                self.searches["coarse"] += 1
                return found
        self.searches["full"] += 1
        rects, scores, _ = detector.run(image, upsample, 0.0)
        return list(zip(rects, (float(s) for s in scores), strict=True))

    def align(self, image: np.ndarray, face: Detection) -> np.ndarray:
        """The aligned 150×150 RGB face chip the descriptor is computed on."""
        return face_chip(image, face)

    def embed_image(self, image: np.ndarray, face: Detection) -> np.ndarray:
        """128 floats (Euclidean distance < 0.6 ≈ same person; norm ≈ 1.4, not unit)."""
        return self.embed_chip(face_chip(image, face))

    def embed_chip(self, chip: np.ndarray) -> np.ndarray:
        """The descriptor of an aligned chip (:func:`face_chip`): no decode, no alignment."""
        if self._onnx is not None:  # thread-safe on its own: no dlib lock around it
            return self._onnx.describe(np.ascontiguousarray(chip)[None])[0]
        with self._lock:
            vector = self._load()["resnet"].compute_face_descriptor(np.ascontiguousarray(chip))
        return np.asarray(vector, dtype=np.float32)

    def detect_decoded(self, decoded: Decoded) -> list[Detection]:
        """:meth:`detect` on pixels already decoded (full-size coordinates)."""
        return [face.scaled(decoded.scale) for face in self.detect_image(decoded.image)]


def face_chip(image: np.ndarray, face: Detection) -> np.ndarray:
    """The aligned 150 × 150 RGB chip of ``face`` (coordinates of ``image``), as dlib cuts it
    from the 5 landmarks. Geometry only: no model is loaded."""
    import dlib

    x1, y1, x2, y2 = face.box
    shape = dlib.full_object_detection(
        dlib.rectangle(x1, y1, x2, y2), [dlib.point(x, y) for x, y in face.landmarks]
    )
    return np.asarray(dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING))
