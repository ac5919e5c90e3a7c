"""The simulated fallback: deterministic, non-learned, and needing no model files.

For environments without the dlib packages, or a deliberate choice to keep the workers light
(``FALLBACK_BACKEND=simulated``). It does *not* pretend to recognise faces:

- detection: the central square of the image (60 % of its shorter side) with the five
  landmarks where an upright frontal face would have them;
- embedding: the face crop, greyscale, downscaled to 16 × 8 px, centred and scaled to unit
  length — 128 numbers that are stable for one photo and mean nothing about identity.

Results built on it are marked ``degraded``, kept out of the real collection and the score
index, and re-scored through the services when they recover (``aurum_ml.pipeline.recovery``).
"""

from __future__ import annotations

import cv2
import numpy as np

from aurum_ml.pipeline.backends import Detection
from aurum_ml.pipeline.imaging import Decoded, decode_image
from aurum_ml.settings import Settings

__all__ = ["SimulatedBackend"]

# Landmarks of an upright frontal face as fractions of its box (dlib's 5-point order).
_CANONICAL = ((0.78, 0.36), (0.62, 0.36), (0.22, 0.36), (0.38, 0.36), (0.50, 0.66))


class SimulatedBackend:
    model = "simulated-v1"
    dim = 128
    source = "simulated"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def detect(self, data: bytes) -> list[Detection]:
        return self._square(decode_image(data, self.settings))

    @staticmethod
    def _square(image: np.ndarray) -> list[Detection]:
        height, width = image.shape[:2]
        side = int(0.6 * min(height, width))
        x1, y1 = (width - side) // 2, (height - side) // 2
        landmarks = tuple((x1 + round(fx * side), y1 + round(fy * side)) for fx, fy in _CANONICAL)
        return [Detection(box=(x1, y1, x1 + side, y1 + side), landmarks=landmarks, score=1.0)]

    def detect_decoded(self, decoded: Decoded) -> list[Detection]:
        return [f.scaled(decoded.scale) for f in self._square(decoded.image)]

    def embed(self, data: bytes, face: Detection) -> np.ndarray:
        image = decode_image(data, self.settings)
        x1, y1, x2, y2 = face.box
        return self._vector(image[y1:y2, x1:x2])

    def embed_chip(self, chip: np.ndarray) -> np.ndarray:
        return self._vector(chip)

    @staticmethod
    def _vector(crop_rgb: np.ndarray) -> np.ndarray:
        crop = cv2.cvtColor(np.ascontiguousarray(crop_rgb), cv2.COLOR_RGB2GRAY)
        small = cv2.resize(crop, (8, 16), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
        small -= small.mean()
        norm = float(np.linalg.norm(small)) or 1.0
        return (small / norm).astype(np.float32)
