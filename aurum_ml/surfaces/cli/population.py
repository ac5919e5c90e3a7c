"""The population from the command line: get-score, similar, leaderboard, stats, rerank,
forget, export-vectors and import-vectors."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import click

from aurum_ml.errors import AurumError, BadInput, ConfigError
from aurum_ml.settings import get_settings
from aurum_ml.surfaces.cli.common import Exit, emit, json_option, load_settings, run_query

_SAME = "  same person?"


@click.command("get-score")
@click.argument("user_id")
@json_option
def get_score_command(user_id: str, as_json: bool) -> None:
    """The latest score of USER_ID, as it stands now."""
    from aurum_ml.population.queries import get_score

    out = run_query("aurum_ml.get_score", get_score, user_id)
    if out is None:
        raise Exit(3, f"no stored face for {user_id}")
    emit(
        out,
        as_json,
        lambda r: [
            f"{r['user_id']}: score {r['score']} (rank {r['rank']}/{r['total_faces']}), "
            f"confidence {r.get('confidence')}, vibes {', '.join(r.get('vibes') or [])}"
        ],
    )


@click.command("similar")
@click.argument("user_id")
@click.option("-k", default=10, show_default=True, help="How many other users.")
@json_option
def similar_command(user_id: str, k: int, as_json: bool) -> None:
    """The other users whose faces are nearest to USER_ID's latest face."""
    from aurum_ml.population.queries import similar

    out = run_query("aurum_ml.similar", similar, user_id, k)
    if out is None:
        raise Exit(3, f"no stored face for {user_id}")
    emit(
        out,
        as_json,
        lambda rows: (
            [
                f"{r['user_id']:<30} {r['distance']:.3f}{_SAME if r['same_person'] else ''}"
                for r in rows
            ]
            or [f"no other faces near {user_id}"]
        ),
    )


@click.command("leaderboard")
@click.option("--limit", default=10, show_default=True)
@json_option
def leaderboard_command(limit: int, as_json: bool) -> None:
    """The most typical faces, one per user."""
    from aurum_ml.population.queries import leaderboard

    out = run_query("aurum_ml.leaderboard", leaderboard, limit)
    emit(
        out,
        as_json,
        lambda rows: [f"{r['position']:>3}. {r['user_id']:<30} {r['score']:>5.1f}" for r in rows],
    )


def stats_lines(data: dict[str, Any]) -> list[str]:
    """``stats`` as text: what is known — the count always, the distribution once a
    re-rank has computed it."""
    rows = []
    for model, entry in data["models"].items():
        dist = entry["distribution"]
        if dist is None:
            rows.append(
                f"{model}: {entry['count']} faces; the score distribution exists after the "
                "first re-rank (beat runs one every RERANK_INTERVAL; `aurum-ml rerank` now)"
            )
            continue
        rows.append(
            f"{model}: {entry['count']} faces; scores mean {dist['mean']}, std {dist['std']}, "
            f"median {dist['p50']} (as of the last re-rank, {dist['count']} faces)"
        )
        tops = entry.get("thresholds") or {}
        if tops:
            ordered = sorted(tops.items(), key=lambda item: int(item[0][4:-3]))  # top_5pct
            needed = ", ".join(f"{name[4:-3]} %: {t['score']}" for name, t in ordered)
            rows.append(f"  score needed for the top {needed}")
    return rows


@click.command("stats")
@json_option
def stats_command(as_json: bool) -> None:
    """Population statistics per model."""
    from aurum_ml.population.queries import stats

    out = run_query("aurum_ml.stats", stats)
    emit(out, as_json, stats_lines)


@click.command("rerank")
@json_option
def rerank_command(as_json: bool) -> None:
    """Recompute every face's score against today's population."""
    from aurum_ml.population.rerank import rerank

    out = run_query("aurum_ml.rerank", lambda runtime: rerank(runtime).as_dict())
    emit(out, as_json, lambda r: [f"re-ranked {r['faces']} faces in {r['seconds']} s"])


