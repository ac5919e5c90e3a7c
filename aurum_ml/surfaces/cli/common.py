"""What the commands share: settings or exit 2, reaching the cluster or exit 1 in one
line, a query run on the embedded default or as a task, and printing as text or JSON."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import click

from aurum_ml.errors import AurumError, ConfigError
from aurum_ml.settings import Settings, get_settings


def error_row(exc: BaseException) -> dict[str, Any]:
    return {"status": "error", "error": type(exc).__name__, "message": str(exc)}


def load_settings() -> Settings:
    """The settings, or exit 2 with what is wrong in one line per problem (no traceback)."""
    from pydantic import ValidationError

    try:
        return get_settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "__root__")
            message = str(error.get("msg", "")).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise Exit(2, "configuration: " + "; ".join(problems)) from None


class Exit(click.ClickException):
    """A one-line message and an exit code (click prints it as "Error: …")."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click reads it per instance


def reach_cluster(settings: Settings) -> None:
    """Fail in seconds, in one line, when the broker or the result backend cannot be
    reached (Celery would retry for minutes, then print a traceback)."""
    from kombu.utils.url import maybe_sanitize_url

    from aurum_ml.pipeline.celery_app import app

    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0.5, timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure to connect is said the same way
        where = maybe_sanitize_url(settings.celery_broker_url)
        raise Exit(1, f"cannot reach the broker at {where}: {failure_reason(exc)}") from None
    client = getattr(app.backend, "client", None)
    if client is not None:
        try:
            client.ping()
        except Exception as exc:  # noqa: BLE001
            where = maybe_sanitize_url(settings.celery_result_backend)
            raise Exit(
                1, f"cannot reach the result backend at {where}: {failure_reason(exc)}"
            ) from None


def failure_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rstrip(".").lower() if "refused" in text.lower() else text


def run_query(task_name: str, function: Callable[..., Any], *args: Any) -> Any:
    """Run a query on the embedded default (directly, on the restored state) or as a task
    on the cluster's maintenance queue, waiting QUERY_TIMEOUT for its answer."""
    settings = load_settings()
    timeout = settings.query_timeout_s
    if not settings.embedded:
        reach_cluster(settings)
    from celery.exceptions import TimeoutError as CeleryTimeoutError

    from aurum_ml.pipeline.celery_app import app
    from aurum_ml.pipeline.runtime import get_runtime

    try:
        if settings.embedded:
            from aurum_ml.surfaces.embedded import restore

            runtime = get_runtime()
            try:
                restore(runtime, with_results=False)
                return function(runtime, *args)
            finally:
                runtime.vectors.close()
        import aurum_ml.pipeline.tasks  # noqa: F401  (registers the tasks)

        result = app.tasks[task_name].delay(*args)
        try:
            return result.get(timeout=timeout)
        except (TimeoutError, CeleryTimeoutError):  # celery's is not the built-in one
            queue = app.amqp.router.route({}, task_name)["queue"].name
            raise Exit(1, f"no answer within {timeout:g} s: {no_worker_message(queue)}") from None
        finally:
            result.forget()  # read once: no user data left behind in the result backend
    except ConfigError as exc:
        raise Exit(2, f"configuration: {exc}") from None
    except AurumError as exc:
        raise Exit(1, f"{type(exc).__name__}: {exc}") from None


def no_worker_message(queue: str) -> str:
    return (
        f"is a worker consuming the {queue!r} queue? Start one, e.g. "
        f"`celery -A aurum_ml worker -Q {queue} -n {queue}@%h` (see the README's cluster recipe)"
    )


def emit(data: Any, as_json: bool, lines: Callable[[Any], list[str]]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for line in lines(data):
            click.echo(line)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def watches_a_cluster(settings: Settings, command: str) -> None:
    """status and metrics read a running cluster's shared state; the embedded default has
    none between runs."""
    if settings.embedded:
        raise Exit(
            2,
            f"`aurum-ml {command}` watches a cluster (set AURUM_BROKER_URL): the embedded "
            "default keeps no state between runs; `aurum-ml stats` reports its stored faces",
        )


def or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


NO_WORKER_AFTER_S = 5.0


def let_go(job: Any) -> None:
    """Stop listening for a job given up on (no "Exception ignored in __del__" at exit)."""
    with contextlib.suppress(Exception):
        job.backend.remove_pending_result(job)
    with contextlib.suppress(Exception):
        job.forget()
