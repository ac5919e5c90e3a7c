"""The in-flight ledger: every job between its submission and its end, kept in Redis apart
from the broker, so that a job whose message the broker lost is found and sent again
(:mod:`aurum_ml.pipeline.redrive`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from kombu.utils.json import dumps, loads

from aurum_ml import keys
from aurum_ml.connection import redis_errors
from aurum_ml.request import requested_image, staged_sha256
from aurum_ml.schemas import Job

__all__ = ["InFlight", "LedgerEntry"]


@dataclass(frozen=True)
class LedgerEntry:
    """A job in the in-flight ledger: its request as the caller sent it (naming the image
    the caller stored, or with the image inline if Redis refused to store it)
    until intake starts on it, then the job as intake admitted it (no image)."""

    user_id: str
    epoch: int
    redrives: int
    request: dict[str, Any] | None = None  # {"args": [...], "kwargs": {...}}
    job: Job | None = None

    @property
    def image_sha256(self) -> str | None:
        """The content hash of the job's stored image: the admitted job's, or the one its
        caller stored and the request names (None: the image travels in the request)."""
        if self.job is not None:
            return self.job.image_sha256
        return staged_sha256(requested_image(self.request)) if self.request else None


class InFlight:
    """The ledger of jobs between their submission and their end, kept apart from the
    broker, so a job whose message the broker lost (a crash between its last fsync and the
    restart, a message popped by a worker that died before it recorded it) is found and
    sent again (aurum_ml.pipeline.redrive).

    ``aurum:inflight`` is a sorted set of job ids scored by the time the job was sent or a
    stage last ran on it; ``aurum:inflight:job:{id}`` a hash: the user id, the erasure
    epoch, how often the job was sent again, and either the request as the caller sent it
    (with the image only if the caller could not store it ahead: kept at most the image
    TTL, and dropped as soon as intake starts)
    or the job as intake admitted it (ids, hashes and flags: no image, no vector). A job's
    end (its result stored, or a failure) removes both."""

    _ids = keys.INFLIGHT
    _key = staticmethod(keys.inflight_job)

    def __init__(self, client: Any, keep_s: int) -> None:
        self.redis = client
        self.keep_s = keep_s

    def submitted(
        self, job_id: str, user_id: str, epoch: int, request: dict[str, Any], ttl_s: int
    ) -> None:
        """The caller is about to publish the job (``request``: its args and kwargs)."""
        key = self._key(job_id)
        fields = {"request": dumps(request), "user_id": user_id, "epoch": epoch, "redrives": 0}
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, ttl_s)
            pipe.zadd(self._ids, {job_id: time.time()})
            pipe.execute()

    def enter(self, job: Job) -> None:
        """Intake admitted the job: the request leaves the ledger."""
        key = self._key(job.job_id)
        fields = {"job": job.model_dump_json(), "user_id": job.user_id, "epoch": job.epoch}
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.hdel(key, "request")
            pipe.hsetnx(key, "redrives", 0)
            pipe.expire(key, self.keep_s)
            pipe.zadd(self._ids, {job.job_id: time.time()})
            pipe.execute()

    def touch(self, job_id: str, pipe: Any) -> None:
        """A stage ran on the job (on ``pipe``, executed by the caller; a job no longer in
        the ledger stays out)."""
        pipe.zadd(self._ids, {job_id: time.time()}, xx=True)

    def end(self, job_id: str, pipe: Any) -> None:
        """The job ended (on ``pipe``, executed by the caller)."""
        pipe.zrem(self._ids, job_id)
        pipe.delete(self._key(job_id))

    def done(self, *job_ids: str) -> None:
        if not job_ids:
            return
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._ids, *job_ids)
            pipe.delete(*(self._key(j) for j in job_ids))
            pipe.execute()

    def stalled(self, idle_s: float) -> list[str]:
        """Jobs no stage ran on for ``idle_s`` seconds, oldest first."""
        with redis_errors():
            ids = self.redis.zrangebyscore(self._ids, "-inf", time.time() - idle_s)
        return [i.decode() for i in ids]

    def oldest_age_s(self) -> float | None:
        with redis_errors():
            first = self.redis.zrange(self._ids, 0, 0, withscores=True)
        return time.time() - first[0][1] if first else None

    def count(self) -> int:
        with redis_errors():
            return int(self.redis.zcard(self._ids))

    def load(self, job_id: str) -> LedgerEntry | None:
        with redis_errors():
            raw = self.redis.hgetall(self._key(job_id))
        if b"job" not in raw and b"request" not in raw:
            return None  # expired
        return LedgerEntry(
            user_id=raw.get(b"user_id", b"").decode(),
            epoch=int(raw.get(b"epoch", 0)),
            redrives=int(raw.get(b"redrives", 0)),
            request=loads(raw[b"request"]) if b"request" in raw else None,
            job=Job.model_validate_json(raw[b"job"]) if b"job" in raw else None,
        )

    def redriven(self, job_id: str) -> None:
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(self._key(job_id), "redrives", 1)
            pipe.zadd(self._ids, {job_id: time.time()})
            pipe.execute()