@click.command("forget")
@click.argument("user_id")
@click.option(
    "--compact",
    is_flag=True,
    help="Then rewrite the Redis append-only files, so the erased data leaves disk too "
    "(at most once per COMPACT_MIN_INTERVAL).",
)
@json_option
def forget_command(user_id: str, compact: bool, as_json: bool) -> None:
    """Erase everything held about USER_ID."""
    from aurum_ml.population.forget import forget_user

    out = run_query("aurum_ml.forget_user", forget_user, user_id)
    if compact:
        from aurum_ml.population.persistence import compact as compact_redis

        out["compact"] = compact_redis(get_settings())

    def lines(r: dict[str, Any]) -> list[str]:
        shown = [f"forgot {user_id}: {r['points']} faces, {r['results']} results"]
        if "compact" in r:
            servers = r["compact"]["servers"]
            if not servers:
                shown.append("compact: the embedded default keeps no Redis files")
            for server, state in servers.items():
                detail = {
                    "rewriting": "append-only file rewrite started",
                    "aof_off": "AOF is off: nothing to rewrite",
                    "too_soon": f"rewritten recently; again in {state.get('retry_in_s')} s",
                }.get(state["status"], f"error: {state.get('message')}")
                shown.append(f"compact {server}: {detail}")
        return shown

    emit(out, as_json, lines)


@contextlib.contextmanager
def _vector_store_access() -> Any:
    """The runtime for a command that reads or writes the vector store itself (not through
    a worker): errors as exit codes, the store closed after."""
    load_settings()
    from aurum_ml.pipeline.runtime import get_runtime

    runtime = get_runtime()
    try:
        yield runtime
    except ConfigError as exc:
        raise Exit(2, f"configuration: {exc}") from None
    except BadInput as exc:
        raise Exit(2, str(exc)) from None
    except AurumError as exc:
        where = runtime.vectors.where
        raise Exit(1, f"{type(exc).__name__}: {exc} (the store: {where})") from None
    finally:
        runtime.vectors.close()


@click.command("export-vectors")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def export_vectors_command(file: Path, as_json: bool) -> None:
    """Write every stored face (ids, vectors, payloads) to FILE (JSON Lines; .gz to
    compress), to move the collection to another engine with import-vectors. FILE holds
    biometric data: it is created readable by you only; delete it once imported. On a
    cluster with a local folder, stop the store worker first (it holds the folder)."""
    from aurum_ml.population.transfer import export_vectors

    if file.exists():
        raise Exit(2, f"{file} exists: choose a new file (an export never overwrites one)")
    if not file.parent.is_dir():
        raise Exit(2, f"no such folder: {file.parent}")
    with _vector_store_access() as runtime:
        count = export_vectors(runtime, file)
        where = runtime.vectors.where
    out = {"exported": count, "file": str(file), "from": where}
    emit(out, as_json, lambda r: [f"exported {r['exported']} faces from {r['from']} to {file}"])


@click.command("import-vectors")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def import_vectors_command(file: Path, as_json: bool) -> None:
    """Write the faces of an export-vectors FILE into this deployment's store (QDRANT_URL
    or the local folder), under the same ids: importing twice is harmless. Faces of users
    erased since they were stored are skipped. The file is checked whole first."""
    from aurum_ml.population.rerank import rerank
    from aurum_ml.population.transfer import import_vectors

    if not file.is_file():
        raise Exit(2, f"no such file: {file}")
    with _vector_store_access() as runtime:
        report = import_vectors(runtime, file).as_dict()
        report["into"] = runtime.vectors.where
        if not runtime.settings.embedded:  # place them in the cluster's score index now
            report["reranked"] = rerank(runtime).faces

    def lines(r: dict[str, Any]) -> list[str]:
        shown = [f"imported {r['imported']} faces into {r['into']} ({r['engine']})"]
        if r["skipped_erased"]:
            shown.append(f"skipped {r['skipped_erased']} faces of users erased since")
        return shown

    emit(report, as_json, lines)
