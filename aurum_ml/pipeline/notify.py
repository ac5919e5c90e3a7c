"""The notify queue's task: a job's outcome POSTed to its webhook, signed, exactly once
per attempt (:mod:`aurum_ml.pipeline.webhooks` holds the rules and the sender)."""

from __future__ import annotations

import logging

from celery import Task, states

from aurum_ml.pipeline import webhooks
from aurum_ml.pipeline.celery_app import app
from aurum_ml.pipeline.lifecycle import PipelineTask
from aurum_ml.pipeline.runtime import get_runtime
from aurum_ml.population import queries

log = logging.getLogger("aurum_ml.pipeline.notify")

_OUTCOME_WAIT_TRIES = 30  # a second apart: the result backend lags the task's end by ms


@app.task(bind=True, base=PipelineTask, name="aurum_ml.notify")
def notify(self: Task, job_id: str, attempt: int = 1) -> str:
    """POST the job's outcome to its webhook, signed; retried with backoff on timeouts,
    5xx and 429 (see aurum_ml.pipeline.webhooks). Each message carries the attempt it is for: of
    several copies of one attempt (a redelivered retry, a job ended twice) exactly one
    POSTs (``HookRecords.claim``), so an outage of any length gives one delivery."""
    rt = get_runtime()
    record = rt.hooks.get(job_id)
    if record is None or record.final:
        return "none"
    if record.next_attempt != attempt:  # a copy of an attempt already made
        return "duplicate"
    result = app.AsyncResult(job_id)
    state = result.state
    if state not in (states.SUCCESS, states.FAILURE):
        if self.request.retries >= _OUTCOME_WAIT_TRIES:  # forgotten (erased) or lost
            rt.hooks.attempted(job_id, "no_outcome", delivered=False, final=True)
            return "final"
        raise self.retry(countdown=1, max_retries=self.request.retries + 1)
    if not rt.hooks.claim(job_id, attempt, lease_s=rt.settings.webhook_timeout_s + 15):
        return "duplicate"  # another copy of this attempt is posting, or has posted
    if state == states.SUCCESS:
        shown = queries.for_tenant(rt, result.result, record.tenant)
        body = webhooks.body_of(job_id, "done", shown, None)
    else:
        exc = result.result
        error = {"error": type(exc).__name__, "message": str(exc)}
        body = webhooks.body_of(job_id, "failed", None, error)
    outcome = webhooks.deliver(job_id, record, rt.hooks, rt.settings, body)
    if outcome == "retry":
        countdown = webhooks.backoff(record.attempts + 1)  # this attempt included
        raise self.retry(
            args=(job_id, attempt + 1), countdown=countdown, max_retries=self.request.retries + 1
        )
    log.info("job %s: webhook %s", job_id, outcome)
    return outcome
