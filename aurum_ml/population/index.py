"""The score index: where a face stands in the population, at a cost that does not grow
with the population.

Per model, in Redis:

- ``aurum:index:{model}:total``  the running sum of the stored faces' unit embeddings and
  their count: 129 float64 bytes (read and written whole, under the WATCH on ``rank``
  that every writer of the sum holds; before, a hash ``…:sum`` of 129 fields updated
  by 129 HINCRBYFLOAT a face — read still, and replaced at its first write);
- ``aurum:index:{model}:rank``   sorted set: point id → typicality;
- ``aurum:index:{model}:stats``  the score distribution as of the last re-rank (JSON);
- ``aurum:index:{model}:vibes``  the vibe reference (see :mod:`aurum_ml.population.vibes`);
- ``aurum:index:{model}:gone``   point ids forgotten recently, so a re-rank that read them
  from Qdrant a moment before they were deleted does not bring them back;
- ``aurum:index:{model}:rank:next`` the re-rank's staging sorted set, and ``…:rank:run``
  the run under way (owner, start, lease; see :meth:`run_begin`);
- ``aurum:index:{model}:pending:{point id}``  the unit embedding of a face placed by the
  score stage and not yet confirmed by the store stage (TTL: the image's), so a job that
  fails between the two can be taken out again.

Typicality is the cosine similarity of a face's unit embedding to the population centroid
(the mean of the unit embeddings). Percentile = share of the population at or below it,
ties counting half: ``(below + ½·tied_others + 1) / total``; rank 1 = most typical.
Placing a face reads the sum (one GET) and counts the sorted set (ZCOUNT, O(log N)).
The score stage places a face *and counts it in* in one transaction (:meth:`enter`), so
faces scored at the same moment count each other (totals 1, 2, 3 … into an empty
population, never 1, 1); the store stage confirms the entry (:meth:`add`), and a job that
fails or is refused in between takes it out (:meth:`withdraw`).
As faces arrive the centroid drifts and stored typicalities go stale; the re-rank
(:mod:`aurum_ml.population.rerank`) recomputes them all and swaps them in with :meth:`swap_staged`.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from aurum_ml.connection import redis_errors
from aurum_ml.population.vibes import VibeReference
from aurum_ml.schemas import Distribution

__all__ = ["Placement", "ScoreIndex", "midrank_percentiles", "score_of", "unit"]

GONE_TTL_S = 86400


def unit(vector: np.ndarray) -> np.ndarray:
    """The vector scaled to length 1 (float64)."""
    v = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def score_of(percentile: float) -> float:
    """The 0–100 score of a 0–1 percentile, one decimal (one rounding rule everywhere)."""
    return round(100 * float(percentile), 1)


def midrank_percentiles(values: np.ndarray) -> np.ndarray:
    """For each value: (below + ½·tied_others + 1) / n — the same rule as :meth:`place`."""
    order = np.sort(values)
    below = np.searchsorted(order, values, side="left")
    at_or_below = np.searchsorted(order, values, side="right")
    tied_others = at_or_below - below - 1
    return (below + 0.5 * tied_others + 1) / len(values)


@dataclass(frozen=True)
class Placement:
    """Where a face stands: ``percentile`` 0–1, ``rank`` 1 = most typical, ``total`` faces
    including this one."""

    typicality: float
    percentile: float
    rank: int
    total: int


RERANK_LOST = (
    "aurum:rerank:lost"  # re-ranks that died mid-run (a counter; aurum_ml.surfaces.metrics)
)


class ScoreIndex:
    def __init__(
        self, client: redis.Redis, model: str, dim: int, pending_ttl_s: int = 4200
    ) -> None:
        self.redis: Any = client  # redis-py's return types are unions; we use bytes
        self.model = model
        self.dim = dim
        self.pending_ttl_s = pending_ttl_s
        prefix = self._prefix = f"aurum:index:{model}"
        self._sum_key = f"{prefix}:total"
        self._legacy_sum_key = f"{prefix}:sum"  # the hash of 129 fields it replaced
        self._rank_key = f"{prefix}:rank"
        self._stats_key = f"{prefix}:stats"
        self._vibes_key = f"{prefix}:vibes"
        self._gone_key = f"{prefix}:gone"

    # --- reading --------------------------------------------------------------------------
    def _read_sum(self, client: Any = None) -> tuple[np.ndarray, int]:
        client = client or self.redis
        raw = client.get(self._sum_key)
        if raw is not None:
            stored = np.frombuffer(raw, dtype=np.float64)
            return stored[:-1].copy(), int(stored[-1])
        legacy: dict[bytes, bytes] = client.hgetall(self._legacy_sum_key)
        total = np.zeros(self.dim, dtype=np.float64)
        for field, value in legacy.items():
            if field != b"n":
                total[int(field)] = float(value)
        return total, int(legacy.get(b"n", 0))

    def _write_sum(self, pipe: Any, total: np.ndarray, n: int) -> None:
        """The sum and count, whole (on ``pipe``, inside its MULTI; the caller read the sum
        in the same transaction)."""
        pipe.set(self._sum_key, np.append(total.astype(np.float64), float(n)).tobytes())
        pipe.delete(self._legacy_sum_key)

    def centroid(self) -> np.ndarray | None:
        """The mean of the stored unit embeddings, or None for an empty population."""
        with redis_errors():
            total, n = self._read_sum()
        return total / n if n else None

    def _pending_key(self, point_id: str) -> str:
        return f"{self._prefix}:pending:{point_id}"

    def enter(self, point_id: str, embedding: np.ndarray) -> Placement:
        """Place a face and count it in, in one transaction (WATCH on the sorted set: a
        concurrent placement makes it run again), pending until :meth:`add` confirms it.
        A face already in the index (a redelivered score) is placed, not counted twice."""
        u = unit(embedding)

        def place_and_count(pipe: Any) -> Placement:
            total_sum, n = self._read_sum(pipe)
            stored = pipe.zscore(self._rank_key, point_id)
            if stored is None:  # not in the population yet: count it in
                total_sum, n = total_sum + u, n + 1
            typicality = float(u @ unit(total_sum))
            members = pipe.zcard(self._rank_key)
            below = pipe.zcount(self._rank_key, "-inf", f"({typicality!r}")
            tied = pipe.zcount(self._rank_key, typicality, typicality)
            placement = self._placement(typicality, stored, members, below, tied)
            if stored is None:
                pipe.multi()
                self._count_in(pipe, point_id, typicality, total_sum, n)
                pipe.set(self._pending_key(point_id), u.tobytes(), ex=self.pending_ttl_s)
            return placement

        with redis_errors():
            placed: Placement = self.redis.transaction(
                place_and_count, self._rank_key, value_from_callable=True
            )
            return placed

    def _count_in(
        self, pipe: Any, point_id: str, typicality: float, total: np.ndarray, n: int
    ) -> None:
        """Count a face in: its rank entry and the sum with it (``total``, ``n``)."""
        pipe.zadd(self._rank_key, {point_id: typicality})
        pipe.srem(self._gone_key, point_id)  # stored again after an erasure: not gone now
        self._write_sum(pipe, total, n)

    @staticmethod
    def _placement(
        typicality: float, stored: float | None, members: int, below: int, tied: int
    ) -> Placement:
        others = members - (stored is not None)
        if stored is not None:  # do not count its own earlier entry
            if stored < typicality:
                below -= 1
            elif stored == typicality:
                tied -= 1
        return Placement(
            typicality=typicality,
            percentile=(below + 0.5 * tied + 1) / (others + 1),
            rank=others - below - tied + 1,
            total=others + 1,
        )

    def standing(self, point_id: str) -> Placement | None:
        """Where a stored face stands now, by its stored typicality; None if not stored."""
        return self.standings([point_id])[0]

    def top(self, limit: int) -> list[tuple[str, float]]:
        """The ``limit`` most typical faces, plus any tied with the last one."""
        with redis_errors():
            head = self.redis.zrevrange(self._rank_key, 0, max(0, limit - 1), withscores=True)
            if len(head) < limit or not head:
                return [(m.decode(), s) for m, s in head]
            last = head[-1][1]
            tail = self.redis.zrevrangebyscore(self._rank_key, last, last, withscores=True)
        seen = {m for m, _ in head}
        return [(m.decode(), s) for m, s in [*head, *(t for t in tail if t[0] not in seen)]]

    def count(self) -> int:
        with redis_errors():
            return int(self.redis.zcard(self._rank_key))

    def counted(self) -> int:
        """The faces the running sum holds (``count()``'s, when the index is whole)."""
        with redis_errors():
            return self._read_sum()[1]

    def members(self) -> set[str]:
        with redis_errors():
            return {m.decode() for m in self.redis.zrange(self._rank_key, 0, -1)}

    def stats(self) -> dict[str, Any] | None:
        """``{"distribution": …, "thresholds": …}`` as of the last re-rank, or None."""
        with redis_errors():
            raw = self.redis.get(self._stats_key)
        return None if raw is None else json.loads(raw)

    def distribution(self) -> Distribution | None:
        stats = self.stats()
        return None if stats is None else Distribution.model_validate(stats["distribution"])

    def vibe_reference(self) -> VibeReference | None:
        """The frozen reference if there is one, else one from the running centroid."""
        with redis_errors():
            raw: dict[bytes, bytes] = self.redis.hgetall(self._vibes_key)
        if raw:
            return VibeReference(
                center=np.frombuffer(raw[b"center"], dtype=np.float64).copy(),
                scale=np.frombuffer(raw[b"scale"], dtype=np.float64).copy(),
                frozen=True,
            )
        center = self.centroid()
        if center is None:
            return None
        return VibeReference(center=center, scale=np.ones(10))

    # --- writing --------------------------------------------------------------------------
    def add(self, point_id: str, embedding: np.ndarray, typicality: float) -> bool:
        """Confirm a stored face: count it in unless it already is (placed by :meth:`enter`,
        or a second call), and end its pending state. False if it already was counted."""
        u = unit(embedding)
        pending = self._pending_key(point_id)

        def add_once(pipe: Any) -> bool:
            present = pipe.zscore(self._rank_key, point_id) is not None
            if not present:
                total, n = self._read_sum(pipe)
            pipe.multi()
            if not present:
                self._count_in(pipe, point_id, typicality, total + u, n + 1)
            pipe.delete(pending)
            return not present

        with redis_errors():
            # WATCH the sorted set: two store workers adding the same face add it once.
            added = self.redis.transaction(
                add_once,
                self._rank_key,
                value_from_callable=True,
            )
            return bool(added)

    def withdraw(self, point_id: str) -> bool:
        """Take out a face placed by :meth:`enter` and never confirmed (its job failed or was
        refused after scoring). False if there was nothing pending (confirmed, or never
        placed). Needs no vector: the pending entry holds it."""
        pending = self._pending_key(point_id)

        def take_out(pipe: Any) -> bool:
            raw = pipe.get(pending)
            if raw is None:
                return False
            present = pipe.zscore(self._rank_key, point_id) is not None
            if present:
                total, n = self._read_sum(pipe)
            pipe.multi()
            if present:  # a re-rank may have dropped it already (not in Qdrant)
                pipe.zrem(self._rank_key, point_id)
                self._write_sum(pipe, total - np.frombuffer(raw, dtype=np.float64), n - 1)
            pipe.delete(pending)
            return True

        with redis_errors():
            return bool(
                self.redis.transaction(take_out, self._rank_key, pending, value_from_callable=True)
            )

    def pending_units(self, point_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """The unit embeddings of those faces that are placed and not yet confirmed."""
        ids = list(point_ids)
        if not ids:
            return {}
        with redis_errors():
            raw = self.redis.mget([self._pending_key(pid) for pid in ids])
        return {
            pid: np.frombuffer(r, dtype=np.float64).copy()
            for pid, r in zip(ids, raw, strict=True)
            if r is not None
        }

    def remove(self, faces: Sequence[tuple[str, np.ndarray]]) -> int:
        """Take faces out (their sums too) and remember them as gone. Returns how many
        were in the index."""

        def remove_all(pipe: Any) -> int:
            present = [
                (pid, vec) for pid, vec in faces if pipe.zscore(self._rank_key, pid) is not None
            ]
            if present:
                total, n = self._read_sum(pipe)
            pipe.multi()
            if present:
                pipe.zrem(self._rank_key, *(pid for pid, _ in present))
                taken = sum((unit(vec) for _, vec in present), np.zeros(self.dim))
                self._write_sum(pipe, total - taken, n - len(present))
            if faces:
                pipe.delete(*(self._pending_key(pid) for pid, _ in faces))
                pipe.sadd(self._gone_key, *(pid for pid, _ in faces))
                pipe.expire(self._gone_key, GONE_TTL_S)
            return len(present)

        with redis_errors():
            removed = self.redis.transaction(
                remove_all,
                self._rank_key,
                value_from_callable=True,
            )
            return int(removed)

    def gone(self) -> set[str]:
        with redis_errors():
            return {m.decode() for m in self.redis.smembers(self._gone_key)}

    def freeze_vibe_reference(self, reference: VibeReference) -> bool:
        """Store the reference once; False if one was already frozen."""
        with redis_errors():
            created = self.redis.hsetnx(self._vibes_key, "center", reference.center.tobytes())
            if created:
                self.redis.hset(self._vibes_key, "scale", reference.scale.tobytes())
        return bool(created)

    # --- the streamed re-rank (aurum_ml.population.rerank) -----------------------------------
    @property
    def _staging_key(self) -> str:
        return f"{self._prefix}:rank:next"

    @property
    def _run_key(self) -> str:
        return f"{self._prefix}:rank:run"

    def run_begin(
        self, host: str, pid: int, lease_s: float, dead: str | None = None
    ) -> tuple[str | None, bool]:
        """Record a re-rank as under way: ``(token, lost)``. The token is None when a run
        holds a live lease (one at a time: two would share the staging set). A record
        whose lease lapsed — or whose token is ``dead``, a run the caller knows died — is a
        run that died: taken over, counted as lost (``lost`` true), its staging set cleared."""
        token = secrets.token_hex(8)

        def begin(pipe: Any) -> tuple[str | None, bool]:
            held = self._run_of(pipe.hgetall(self._run_key))
            now = time.time()
            lapsed = float(held.get("lease_until", 0)) <= now
            if held and not lapsed and held.get("token") != dead:
                return None, False
            pipe.multi()
            if held:
                pipe.incr(RERANK_LOST)
                pipe.delete(self._staging_key)
            pipe.delete(self._run_key)
            pipe.hset(
                self._run_key,
                mapping={"token": token, "host": host, "pid": pid, "started": now,
                         "machine": socket.gethostname(), "lease_until": now + lease_s,
                         "phase": "centroid"},
            )  # fmt: skip
            return token, bool(held)

        with redis_errors():
            began: tuple[str | None, bool] = self.redis.transaction(
                begin, self._run_key, value_from_callable=True
            )
            return began

    def run_renew(self, token: str, lease_s: float, phase: str) -> bool:
        """Extend the run's lease and name its phase; False if the run is no longer the
        holder (taken over after its lease lapsed: it must stop)."""

        def renew(pipe: Any) -> bool:
            held = pipe.hget(self._run_key, "token")
            if held is None or held.decode() != token:
                return False
            pipe.multi()
            pipe.hset(self._run_key, mapping={"lease_until": time.time() + lease_s, "phase": phase})
            return True

        with redis_errors():
            renewed: bool = self.redis.transaction(renew, self._run_key, value_from_callable=True)
            return renewed

    def run_end(self, token: str) -> None:
        def end(pipe: Any) -> None:
            held = pipe.hget(self._run_key, "token")
            pipe.multi()
            if held is not None and held.decode() == token:
                pipe.delete(self._run_key)

        with redis_errors():
            self.redis.transaction(end, self._run_key)

    def run_under_way(self) -> dict[str, str] | None:
        """The record of the re-rank under way (or of one that died and is not yet reaped)."""
        with redis_errors():
            return self._run_of(self.redis.hgetall(self._run_key)) or None

    def run_reap(self, host: str | None = None, started_before: float | None = None) -> bool:
        """Take out the record of a re-rank that died, clear its staging set and count it
        (``aurum:rerank:lost``); True if there was one. Dead is: its lease lapsed, or it
        ran on ``host`` and began before ``started_before`` — a worker of that name that
        starts now is the one that ran it, restarted."""

        def reap(pipe: Any) -> bool:
            held = self._run_of(pipe.hgetall(self._run_key))
            if not held:
                return False
            lapsed = float(held.get("lease_until", 0)) <= time.time()
            restarted = (
                host is not None
                and started_before is not None
                and held.get("host") == host
                and float(held.get("started", 0)) < started_before
            )
            if not (lapsed or restarted):
                return False
            pipe.multi()
            pipe.delete(self._run_key, self._staging_key)
            pipe.incr(RERANK_LOST)
            return True

        with redis_errors():
            reaped: bool = self.redis.transaction(reap, self._run_key, value_from_callable=True)
            return reaped

    @staticmethod
    def _run_of(raw: Any) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in (raw or {}).items()}

    def stage_clear(self) -> None:
        with redis_errors():
            self.redis.delete(self._staging_key)

    def stage(self, ids: Sequence[str], typicalities: np.ndarray) -> None:
        """Add a batch of recomputed typicalities to the staging sorted set."""
        if ids:
            with redis_errors():
                mapping = {pid: float(t) for pid, t in zip(ids, typicalities, strict=True)}
                self.redis.zadd(self._staging_key, mapping)

    def swap_staged(
        self,
        total: np.ndarray,
        count: int,
        stats: dict[str, Any],
        gone_before: set[str],
        vectors: Any,
    ) -> int | None:
        """Make the staged typicalities the live ones, atomically (WATCH on the sorted set),
        and the running sum that of the staged faces (``total``, ``count``) plus the faces
        that entered meanwhile and are real — stored in Qdrant, or placed and pending —
        which keep their own typicality. Live entries that are neither (a placement whose
        job vanished) are dropped, so the index heals. None, and nothing changed, when a
        staged face was erased meanwhile: its vector is in ``total`` and gone from
        everywhere, so the caller re-runs the re-rank. Returns the faces in the index."""
        staging, late_key = self._staging_key, f"{self._prefix}:rank:late"

        def swap(pipe: Any) -> int | None:
            erased = sorted(self._members_of(pipe.smembers(self._gone_key)) - gone_before)
            if erased and any(t is not None for t in pipe.zmscore(staging, erased)):
                return None
            late = sorted(self._members_of(pipe.zdiff([self._rank_key, staging])))
            scores = pipe.zmscore(self._rank_key, late) if late else []
            fetched = vectors.vectors_of(late) if late else {}
            units = {pid: unit(v) for pid, v in fetched.items()}
            units |= self.pending_units(p for p in late if p not in units)
            kept = {
                p: float(t)
                for p, t in zip(late, scores, strict=True)
                if p in units and t is not None
            }
            grand = total + sum((units[p] for p in kept), np.zeros(self.dim))
            pipe.multi()
            pipe.delete(late_key)
            if kept:
                pipe.zadd(late_key, kept)
            pipe.zunionstore(self._rank_key, [staging, late_key])
            pipe.delete(staging, late_key)
            self._write_sum(pipe, grand, count + len(kept))
            if stats.get("distribution") is not None:
                pipe.set(self._stats_key, json.dumps(stats))
            else:  # nothing stored: no distribution to speak of
                pipe.delete(self._stats_key)
            return count + len(kept)

        with redis_errors():
            swapped: int | None = self.redis.transaction(
                swap, self._rank_key, value_from_callable=True
            )
            return swapped

    @staticmethod
    def _members_of(raw: Any) -> set[str]:
        return {m.decode() if isinstance(m, bytes) else str(m) for m in raw or ()}

    def standings(self, ids: Sequence[str]) -> list[Placement | None]:
        """Where each stored face stands now, by its stored typicality (None if not stored):
        percentile ``(below + ½·tied_others + 1) / total``, rank 1 = most typical. Pipelined:
        three commands a face."""
        with redis_errors():
            with self.redis.pipeline(transaction=False) as pipe:
                for pid in ids:
                    pipe.zscore(self._rank_key, pid)
                scores = pipe.execute()
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.zcard(self._rank_key)
                for t in scores:
                    if t is not None:
                        pipe.zcount(self._rank_key, "-inf", f"({t!r}")
                        pipe.zcount(self._rank_key, t, t)
                counts = pipe.execute()
        total, rest = int(counts[0]), iter(counts[1:])
        out: list[Placement | None] = []
        for t in scores:
            if t is None:
                out.append(None)
                continue
            below, tied = int(next(rest)), int(next(rest)) - 1
            out.append(
                Placement(
                    typicality=float(t),
                    percentile=(below + 0.5 * tied + 1) / total,
                    rank=total - below - tied,
                    total=total,
                )
            )
        return out

    def clear(self) -> None:
        with redis_errors():
            self.redis.delete(
                self._sum_key,
                self._legacy_sum_key,
                self._rank_key,
                self._stats_key,
                self._vibes_key,
                self._gone_key,
                self._staging_key,
                self._run_key,
            )
