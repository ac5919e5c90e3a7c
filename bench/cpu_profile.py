"""Where a job's CPU goes: the chain saturated on the bench's workers, CPU time per job of
each process, and (with py-spy installed) the stage worker's profile.

    python bench/cpu_profile.py [--jobs 120] [--quick] [--py-spy]

The workers are bench/pipeline.py's (detect/embed/score on a prefork pool of 2, store on
one thread, local Qdrant folder, real Redis). CPU per job = the growth of utime + stime in
/proc over the saturated run (every job submitted at once), divided by the jobs, for the
stage worker's main process, its prefork children, the store worker, Redis and this
process (the caller: it stores each image, publishes and waits). With ``--py-spy``, py-spy
samples the stage worker and its children meanwhile (``record --subprocesses -f raw``), and
the table gives the inclusive share of the samples of a few places in the code.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

TICK = os.sysconf("SC_CLK_TCK")

# inclusive shares of the stage worker's samples: (label, frames any of which counts)
PLACES = (
    ("detect stage (`_detect`), of which:", ("_detect",)),
    ("· decode (`decode_scaled`)", ("decode_scaled",)),
    ("· HOG (`_hog`)", ("_hog",)),
    ("· quality measurements (`measure_quality`)", ("measure_quality",)),
    ("· the aligned chip (`face_chip`)", ("face_chip",)),
    ("embed stage (`_embed`), of which:", ("_embed",)),
    ("· the descriptor on ONNX Runtime (`ResNetDescriptor.describe`)", ("describe",)),
    ("score stage (`_score`)", ("_score",)),
    ("Redis round trips from the tasks (redis-py `execute_command`)", ("execute_command",)),
    ("worker main process: messages, acks, events (`asynloop`)", ("asynloop",)),
)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return found


def _shares(raw: Path) -> tuple[int, list[tuple[str, float]]]:
    """py-spy's raw output (``stack;frames count`` a line) → the inclusive share of each
    of PLACES."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        for label, frames in PLACES:
            # py-spy names a frame "function (file:line)", a method "Class.method (…)"
            if any(re.search(rf"[;.]{frame} \(", f";{stack}") for frame in frames):
                counts[label] += int(n)
    return total, [(label, counts[label] / max(total, 1)) for label, _ in PLACES]


def _run(pids: dict[str, list[int]], images: list[str], jobs: int, tag: str) -> dict[str, float]:
    from aurum_ml.pipeline.tasks import score_face

    before = {name: sum(_cpu_s(p) for p in group) for name, group in pids.items()}
    started = time.perf_counter()
    sent = [score_face.delay(images[i % len(images)], user_id=f"{tag}-{i}") for i in range(jobs)]
    results = [job.get(timeout=600) for job in sent]
    wall = time.perf_counter() - started
    assert all(r["status"] == "scored" for r in results), "every bench job must score"
    out = {name: (sum(_cpu_s(p) for p in group) - before[name]) * 1000 / jobs
           for name, group in pids.items()}  # fmt: skip
    out["rate"] = jobs / wall
    return out


