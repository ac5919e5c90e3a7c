"""Per-user records in Redis: cooldown, the latest result, and what to erase on request.

Keys (``{uid}`` is the user id):

- ``aurum:user:{uid}:cooldown``  JSON ``{sha256, job_id, state, until}``: ``pending`` while a
  photo is being scored (expires with the image TTL, released if the photo is rejected),
  ``scored`` for the cooldown period after a photo was stored;
- ``aurum:user:{uid}:result``    the latest stored result (JSON), for ``get_score`` and for
  answering a re-submitted photo without scoring it again;
- ``aurum:user:{uid}:jobs``      job ids, so ``forget_user`` can erase their results;
- ``aurum:user:{uid}:images``    image hashes still in flight.

A hashed tombstone ``aurum:forgotten:{sha256(uid)}`` tells a store stage still in flight
that its user was erased after the job was submitted.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis

from aurum_ml.state import redis_errors

__all__ = ["Admission", "UserRecords"]


@dataclass(frozen=True)
class Admission:
    """What intake may do with a new photo of a user."""

    verdict: Literal["score", "stored", "cooldown"]
    result: dict[str, Any] | None = None  # with "stored": the result to return as is
    until: float | None = None  # with "cooldown": unix time a new photo is allowed

    @property
    def until_iso(self) -> str | None:
        return None if self.until is None else datetime.fromtimestamp(self.until, UTC).isoformat()


class UserRecords:
    def __init__(
        self, client: redis.Redis, *, cooldown_s: int, pending_ttl_s: int, keep_s: int
    ) -> None:
        self.redis: Any = client  # redis-py's return types are unions; we use bytes
        self.cooldown_s = cooldown_s
        self.pending_ttl_s = pending_ttl_s
        self.keep_s = keep_s  # how long job ids and the cached result are kept

    @staticmethod
    def _key(user_id: str, what: str) -> str:
        return f"aurum:user:{user_id}:{what}"

    @staticmethod
    def _tombstone(user_id: str) -> str:
        return f"aurum:forgotten:{hashlib.sha256(user_id.encode()).hexdigest()}"

    # --- intake -----------------------------------------------------------------------------
    def note_job(self, user_id: str, job_id: str) -> None:
        """Remember the job id, so ``forget`` can erase its result."""
        key = self._key(user_id, "jobs")
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, job_id)
            pipe.expire(key, self.keep_s)
            pipe.execute()

    def admit(self, user_id: str, sha256: str, job_id: str) -> Admission:
        """May this photo be scored now? Reserves the user's cooldown slot for it."""
        if self.cooldown_s > 0:
            admission = self._reserve(user_id, sha256, job_id)
            if admission.verdict != "score":
                return admission
        key = self._key(user_id, "images")
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, sha256)
            pipe.expire(key, self.pending_ttl_s)
            pipe.execute()
        return Admission("score")

    def _reserve(self, user_id: str, sha256: str, job_id: str) -> Admission:
        key = self._key(user_id, "cooldown")
        now = time.time()
        pending = {"sha256": sha256, "job_id": job_id, "state": "pending", "until": now}
        with redis_errors():
            if self.redis.set(key, json.dumps(pending), nx=True, ex=self.pending_ttl_s):
                return Admission("score")
            raw = self.redis.get(key)
            ttl = int(self.redis.ttl(key))
        if raw is None:  # expired between the two calls
            return self._reserve(user_id, sha256, job_id)
        held = json.loads(raw)
        if held["sha256"] == sha256:
            cached = self.latest_result(user_id) if held["state"] == "scored" else None
            if cached is not None and cached.get("status") == "scored":
                return Admission("stored", result=cached)
            return Admission("score")  # the same photo again: idempotent, same point
        until = held["until"] if held["state"] == "scored" else now + max(0, ttl)
        return Admission("cooldown", until=until)

    # --- after the store stage ----------------------------------------------------------------
    def scored(self, user_id: str, sha256: str, job_id: str, result: dict[str, Any]) -> None:
        """Start the cooldown and cache the result."""
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            if self.cooldown_s > 0:
                record = {
                    "sha256": sha256,
                    "job_id": job_id,
                    "state": "scored",
                    "until": time.time() + self.cooldown_s,
                }
                pipe.set(self._key(user_id, "cooldown"), json.dumps(record), ex=self.cooldown_s)
            pipe.set(
                self._key(user_id, "result"),
                json.dumps(result),
                ex=max(self.keep_s, self.cooldown_s),
            )
            pipe.srem(self._key(user_id, "images"), sha256)
            pipe.execute()

    def rejected(self, user_id: str, sha256: str, job_id: str) -> None:
        """Release this job's pending reservation, if it still holds it."""
        key = self._key(user_id, "cooldown")

        def release(pipe: Any) -> None:
            raw = pipe.get(key)
            held = json.loads(raw) if raw else None
            pipe.multi()
            if held and held["state"] == "pending" and held["job_id"] == job_id:
                pipe.delete(key)
            pipe.srem(self._key(user_id, "images"), sha256)

        with redis_errors():
            self.redis.transaction(release, key)

    def restore(self, user_id: str, sha256: str, job_id: str, stored_at: float) -> None:
        """Re-create a scored cooldown from a stored point (the embedded default's start)."""
        remaining = stored_at + self.cooldown_s - time.time()
        if self.cooldown_s <= 0 or remaining <= 0:
            return
        until = stored_at + self.cooldown_s
        record = {"sha256": sha256, "job_id": job_id, "state": "scored", "until": until}
        with redis_errors():
            self.redis.set(
                self._key(user_id, "cooldown"), json.dumps(record), ex=max(1, int(remaining))
            )

    # --- queries and erasure ----------------------------------------------------------------
    def latest_result(self, user_id: str) -> dict[str, Any] | None:
        with redis_errors():
            raw = self.redis.get(self._key(user_id, "result"))
        return None if raw is None else json.loads(raw)

    def forgotten_since(self, user_id: str) -> float | None:
        """When the user was erased, if within the image TTL; else None."""
        with redis_errors():
            raw = self.redis.get(self._tombstone(user_id))
        return None if raw is None else float(raw)

    def forget(self, user_id: str) -> tuple[list[str], list[str], int]:
        """Delete every record of the user. Returns (job ids, image hashes in flight, number
        of keys deleted), and leaves a hashed tombstone for jobs still in flight."""
        keys = [self._key(user_id, w) for w in ("cooldown", "result", "jobs", "images")]
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.smembers(keys[2])
            pipe.smembers(keys[3])
            pipe.delete(*keys)
            pipe.set(self._tombstone(user_id), repr(time.time()), ex=self.pending_ttl_s)
            jobs, images, deleted, _ = pipe.execute()
        return (
            sorted(j.decode() for j in jobs),
            sorted(i.decode() for i in images),
            int(deleted),
        )
