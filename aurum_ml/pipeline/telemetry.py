"""What the pipeline notes about its own runs, in Redis, for the exporter to read: each
stage's runs and durations (one Redis pipeline with the stage's other bookkeeping), and the
last successful re-rank. ``aurum_ml.surfaces.metrics`` (a surface) turns these keys into Prometheus
series; the pipeline only writes them.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

__all__ = [
    "BUCKETS",
    "RERANK_LAST",
    "STAGES",
    "STAGE_JOBS",
    "STAGE_SECONDS",
    "record_stage",
    "rerank_done",
]

STAGES = ("intake", "detect", "embed", "score", "store")
# seconds; a stage runs from ~5 ms (score) to seconds (detect on a large photo, a retry)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STAGE_JOBS = "aurum:metrics:stage_jobs"  # hash "{stage}|{outcome}|{source}" → count
STAGE_SECONDS = "aurum:metrics:stage_seconds"  # hash "{stage}|{upper bound}" → count, "|sum"


def record_stage(pipe: Any, stage: str, seconds: float, outcome: str, source: str) -> None:
    """Count one run of a stage, on ``pipe`` (a Redis pipeline the caller executes)."""
    bound = next((str(b) for b in BUCKETS if seconds <= b), "+Inf")
    pipe.hincrby(STAGE_JOBS, f"{stage}|{outcome}|{source}", 1)
    pipe.hincrby(STAGE_SECONDS, f"{stage}|{bound}", 1)
    pipe.hincrbyfloat(STAGE_SECONDS, f"{stage}|sum", seconds)


RERANK_LAST = "aurum:rerank:last"  # hash: at (unix s), seconds, faces — the last success


def rerank_done(client: Any, seconds: float, faces: int) -> None:
    """Note a successful re-rank (for the staleness alert)."""
    with contextlib.suppress(Exception):
        client.hset(RERANK_LAST, mapping={"at": time.time(), "seconds": seconds, "faces": faces})
