"""Pipeline state in Redis: image bytes by content hash, embeddings by job, both with a TTL.

Keys (all expire after ``IMAGE_TTL_SECONDS``):

- ``aurum:img:{sha256}``     the image bytes, stored once however many jobs use them;
- ``aurum:imgref:{sha256}``  the set of job ids still needing them — the bytes are deleted
  when the last job is stored, so two concurrent jobs on one photo never starve each other;
- ``aurum:vec:{job_id}``     the job's embedding (float32 bytes) between embed and store;
- ``aurum:chip:{job_id}``    the aligned 150 × 150 face chip (RGB bytes, 67.5 KB) the detect
  stage cut, for the embed stage: the only stage after detect that needs pixels.

In the embedded default the same code runs on an in-process fakeredis server.
redis-py exceptions become :class:`StateUnavailable` in :mod:`aurum_ml.connection`.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import numpy as np
import redis

from aurum_ml import keys
from aurum_ml.connection import redis_errors
from aurum_ml.errors import ImageExpired
from aurum_ml.schemas import Job

__all__ = [
    "DegradedJobs",
    "HandOff",
    "JobOwners",
    "PipelineState",
]


class PipelineState:
    """Images and embeddings in flight. Every method is safe to call twice."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.redis: Any = client  # redis-py's return types are unions; we use bytes
        self.ttl_s = ttl_s

    _image_key = staticmethod(keys.image)
    _refs_key = staticmethod(keys.image_refs)

    @staticmethod
    def _vector_key(job_id: str) -> str:
        return f"aurum:vec:{job_id}"

    def put_image(self, sha256: str, data: bytes, job_id: str) -> None:
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._image_key(sha256), data, ex=self.ttl_s)
            pipe.sadd(self._refs_key(sha256), job_id)
            pipe.expire(self._refs_key(sha256), self.ttl_s)
            pipe.execute()

    def get_image(self, sha256: str) -> bytes:
        with redis_errors():
            data = self.redis.get(self._image_key(sha256))
        if data is None:
            raise ImageExpired("the image is no longer stored (its TTL passed); submit it again")
        return bytes(data)

    @staticmethod
    def _chip_key(job_id: str) -> str:
        return f"aurum:chip:{job_id}"

    def put_chip(self, job_id: str, chip: np.ndarray) -> None:
        with redis_errors():
            self.redis.set(self._chip_key(job_id), np.ascontiguousarray(chip).tobytes(),
                           ex=self.ttl_s)  # fmt: skip

    def get_chip(self, job_id: str, side: int = 150) -> np.ndarray | None:
        with redis_errors():
            data = self.redis.get(self._chip_key(job_id))
        if data is None or len(data) != side * side * 3:
            return None
        return np.frombuffer(data, dtype=np.uint8).reshape(side, side, 3).copy()

    def put_embedding(self, job_id: str, vector: np.ndarray) -> None:
        with redis_errors():
            self.redis.set(
                self._vector_key(job_id), vector.astype(np.float32).tobytes(), ex=self.ttl_s
            )

    def get_embedding(self, job_id: str) -> np.ndarray | None:
        with redis_errors():
            data = self.redis.get(self._vector_key(job_id))
        if data is None:
            return None
        return np.frombuffer(data, dtype=np.float32).copy()

    def staged_image(self, sha256: str, job_id: str) -> bytes | None:
        """The image a caller stored for ``job_id`` ahead of its message; None if it is gone
        or was stored for other jobs only (a reference names an image only for the job it
        was stored for)."""
        with redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self._image_key(sha256))
            pipe.sismember(self._refs_key(sha256), job_id)
            data, ours = pipe.execute()
        return bytes(data) if data is not None and ours else None

    def has_image(self, sha256: str) -> bool:
        with redis_errors():
            return bool(self.redis.exists(self._image_key(sha256)))

    def drop(self, sha256s: list[str], job_ids: list[str]) -> int:
        """An erasure: delete the jobs' embeddings and face chips, take the jobs off their
        images, and delete each image no other job needs — another user may have sent the
        same bytes, and their job must not lose its image (a job of the erased user the
        records did not name keeps it until that job ends, which stores nothing, or its
        TTL). Returns the keys deleted."""
        deleted = 0
        derived = [self._vector_key(j) for j in job_ids] + [self._chip_key(j) for j in job_ids]
        with redis_errors():
            if derived:
                deleted += int(self.redis.delete(*derived))
            for sha256 in sha256s:
                refs = self._refs_key(sha256)

                def take_off(pipe: Any, refs: str = refs, sha256: str = sha256) -> int:
                    remaining = set(pipe.smembers(refs)) - {j.encode() for j in job_ids}
                    pipe.multi()
                    if job_ids:
                        pipe.srem(refs, *job_ids)
                    if not remaining:
                        pipe.delete(self._image_key(sha256), refs)
                    return 0 if remaining else 2

                deleted += int(self.redis.transaction(take_off, refs, value_from_callable=True))
        return deleted

    def drop_derived(self, job_id: str) -> None:
        """The job's embedding and face chip, which nothing reads again (a degraded job
        keeps its image for the re-score, which derives them anew)."""
        with redis_errors():
            self.redis.delete(self._vector_key(job_id), self._chip_key(job_id))

    def release(self, sha256: str, job_id: str) -> None:
        """The job is done with its image and embedding: delete them (the image only when
        no other job still needs it)."""
        refs = self._refs_key(sha256)

        def drop(pipe: Any) -> None:
            remaining = set(pipe.smembers(refs)) - {job_id.encode()}
            pipe.multi()
            pipe.srem(refs, job_id)
            pipe.delete(self._vector_key(job_id), self._chip_key(job_id))
            if not remaining:
                pipe.delete(self._image_key(sha256), refs)

        with redis_errors():
            # WATCH refs: a job that adds itself meanwhile makes the transaction run again.
            self.redis.transaction(drop, refs)


