"""Settings: every variable is documented, and impossible combinations are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from aurum_ml.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def test_env_example_lists_every_variable_and_no_other():
    listed = {
        line.split("=", 1)[0]
        for line in EXAMPLE.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert listed == {field.validation_alias for field in Settings.model_fields.values()}


def test_no_broker_means_the_embedded_default(tmp_path):
    s = Settings(
        broker_url=None, result_backend=None, redis_url=None, data_dir=tmp_path, qdrant_path=None
    )
    assert s.embedded and s.celery_broker_url.startswith("memory://")
    assert s.celery_result_backend == "cache+memory://" and s.state_url is None
    assert s.qdrant_folder == tmp_path / "qdrant"


def test_a_redis_broker_serves_as_backend_and_state():
    s = Settings(broker_url="redis://h:6379/0", result_backend=None, redis_url=None)
    assert not s.embedded
    assert s.celery_result_backend == s.state_url == "redis://h:6379/0"


def test_rabbitmq_needs_a_redis_for_state_and_results():
    with pytest.raises(ValidationError, match="AURUM_REDIS_URL is required"):
        Settings(broker_url="amqp://guest@h//", result_backend=None, redis_url=None)


def test_values_are_validated():
    with pytest.raises(ValidationError):
        Settings(simulated_ml_threshold=1.5)
    with pytest.raises(ValidationError):
        Settings(detector="yolo")
