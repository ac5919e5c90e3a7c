"""docker-compose.yml stays consistent with the code (no Docker engine here to run it):
every queue has its worker pool, one beat, real commands, known variables, private ports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aurum_ml.settings import Settings
from aurum_ml.surfaces.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _commands(compose: dict) -> dict[str, list[str]]:
    return {name: s.get("command", []) for name, s in compose["services"].items()}


def test_every_queue_has_exactly_one_worker_pool(compose):
    from aurum_ml.pipeline.celery_app import config

    consumed: list[str] = []
    for command in _commands(compose).values():
        if command[:4] == ["celery", "-A", "aurum_ml", "worker"]:
            consumed += command[command.index("-Q") + 1].split(",")
    assert sorted(consumed) == sorted(config.QUEUES)


def test_one_beat_and_it_keeps_its_schedule(compose):
    beats = [n for n, c in _commands(compose).items() if c[3:4] == ["beat"]]
    assert beats == ["beat"]
    assert compose["services"]["beat"]["deploy"]["replicas"] == 1


def test_the_aurum_commands_exist(compose):
    for command in _commands(compose).values():
        if command and command[0] == "aurum-ml":
            assert command[1] in cli.commands, command
            if command[1] == "serve":
                assert command[2] in ("detection", "embedding", "api")


def test_environment_names_are_settings(compose):
    known = {field.validation_alias for field in Settings.model_fields.values()}
    environment = compose["x-app"]["environment"]
    assert set(environment) <= known
    assert environment["QDRANT_URL"].startswith("http://qdrant:")  # a server: many stores


def test_published_ports_are_private(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_the_api_needs_keys_and_webhooks_have_their_worker(compose):
    api = compose["services"]["api"]
    assert api["command"][:3] == ["aurum-ml", "serve", "api"]
    assert "0.0.0.0" in api["command"]  # so: keys are required (the CLI refuses otherwise)
    assert api["environment"]["AURUM_API_KEYS"].startswith("${AURUM_API_KEYS:?")
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    notify = compose["services"]["worker-notify"]["command"]
    assert notify[notify.index("-Q") + 1] == "notify" and "threads" in notify


def test_prometheus_and_grafana_are_provisioned_from_deploy(compose):
    prometheus, grafana = compose["services"]["prometheus"], compose["services"]["grafana"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    mounts = " ".join(grafana["volumes"])
    assert "./deploy/grafana/provisioning:" in mounts and "./deploy/grafana/dashboards:" in mounts
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${")
    # what prometheus.yml scrapes are this file's services, on the ports they serve
    scraped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    for job in scraped["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            service = compose["services"][host]
            assert port in " ".join(service["command"] + service.get("ports", [])), target
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "aurum.json").read_text())
    provisioned = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uid = provisioned["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {uid}
