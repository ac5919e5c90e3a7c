"""The pipeline's stages as plain functions: Job in, Job out; no Celery here.

Each stage passes a rejected job through untouched, so the chain stays flat and the last
stage always produces the caller's result. Each is safe to run twice.
"""

from aurum_ml.pipeline.stages.detect import detect
from aurum_ml.pipeline.stages.embed import embed
from aurum_ml.pipeline.stages.score import score
from aurum_ml.pipeline.stages.store import store

__all__ = ["detect", "embed", "score", "store"]