def _model_cpu_ms(blobs: list[bytes], rounds: int = 5) -> float:
    """The models' own work a job, in this process, with the chain's settings and code:
    decode, detection with landmarks, quality measurements, the aligned chip and the
    descriptor — what the stages do minus the chain (messages, Redis, Qdrant, results).
    The median over ``rounds`` of the CPU time per photo of the whole set."""
    import statistics

    from aurum_ml.pipeline.backends.local import LocalFaceModel, face_chip
    from aurum_ml.pipeline.imaging import decode_scaled
    from aurum_ml.pipeline.quality import measure_quality
    from aurum_ml.pipeline.stages.detect import face_of
    from aurum_ml.settings import get_settings

    settings = get_settings()
    model = LocalFaceModel(settings)
    model.warm_up()

    def one(blob: bytes) -> None:
        decoded = decode_scaled(blob, settings)
        face = model.detect_decoded(decoded)[0].scaled(1 / decoded.scale)
        measure_quality(decoded.image, face_of(face))
        model.embed_chip(face_chip(decoded.image, face))

    for blob in blobs:
        one(blob)  # warm
    per_round = []
    for _ in range(rounds):
        started = time.process_time()
        for blob in blobs:
            one(blob)
        per_round.append((time.process_time() - started) * 1000 / len(blobs))
    return statistics.median(per_round)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--quick", action="store_true", help="40 jobs a size")
    parser.add_argument("--py-spy", action="store_true", help="also sample with py-spy")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw samples in this file")
    args = parser.parse_args()
    jobs = 40 if args.quick else args.jobs

    from pipeline import PHOTOS, bench_env, photo_sets, workers

    from photos import fetch
    from report import write_section

    sets = dict(zip(("real size", "640 px"), photo_sets(fetch()).values(), strict=True))
    env, folder, client = bench_env("aurum-profile-")
    measured: dict[str, dict[str, float]] = {}
    models: dict[str, float] = {}
    shares: tuple[int, list[tuple[str, float]]] | None = None
    started = workers(env)
    try:
        from aurum_ml.pipeline.tasks import score_face

        images = {k: [base64.b64encode(b).decode() for b in v] for k, v in sets.items()}
        for job in [score_face.delay(images["real size"][i], user_id=f"warm-{i}") for i in
                    range(4)]:  # fmt: skip
            job.get(timeout=120)  # every worker process has loaded its models
        stages, store = started
        pids = {
            "stage worker's prefork children (intake, detect, embed, score)": _children(stages.pid),
            "stage worker's main process (messages, acks, events)": [stages.pid],
            "store worker (one thread: upsert and flush, index, records, result)": [store.pid],
            "Redis": [int(client.info("server")["process_id"])],
            "the caller (stores the image, publishes, waits)": [os.getpid()],
        }
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        for n, (label, batch) in enumerate(images.items()):
            recorder = None
            if args.py_spy and label == "real size" and Path(spy).exists():
                raw = args.raw or folder / "profile.txt"
                recorder = subprocess.Popen(
                    [spy, "record", "--subprocesses", "--nonblocking", "-r", "100", "-f",
                     "raw", "-o", str(raw), "--pid", str(stages.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(1)
            measured[label] = _run(pids, batch, jobs, f"p{n}")
            models[label] = _model_cpu_ms(sets[label])  # right after: the same machine
            if recorder is not None:
                recorder.send_signal(2)  # SIGINT: py-spy writes its file and exits
                recorder.wait(60)
                shares = _shares(raw)
    finally:
        for worker in started:
            worker.terminate()
        for worker in started:
            worker.wait(60)
        shutil.rmtree(folder, ignore_errors=True)
        client.flushdb()

    labels = list(measured)
    lines = [
        f"{jobs} jobs a size submitted at once, photos {', '.join(PHOTOS)} in turn; the bench's "
        "workers (detect/embed/score on a prefork pool of 2, store on one thread, local "
        f"Qdrant folder, real Redis) on {os.cpu_count()} cores. CPU per job: utime + stime "
        "from /proc over the saturated run, divided by the jobs.",
        "",
        "| process | "
        + " | ".join(f"{k} ({measured[k]['rate']:.1f} jobs/s)" for k in labels)
        + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for name in pids:
        lines.append(f"| {name} | " + " | ".join(f"{measured[k][name]:.1f} ms" for k in labels)
                     + " |")  # fmt: skip
    totals = [sum(v for key, v in measured[k].items() if key != "rate") for k in labels]
    lines.append("| all of them | " + " | ".join(f"{t:.1f} ms" for t in totals) + " |")
    lines.append(
        "| the models' own work (decode, detect, quality, chip, descriptor), in one process "
        "| " + " | ".join(f"{models[k]:.1f} ms" for k in labels) + " |"
    )
    lines.append(
        "| **the chain's plumbing** (all of them − the models' work) | "
        + " | ".join(f"**{t - models[k]:.1f} ms**" for t, k in zip(totals, labels, strict=True))
        + " |"
    )
    if shares is not None:
        total, rows = shares
        lines += [
            "",
            f"py-spy on the stage worker and its children, real size, {total} samples "
            "(100 a second; inclusive shares of all samples):",
            "",
            "| where | share |",
            "|---|---:|",
            *(f"| {label} | {share:.1%} |" for label, share in rows),
        ]
    write_section("profile", "Where a job's CPU goes (`make bench-profile`)", lines)


if __name__ == "__main__":
    main()
