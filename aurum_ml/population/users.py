"""Per-user records in Redis: cooldown, the latest result, and what to erase on request.

Keys (``{uid}`` is the user id):

- ``aurum:user:{uid}:cooldown``  JSON ``{sha256, job_id, state, until}``: ``pending`` while a
  photo is being scored (expires with the image TTL, released if the photo is rejected),
  ``scored`` for the cooldown period after a photo was stored;
- ``aurum:user:{uid}:result``    the latest stored result (JSON), for ``get_score`` and for
  answering a re-submitted photo without scoring it again;
- ``aurum:user:{uid}:jobs``      job ids, so ``forget_user`` can erase their results;
- ``aurum:user:{uid}:images``    image hashes still in flight;
- ``aurum:user:{uid}:tenant``    the HTTP API tenant that first submitted the user (the only
  one whose keys may read or erase it; no expiry: it goes with the user's erasure).

Erasure is final. ``aurum:erased:{sha256(uid)}`` counts the user's erasures (their
*epoch*); every job takes the epoch current at its first admission
(``aurum:jobepoch:{sha256(job_id)}``, so a redelivered intake keeps it) and carries it to the end.
Nothing is stored for a job whose epoch is older than the user's — not by a stage still in
flight, a redelivered message, nor the fallback's re-score days later. The counter
outlives every job that could carry an older epoch (``tombstone_s``) and is refreshed by
each new admission; once it expires the user is at epoch 0 again, which only ever lets a
job through, never stops one wrongly.

Matches name other users, so erasing a user must reach other users' results too:
``aurum:matched:{sha256(uid)}`` (hash: job id → owner) lists the jobs whose results name the
user as a match, and ``aurum:user:{owner}:matched`` the owner's entries in those hashes, so
an owner's own erasure removes them as well.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis

from aurum_ml import keys
from aurum_ml.connection import redis_errors

__all__ = ["Admission", "UserRecords"]


@dataclass(frozen=True)
class Admission:
    """What intake may do with a new photo of a user."""

    verdict: Literal["score", "stored", "cooldown", "in_progress"]
    result: dict[str, Any] | None = None  # with "stored": the result to return as is
    until: float | None = None  # with "cooldown": unix time a new photo is allowed
    job_id: str | None = None  # with "in_progress": the job of the photo being scored

    @property
    def until_iso(self) -> str | None:
        return None if self.until is None else datetime.fromtimestamp(self.until, UTC).isoformat()


class UserRecords:
    def __init__(
        self,
        client: redis.Redis,
        *,
        cooldown_s: int,
        pending_ttl_s: int,
        keep_s: int,
        tombstone_s: int = keys.TOMBSTONE_S,
    ) -> None:
        self.redis: Any = client  # redis-py's return types are unions; we use bytes
        self.cooldown_s = cooldown_s
        self.pending_ttl_s = pending_ttl_s
        self.keep_s = keep_s  # how long job ids and the cached result are kept
        # longer than any job can live (image TTL, a degraded job's wait for its re-score)
        self.tombstone_s = max(tombstone_s, keys.tombstone_ttl(pending_ttl_s))

    _key = staticmethod(keys.user)
    _hash = staticmethod(keys.digest)
    _tombstone = staticmethod(keys.tombstone)

    @classmethod
    def _matched(cls, user_id: str) -> str:
        return f"aurum:matched:{cls._hash(user_id)}"

    # --- erasure epochs -----------------------------------------------------------------------
    def job_epoch(self, user_id: str, job_id: str) -> tuple[int, bool]:
        """The epoch of the job's first admission, and whether the user was erased since;
        the job is noted under the user (an erasure finds it). A redelivered intake finds
        the epoch its first delivery recorded; a job its caller entered (aurum_ml.client,
        which fixes the epoch and notes the job in one transaction) costs one round trip."""
        tombstone, key = self._tombstone(user_id), keys.job_epoch(job_id)
        with redis_errors():
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(tombstone)
                pipe.get(key)
                raw_current, raw_first = pipe.execute()
            current = int(raw_current or 0)
            if raw_first is None:  # published by other means: fix the epoch, note the job
                jobs = self._key(user_id, "jobs")
                with self.redis.pipeline(transaction=True) as pipe:
                    pipe.set(key, current, nx=True, ex=self.pending_ttl_s)
                    pipe.get(key)
                    pipe.sadd(jobs, job_id)
                    pipe.expire(jobs, self.keep_s)
                    if current:  # keep the counter alive while the user has jobs
                        pipe.expire(tombstone, self.tombstone_s)
                    raw_first = pipe.execute()[1]
            elif current:
                self.redis.expire(tombstone, self.tombstone_s)
        first = int(raw_first or current)
        return first, current > first

    def erased_after(self, user_id: str, epoch: int) -> bool:
        """Was the user erased after a job of ``epoch`` was admitted?"""
        return self.erasure_epochs([user_id])[user_id] > epoch

    def erasure_epochs(self, user_ids: list[str]) -> dict[str, int]:
        """Each user's erasure epoch now (0: never erased, or long enough ago)."""
        if not user_ids:
            return {}
        with redis_errors():
            raw = self.redis.mget([self._tombstone(u) for u in user_ids])
        return {u: int(r or 0) for u, r in zip(user_ids, raw, strict=True)}

    # --- intake -----------------------------------------------------------------------------
    def note_job(self, user_id: str, job_id: str) -> None:
        """Remember the job id, so ``forget`` can erase its result."""
        key = self._key(user_id, "jobs")
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, job_id)
            pipe.expire(key, self.keep_s)
            pipe.execute()

    def claim(self, user_id: str, tenant: str) -> str:
        """The tenant that owns the user: ``tenant`` when nobody did (it claims it now)."""
        key = self._key(user_id, "tenant")
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, tenant, nx=True)
            pipe.get(key)
            _, owner = pipe.execute()
        return str(owner.decode())

    def tenants(self, user_ids: list[str]) -> dict[str, str | None]:
        """Each user's owning tenant (None: never submitted through the HTTP API)."""
        if not user_ids:
            return {}
        with redis_errors():
            found = self.redis.mget([self._key(u, "tenant") for u in user_ids])
        return {
            u: t.decode() if t is not None else None for u, t in zip(user_ids, found, strict=True)
        }

    def admit(self, user_id: str, sha256: str, job_id: str, noted: bool = False) -> Admission:
        """May this photo be scored now? Reserves the user's cooldown slot for it, and
        notes the image under the user unless its caller did (``noted``)."""
        if self.cooldown_s > 0:
            admission = self._reserve(user_id, sha256, job_id)
            if admission.verdict != "score":
                return admission
        if not noted:
            self.note_image(user_id, sha256)
        return Admission("score")

    def note_image(self, user_id: str, sha256: str) -> None:
        """An image is stored for one of the user's jobs: ``forget`` deletes it."""
        key = self._key(user_id, "images")
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, sha256)
            pipe.expire(key, self.pending_ttl_s)
            pipe.execute()

    def _reserve(self, user_id: str, sha256: str, job_id: str) -> Admission:
        key = self._key(user_id, "cooldown")
        now = time.time()
        pending = {"sha256": sha256, "job_id": job_id, "state": "pending", "until": now}
        with redis_errors():
            if self.redis.set(key, json.dumps(pending), nx=True, ex=self.pending_ttl_s):
                return Admission("score")
            raw = self.redis.get(key)
        if raw is None:  # expired between the two calls
            return self._reserve(user_id, sha256, job_id)
        held = json.loads(raw)
        if held["sha256"] == sha256:
            cached = self.latest_result(user_id) if held["state"] == "scored" else None
            if cached is not None and cached.get("status") == "scored":
                return Admission("stored", result=cached)
            return Admission("score")  # the same photo again: idempotent, same point
        if held["state"] != "scored":  # no date is true yet: it depends on that job
            return Admission("in_progress", job_id=held["job_id"])
        return Admission("cooldown", until=held["until"])

    # --- after the store stage ----------------------------------------------------------------
    def scored(
        self, user_id: str, sha256: str, job_id: str, result: dict[str, Any], epoch: int = 0
    ) -> dict[str, Any] | None:
        """Start the cooldown, cache the result (and index its matches: :meth:`_note_matches`)
        — unless the user was erased after the job was admitted: None then. Returns the
        job's result as cached: one truth per job. A store run again for a job whose result
        is cached (a redelivered message) finds it there and keeps it, matches and timings
        as the first run gave them to the caller; only a re-score of a degraded result
        (aurum_ml.pipeline.recovery) replaces one."""
        tombstone, cached = self._tombstone(user_id), self._key(user_id, "result")

        def write(pipe: Any) -> dict[str, Any] | None:
            if int(pipe.get(tombstone) or 0) > epoch:
                return None
            raw = pipe.get(cached)
            held = json.loads(raw) if raw is not None else None
            if (
                held is not None
                and held.get("job_id") == job_id
                and not (held.get("degraded") and not result.get("degraded"))
            ):
                return dict(held)
            pipe.multi()
            if self.cooldown_s > 0:
                record = {
                    "sha256": sha256,
                    "job_id": job_id,
                    "state": "scored",
                    "until": time.time() + self.cooldown_s,
                }
                pipe.set(self._key(user_id, "cooldown"), json.dumps(record), ex=self.cooldown_s)
            pipe.set(cached, json.dumps(result), ex=self.result_ttl)
            pipe.srem(self._key(user_id, "images"), sha256)
            self._note_matches(pipe, user_id, job_id, result.get("matches") or [])
            return result

        with redis_errors():
            # WATCH the tombstone and the cached result: an erasure or another run of the
            # job meanwhile makes the transaction run again.
            kept: dict[str, Any] | None = self.redis.transaction(
                write, tombstone, cached, value_from_callable=True
            )
            return kept

    @property
    def result_ttl(self) -> int:
        return max(self.keep_s, self.cooldown_s)

    def _note_matches(
        self, pipe: Any, owner: str, job_id: str, matches: list[dict[str, Any]]
    ) -> None:
        """Index the result's matches by matched user, so erasing one reaches this result."""
        mine = self._key(owner, "matched")
        for other in sorted({str(m.get("user_id")) for m in matches}):
            pipe.hset(self._matched(other), job_id, owner)
            pipe.expire(self._matched(other), self.result_ttl)
            pipe.sadd(mine, f"{self._hash(other)}:{job_id}")
        if matches:
            pipe.expire(mine, self.result_ttl)

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

    def restore(
        self,
        user_id: str,
        sha256: str,
        job_id: str,
        stored_at: float,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Re-create a scored cooldown and the cached result from a stored point (the
        embedded default's start), for as long as a cluster would still hold them."""
        with redis_errors():
            kept = stored_at + self.result_ttl - time.time()
            if result is not None and kept > 0:
                self.redis.set(self._key(user_id, "result"), json.dumps(result), ex=int(kept) + 1)
                self._note_matches(self.redis, user_id, job_id, result.get("matches") or [])
            remaining = stored_at + self.cooldown_s - time.time()
            if self.cooldown_s <= 0 or remaining <= 0:
                return
            until = stored_at + self.cooldown_s
            record = {"sha256": sha256, "job_id": job_id, "state": "scored", "until": until}
            self.redis.set(
                self._key(user_id, "cooldown"), json.dumps(record), ex=max(1, int(remaining))
            )

    # --- queries and erasure ----------------------------------------------------------------
    def latest_result(self, user_id: str) -> dict[str, Any] | None:
        with redis_errors():
            raw = self.redis.get(self._key(user_id, "result"))
        return None if raw is None else json.loads(raw)

    def mark_erased(self, user_id: str) -> int:
        """Step 1 of an erasure, before anything is read or deleted: move the user to a new
        epoch, so every job admitted before now stores nothing. Returns the new epoch."""
        tombstone = self._tombstone(user_id)
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(tombstone)
            pipe.expire(tombstone, self.tombstone_s)
            epoch, _ = pipe.execute()
        return int(epoch)

    def forget(self, user_id: str) -> tuple[list[str], list[str], int]:
        """Delete every record of the user. Returns (job ids, image hashes in flight, number
        of keys deleted). Call :meth:`mark_erased` first."""
        kinds = ("cooldown", "result", "jobs", "images", "tenant")
        keys = [self._key(user_id, w) for w in kinds]
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.smembers(keys[2])
            pipe.smembers(keys[3])
            pipe.delete(*keys)
            jobs, images, deleted = pipe.execute()
        return (
            sorted(j.decode() for j in jobs),
            sorted(i.decode() for i in images),
            int(deleted),
        )

    @classmethod
    def erasure_key(cls, user_id: str) -> str:
        """What the erasure's second pass is given instead of the user id (a message on the
        broker must not carry the id of a user who asked to be forgotten)."""
        return cls._hash(user_id)

    def forget_matches(self, user_id: str) -> dict[str, str]:
        """Take the user out of every other user's cached result, and the user's own entries
        out of the others' match indexes. Returns {job id: owner} of the results that named
        the user (their Celery results are the caller's to scrub)."""
        named = self.forget_matches_of(self._hash(user_id))
        mine = self._key(user_id, "matched")
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            for entry in self.redis.smembers(mine):
                other_hash, _, job_id = entry.decode().partition(":")
                pipe.hdel(f"aurum:matched:{other_hash}", job_id)
            pipe.delete(mine)
            pipe.execute()
        return named

    def forget_matches_of(self, erased: str) -> dict[str, str]:
        """:meth:`forget_matches` for the user whose :meth:`erasure_key` is ``erased``,
        others' results only."""
        matched = f"aurum:matched:{erased}"
        with redis_errors():
            named = {
                job.decode(): owner.decode() for job, owner in self.redis.hgetall(matched).items()
            }
            for owner in set(named.values()):
                self._scrub_cached(owner, erased)
            with self.redis.pipeline(transaction=True) as pipe:
                for job_id, owner in named.items():
                    pipe.srem(self._key(owner, "matched"), f"{erased}:{job_id}")
                pipe.delete(matched)
                pipe.execute()
        return named

    @classmethod
    def names(cls, match: dict[str, Any], erased: str) -> bool:
        """Does this match name the user whose :meth:`erasure_key` is ``erased``?"""
        return cls._hash(str(match.get("user_id"))) == erased

    def _scrub_cached(self, owner: str, erased: str) -> None:
        key = self._key(owner, "result")

        def scrub(pipe: Any) -> None:
            raw = pipe.get(key)
            if raw is None:
                return
            result = json.loads(raw)
            matches = result.get("matches") or []
            kept = [m for m in matches if not self.names(m, erased)]
            if len(kept) == len(matches):
                return
            ttl = int(pipe.ttl(key))
            pipe.multi()
            pipe.set(key, json.dumps(result | {"matches": kept}), ex=max(1, ttl))

        self.redis.transaction(scrub, key)
