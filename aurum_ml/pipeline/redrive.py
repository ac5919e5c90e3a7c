"""Jobs the broker lost are sent again; a job never waits for ever.

Late acks and the visibility timeout bring back a message whose *worker* died. They cannot
bring back a message the *broker* lost: Redis killed between a write and its fsync
(``appendfsync everysec`` keeps the last second at risk), a worker that popped a message
and died before recording it as unacked, a queue purged by hand. The job then has a
result nobody will ever write, and its caller waits until its own deadline.

So the pipeline keeps its own ledger (:class:`aurum_ml.pipeline.ledger.InFlight`): the caller's
``score_face.apply_async`` enters each job with its request before publishing it, intake
replaces the request by the admitted job (no image), every stage run touches it, and the
job's end (the store stage's result, or a failure) takes it out. Beat runs
:func:`redrive_stalled` every REDRIVE_INTERVAL seconds. A job neither sent nor
run on by a stage for STALLED_AFTER seconds is

- taken out of the ledger if its result exists after all (its end was not recorded);
- dropped with its image if its user was erased meanwhile (it must store nothing);
- failed with ``ImageExpired`` if its image or its record is gone (TTLs), or ``JobLost``
  once it has been sent again REDRIVE_MAX times: a typed answer, never silence;
- left alone while any stage queue holds messages: it may be waiting behind them (a
  backlog is not a loss, and sending every job of a backlog again would double the load
  exactly when the pipeline is overloaded);
- otherwise sent again under its own id — its request to intake if intake never started
  on it, else detect → embed → score → store with the store stage under the job's id —
  so the caller's ``AsyncResult`` and webhook resolve as usual. Every stage is
  idempotent, so a job that was only slow and then runs twice changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aurum_ml.errors import ImageExpired, JobLost, PermanentError
from aurum_ml.pipeline.ledger import LedgerEntry
from aurum_ml.pipeline.runtime import Runtime
from aurum_ml.schemas import Job

__all__ = ["Outcomes", "redrive_stalled"]

log = logging.getLogger("aurum_ml.pipeline.redrive")


@dataclass
class Outcomes:
    """Job ids by what the sweep did with them."""

    redriven: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)  # a result existed: ledger cleaned
    erased: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # stalled, but a backlog exists

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in vars(self).items()}


def redrive_stalled(
    runtime: Runtime,
    *,
    has_result: Callable[[str], bool],
    backlog: Callable[[], int],
    send: Callable[[str, LedgerEntry], None],
    fail: Callable[[str, Job | None, PermanentError], None],
) -> Outcomes:
    """One sweep over the stalled jobs (see the module docstring). ``has_result`` says
    whether a job's result is stored, ``backlog`` counts the messages waiting in the stage
    queues, ``send`` publishes the job again (its request, or its chain once admitted),
    ``fail`` stores a failure as the job's result and ends it."""
    settings, ledger = runtime.settings, runtime.inflight
    out = Outcomes()
    stalled = ledger.stalled(settings.stalled_after_s)
    if not stalled:
        return out
    waiting_behind = backlog()
    for job_id in stalled:
        if has_result(job_id):
            ledger.done(job_id)
            out.ended.append(job_id)
            continue
        entry = ledger.load(job_id)
        if entry is None:  # its record (and the request's image) expired
            fail(job_id, None, ImageExpired("the job stalled and expired before it ran"))
            out.failed.append(job_id)
        elif runtime.users.erased_after(entry.user_id, entry.epoch):
            if entry.image_sha256 is not None:
                runtime.state.release(entry.image_sha256, job_id)
            ledger.done(job_id)
            out.erased.append(job_id)
        elif waiting_behind:
            out.waiting.append(job_id)
        elif entry.image_sha256 is not None and not runtime.state.has_image(entry.image_sha256):
            fail(job_id, entry.job, ImageExpired("the job stalled and its image expired"))
            if entry.job is None:  # the caller's reference to the image it stored
                runtime.state.release(entry.image_sha256, job_id)
            out.failed.append(job_id)
        elif entry.redrives >= settings.redrive_max:
            message = f"the job stalled {entry.redrives + 1} times; it was not scored"
            fail(job_id, entry.job, JobLost(message))
            if entry.job is None and entry.image_sha256 is not None:  # the caller's copy
                runtime.state.release(entry.image_sha256, job_id)
            out.failed.append(job_id)
        else:
            ledger.redriven(job_id)
            send(job_id, entry)
            out.redriven.append(job_id)
    if out.redriven or out.failed:
        log.warning(
            "stalled jobs: %d sent again, %d failed, %d waiting behind %d messages",
            len(out.redriven), len(out.failed), len(out.waiting), waiting_behind,
        )  # fmt: skip
    return out
