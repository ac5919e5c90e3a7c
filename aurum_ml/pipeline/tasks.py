"""Every Celery task of aurum_ml, at one address (the app's ``include``; the README's
``aurum_ml.tasks``). Each lives in the module of its part of the way:

- :mod:`~aurum_ml.pipeline.intake` — ``score_face``: check, admit, hand the job on;
- :mod:`~aurum_ml.pipeline.chain` — ``detect → embed → score → store``;
- :mod:`~aurum_ml.pipeline.notify` — ``notify``: the job's webhook;
- :mod:`~aurum_ml.pipeline.maintenance` — the re-rank, the probe, re-scoring, the lost-job
  sweep, the queries and erasure;
- :mod:`~aurum_ml.pipeline.lifecycle` — what all of them do around their work: retries,
  metrics, the job's end, redaction.

Tasks are thin: deserialise, call a plain function, return JSON. Logic lives in
``stages`` and in the population.
"""

from __future__ import annotations

from aurum_ml.pipeline.celery_app import app
from aurum_ml.pipeline.chain import detect, embed, score, store
from aurum_ml.pipeline.intake import score_face
from aurum_ml.pipeline.lifecycle import IntakeTask, PipelineTask, RedactedRequest
from aurum_ml.pipeline.maintenance import (
    CeleryResults,
    compact_persistence,
    forget_user,
    get_score,
    leaderboard,
    probe_health,
    redrive_stalled,
    rerank,
    rescore_degraded,
    similar,
    stage_backlog,
    stats,
    sweep_erased,
)
from aurum_ml.pipeline.notify import notify

__all__ = [
    "CeleryResults",
    "IntakeTask",
    "PipelineTask",
    "RedactedRequest",
    "app",
    "compact_persistence",
    "detect",
    "embed",
    "forget_user",
    "get_score",
    "leaderboard",
    "notify",
    "probe_health",
    "redrive_stalled",
    "rerank",
    "rescore_degraded",
    "score",
    "score_face",
    "similar",
    "stage_backlog",
    "stats",
    "store",
    "sweep_erased",
]