class HandOff(PipelineState):
    """One job's image and face chip handed from stage to stage inside one process (intake
    running detect, embed and score itself): the image intake read, the chip detect cut,
    never through Redis. Everything else — the embedding for the store stage, releases —
    goes to Redis as usual. A later stage elsewhere that finds no chip cuts it again from
    the stored image (aurum_ml.pipeline.stages.embed)."""

    def __init__(self, state: PipelineState, sha256: str, image: bytes) -> None:
        super().__init__(state.redis, state.ttl_s)
        self._sha256, self._image = sha256, image
        self._chips: dict[str, np.ndarray] = {}
        self._vectors: dict[str, np.ndarray] = {}

    def get_image(self, sha256: str) -> bytes:
        return self._image if sha256 == self._sha256 else super().get_image(sha256)

    def put_chip(self, job_id: str, chip: np.ndarray) -> None:
        self._chips[job_id] = chip

    def get_chip(self, job_id: str, side: int = 150) -> np.ndarray | None:
        chip = self._chips.get(job_id)
        return chip if chip is not None else super().get_chip(job_id, side)

    def put_embedding(self, job_id: str, vector: np.ndarray) -> None:
        super().put_embedding(job_id, vector)  # the store stage reads it from Redis
        self._vectors[job_id] = vector.astype(np.float32)

    def get_embedding(self, job_id: str) -> np.ndarray | None:
        vector = self._vectors.get(job_id)
        return vector if vector is not None else super().get_embedding(job_id)


