"""Every Celery setting of aurum_ml: queues, routes, delivery guarantees, limits, retries.

Values that differ between deployments come from :class:`aurum_ml.settings.Settings`
(the environment); everything else is fixed here, next to the reason for it.

Runbook (one worker per queue, each scalable on its own machines)::

    celery -A aurum_ml worker -Q detect      --concurrency 2 -n detect@%h
    celery -A aurum_ml worker -Q embed       --concurrency 2 -n embed@%h
    celery -A aurum_ml worker -Q score       --concurrency 2 -n score@%h
    celery -A aurum_ml worker -Q store       --concurrency 2 -n store@%h
    celery -A aurum_ml worker -Q maintenance --concurrency 1 -n maintenance@%h

With a local Qdrant folder (no QDRANT_URL) only one process may open it: run the store
queue with ``--concurrency 1 --pool threads``, or better, a Qdrant server.
"""

from kombu import Exchange, Queue

from aurum_ml.settings import get_settings

_settings = get_settings()

# --- transport ---------------------------------------------------------------------------
broker_url = _settings.celery_broker_url
result_backend = _settings.celery_result_backend
broker_connection_retry_on_startup = True

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
QUEUES = (*STAGE_QUEUES, MAINTENANCE_QUEUE)

_exchange = Exchange("aurum", type="direct")
task_queues = tuple(Queue(name, _exchange, routing_key=name) for name in QUEUES)
task_default_queue = MAINTENANCE_QUEUE
task_default_exchange = "aurum"
task_default_routing_key = MAINTENANCE_QUEUE
# A route to an undeclared queue is an error, not a queue nobody consumes.
task_create_missing_queues = False
task_routes = {
    "aurum_ml.score_face": {"queue": "detect", "routing_key": "detect"},
    "aurum_ml.detect": {"queue": "detect", "routing_key": "detect"},
    "aurum_ml.embed": {"queue": "embed", "routing_key": "embed"},
    "aurum_ml.score": {"queue": "score", "routing_key": "score"},
    "aurum_ml.store": {"queue": "store", "routing_key": "store"},
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
_LIMITS = {
    "aurum_ml.score_face": (15, 20),
    "aurum_ml.detect": (60, 75),
    "aurum_ml.embed": (30, 45),
    "aurum_ml.score": (30, 45),
    "aurum_ml.store": (30, 45),
    "aurum_ml.rerank": (1800, 1860),
    "aurum_ml.get_score": (30, 45),
    "aurum_ml.similar": (30, 45),
    "aurum_ml.leaderboard": (30, 45),
    "aurum_ml.stats": (30, 45),
    "aurum_ml.forget_user": (120, 150),
    "aurum_ml.sweep_erased": (120, 150),
    "aurum_ml.compact_persistence": (60, 75),
    "aurum_ml.probe_health": (
        round(2 * _settings.health_timeout_s + 5),
        round(2 * _settings.health_timeout_s + 10),
    ),
    "aurum_ml.rescore_degraded": (1800, 1860),
}
# The middle stages' results only feed the next stage: not stored (less Redis traffic, no
# face data lingering in the backend); their errors are, so a failure reaches the caller.
_MIDDLE_STAGES = ("aurum_ml.detect", "aurum_ml.embed", "aurum_ml.score")
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
    for name, (soft, hard) in _LIMITS.items()
}

# Retried tasks wait in the worker as ETA messages. With the Redis broker an unacked
# message comes back after visibility_timeout: keep it well above the longest backoff plus
# the longest hard limit, or a waiting retry runs twice (kombu#337).
VISIBILITY_TIMEOUT = max(
    900, 2 * (_settings.retry_backoff_max_s + max(hard for _, hard in _LIMITS.values()))
)
broker_transport_options: dict[str, float] = {"visibility_timeout": VISIBILITY_TIMEOUT}
result_backend_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT}
if _settings.embedded:
    # memory:// polls; the default 1 s poll makes every stage wait up to a second.
    broker_transport_options["polling_interval"] = 0.01

# --- schedule: run exactly one beat (`celery -A aurum_ml beat`); the tasks are idempotent --
beat_schedule = {
    "rerank": {"task": "aurum_ml.rerank", "schedule": _settings.rerank_interval_s},
    "probe-health": {
        "task": "aurum_ml.probe_health",
        "schedule": _settings.health_probe_interval_s,
        # a probe that waited longer than an interval is stale: the next one is coming
        "options": {"expires": _settings.health_probe_interval_s},
    },
}

# --- monitoring (Flower) -------------------------------------------------------------------
worker_send_task_events = True
task_send_sent_event = True
