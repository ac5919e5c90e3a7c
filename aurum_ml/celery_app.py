"""The Celery app. Its settings all live in ``celeryconfig.py``; its tasks in ``tasks.py``."""

from __future__ import annotations

from celery import Celery

app = Celery("aurum_ml", include=["aurum_ml.tasks"])
app.config_from_object("celeryconfig")