class DegradedJobs:
    """Jobs answered by the simulated fallback, waiting to be re-scored
    (aurum_ml.pipeline.recovery)."""

    _ids = "aurum:degraded"
    _expired = "aurum:degraded:expired"
    _lock = "aurum:degraded:lock"

    def __init__(self, client: Any, keep_s: int) -> None:
        self.redis = client
        self.keep_s = keep_s

    def _key(self, job_id: str) -> str:
        return f"aurum:degraded:job:{job_id}"

    def record(self, job: Job) -> None:
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(job.job_id), job.model_dump_json(), ex=self.keep_s)
            pipe.zadd(self._ids, {job.job_id: job.submitted_at})
            pipe.execute()

    def pending(self) -> list[str]:
        with redis_errors():
            return [m.decode() for m in self.redis.zrange(self._ids, 0, -1)]

    def expired(self) -> list[str]:
        """Jobs whose image expired before their re-score, for ``keep_s`` after that (a
        user to ask for a new photo); older entries are dropped here."""
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(self._expired, "-inf", time.time() - self.keep_s)
            pipe.zrange(self._expired, 0, -1)
            _, members = pipe.execute()
        return [m.decode() for m in members]

    def load(self, job_id: str) -> Job | None:
        with redis_errors():
            raw = self.redis.get(self._key(job_id))
        return None if raw is None else Job.model_validate_json(raw)

    def done(self, job_id: str) -> None:
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._ids, job_id)
            pipe.delete(self._key(job_id))
            pipe.execute()

    def forget_user(self, user_id: str) -> tuple[list[str], list[str]]:
        """Drop the user's degraded jobs, waiting or expired. Returns (job ids, image
        hashes) so the caller can drop the images too."""
        job_ids, images = [], []
        with redis_errors():
            candidates = {m.decode() for m in self.redis.zrange(self._ids, 0, -1)}
            candidates |= {m.decode() for m in self.redis.zrange(self._expired, 0, -1)}
        for job_id in sorted(candidates):
            record = self.load(job_id)
            if record is None or record.user_id != user_id:
                continue
            job_ids.append(job_id)
            images.append(record.image_sha256)
            with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._ids, job_id)
                pipe.zrem(self._expired, job_id)
                pipe.delete(self._key(job_id))
                pipe.execute()
        return job_ids, images

    def expire(self, job_id: str) -> bool:
        """Move a job still waiting to the expired list (its record kept as long, so an
        erasure finds it there). A job no longer waiting — erased, or taken by another
        run — is left alone: False."""

        def move(pipe: Any) -> bool:
            if pipe.zscore(self._ids, job_id) is None:
                return False
            pipe.multi()
            pipe.zrem(self._ids, job_id)
            pipe.zadd(self._expired, {job_id: time.time()})
            pipe.expire(self._expired, self.keep_s)
            pipe.expire(self._key(job_id), self.keep_s)
            return True

        with redis_errors():
            return bool(self.redis.transaction(move, self._ids, value_from_callable=True))

    def lock(self, lease_s: int) -> str | None:
        """One re-score at a time: a token for the run that holds the lock (it expires
        after ``lease_s``, so a killed run never blocks the next), None if one runs."""
        token = secrets.token_hex(8)
        with redis_errors():
            return token if self.redis.set(self._lock, token, nx=True, ex=lease_s) else None

    def unlock(self, token: str) -> None:
        def release(pipe: Any) -> None:
            held = pipe.get(self._lock)
            pipe.multi()
            if held is not None and held.decode() == token:
                pipe.delete(self._lock)

        with redis_errors():
            self.redis.transaction(release, self._lock)


class JobOwners:
    """The HTTP API's ``aurum:api:job:{job_id}`` → the name of the key that submitted it
    (no user data). An erasure drops its jobs' records: their status URLs answer 404."""

    def __init__(self, client: Any, keep_s: int) -> None:
        self.redis, self.keep_s = client, keep_s

    def issue(self, job_id: str, key: str, kind: str) -> None:
        with redis_errors():
            self.redis.set(f"aurum:api:job:{job_id}", f"{kind}:{key}", ex=self.keep_s)

    def owner(self, job_id: str) -> tuple[str, str] | None:
        with redis_errors():
            raw = self.redis.get(f"aurum:api:job:{job_id}")
        if raw is None:
            return None
        kind, _, key = raw.decode().partition(":")
        return kind, key

    def drop(self, *job_ids: str) -> None:
        if job_ids:
            with redis_errors():
                self.redis.delete(*(f"aurum:api:job:{j}" for j in job_ids))
