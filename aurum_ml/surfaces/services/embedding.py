"""The embedding service: ``POST /extract`` (alias ``/embed``) → the face's 128-d vector."""

from __future__ import annotations

import time

from fastapi import APIRouter, FastAPI

from aurum_ml.pipeline.backends import Detection
from aurum_ml.schemas import ExtractRequest, ExtractResponse
from aurum_ml.settings import Settings
from aurum_ml.surfaces.services.app import (
    LoadedModel,
    ServiceError,
    create_service,
    request_chip,
    request_image,
)

routes = APIRouter()


@routes.post("/extract", response_model=ExtractResponse)
@routes.post("/embed", response_model=ExtractResponse, include_in_schema=False)
def extract(request: ExtractRequest, model: LoadedModel) -> ExtractResponse:
    """With ``face``: align from its landmarks (no detection). Without: the largest face."""
    started = time.perf_counter()
    if request.chip_base64 is not None:
        vector = model.embed_chip(request_chip(request.chip_base64, model.settings))
        return ExtractResponse(
            embedding=[float(v) for v in vector],
            dim=len(vector),
            model=model.model,
            processing_time_ms=round((time.perf_counter() - started) * 1000, 1),
        )
    assert request.image_base64 is not None  # the schema requires one of the two
    decoded = request_image(request.image_base64, model.settings)
    image = decoded.image
    if request.face is not None:  # given in the coordinates of the image as sent
        x1, y1, x2, y2 = request.face.bounding_box
        face = Detection(
            box=(x1, y1, x2, y2),
            landmarks=tuple((int(p[0]), int(p[1])) for p in request.face.landmarks),
            score=0.0,
        ).scaled(1 / decoded.scale)
    else:
        faces = model.detect_image(image)
        if not faces:
            raise ServiceError(422, "no_face", "no face was found in the image")
        face = faces[0]
    vector = model.embed_image(image, face)
    return ExtractResponse(
        embedding=[float(v) for v in vector],
        dim=len(vector),
        model=model.model,
        processing_time_ms=round((time.perf_counter() - started) * 1000, 1),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service("embedding", routes, lambda m: m.model, settings)
