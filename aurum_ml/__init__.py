"""aurum_ml: face scoring for Aurum Circle — detect → embed → score → store on Celery.

``celery -A aurum_ml worker -Q detect`` finds the app as ``aurum_ml.app``; it is loaded on
first access, so importing ``aurum_ml.errors`` or ``aurum_ml.schemas`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "app"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from aurum_ml.pipeline.celery_app import app

        return app
    raise AttributeError(f"module 'aurum_ml' has no attribute {name!r}")
