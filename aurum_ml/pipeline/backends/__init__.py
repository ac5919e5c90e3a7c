"""Face backends: one interface, several implementations.

- :mod:`aurum_ml.pipeline.backends.local` — dlib models in this process (the default and
  the fallback);
- :mod:`aurum_ml.pipeline.backends.http` — the client of our detection and embedding services.

A backend takes the image *bytes* (a service gets them as sent, never re-encoded), finds
faces (:class:`Detection`) and turns one face into a 128-d vector. Bad bytes raise
:class:`~aurum_ml.errors.BadInput` with a reason code, whichever backend read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["Detection", "FaceBackend"]


@dataclass(frozen=True)
class Detection:
    """One face. ``box`` is ``(x1, y1, x2, y2)`` in px of the full image, clipped to it;
    ``landmarks`` are the 5 dlib points ``(x, y)`` in px (two per eye corner pair, then the
    base of the nose); ``score`` is the detector's confidence (HOG: ~0.7–2.4 for real faces).
    """

    box: tuple[int, int, int, int]
    landmarks: tuple[tuple[int, int], ...]
    score: float

    def scaled(self, factor: float) -> Detection:
        """The same face in an image ``factor`` times as large (coordinates rounded)."""
        if factor == 1:
            return self
        x1, y1, x2, y2 = self.box
        return Detection(
            box=(round(x1 * factor), round(y1 * factor), round(x2 * factor), round(y2 * factor)),
            landmarks=tuple((round(x * factor), round(y * factor)) for x, y in self.landmarks),
            score=self.score,
        )

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


class FaceBackend(Protocol):
    """What the detect and embed stages need from a model."""

    model: str  # model id, e.g. "dlib-resnet-v1"; names the Qdrant collection
    dim: int  # embedding dimension
    source: str  # "local" | "service" | "simulated": reported in results

    def detect(self, data: bytes) -> list[Detection]:
        """Faces in the encoded image, largest first."""
        ...

    def embed(self, data: bytes, face: Detection) -> np.ndarray:
        """A float32 vector of length ``dim`` for ``face`` in the encoded image."""
        ...

    def embed_chip(self, chip: np.ndarray) -> np.ndarray:
        """The same vector from the face's aligned 150 × 150 RGB chip (see
        :func:`aurum_ml.pipeline.backends.local.face_chip`): what the pipeline's embed stage
        sends."""
        ...
