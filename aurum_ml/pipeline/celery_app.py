"""The Celery app. Its settings all live in ``celeryconfig.py``; its tasks in ``tasks.py``.

``celeryconfig.py`` is ours and is loaded by its path (it is installed next to this
package), under the module name ``aurum_ml._celeryconfig``: an application with its own
``celeryconfig.py`` on ``sys.path`` — Celery's usual convention — can neither replace our
routes, queues and JSON-only rule nor be replaced by ours.
"""

from __future__ import annotations

import importlib
import importlib.util
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from celery import Celery, signals

from aurum_ml import broker, logs
from aurum_ml.errors import ConfigError

__all__ = ["app", "config"]

CONFIG_MODULE = "aurum_ml._celeryconfig"
_MARKER = "aurum_ml"


def _load_config() -> ModuleType:
    """Our celeryconfig.py, from beside the package (a source checkout, an editable or a
    regular install); the top-level module only if that file is missing — and then only
    if it carries our marker."""
    loaded = sys.modules.get(CONFIG_MODULE)
    if loaded is not None:
        return loaded
    path = Path(__file__).resolve().parents[2] / "celeryconfig.py"
    if path.is_file():
        spec = importlib.util.spec_from_file_location(CONFIG_MODULE, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[CONFIG_MODULE] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[CONFIG_MODULE]
            raise
    else:
        module = importlib.import_module("celeryconfig")
    if getattr(module, "AURUM_ML_CONFIG", None) != _MARKER:
        raise ConfigError(
            f"{getattr(module, '__file__', module)} is not aurum_ml's celeryconfig (no "
            "AURUM_ML_CONFIG marker): reinstall aurum-ml, whose celeryconfig.py is installed "
            "next to the aurum_ml package"
        )
    return module


logs.install()  # what a log line may contain: see aurum_ml.logs
broker.install()  # a Redis restart cannot kill a worker: see aurum_ml.broker
config = _load_config()
app = Celery("aurum_ml", include=["aurum_ml.pipeline.tasks"])
app.config_from_object(config)
# "task-sent" events carry the publishing process's name, which Celery makes up per process
# ("gen<pid>@host"): every CLI run, API process and worker child would add a label to
# Flower's /metrics for ever. One name per host instead: the sent events stay (Flower shows
# when a job was queued), the label set stays bounded.
PUBLISHER = f"publishers@{socket.gethostname()}"
app.amqp.__dict__["_event_dispatcher"] = app.events.Dispatcher(enabled=False, hostname=PUBLISHER)


@signals.worker_init.connect(weak=False)
def _warn_unconfigured_webhooks(sender: Any = None, **_: Any) -> None:
    """A worker that consumes the notify queue without the webhook settings would refuse
    every delivery (final, after one attempt): say so loudly at start."""
    from aurum_ml.settings import get_settings

    if sender is None or "notify" not in set(sender.app.amqp.queues.consume_from):
        return
    settings = get_settings()
    if settings.embedded:  # one process, no HTTP API: nobody can ask for a webhook
        return
    missing = [
        name
        for name, value in (
            ("AURUM_WEBHOOK_SECRET", settings.webhook_secret),
            ("AURUM_WEBHOOK_ALLOWED_HOSTS", settings.webhook_allowed_hosts),
        )
        if not value
    ]
    if missing:
        sys.stderr.write(
            f"aurum_ml: WARNING: this worker delivers webhooks but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} unset here: every webhook will be "
            "refused after one attempt. Give it the API's webhook settings.\n"
        )
        sys.stderr.flush()


@signals.worker_init.connect(weak=False)
def _claim_local_folder(sender: Any = None, **_: Any) -> None:
    """A worker that would open a local Qdrant folder it cannot own refuses to start, with
    the rule (aurum_ml.population.vectors.folder_rule), instead of failing every task it runs."""
    from aurum_ml.pipeline.runtime import get_runtime
    from aurum_ml.population.vectors import claim_local_folder
    from aurum_ml.settings import get_settings

    settings = get_settings()
    if settings.qdrant_url or settings.embedded:
        return
    queues = set(sender.app.amqp.queues.consume_from)
    try:
        claim_local_folder(queues, sender.pool_cls, settings, lambda: get_runtime().vectors)
    except ConfigError as exc:
        sys.stderr.write(f"aurum_ml: refusing to start: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(2) from None
