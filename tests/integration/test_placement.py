"""Faces scored at the same moment count each other (#8): the score stage places a face and
counts it in in one transaction; the store stage confirms it; a job that fails or is refused
after scoring takes it out again. Its own module: no worker may consume the store queue
while the faces are being scored."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from aurum_ml.pipeline.celery_app import app
from aurum_ml.pipeline.runtime import set_runtime
from aurum_ml.pipeline.tasks import CeleryResults, score_face
from aurum_ml.population.forget import forget_user
from aurum_ml.population.index import ScoreIndex, unit
from aurum_ml.population.vectors import VectorStore
from aurum_ml.surfaces.embedded import run_worker

from samples import b64, encode, read_rgb

TIMEOUT = 120
PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")


@pytest.fixture()
def empty_population(runtime, model, redis_client):
    """The test's own score index and Qdrant folder: an empty population."""
    folder = tempfile.mkdtemp(prefix="aurum-test-placement-")
    settings = runtime.settings.model_copy(update={"qdrant_path": Path(folder)})
    own = dataclasses.replace(
        runtime,
        settings=settings,
        index=ScoreIndex(redis_client, "placement-test", model.dim, pending_ttl_s=600),
        vectors=VectorStore(settings, "placement-test", model.dim),
    )
    own.index.clear()
    previous = set_runtime(own)
    try:
        yield own
    finally:
        set_runtime(previous)
        own.index.clear()
        own.vectors.close()


def _images(photos) -> list[bytes]:
    """Eight different photos: the four test photos and their mirror images."""
    rgb = [read_rgb(photos / name) for name in PHOTOS]
    return [encode(image) for image in rgb] + [encode(cv2.flip(image, 1)) for image in rgb]


def _wait_for(redis_client, queue: str, length: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while redis_client.llen(queue) < length:
        assert time.monotonic() < deadline, f"{queue} never held {length} messages"
        time.sleep(0.1)


def test_faces_scored_together_count_each_other(empty_population, photos, redis_client):
    rt = empty_population
    images = _images(photos)
    n = len(images)
    with run_worker(app, ["detect", "embed", "score"], concurrency=4, hostname="place@localhost"):
        jobs = [
            score_face.delay(b64(data), user_id=f"u-place-{i}") for i, data in enumerate(images)
        ]
        _wait_for(redis_client, "store", n)  # every face scored, none stored
    assert rt.index.count() == n  # counted in at score time

    # two of them fail after scoring: one user is erased, one job loses its embedding
    erased, expired = jobs[1].id, jobs[2].id
    forget_user(rt, "u-place-1", CeleryResults())
    rt.state.redis.delete(f"aurum:vec:{expired}")

    with run_worker(app, ["store"], hostname="place-store@localhost"):
        results = {}
        for job in jobs:
            try:
                results[job.id] = job.get(timeout=TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - the two failures are the point
                results[job.id] = exc
    assert type(results[erased]).__name__ == "UserErased"
    assert type(results[expired]).__name__ == "ImageExpired"
    scored = [r for r in results.values() if isinstance(r, dict)]
    assert all(r["status"] == "scored" for r in scored) and len(scored) == n - 2

    # totals 1..N at the moment of scoring (the two failed jobs held two of them)
    totals = sorted(r["total_faces"] for r in scored)
    assert len(set(totals)) == len(totals) and set(totals) <= set(range(1, n + 1))
    # each rank is what its typicality earned among the faces counted in before it
    typicality = {r["point_id"]: rt.vectors.get(r["point_id"])[1]["typicality"] for r in scored}
    by_total = sorted(scored, key=lambda r: r["total_faces"])
    for r in by_total:
        earlier = [
            typicality[q["point_id"]] for q in by_total if q["total_faces"] < r["total_faces"]
        ]
        higher = sum(t > typicality[r["point_id"]] for t in earlier)
        assert 1 + higher <= r["rank"] <= 1 + higher + (n - len(scored))  # + the failed two

    # nothing of the failed jobs stays in the index; its sums are the stored faces' exactly
    stored = {r["point_id"] for r in scored}
    assert rt.index.members() == stored
    total, count = rt.index._read_sum()
    vectors = rt.vectors.vectors_of(sorted(stored))
    assert count == len(stored)
    assert np.allclose(total, sum(unit(v) for v in vectors.values()), atol=1e-6)
    assert rt.index.pending_units(stored) == {}  # every stored face confirmed
