"""The per-process objects the tasks work with, built once from the settings.

A worker process builds its runtime lazily on its first task (after the prefork pool has
forked, so no connection or model is shared across processes). Tests and the embedded
default may install one of their own with :func:`set_runtime`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from aurum_ml.connection import connect
from aurum_ml.pipeline import stages
from aurum_ml.pipeline.backends import FaceBackend
from aurum_ml.pipeline.backends.http import HttpFaceBackend
from aurum_ml.pipeline.backends.local import LocalFaceModel
from aurum_ml.pipeline.backends.simulated import SimulatedBackend
from aurum_ml.pipeline.ledger import InFlight
from aurum_ml.pipeline.state import DegradedJobs, JobOwners, PipelineState
from aurum_ml.pipeline.webhooks import HookRecords
from aurum_ml.population.forget import ErasedJobs
from aurum_ml.population.handles import Population
from aurum_ml.population.index import ScoreIndex
from aurum_ml.population.users import UserRecords
from aurum_ml.population.vectors import VectorStore, point_id
from aurum_ml.schemas import Job, Result
from aurum_ml.settings import Settings, get_settings

__all__ = ["Runtime", "build_runtime", "get_runtime", "set_runtime"]


@dataclass(frozen=True)
class Runtime(Population):
    """The population's handles (settings, redis, vectors, index, users) and the pipeline's:
    the models, the services, the jobs' state in flight."""

    state: PipelineState
    local: LocalFaceModel  # the in-process models
    fallback: FaceBackend  # FALLBACK_BACKEND: ``local`` or the simulated backend
    detect_service: HttpFaceBackend | None  # None: USE_REAL_ML off or no URL
    embed_service: HttpFaceBackend | None
    degraded: DegradedJobs
    hooks: HookRecords  # webhooks wanted for jobs (aurum_ml.pipeline.webhooks)
    inflight: InFlight  # jobs between intake and their end (aurum_ml.pipeline.redrive)

    # The stages, wired to this runtime's parts (the tasks and the re-score call these).
    # ``state``: a HandOff when intake runs the stages itself (the image and chip in memory)
    def detect(self, job: Job, backend: FaceBackend, state: PipelineState | None = None) -> Job:
        return stages.detect(
            job, state=state or self.state, backend=backend, settings=self.settings
        )

    def embed(self, job: Job, backend: FaceBackend, state: PipelineState | None = None) -> Job:
        return stages.embed(job, state=state or self.state, backend=backend)

    def score(self, job: Job, state: PipelineState | None = None) -> Job:
        return stages.score(
            job, state=state or self.state, index=self.index, settings=self.settings
        )

    def store(self, job: Job) -> Result:
        return stages.store(
            job,
            state=self.state,
            vectors=self.vectors,
            index=self.index,
            users=self.users,
            degraded=self.degraded,
            settings=self.settings,
        )

    def erase_jobs(self, user_id: str, job_ids: list[str], images: list[str]) -> ErasedJobs:
        """The pipeline's part of an erasure (aurum_ml.population.forget.JobRecords): the user's
        jobs
        waiting for a re-score, their images, chips and vectors, pending webhooks (one not
        yet sent reads the gone result: none), ledger entries (a job in flight stops at its
        next stage anyway) and owners (the API's status URLs: 404 from now)."""
        degraded_jobs, degraded_images = self.degraded.forget_user(user_id)
        all_jobs = sorted({*job_ids, *degraded_jobs})
        in_flight = self.state.drop(sorted({*images, *degraded_images}), all_jobs)
        self.hooks.drop(all_jobs)
        self.inflight.done(*all_jobs)
        JobOwners(self.state.redis, 0).drop(*all_jobs)
        return ErasedJobs(all_jobs, len(degraded_jobs), in_flight)

    def release_failed(self, job: Job) -> None:
        """A job that failed for good lets go of its image, its vector, its place in the
        score index if it was scored and not stored, and the user's pending cooldown
        reservation (a scored cooldown is left alone)."""
        if job.model is not None:  # the score stage may have counted it in
            self.index.withdraw(
                job.point_id or point_id(job.user_id, job.image_sha256, 0, job.model)
            )
        self.users.rejected(job.user_id, job.image_sha256, job.job_id)
        self.state.release(job.image_sha256, job.job_id)


def build_runtime(settings: Settings, local: LocalFaceModel | None = None) -> Runtime:
    """Cheap: connections and models open lazily on first use. A stage uses its service
    when ``USE_REAL_ML`` is true and the service's URL is set; otherwise the fallback."""
    client = connect(settings)
    local = local or LocalFaceModel(settings)
    detect_url = settings.face_detection_service if settings.use_real_ml else None
    embed_url = settings.face_embedding_service if settings.use_real_ml else None
    fallback: FaceBackend = (
        SimulatedBackend(settings) if settings.fallback_backend == "simulated" else local
    )
    return Runtime(
        settings=settings,
        redis=client,
        state=PipelineState(client, settings.image_ttl_s),
        local=local,
        fallback=fallback,
        detect_service=HttpFaceBackend(settings, detect_url, None) if detect_url else None,
        embed_service=HttpFaceBackend(settings, None, embed_url) if embed_url else None,
        vectors=VectorStore(settings, local.model, local.dim),
        index=ScoreIndex(client, local.model, local.dim, pending_ttl_s=settings.image_ttl_s + 600),
        users=UserRecords(
            client,
            cooldown_s=settings.cooldown_s,
            pending_ttl_s=settings.image_ttl_s,
            keep_s=settings.result_expires_s,
        ),
        degraded=DegradedJobs(client, keep_s=max(settings.result_expires_s, 7 * 86400)),
        hooks=HookRecords(client, keep_s=settings.result_expires_s),
        inflight=InFlight(client, keep_s=settings.result_expires_s),
    )


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = build_runtime(get_settings())
        return _runtime


def set_runtime(runtime: Runtime | None) -> Runtime | None:
    """Install ``runtime`` for this process; returns the one it replaces."""
    global _runtime
    with _lock:
        previous, _runtime = _runtime, runtime
        return previous
