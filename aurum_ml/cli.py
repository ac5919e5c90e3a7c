"""``aurum-ml``: score photos from the command line.

With no ``AURUM_BROKER_URL`` the whole chain runs in this process on the embedded default
(memory broker, a worker thread, the local Qdrant folder under ``AURUM_DATA_DIR``); with it,
jobs go to the cluster and the command waits for their results.

Exit status: 0 when every input got a result (scored or rejected), 1 when any job failed
on infrastructure, 2 on a configuration error.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from aurum_ml.errors import BadInput, ConfigError
from aurum_ml.schemas import Result
from aurum_ml.settings import Settings, get_settings


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


def _failure(exc: BaseException) -> dict[str, Any]:
    return {"status": "error", "error": type(exc).__name__, "message": str(exc)}


def _row(path: str, out: dict[str, Any]) -> str:
    name = Path(path).name[:28]
    if out["status"] == "scored":
        quality = out["quality"] or {}
        return (
            f"{name:<28} scored    {out['score']:>5.1f}  {out['rank']:>4}/{out['total_faces']:<5} "
            f"face {quality.get('face_width_px', '?')} px, "
            f"{out['timings_ms']['total']:.0f} ms"
        )
    if out["status"] == "rejected":
        return f"{name:<28} rejected  {out['reason']}: {out['message']}"
    return f"{name:<28} ERROR     {out['error']}: {out['message']}"


@click.group()
@click.version_option(package_name="aurum-ml")
def main() -> None:
    """Aurum Circle face scoring."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command("score")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
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
    """Score the face in each IMAGE; results come in input order."""
    try:
        settings = get_settings()
    except ValueError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    from aurum_ml.celery_app import app
    from aurum_ml.embedded import start_embedded
    from aurum_ml.runtime import get_runtime
    from aurum_ml.tasks import score_face

    try:
        session = (
            start_embedded(app, get_runtime()) if settings.embedded else contextlib.nullcontext()
        )
        with session:
            pending: list[Any] = []
            for path in images:
                try:
                    image_b64 = _read(path, settings)
                except BadInput as exc:
                    pending.append(
                        Result(
                            job_id=None,
                            status="rejected",
                            reason=exc.reason,
                            message=exc.message,
                            user_id=user_id or path.stem,
                        ).model_dump(mode="json")
                    )
                    continue
                pending.append(
                    score_face.delay(
                        image_b64,
                        user_id=user_id or path.stem,
                        allow_multiple_faces=allow_multiple_faces or None,
                    )
                )
            results = _collect(pending, images, timeout, progress=not as_json and len(images) > 1)
    except ConfigError as exc:
        click.echo(f"configuration: {exc}", err=True)
        sys.exit(2)

    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for path, out in zip(images, results, strict=True):
            click.echo(_row(str(path), out))
    if any(out["status"] == "error" for out in results):
        sys.exit(1)


def _collect(
    pending: list[Any], images: tuple[Path, ...], timeout: float, progress: bool
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    bar = (
        click.progressbar(length=len(pending), label="scoring", file=sys.stderr)
        if progress
        else contextlib.nullcontext()
    )
    with bar as ticks:
        for item in pending:
            if isinstance(item, dict):
                results.append(item)
            else:
                try:
                    results.append(item.get(timeout=timeout))
                except Exception as exc:  # AurumError after retries, a time-out, a crash
                    results.append(_failure(exc))
            if ticks is not None:
                ticks.update(1)
    return results


if __name__ == "__main__":
    main()
