"""Per-stage metrics from the workers: counts by outcome and source, and a latency
histogram, read back through the exporter's collector. A real worker, real photos."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest

from aurum_ml.pipeline import tasks
from aurum_ml.surfaces.metrics import PipelineCollector

from samples import b64, no_face

TIMEOUT = 90


def _scrape(runtime) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(PipelineCollector(runtime, ("detect",)))
    samples: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def _get(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sample of ``name`` with exactly these labels (0 if absent)."""
    for key, value in samples.items():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})?", key)
        assert match, key
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if match.group(1) == name and found == labels:
            return value
    return 0.0


def test_each_stage_counts_its_outcomes_and_times_its_runs(pipeline_worker, runtime, photos):
    before = _scrape(runtime)
    scored = tasks.score_face.delay(b64((photos / "biden.jpg").read_bytes()), user_id="metric-1")
    rejected = tasks.score_face.delay(b64(no_face(photos)), user_id="metric-2")
    assert scored.get(timeout=TIMEOUT)["status"] == "scored"
    assert rejected.get(timeout=TIMEOUT)["reason"] == "no_face"
    after = _scrape(runtime)

    def grew(name: str, **labels: str) -> float:
        return _get(after, name, **labels) - _get(before, name, **labels)

    jobs = "aurum_stage_jobs_total"
    assert grew(jobs, stage="intake", outcome="admitted", source="none") == 2
    assert grew(jobs, stage="detect", outcome="ok", source="local") == 1
    assert grew(jobs, stage="detect", outcome="no_face", source="local") == 1
    assert grew(jobs, stage="embed", outcome="skipped", source="local") == 1
    assert grew(jobs, stage="store", outcome="scored", source="local") == 1
    assert grew(jobs, stage="store", outcome="no_face", source="local") == 1
    for stage in ("intake", "detect", "embed", "score", "store"):
        assert grew("aurum_stage_duration_seconds_count", stage=stage) == 2, stage
        assert grew("aurum_stage_duration_seconds_bucket", stage=stage, le="+Inf") == 2
        assert grew("aurum_stage_duration_seconds_sum", stage=stage) > 0
    # detect on a real photo takes longer than the score stage's arithmetic
    assert grew("aurum_stage_duration_seconds_sum", stage="detect") > grew(
        "aurum_stage_duration_seconds_sum", stage="score"
    )
    tasks.forget_user.delay("metric-1").get(timeout=TIMEOUT)
