"""The detection service: ``POST /detect`` → faces (box, score, 5 landmarks)."""

from __future__ import annotations

import time

from fastapi import APIRouter, FastAPI

from aurum_ml.schemas import DetectedFace, DetectRequest, DetectResponse
from aurum_ml.settings import Settings
from aurum_ml.surfaces.services.app import LoadedModel, create_service, request_image

routes = APIRouter()


@routes.post("/detect", response_model=DetectResponse)
def detect(request: DetectRequest, model: LoadedModel) -> DetectResponse:
    """Faces in the image, largest first, scoring at least ``min_confidence``."""
    started = time.perf_counter()
    decoded = request_image(request.image_base64, model.settings)
    image, scale = decoded.image, decoded.scale
    faces = [
        face.scaled(scale)  # in the coordinates of the image as sent
        for face in model.detect_image(
            image, upsample=request.upsample, min_score=request.min_confidence
        )
    ]
    if request.max_faces is not None:
        faces = faces[: request.max_faces]
    return DetectResponse(
        faces=[
            DetectedFace(
                bounding_box=list(f.box), score=f.score, landmarks=[list(p) for p in f.landmarks]
            )
            for f in faces
        ],
        image_width=image.shape[1] * scale,
        image_height=image.shape[0] * scale,
        model=model.detector_id,
        processing_time_ms=round((time.perf_counter() - started) * 1000, 1),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service("detection", routes, lambda m: m.detector_id, settings)
