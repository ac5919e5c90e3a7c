"""Every Celery setting of aurum_ml: queues, routes, delivery guarantees, limits, retries.

Values that differ between deployments come from :class:`aurum_ml.settings.Settings`
(the environment); everything else is fixed here, next to the reason for it.

Runbook (one worker per queue, each scalable on its own machines)::

    celery -A aurum_ml worker -Q detect      --concurrency 2 -n detect@%h
    celery -A aurum_ml worker -Q embed       --concurrency 2 -n embed@%h
    celery -A aurum_ml worker -Q score       --concurrency 2 -n score@%h
    celery -A aurum_ml worker -Q store       --concurrency 2 -n store@%h
    celery -A aurum_ml worker -Q maintenance --concurrency 1 -n maintenance@%h

With a local Qdrant folder (no QDRANT_URL) only one process may open it. The rule: the
store worker owns the folder — it runs as one process (``--pool threads``), and every task
that reads or writes vectors is routed to the store queue (VECTOR_TASKS below). A worker
that consumes the store queue and cannot own the folder refuses to start
(aurum_ml.population.vectors.claim_local_folder). With a Qdrant server those tasks stay on the
maintenance queue.
"""

import contextlib
from typing import Any

from kombu import Exchange, Queue

from aurum_ml.settings import get_settings

# aurum_ml.pipeline.celery_app loads this file by its path, never as "whatever celeryconfig comes
# first on sys.path" (an app's own celeryconfig.py would replace our routes and JSON-only
# rule), and refuses a config without this marker.
AURUM_ML_CONFIG = "aurum_ml"

_settings = get_settings()

# --- transport: ride out a broker or Redis blip instead of losing the job ------------------
broker_url = _settings.celery_broker_url
result_backend = _settings.celery_result_backend
broker_connection_retry_on_startup = True
broker_connection_retry = True
broker_connection_max_retries = None  # a worker keeps reconnecting; it never gives up
# Publishing (the caller's .delay, a stage's next stage, a retry) waits out an outage of
# about 80 s: 0.2 s, +0.5 s each time, at most 3 s apart, 30 tries (PUBLISH_MAX_RETRIES).
# Celery turns a retry
# whose publish fails into Reject(requeue=False) — a lost job — which PipelineTask turns
# back into a requeue; this policy makes that the rare case.
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": _settings.publish_max_retries,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 3,
}
# The result backend: a worker storing a result retries connection errors (exponential
# sleep from 0.1 s to 10 s, 30 tries: minutes), and a caller waiting in .get() reconnects
# for ~2 min (its retry_policy below) instead of dying with "Retry limit exceeded … the
# Celery application must be restarted" after ~20 s.
result_backend_always_retry = True
result_backend_max_retries = 30
result_backend_base_sleep_between_retries_ms = 100
result_backend_max_sleep_between_retries_ms = 10_000

# --- serialisation: JSON only. A pickle message is refused by the worker, never run. ----
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# --- queues and routes -------------------------------------------------------------------
# score_face is intake (validate, store the image, replace itself with the chain): cheap,
# so it shares the detect queue rather than needing one more worker pool.
STAGE_QUEUES = ("detect", "embed", "score", "store")
MAINTENANCE_QUEUE = "maintenance"
# webhooks (aurum_ml.pipeline.webhooks): network calls to the app, apart from the pipeline's workers
NOTIFY_QUEUE = "notify"
QUEUES = (*STAGE_QUEUES, MAINTENANCE_QUEUE, NOTIFY_QUEUE)

