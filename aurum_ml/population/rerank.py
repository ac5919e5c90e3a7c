"""Re-rank: recompute every face's typicality against today's centroid, so rankings converge.

Placing a new face is O(log N) because it compares against stored typicalities, which were
computed against the centroid of their day. The re-rank (beat-scheduled on the maintenance
queue, ``RERANK_INTERVAL``) reads every vector from Qdrant in batches, recomputes the
centroid, the typicalities, the scores (midrank percentiles) and the vibe tags, swaps the
new index into Redis atomically, writes changed vibe tags into the Qdrant payloads and
folds the faces stored since the last run into Qdrant's vector index. It also rebuilds a
lost index (Redis flushed) from Qdrant, and the embedded default runs it at start.

One run at a time, recorded in Redis with a lease renewed batch by batch
(:meth:`ScoreIndex.run_begin`). A run killed with its worker leaves that record: the
worker, restarted under its name, or beat's sweep once the lease lapsed, reaps it — clears
its staging set, counts it in ``aurum_rerank_lost_total`` — and sends the re-rank again.
The vector index's upkeep holds the GIL for seconds; it runs inside
:func:`aurum_ml.broker.held`, so a worker killed there has taken no message it had not
recorded.

Memory: one batch of unit embeddings (float64: 1 KiB a face) and one float per face — 8 MB
at a million faces, where holding every vector took 1 GB. The sorted set itself lives in
Redis. The centroid is summed batch by batch, so its last bits may differ from a sum over
all rows at once: faces whose typicalities differ by less than ~1e-12 may swap places.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from aurum_ml.broker import held
from aurum_ml.errors import StateUnavailable
from aurum_ml.population.handles import Population
from aurum_ml.population.index import midrank_percentiles, score_of, unit
from aurum_ml.population.vibes import ReferenceMoments, vibes_of

__all__ = ["RerankBusy", "RerankReport", "rerank", "summarize"]

_ATTEMPTS = 3  # a face erased during the passes makes the re-rank run them again
# A run's lease, renewed at every batch and before the index upkeep (one native call, the
# longest stretch without a renewal: 18 s at a million faces). A run whose lease lapsed is
# taken for dead and may be reaped: keep it far above any stretch.
LEASE_S = 600.0


class RerankBusy(StateUnavailable):
    """Another re-rank is under way (its lease is live): this one did nothing."""


_PERCENTILES = (10, 25, 50, 75, 90, 95, 99)


@dataclass(frozen=True)
class RerankReport:
    model: str
    faces: int
    seconds: float
    vibe_reference_frozen: bool
    payloads_updated: int = 0
    index_seconds: float = 0.0  # of ``seconds``: the vector index's upkeep (pauses the store)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "faces": self.faces,
            "seconds": round(self.seconds, 3),
            "vibe_reference_frozen": self.vibe_reference_frozen,
            "payloads_updated": self.payloads_updated,
            "index_seconds": round(self.index_seconds, 3),
        }


def summarize(scores: np.ndarray, typicalities: np.ndarray) -> dict[str, Any]:
    """Distribution of scores (0–100) and the typicality needed for the top 1/5/10 %."""
    if len(scores) == 0:
        return {"distribution": None, "thresholds": {}}
    distribution: dict[str, Any] = {
        "count": len(scores),
        "mean": round(float(scores.mean()), 2),
        "std": round(float(scores.std()), 2),
    }
    for p in _PERCENTILES:
        distribution[f"p{p}"] = round(float(np.percentile(scores, p)), 2)
    thresholds = {
        f"top_{p}pct": {
            "score": round(float(np.percentile(scores, 100 - p)), 1),
            "typicality": round(float(np.percentile(typicalities, 100 - p)), 6),
        }
        for p in (1, 5, 10)
    }
    return {"distribution": distribution, "thresholds": thresholds}


class _Run:
    """The record of this run in Redis: renewed as it goes; lost means taken over."""

    def __init__(self, runtime: Population, owner: str | None) -> None:
        self.index = runtime.index
        owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        token, self.took_over = self.index.run_begin(owner, os.getpid(), LEASE_S)
        held = self.index.run_under_way() if token is None else None
        if held and _died_here(held):
            token, self.took_over = self.index.run_begin(
                owner, os.getpid(), LEASE_S, dead=held["token"]
            )
        if token is None:
            raise RerankBusy("a re-rank is already under way; this one did nothing")
        self.token = token

    def renew(self, phase: str) -> None:
        if not self.index.run_renew(self.token, LEASE_S, phase):
            raise StateUnavailable("this re-rank was taken for dead and reaped; it stopped")

    def end(self) -> None:
        self.index.run_end(self.token)


def _died_here(held: dict[str, str] | None) -> bool:
    """The run was this machine's and its process is gone (a CLI run killed, a worker
    restarted before its lease lapsed): no need to wait out the lease."""
    if not held or held.get("machine") != socket.gethostname():
        return False
    try:
        os.kill(int(held.get("pid", "0")), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):  # alive under another user, or no pid recorded
        return False
    return False


def _batches(
    runtime: Population, skip: set[str], with_payload: bool = False, run: _Run | None = None
) -> Iterator[tuple[list[str], np.ndarray, list[dict[str, Any]]]]:
    """The stored faces as (point ids, unit embeddings as float64 rows, payloads — empty
    dicts unless ``with_payload``), a batch at a time; each batch renews ``run``."""
    size = runtime.settings.rerank_batch
    ids: list[str] = []
    rows: list[np.ndarray] = []
    payloads: list[dict[str, Any]] = []
    for pid, vector, payload in runtime.vectors.points(batch=size, with_payload=with_payload):
        if pid in skip:
            continue
        ids.append(pid)
        rows.append(unit(vector))
        payloads.append(payload)
        if len(ids) == size:
            if run is not None:
                run.renew("batches")
            yield ids, np.vstack(rows), payloads
            ids, rows, payloads = [], [], []
    if ids:
        yield ids, np.vstack(rows), payloads


def rerank(
    runtime: Population, update_payloads: bool = True, owner: str | None = None
) -> RerankReport:
    """Recompute and swap in the index of ``runtime``'s model; update the stored payloads'
    vibe tags unless ``update_payloads`` is false (a start-up restore). ``owner`` names
    the run's worker (its Celery node name) so that worker, restarted, knows the run died;
    RerankBusy if another run is under way.

    Streamed, in up to three passes over Qdrant, so memory follows the batch
    (``RERANK_BATCH``), not the population — but for one float per face:
    1. the centroid (sum of unit embeddings) and the vibe reference's statistics;
    2. every typicality against that centroid, into a staging sorted set in Redis, swapped
       in atomically with the sum of exactly the rows staged (faces stored meanwhile keep
       theirs; faces erased meanwhile stay out), so the index's sum and count always
       match its members;
    3. with ``update_payloads``, until the vibe reference is frozen: each face's vibe tags,
       written to the payloads where they changed, a batch at a time; then the vector
       index is brought up to date. Scores and ranks are not written back: they are read
       live from the sorted set, and Qdrant rewrites (and un-indexes) every point whose
       payload changes, so a re-rank writing every face would rebuild the whole index.
    """
    started = time.perf_counter()
    run = _Run(runtime, owner)
    try:
        return _rerank(runtime, run, update_payloads, started)
    finally:
        run.end()


def _rerank(runtime: Population, run: _Run, update_payloads: bool, started: float) -> RerankReport:
    settings, index, vectors = runtime.settings, runtime.index, runtime.vectors
    for _attempt in range(_ATTEMPTS):
        gone = index.gone()
        moments = ReferenceMoments(index.dim)
        for _, units, _ in _batches(runtime, gone, run=run):  # pass 1
            moments.add(units)
        total, count = moments.total, moments.count
        centroid = unit(total)
        index.stage_clear()
        chunks = []
        # the running sum swapped in is that of exactly the faces staged: a face stored
        # or erased between the passes is in pass 2's rows or not, never in one only
        staged_total, staged_count = np.zeros(index.dim), 0
        for ids, units, _ in _batches(runtime, gone, run=run):  # pass 2
            typicality = units @ centroid
            index.stage(ids, typicality)
            chunks.append(typicality)
            staged_total += units.sum(axis=0)
            staged_count += len(ids)
        typicalities = np.concatenate(chunks) if chunks else np.zeros(0)
        scores = np.array([score_of(p) for p in midrank_percentiles(typicalities)])
        stats = summarize(scores, typicalities)
        run.renew("swap")
        faces = index.swap_staged(staged_total, staged_count, stats, gone, vectors)
        if faces is not None:
            break
    else:  # erasures kept landing during the passes: leave the live index as it was
        index.stage_clear()
        raise StateUnavailable("the re-rank kept racing erasures; the next one will run")

    frozen = False
    reference = None
    tags_fixed = False  # a frozen reference never changes a face's tags: nothing to write
    if count:
        reference = index.vibe_reference()
        tags_fixed = reference is not None and reference.frozen
        if not tags_fixed:
            reference = moments.reference()
            if count >= settings.vibe_reference_min_faces:
                frozen = index.freeze_vibe_reference(reference)
                reference = index.vibe_reference() or reference
    changed = 0
    if count and update_payloads and reference is not None and not tags_fixed:
        for ids, units, payloads in _batches(runtime, gone | index.gone(), True, run):  # pass 3
            updates = []
            for i, pid in enumerate(ids):
                vibes = vibes_of(units[i], reference)
                if payloads[i].get("vibes") != vibes:
                    updates.append((pid, {"vibes": vibes}))
            vectors.set_payloads(updates)
            changed += len(updates)
    with held():  # the build freezes this process: no message may be half-taken meanwhile
        run.renew("index")
        indexing = time.perf_counter()
        vectors.optimize()  # fold the faces stored since the last re-rank into the index
        index_s = time.perf_counter() - indexing
    return RerankReport(
        model=index.model,
        faces=faces,
        seconds=time.perf_counter() - started,
        vibe_reference_frozen=frozen,
        payloads_updated=changed,
        index_seconds=index_s,
    )
