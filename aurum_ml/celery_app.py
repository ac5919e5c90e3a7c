"""The Celery app. Its settings all live in ``celeryconfig.py``; its tasks in ``tasks.py``."""

from __future__ import annotations

from celery import Celery

from aurum_ml import logs

logs.install()  # what a log line may contain: see aurum_ml.logs
app = Celery("aurum_ml", include=["aurum_ml.tasks"])
app.config_from_object("celeryconfig")
