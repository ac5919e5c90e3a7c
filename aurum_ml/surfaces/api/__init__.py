"""The HTTP API for apps that cannot call ``score_face.delay()`` (the miniapp's Next.js
backend): ``aurum-ml serve api``. A thin layer over the same tasks: see :mod:`.app`."""

from aurum_ml.surfaces.api.app import create_app

__all__ = ["create_app"]
