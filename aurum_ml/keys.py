"""The Redis keys that the caller and the pipeline both write, named in one place.

A submission is written by whoever calls ``score_face`` — the thin caller
(:mod:`aurum_ml.client`), the API, the CLI — and read by the pipeline's intake, the lost-job
sweep and erasure (:mod:`aurum_ml.population.users`, :mod:`aurum_ml.pipeline.state`).
Standard library only.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "INFLIGHT",
    "TOMBSTONE_S",
    "digest",
    "image",
    "image_refs",
    "inflight_job",
    "job_epoch",
    "tombstone",
    "tombstone_ttl",
    "user",
]

INFLIGHT = "aurum:inflight"  # sorted set: job id → when it was sent or a stage last ran
TOMBSTONE_S = 8 * 86400  # an erasure's epoch outlives every job that could carry an older one


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def user(user_id: str, what: str) -> str:
    """A user's record: ``jobs``, ``images``, ``result``, ``cooldown``, ``tenant`` …"""
    return f"aurum:user:{user_id}:{what}"


def tombstone(user_id: str) -> str:
    """The user's erasure epoch (a counter; named by a digest: it outlives the erasure)."""
    return f"aurum:erased:{digest(user_id)}"


def tombstone_ttl(pending_ttl_s: int) -> int:
    """How long an erasure epoch is kept: longer than any job can live."""
    return max(TOMBSTONE_S, pending_ttl_s + 3600)


def job_epoch(job_id: str) -> str:
    """The erasure epoch a job was admitted under: named by a digest of the job id, since
    it must outlive an erasure, which leaves no id of the user's jobs in Redis."""
    return f"aurum:jobepoch:{digest(job_id)[:32]}"


def image(sha256: str) -> str:
    """An image's bytes, stored once however many jobs use them."""
    return f"aurum:img:{sha256}"


def image_refs(sha256: str) -> str:
    """The set of job ids still needing an image."""
    return f"aurum:imgref:{sha256}"


def inflight_job(job_id: str) -> str:
    """A job's entry in the in-flight ledger (a hash)."""
    return f"aurum:inflight:job:{job_id}"
