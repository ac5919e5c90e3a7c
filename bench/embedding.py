"""The descriptor on dlib and on ONNX Runtime: per chip, on the aligned chip of every test
photo's face, in one run on one process; and how far apart their vectors are.

    python bench/embedding.py [--rounds N] [--quick]

dlib: dlib-bin's ``compute_face_descriptor`` (no BLAS). ONNX: the same network and weights
(aurum_ml.pipeline.backends.resnet) on ONNX Runtime with one thread (EMBED_THREADS=1, the default:
a worker runs one job per core), one chip a call as the embed stage sends them, and
batches of 8 for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="5 rounds")
    args = parser.parse_args()
    rounds = 5 if args.quick else args.rounds

    from aurum_ml.pipeline.backends.local import LocalFaceModel, face_chip
    from aurum_ml.settings import Settings

    from photos import NAMES, fetch
    from report import write_section
    from samples import read_rgb

    photos = fetch()
    dlib_model = LocalFaceModel(Settings(EMBED_ENGINE="dlib"))
    dlib_model.warm_up()
    started = time.perf_counter()
    onnx_model = LocalFaceModel(Settings(EMBED_ENGINE="onnx"))
    onnx_model.warm_up()
    load_s = time.perf_counter() - started
    chips = []
    for name in NAMES:
        image = read_rgb(photos / name)
        chips += [face_chip(image, face) for face in dlib_model.detect_image(image)]

    def per_chip_ms(describe, batch: int = 1) -> float:
        times = []
        for _ in range(rounds):
            for at in range(0, len(chips), batch):
                group = chips[at : at + batch]
                started = time.perf_counter()
                describe(group)
                times.append((time.perf_counter() - started) * 1000 / len(group))
        return statistics.median(times)

    dlib_ms = per_chip_ms(lambda group: [dlib_model.embed_chip(c) for c in group])
    onnx_ms = per_chip_ms(lambda group: [onnx_model.embed_chip(c) for c in group])
    batched = onnx_model._onnx  # noqa: SLF001  (the same session, fed 8 chips a call)
    assert batched is not None
    batch_ms = per_chip_ms(lambda group: batched.describe(np.stack(group)), batch=8)
    gaps = [np.abs(dlib_model.embed_chip(c) - onnx_model.embed_chip(c)).max() for c in chips]
    distances = [np.linalg.norm(dlib_model.embed_chip(c) - onnx_model.embed_chip(c)) for c in chips]
    lines = [
        f"{len(chips)} chips (one face of each test photo), {rounds} rounds, one process on "
        f"{os.cpu_count()} cores; median ms per chip. dlib: dlib-bin's own descriptor (built "
        "without BLAS). ONNX: the same network and weights read from dlib's file "
        "(aurum_ml.pipeline.backends.resnet) on ONNX Runtime, one thread.",
        "",
        "| engine | ms per chip | × dlib |",
        "|---|---:|---:|",
        f"| dlib | {dlib_ms:.1f} | 1.00 |",
        f"| ONNX Runtime, one chip a call (the embed stage) | {onnx_ms:.1f} | "
        f"{dlib_ms / onnx_ms:.1f} |",
        f"| ONNX Runtime, 8 chips a call | {batch_ms:.1f} | {dlib_ms / batch_ms:.1f} |",
        "",
        f"Largest difference of one vector component, dlib vs ONNX, over the {len(chips)} chips: "
        f"{max(gaps):.1e}; largest Euclidean distance between the two vectors of a chip: "
        f"{max(distances):.1e} (dlib's same-person threshold: 0.6). Building the ONNX session "
        f"(the file read, the graph written, the session made) with the other models: "
        f"{load_s:.2f} s, once per process.",
    ]
    write_section("embedding", "The descriptor: dlib vs ONNX Runtime (`make bench`)", lines)


if __name__ == "__main__":
    main()