_exchange = Exchange("aurum", type="direct")
task_queues = tuple(Queue(name, _exchange, routing_key=name) for name in QUEUES)
task_default_queue = MAINTENANCE_QUEUE
task_default_exchange = "aurum"
task_default_routing_key = MAINTENANCE_QUEUE
# A route to an undeclared queue is an error, not a queue nobody consumes.
task_create_missing_queues = False
# The tasks that open the vector store besides the store stage. With a local Qdrant folder
# only the store worker may open it, so they go to its queue.
VECTOR_TASKS = (
    "aurum_ml.rerank",
    "aurum_ml.rescore_degraded",
    "aurum_ml.get_score",
    "aurum_ml.similar",
    "aurum_ml.leaderboard",
    "aurum_ml.forget_user",
)
LOCAL_FOLDER = not _settings.qdrant_url and not _settings.embedded
VECTOR_QUEUE = "store" if LOCAL_FOLDER else MAINTENANCE_QUEUE
task_routes = {
    **{name: {"queue": VECTOR_QUEUE, "routing_key": VECTOR_QUEUE} for name in VECTOR_TASKS},
    "aurum_ml.score_face": {"queue": "detect", "routing_key": "detect"},
    "aurum_ml.detect": {"queue": "detect", "routing_key": "detect"},
    "aurum_ml.embed": {"queue": "embed", "routing_key": "embed"},
    "aurum_ml.score": {"queue": "score", "routing_key": "score"},
    "aurum_ml.store": {"queue": "store", "routing_key": "store"},
    "aurum_ml.notify": {"queue": NOTIFY_QUEUE, "routing_key": NOTIFY_QUEUE},
    "aurum_ml.*": {"queue": MAINTENANCE_QUEUE, "routing_key": MAINTENANCE_QUEUE},
}

# --- delivery: no job lost to a crashed worker --------------------------------------------
# Every stage is idempotent, so late acks (a message is acked after its task ran) and
# redelivery on a lost worker are safe. Prefetch 1: a slow face does not hold others back.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_track_started = True
result_expires = _settings.result_expires_s

# --- limits and retries, per task (seconds) --------------------------------------------
# soft limit → SoftTimeLimitExceeded in the task (a permanent failure); hard → killed.
# The acked-late tasks' hard limits set the Redis visibility timeout below: keep them short.
_LIMITS = {
    "aurum_ml.score_face": (40, 45),  # it may run detect, embed and score itself (tasks.py)
    "aurum_ml.detect": (40, 45),
    "aurum_ml.embed": (40, 45),
    "aurum_ml.score": (30, 40),
    "aurum_ml.store": (30, 40),
    "aurum_ml.get_score": (30, 40),
    "aurum_ml.similar": (30, 40),
    "aurum_ml.leaderboard": (30, 40),
    "aurum_ml.stats": (30, 40),
    "aurum_ml.forget_user": (50, 60),
    "aurum_ml.sweep_erased": (50, 60),
    "aurum_ml.redrive_stalled": (50, 60),
    "aurum_ml.notify": (
        round(_settings.webhook_timeout_s + 10),
        round(_settings.webhook_timeout_s + 15),
    ),
    # acked on receipt (see _ACK_EARLY): long, or re-sent by beat anyway
    "aurum_ml.rerank": (1800, 1860),
    "aurum_ml.rescore_degraded": (1800, 1860),
    "aurum_ml.compact_persistence": (60, 75),
    "aurum_ml.probe_health": (
        round(2 * _settings.health_timeout_s + 5),
        round(2 * _settings.health_timeout_s + 10),
    ),
}
# Long or periodic tasks are acked when received: a worker killed while it runs them loses
# that run (beat sends the next re-rank and probe; the re-score is sent again at the next
# recovery or by hand), and the visibility timeout need not cover half an hour.
_ACK_EARLY = (
    "aurum_ml.rerank",
    "aurum_ml.rescore_degraded",
    "aurum_ml.compact_persistence",
    "aurum_ml.probe_health",
    "aurum_ml.redrive_stalled",
)
# The middle stages' results only feed the next stage: not stored (less Redis traffic, no
# face data lingering in the backend); their errors are, so a failure reaches the caller.
_MIDDLE_STAGES = ("aurum_ml.detect", "aurum_ml.embed", "aurum_ml.score")
# The store stage runs under the job's id, which intake already marked STARTED: writing
# STARTED again would cost a result-backend round trip a job and tell nobody anything.
_SAME_ID_AS_INTAKE = ("aurum_ml.store",)
task_annotations = {
    name: {
        "soft_time_limit": soft,
        "time_limit": hard,
        "max_retries": _settings.task_max_retries,
        "retry_backoff_max": _settings.retry_backoff_max_s,
    }
    | (
        {"ignore_result": True, "store_errors_even_if_ignored": True}
        if name in _MIDDLE_STAGES
        else {}
    )
    | ({"acks_late": False} if name in _ACK_EARLY else {})
    | ({"track_started": False} if name in _SAME_ID_AS_INTAKE else {})
    for name, (soft, hard) in _LIMITS.items()
}

