"""The real detection and embedding services, started as `aurum-ml serve` subprocesses on
free loopback ports, with a bearer token and small limits (to reach them with small files)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests

TOKEN = "test-token"  # test_client.py uses the same
LIMITS = {"IMAGE_MAX_BYTES": "2000000", "IMAGE_MAX_PIXELS": "8000000"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(kind: str, tmp_path_factory) -> Iterator[str]:
    port = _free_port()
    env = dict(os.environ, ML_SERVICE_TOKEN=TOKEN, **LIMITS)
    log = (tmp_path_factory.mktemp(kind) / "service.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "aurum_ml.cli", "serve", kind, "--port", str(port),
         "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"the {kind} service exited"
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, f"the {kind} service did not become healthy"
        time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(20)
    log.close()


@pytest.fixture(scope="session")
def detection_url(tmp_path_factory) -> Iterator[str]:
    yield from _serve("detection", tmp_path_factory)


@pytest.fixture(scope="session")
def embedding_url(tmp_path_factory) -> Iterator[str]:
    yield from _serve("embedding", tmp_path_factory)


@pytest.fixture(scope="session")
def token() -> str:
    return TOKEN


@pytest.fixture()
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}
