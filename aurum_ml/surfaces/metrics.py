"""Prometheus metrics of the pipeline that Flower does not export.

Flower exports task and worker series; it has no queue depth and knows nothing of the
fallback flag. This collector reads them from Redis at scrape time:

- ``aurum_fallback_active`` 1 on, 0 off, -1 unknown (no fresh flag: is beat running?);
- ``aurum_fallback_transitions_total{to="on"|"off"}``;
- ``aurum_service_up{service}``, ``aurum_service_availability{service}``,
  ``aurum_service_latency_seconds{service}`` from the last probes;
- ``aurum_queue_messages{queue}`` waiting messages per Celery queue (Redis broker only);
- ``aurum_degraded_jobs{state="pending"|"expired"}``; ``aurum_faces{model}``;
- ``aurum_queue_workers{queue}`` workers consuming each queue (``aurum-ml metrics`` asks
  them over the broker at each scrape);
- ``aurum_rerank_last_success_timestamp_seconds``, ``aurum_rerank_duration_seconds``,
  ``aurum_rerank_interval_seconds``; ``aurum_score_quantile{quantile}`` and
  ``aurum_score_mean``: the stored scores as of the last re-rank;
- ``aurum_jobs_in_flight`` jobs between intake and their end, and
  ``aurum_oldest_job_idle_seconds`` since a stage last ran on the longest-idle one
  (aurum_ml.pipeline.redrive sends a job again once it passes STALLED_AFTER).

Per stage (``intake``, ``detect``, ``embed``, ``score``, ``store``), from every worker
process on every machine:

- ``aurum_stage_duration_seconds{stage}`` a histogram of the time a stage ran (not its
  queue wait);
- ``aurum_stage_jobs_total{stage,outcome,source}``: ``outcome`` is ``ok`` (passed on to
  the next stage), ``admitted`` (intake handed the job to the stages), ``scored``, a
  rejection reason (``no_face``, ``low_quality``, ``cooldown`` …), ``retried`` or
  ``failed``; ``source`` the backend that answered: ``service``, ``local``, ``simulated``
  or ``none``.

They are Redis counters (:func:`aurum_ml.pipeline.telemetry.record_stage`, in the one round trip
a stage run makes for its bookkeeping: see ``PipelineTask.__call__``),
not prometheus_client's multiprocess mode: that mode sums the processes of one machine
through a shared folder, while our workers run on several machines and their prefork
children come and go. Redis already holds the pipeline's state; the counters are a few
hundred hash fields, whatever the traffic.

``aurum-ml metrics`` prints them (for a node-exporter textfile), or serves them with
``--port``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from aurum_ml.connection import redis_errors
from aurum_ml.pipeline.health import fallback_state, last_probes, transitions
from aurum_ml.pipeline.runtime import Runtime
from aurum_ml.pipeline.telemetry import BUCKETS, RERANK_LAST, STAGE_JOBS, STAGE_SECONDS, STAGES
from aurum_ml.population.index import RERANK_LOST

__all__ = ["PipelineCollector"]


def _stage_series(client: Any) -> Iterator[Any]:
    with redis_errors():
        jobs = client.hgetall(STAGE_JOBS)
        seconds = client.hgetall(STAGE_SECONDS)
    counter = CounterMetricFamily(
        "aurum_stage_jobs",
        "Stage runs by outcome (ok, admitted, scored, a rejection reason, retried, failed) "
        "and source",
        labels=["stage", "outcome", "source"],
    )
    for field, count in sorted(jobs.items()):
        stage, outcome, source = field.decode().split("|")
        counter.add_metric([stage, outcome, source], int(count))
    yield counter
    histogram = HistogramMetricFamily(
        "aurum_stage_duration_seconds", "Time a stage ran (not its queue wait)", labels=["stage"]
    )
    values = {k.decode(): float(v) for k, v in seconds.items()}
    for stage in STAGES:
        if f"{stage}|sum" not in values:
            continue
        cumulative, buckets = 0.0, []
        for bound in (*map(str, BUCKETS), "+Inf"):
            cumulative += values.get(f"{stage}|{bound}", 0.0)
            buckets.append((bound, cumulative))
        histogram.add_metric([stage], buckets, sum_value=values[f"{stage}|sum"])
    yield histogram


class PipelineCollector(Collector):
    """``consumers``, when given, returns how many workers consume each queue (the CLI
    asks the workers over the broker: celery's ``inspect active_queues``)."""

    def __init__(
        self,
        runtime: Runtime,
        queues: tuple[str, ...],
        consumers: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.runtime = runtime
        self.queues = queues
        self.consumers = consumers

    def collect(self) -> Iterator[Any]:
        client, settings = self.runtime.state.redis, self.runtime.settings
        state = fallback_state(client)
        yield GaugeMetricFamily(
            "aurum_fallback_active",
            "Fallback flag: 1 on, 0 off, -1 unknown (no fresh flag)",
            value={True: 1, False: 0, None: -1}[state.active],
        )
        counter = CounterMetricFamily(
            "aurum_fallback_transitions", "Fallback flag transitions", labels=["to"]
        )
        counts = transitions(client)
        for to in ("on", "off"):
            counter.add_metric([to], counts.get(to, 0))
        yield counter

        up = GaugeMetricFamily("aurum_service_up", "Last probe succeeded", labels=["service"])
        availability = GaugeMetricFamily(
            "aurum_service_availability", "Successes over the probe window", labels=["service"]
        )
        latency = GaugeMetricFamily(
            "aurum_service_latency_seconds", "Latency of the last probe", labels=["service"]
        )
        for name, seen in last_probes(client, settings).items():
            if seen["ok"] is not None:
                up.add_metric([name], int(seen["ok"]))
                latency.add_metric([name], (seen["latency_ms"] or 0) / 1000)
            if seen["availability"] is not None:
                availability.add_metric([name], seen["availability"])
        yield from (up, availability, latency)

        if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
            broker = redis.Redis.from_url(settings.broker_url, socket_timeout=5)
            depth = GaugeMetricFamily(
                "aurum_queue_messages", "Messages waiting in a queue", labels=["queue"]
            )
            with redis_errors():
                for queue in self.queues:  # kombu keeps a Redis queue as a list of that name
                    depth.add_metric([queue], int(broker.llen(queue)))
            yield depth

        degraded = GaugeMetricFamily(
            "aurum_degraded_jobs", "Simulated results awaiting re-score", labels=["state"]
        )
        degraded.add_metric(["pending"], len(self.runtime.degraded.pending()))
        degraded.add_metric(["expired"], len(self.runtime.degraded.expired()))
        yield degraded
        ledger = self.runtime.inflight
        yield GaugeMetricFamily(
            "aurum_jobs_in_flight", "Jobs between intake and their end", value=ledger.count()
        )
        yield GaugeMetricFamily(
            "aurum_oldest_job_idle_seconds",
            "Seconds since a stage last ran on the longest-idle job in flight (0: none)",
            value=ledger.oldest_age_s() or 0.0,
        )
        faces = GaugeMetricFamily("aurum_faces", "Faces in the score index", labels=["model"])
        faces.add_metric([self.runtime.index.model], self.runtime.index.count())
        yield faces
        yield from _stage_series(client)
        yield from self._rerank_series(client)
        if self.consumers is not None:
            workers = GaugeMetricFamily(
                "aurum_queue_workers", "Workers consuming a queue", labels=["queue"]
            )
            seen = self.consumers()
            for queue in self.queues:
                workers.add_metric([queue], seen.get(queue, 0))
            yield workers

    def _rerank_series(self, client: Any) -> Iterator[Any]:
        with redis_errors():
            last = {k.decode(): float(v) for k, v in client.hgetall(RERANK_LAST).items()}
            lost = int(client.get(RERANK_LOST) or 0)
        yield CounterMetricFamily(
            "aurum_rerank_lost",
            "Re-ranks that died mid-run (worker killed), reaped and sent again",
            value=lost,
        )
        yield GaugeMetricFamily(
            "aurum_rerank_interval_seconds",
            "How often beat sends the re-rank (RERANK_INTERVAL)",
            value=self.runtime.settings.rerank_interval_s,
        )
        if last:
            yield GaugeMetricFamily(
                "aurum_rerank_last_success_timestamp_seconds",
                "When the last re-rank finished (unix time)",
                value=last.get("at", 0.0),
            )
            yield GaugeMetricFamily(
                "aurum_rerank_duration_seconds",
                "How long the last re-rank took",
                value=last.get("seconds", 0.0),
            )
        distribution = self.runtime.index.distribution()
        if distribution is not None:
            scores = GaugeMetricFamily(
                "aurum_score_quantile",
                "Stored scores (0-100) as of the last re-rank, by quantile",
                labels=["quantile"],
            )
            for q in ("p10", "p25", "p50", "p75", "p90", "p95", "p99"):
                scores.add_metric([f"0.{q[1:]}"], getattr(distribution, q))
            yield scores
            yield GaugeMetricFamily(
                "aurum_score_mean",
                "Mean stored score as of the last re-rank",
                value=distribution.mean,
            )