# Redis broker: a message taken by a worker that dies comes back after visibility_timeout.
# Too long and a killed worker's jobs wait (it was 64 min); too short and a message still
# legitimately held — a task running up to its hard limit, a retry waiting out its backoff
# (an ETA message) — is delivered twice (kombu#337). So: the longest backoff + the longest
# hard limit of an acked-late task + a margin = 100 s by default. A double delivery is
# harmless (every stage is idempotent; tested). RabbitMQ redelivers a dead consumer's
# messages at once instead (no timeout involved): the better broker where that matters.
LATE_HARD_LIMIT = max(hard for name, (_, hard) in _LIMITS.items() if name not in _ACK_EARLY)
VISIBILITY_TIMEOUT = _settings.visibility_timeout_s or (
    _settings.retry_backoff_max_s + LATE_HARD_LIMIT + 10
)
# kombu looks for such messages only every unacked_restore_interval × throttle seconds
# (10 × 10 = 100 s by default, on top of the timeout): every 5 s instead (one ZRANGE).
broker_transport_options: dict[str, Any] = {
    "visibility_timeout": VISIBILITY_TIMEOUT,
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
}
if (broker_url or "").startswith(("redis://", "rediss://")):
    # No read may block for ever on a connection a Redis restart left half-open: a read
    # waits at most 30 s (kombu's own BRPOP waits 1 s, well inside it), a connect 5 s, and
    # TCP keepalive finds a dead peer. A timed-out connection is a connection error: the
    # worker reconnects, as after any restart.
    broker_transport_options |= {
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
    }
redis_socket_connect_timeout = 5
redis_socket_keepalive = True
result_backend_transport_options: dict[str, Any] = {
    "visibility_timeout": VISIBILITY_TIMEOUT,
    "retry_policy": {"max_retries": 60, "interval_start": 0, "interval_step": 1, "interval_max": 2},
}
if _settings.embedded:
    # memory:// polls; the default 1 s poll makes every stage wait up to a second.
    broker_transport_options["polling_interval"] = 0.01

# --- schedule: run exactly one beat (`celery -A aurum_ml beat`); the tasks are idempotent --
# beat keeps its schedule in the data folder, not in whatever folder it was started from
beat_schedule_filename = str(_settings.data_dir / "celerybeat-schedule")
if not _settings.embedded:
    with contextlib.suppress(OSError):
        _settings.data_dir.mkdir(parents=True, exist_ok=True)
beat_schedule = {
    "rerank": {"task": "aurum_ml.rerank", "schedule": _settings.rerank_interval_s},
    "probe-health": {
        "task": "aurum_ml.probe_health",
        "schedule": _settings.health_probe_interval_s,
        # a probe that waited longer than an interval is stale: the next one is coming
        "options": {"expires": _settings.health_probe_interval_s},
    },
    # jobs the broker lost (aurum_ml.pipeline.redrive); a sweep that waited an interval is stale
    "redrive-stalled": {
        "task": "aurum_ml.redrive_stalled",
        "schedule": _settings.redrive_interval_s,
        "options": {"expires": _settings.redrive_interval_s},
    },
}

# --- monitoring (Flower) -------------------------------------------------------------------
worker_send_task_events = True
task_send_sent_event = True
