"""``aurum-ml score``: photos through the chain, a table (or JSON) of their results."""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from aurum_ml.errors import BadInput, ConfigError
from aurum_ml.schemas import Result, check_user_id
from aurum_ml.settings import Settings
from aurum_ml.surfaces.cli.common import (
    NO_WORKER_AFTER_S,
    error_row,
    let_go,
    load_settings,
    no_worker_message,
    reach_cluster,
)


def _read(path: Path, settings: Settings) -> str:
    """The file as base64; BadInput when it cannot be read or is over the byte limit."""
    try:
        with path.open("rb") as handle:
            data = handle.read(settings.image_max_bytes + 1)
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > settings.image_max_bytes:
        raise BadInput(
            f"image is over the {settings.image_max_bytes} byte limit", reason="image_too_large"
        )
    return base64.b64encode(data).decode("ascii")


HEADER = f"{'photo':<28} {'status':<9} {'score':>5}  {'rank/of':>9}  {'face':>6}  {'time':>7}"


def _row(path: str, out: dict[str, Any]) -> str:
    """One line of the score table (see HEADER); rejections and errors say why."""
    name = Path(path).name[:28]
    if out["status"] == "scored" and (out.get("degraded") or out.get("score") is None):
        return f"{name:<28} {'degraded':<9} {'-':>5}  {out.get('message') or ''}"
    if out["status"] == "scored":
        quality = out.get("quality") or {}
        place = f"{out['rank']}/{out['total_faces']}"
        face = f"{quality.get('face_width_px', '?')} px"
        return (
            f"{name:<28} {'scored':<9} {out['score']:>5.1f}  {place:>9}  {face:>6}  "
            f"{out['timings_ms']['total']:>4.0f} ms"
        )
    if out["status"] == "rejected":
        return f"{name:<28} {'rejected':<9} {out['reason']}: {out['message']}"
    return f"{name:<28} {'ERROR':<9} {out['error']}: {out['message']}"


@click.command("score")
@click.argument(
    "images",
    nargs=-1,
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False, readable=True),
)
@click.option("--user-id", help="User id for every image (default: each file's name).")
@click.option("--allow-multiple-faces", is_flag=True, help="Score the largest of several faces.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of results.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait per image.")
def score_command(
    images: tuple[Path, ...],
    user_id: str | None,
    allow_multiple_faces: bool,
    as_json: bool,
    timeout: float,
) -> None:
    """Score the face in each IMAGE; results come in input order. Several images of one
    user are sent one after another, in input order (one new photo per cooldown period:
    the first is the one that may be scored)."""
    if user_id is not None:
        try:
            check_user_id(user_id)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--user-id") from None
    settings = load_settings()
    if not settings.embedded:
        reach_cluster(settings)
    from aurum_ml.pipeline.celery_app import app
    from aurum_ml.pipeline.runtime import get_runtime
    from aurum_ml.pipeline.tasks import score_face
    from aurum_ml.surfaces.embedded import start_embedded

    try:
        session = (
            start_embedded(app, get_runtime()) if settings.embedded else contextlib.nullcontext()
        )
        owners = [path.stem if user_id is None else user_id for path in images]

        def submit(i: int) -> Any:
            try:
                return score_face.delay(
                    _read(images[i], settings),
                    user_id=owners[i],
                    allow_multiple_faces=allow_multiple_faces or None,
                )
            except BadInput as exc:  # unreadable, or refused before it was sent
                return Result(
                    job_id=None,
                    status="rejected",
                    reason=exc.reason,
                    message=exc.message,
                    user_id=owners[i],
                ).model_dump(mode="json")

        with session:
            results = _collect(
                owners,
                submit,
                timeout,
                progress=not as_json and len(images) > 1 and sys.stderr.isatty(),
                watch_for_workers=not settings.embedded,
            )
    except ConfigError as exc:
        click.echo(f"configuration: {exc}", err=True)
        sys.exit(2)

    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(HEADER)
        for path, out in zip(images, results, strict=True):
            click.echo(_row(str(path), out))
    if any(out["status"] == "error" for out in results):
        sys.exit(1)


def _collect(
    owners: list[str],
    submit: Callable[[int], Any],
    timeout: float,
    progress: bool,
    watch_for_workers: bool = False,
) -> list[dict[str, Any]]:
    """Submit every user's first image at once, each next image of a user once the one
    before it has its result; the results in input order. Progress counts finished jobs;
    with ``watch_for_workers``, says so when no job has started after a few seconds."""
    results: dict[int, dict[str, Any]] = {}
    sent: dict[int, tuple[Any, float]] = {}
    later: dict[str, deque[int]] = {}

    def send(i: int) -> None:
        item = submit(i)
        if isinstance(item, dict):  # refused before it was sent
            finish(i, item)
        else:
            sent[i] = (item, time.monotonic())

    def finish(i: int, out: dict[str, Any]) -> None:
        results[i] = out
        if later[owners[i]]:
            send(later[owners[i]].popleft())

    first = []
    for i, owner in enumerate(owners):
        if owner in later:
            later[owner].append(i)
        else:
            later[owner] = deque()
            first.append(i)
    for i in first:
        send(i)
    bar = (
        click.progressbar(length=len(owners), label="scoring", file=sys.stderr)
        if progress
        else contextlib.nullcontext()
    )
    warned = False
    started = time.monotonic()
    with bar as ticks:
        shown = 0
        while len(results) < len(owners):
            for i, (job, since) in list(sent.items()):
                if job.ready():
                    del sent[i]
                    try:
                        finish(i, job.get(timeout=10))
                    except Exception as exc:  # AurumError after retries, a crash
                        finish(i, error_row(exc))
                elif time.monotonic() - since > timeout:
                    del sent[i]
                    let_go(job)
                    finish(i, error_row(TimeoutError(f"no result within {timeout:g} s")))
            if ticks is not None and len(results) > shown:
                ticks.update(len(results) - shown)
                shown = len(results)
            if (
                watch_for_workers
                and not warned
                and time.monotonic() - started > NO_WORKER_AFTER_S
                and sent
                and all(job.state == "PENDING" for job, _ in sent.values())
            ):
                warned = True
                click.echo(
                    f"\nno job has started after {NO_WORKER_AFTER_S:g} s: "
                    f"{no_worker_message('detect')}; waiting up to {timeout:g} s per image",
                    err=True,
                )
            time.sleep(0.05)
    return [results[i] for i in range(len(owners))]
