"""The real detection and embedding services, started as `aurum-ml serve` subprocesses on
free loopback ports, with a bearer token and small limits (to reach them with small files)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from servers import TOKEN, ServiceProcess


def _serve(kind: str, tmp_path_factory) -> Iterator[str]:
    service = ServiceProcess(kind, tmp_path_factory.mktemp(kind)).start()
    yield service.url
    service.stop()


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
