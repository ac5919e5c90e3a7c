"""`aurum-ml score` on the embedded default, as a user runs it: a subprocess with no broker,
no Redis and no Qdrant server configured; the population persists in AURUM_DATA_DIR."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from samples import no_face

CLI = [sys.executable, "-m", "aurum_ml.surfaces.cli"]
_OURS = ("AURUM_", "QDRANT_", "TASK_", "RETRY_")


@pytest.fixture()
def data_dir(tmp_path):
    yield tmp_path / "data"
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


def _run(args: list[str], data_dir: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    env["AURUM_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=300)


def test_embedded_default_end_to_end(photos, data_dir, tmp_path):
    blank = tmp_path / "no_face.jpg"
    blank.write_bytes(no_face(photos))
    first = _run(
        [
            "score",
            "--json",
            str(photos / "obama.jpg"),
            str(blank),
            str(photos / "biden.jpg"),
        ],
        data_dir,
    )
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""  # off a terminal: no progress line, no warning
    results = json.loads(first.stdout)
    assert [r["status"] for r in results] == ["scored", "rejected", "scored"]
    assert [r["reason"] for r in results] == [None, "no_face", None]
    assert results[0]["user_id"] == "obama" and results[2]["user_id"] == "biden"
    # scored concurrently (two worker threads), yet they count each other: 1 and 2
    assert sorted([results[0]["total_faces"], results[2]["total_faces"]]) == [1, 2]
    assert (data_dir / "qdrant").is_dir()

    # a second run sees the population of the first (the index is rebuilt from the folder)
    second = _run(["score", "--json", str(photos / "obama2.jpg")], data_dir)
    assert second.returncode == 0, second.stderr
    (again,) = json.loads(second.stdout)
    assert again["status"] == "scored" and again["total_faces"] == 3

    # the table is readable, and one user id can be given for all images
    table = _run(
        ["score", "--user-id", "u-table", str(photos / "obama3.jpg"), str(blank)], data_dir
    )
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].split() == ["photo", "status", "score", "rank/of", "face", "time"]
    assert lines[1].startswith("obama3.jpg") and " scored " in lines[1] and "/4 " in lines[1]
    assert lines[2].startswith("no_face.jpg") and "rejected  no_face" in lines[2]
    assert "WARNING" not in table.stderr


def test_a_held_qdrant_folder_is_a_clear_configuration_error(photos, data_dir):
    from qdrant_folders import held

    with held(data_dir / "qdrant"):
        out = _run(["score", str(photos / "obama.jpg")], data_dir)
    assert out.returncode == 2
    assert "held by another process" in out.stderr and "QDRANT_URL" in out.stderr


def test_queries_and_forget_on_the_embedded_default(photos, data_dir):
    scored = _run(
        ["score", "--json", str(photos / "obama.jpg"), str(photos / "obama3.jpg"),
         str(photos / "biden.jpg")],
        data_dir,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr

    def query(*args: str):
        out = _run(list(args), data_dir)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    latest = query("get-score", "obama", "--json")
    assert latest["user_id"] == "obama" and latest["total_faces"] == 3
    assert latest["distribution"]["count"] == 3  # the start-up re-rank summarised them
    near = query("similar", "obama", "-k", "2", "--json")
    assert [n["user_id"] for n in near] == ["obama3", "biden"]
    assert near[0]["same_person"] and not near[1]["same_person"]
    board = query("leaderboard", "--limit", "3", "--json")
    assert sorted(b["user_id"] for b in board) == ["biden", "obama", "obama3"]
    assert [b["score"] for b in board] == sorted((b["score"] for b in board), reverse=True)
    summary = query("stats", "--json")
    assert summary["models"]["dlib-resnet-v1"]["count"] == 3
    assert query("rerank", "--json")["faces"] == 3
    assert query("forget", "obama", "--json")["points"] == 1
    gone = _run(["get-score", "obama"], data_dir)
    assert gone.returncode == 3 and "no stored face" in gone.stderr
    assert query("stats", "--json")["models"]["dlib-resnet-v1"]["count"] == 2


def test_several_photos_of_one_user_are_admitted_in_input_order(photos, data_dir, tmp_path):
    """With a cooldown, the first photo in input order is the one that may be scored; one
    rejected for its content leaves the period to the next; the others get the true date."""
    blank = tmp_path / "no_face.jpg"
    blank.write_bytes(no_face(photos))
    names = [str(blank), str(photos / "obama.jpg"), str(photos / "obama2.jpg")]
    out = _run(["score", "--json", "--user-id", "u-order", *names], data_dir, COOLDOWN_DAYS="30")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert [r["status"] for r in results] == ["rejected", "scored", "rejected"]
    assert [r["reason"] for r in results] == ["no_face", None, "cooldown"]
    allowed = datetime.fromisoformat(results[2]["next_allowed_at"])
    assert timedelta(days=29.9) < allowed - datetime.now(UTC) < timedelta(days=30.1)


def test_an_empty_user_id_is_a_usage_error(photos, data_dir):
    out = _run(["score", "--user-id", "", str(photos / "obama.jpg")], data_dir)
    assert out.returncode == 2
    assert "--user-id" in out.stderr and "must not be empty" in out.stderr
    assert not (data_dir / "qdrant").exists()  # nothing was started


def test_the_same_photo_gets_its_stored_result_after_a_restart(photos, data_dir):
    """As on a cluster: the same photo of the same user is answered from the stored result
    (same job id), not scored again under a new one — across runs of the embedded default."""
    args = ["score", "--json", "--user-id", "u-same"]
    first = _run([*args, str(photos / "obama.jpg")], data_dir, COOLDOWN_DAYS="30")
    other = _run(["score", "--json", str(photos / "obama3.jpg")], data_dir, COOLDOWN_DAYS="30")
    again = _run([*args, str(photos / "obama.jpg")], data_dir, COOLDOWN_DAYS="30")
    assert first.returncode == other.returncode == again.returncode == 0, again.stderr
    (before,), (after,) = json.loads(first.stdout), json.loads(again.stdout)
    assert after["status"] == "scored" and after["job_id"] == before["job_id"]
    assert after["point_id"] == before["point_id"] and after["score"] == before["score"]
    assert [m["user_id"] for m in after["matches"]] == ["obama3"]  # matches as they stand


def test_ordinary_mistakes_are_usage_errors(photos, data_dir, tmp_path):
    missing = _run(["score", str(tmp_path / "nope.jpg")], data_dir)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    folder = _run(["score", str(photos)], data_dir)
    assert folder.returncode == 2 and "is a directory" in folder.stderr
    assert "Traceback" not in missing.stderr + folder.stderr
    assert not (data_dir / "qdrant").exists()  # nothing was started
    for command in (["get-score", "u-nobody"], ["similar", "u-nobody"]):
        out = _run(command, data_dir)
        assert out.returncode == 3 and "no stored face for u-nobody" in out.stderr, command
    for command in ("status", "metrics"):
        out = _run([command], data_dir)
        assert out.returncode == 2 and "watches a cluster" in out.stderr, command
    helped = _run(["--help"], data_dir)
    assert "Exit status" in helped.stdout and "3  not found" in helped.stdout


def test_a_dead_broker_or_bad_settings_are_one_line(photos, data_dir):
    dead = _run(["score", str(photos / "obama.jpg")], data_dir,
                AURUM_BROKER_URL="redis://127.0.0.1:1/0")  # fmt: skip
    assert dead.returncode == 1
    lines = dead.stderr.strip().splitlines()
    assert len(lines) == 1, dead.stderr
    assert lines[0].startswith("Error: cannot reach the broker at redis://127.0.0.1:1/0: ")
    assert "refused" in dead.stderr
    bad = _run(["stats"], data_dir, AURUM_BROKER_URL="amqp://guest@127.0.0.1//")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (
        "Error: configuration: AURUM_REDIS_URL is required when AURUM_BROKER_URL is not a "
        "Redis URL (pipeline state lives in Redis)"
    )


def test_no_worker_is_said_and_the_wait_ends_cleanly(photos, data_dir, redis_client):
    broker = os.environ["AURUM_BROKER_URL"]  # reachable; nobody consumes detect in this test
    try:
        out = _run(["score", "--timeout", "8", str(photos / "obama.jpg")], data_dir,
                   AURUM_BROKER_URL=broker)  # fmt: skip
    finally:  # the job waits for a worker: its message, and its image (until its TTL)
        sha = hashlib.sha256((photos / "obama.jpg").read_bytes()).hexdigest()
        redis_client.delete("detect", f"aurum:img:{sha}", f"aurum:imgref:{sha}")
    assert out.returncode == 1
    assert "no job has started after 5 s" in out.stderr and "'detect' queue" in out.stderr
    assert "TimeoutError: no result within 8 s" in out.stdout
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr


def test_the_table_shows_a_degraded_result():
    from aurum_ml.surfaces.cli.score import HEADER, _row

    degraded = {"status": "scored", "degraded": True, "score": None, "rank": None,
                "message": "scored on the simulated fallback: the score follows when the ML "
                "services are back"}  # fmt: skip
    line = _row("a.jpg", degraded)
    assert line.split()[:3] == ["a.jpg", "degraded", "-"] and "simulated fallback" in line
    assert HEADER.split() == ["photo", "status", "score", "rank/of", "face", "time"]


def test_stats_says_what_is_known_before_the_first_rerank(runtime, redis_client):
    import dataclasses

    from aurum_ml.population.index import ScoreIndex
    from aurum_ml.population.queries import stats
    from aurum_ml.surfaces.cli.population import stats_lines

    empty = ScoreIndex(redis_client, "never-reranked", 128)
    empty.clear()
    (line,) = stats_lines(stats(dataclasses.replace(runtime, index=empty)))
    assert "0 faces" in line and "after the first re-rank" in line and "None" not in line


def test_progress_counts_finished_jobs_on_a_terminal(photos, data_dir):
    """On a terminal (stderr a pty) the bar reaches 100 %; off one nothing is printed (see
    the end-to-end test)."""
    import pty

    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    env["AURUM_DATA_DIR"] = str(data_dir)
    names = [str(photos / "obama.jpg"), str(photos / "biden.jpg")]
    try:
        done = subprocess.run(CLI + ["score", *names], env=env, stdout=subprocess.PIPE,
                              stderr=terminal, timeout=300)  # fmt: skip
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal side is closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0
    assert b"scoring" in shown and b"100%" in shown


def test_beat_keeps_its_schedule_in_the_data_folder(settings):
    from aurum_ml.pipeline.celery_app import config

    assert config.beat_schedule_filename == str(settings.data_dir / "celerybeat-schedule")


def test_export_and_import_move_the_faces_between_folders(photos, data_dir, tmp_path):
    scored = _run(["score", str(photos / "obama.jpg"), str(photos / "biden.jpg")], data_dir)
    assert scored.returncode == 0, scored.stderr
    file = tmp_path / "faces.jsonl.gz"
    out = _run(["export-vectors", str(file)], data_dir)
    assert out.returncode == 0 and "exported 2 faces" in out.stdout, out.stderr
    again = _run(["export-vectors", str(file)], data_dir)
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr

    other = tmp_path / "other"
    moved = _run(["import-vectors", "--json", str(file)], other)
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["imported"] == 2
    similar = _run(["similar", "--json", "obama"], other)
    assert similar.returncode == 0 and json.loads(similar.stdout)[0]["user_id"] == "biden"

    for bad, says in [(tmp_path / "nope.jsonl", "no such file"),
                      (photos / "obama.jpg", "not an aurum-ml vectors export")]:  # fmt: skip
        refused = _run(["import-vectors", str(bad)], other)
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    down = _run(["import-vectors", str(file)], other, QDRANT_URL="http://127.0.0.1:9")
    assert down.returncode == 1 and "StoreUnavailable" in down.stderr, down.stderr
    assert "http://127.0.0.1:9" in down.stderr and "Traceback" not in down.stderr


def test_a_query_nobody_answers_ends_with_the_hint_not_a_traceback(data_dir, redis_client):
    """#25: Celery's TimeoutError is not the built-in one; `rerank` printed a traceback."""
    broker = os.environ["AURUM_BROKER_URL"]  # reachable; nobody consumes the store queue here
    try:
        for command in (["rerank"], ["stats"]):
            out = _run(command, data_dir, AURUM_BROKER_URL=broker, QUERY_TIMEOUT="2")
            assert out.returncode == 1, out.stderr
            assert "no answer within 2 s" in out.stderr and "is a worker consuming" in out.stderr
            assert "Traceback" not in out.stderr
    finally:
        redis_client.delete("store", "maintenance")
