"""What a log line may contain: job ids, task names, stages, timings, reason codes and
error types — never an image, a vector, a user id, a result, a match or a message body.

Celery's own worker log lines would break that rule in two places, and are redacted here
by logging filters on Celery's loggers (so they hold for every handler and formatter):

- ``Task …[id] succeeded in 0.1s: {…}`` prints the task's whole return value (a result
  with its user id and other users' ids among the matches): the value is withheld;
- the consumer's reports on a refused, unknown or malformed message print its body and
  headers (a pickle someone published by hand, an image): both are withheld.

Task arguments are redacted where they are published (``tasks.PipelineTask``), which also
keeps them out of events and Flower.
"""

from __future__ import annotations

import logging

from celery.app import trace
from celery.worker.consumer import consumer

__all__ = ["WITHHELD", "install"]

WITHHELD = "<withheld>"
_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"
# the consumer's message reports: which of their arguments carry the body or headers
_MESSAGE_REPORTS = {
    consumer.MESSAGE_DECODE_ERROR: (3, 4),  # exc, type, encoding, headers, body
    consumer.UNKNOWN_TASK_ERROR: (1, 2, 3),  # exc, body, headers, delivery info
    consumer.INVALID_TASK_ERROR: (1,),  # exc, body
    consumer.UNKNOWN_FORMAT: (0,),  # report (body and headers)
}


class _WithholdResults(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == trace.LOG_SUCCESS and isinstance(record.args, dict):
            context = {k: v for k, v in record.args.items() if k not in ("return_value",)}
            context.update(args=WITHHELD, kwargs=WITHHELD)
            record.msg, record.args = _SUCCESS, context
            if hasattr(record, "data"):
                record.data = context
        return True


class _WithholdBodies(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        hidden = _MESSAGE_REPORTS.get(str(record.msg))
        if hidden is not None and isinstance(record.args, tuple):
            record.args = tuple(
                WITHHELD if i in hidden else arg for i, arg in enumerate(record.args)
            )
        return True


_installed = False


def install() -> None:
    """Attach the filters (once per process)."""
    global _installed
    if _installed:
        return
    trace.logger.addFilter(_WithholdResults())
    consumer.logger.addFilter(_WithholdBodies())
    _installed = True
