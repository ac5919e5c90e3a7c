"""Detection before and after coarse to fine: per photo, at its real size and at 640 px,
the median time of the detect step (HOG on the ≤ DETECT_MAX_SIDE copy plus the 5
landmarks) with the full pyramid search (DETECT_COARSE_LEVELS=0, the plain library loop)
and with the default coarse pass, in one run on one process; which search answered.

    python bench/detection.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds

    from aurum_ml.pipeline.backends.local import LocalFaceModel
    from aurum_ml.settings import Settings

    from photos import NAMES, fetch
    from report import write_section

    photos = fetch()
    full = LocalFaceModel(Settings(DETECT_COARSE_LEVELS=0))
    coarse = LocalFaceModel(Settings())
    full.warm_up()
    coarse.warm_up()

    def median_ms(model: LocalFaceModel, image) -> float:
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            model.detect_image(image)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    rows, ratios = [], []
    for name in NAMES:
        bgr = cv2.imread(str(photos / name))
        original = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = original.shape[:2]
        small = cv2.resize(original, (640, round(640 * h / w)) if w >= h else
                           (round(640 * w / h), 640), interpolation=cv2.INTER_AREA)  # fmt: skip
        for label, image in ((f"{w}×{h}", original), ("640 px", small)):
            before = coarse.searches.copy()
            after_ms = median_ms(coarse, image)
            answered = "coarse" if (coarse.searches - before)["coarse"] else "full"
            before_ms = median_ms(full, image)
            ratios.append(before_ms / after_ms)
            rows.append(f"| {name} | {label} | {before_ms:.0f} | {after_ms:.0f} | "
                        f"{before_ms / after_ms:.2f}× | {answered} |")  # fmt: skip
    lines = [
        f"Detect step (HOG + 5 landmarks), median of {rounds} runs per cell, one process. "
        "Before: the whole HOG pyramid (DETECT_COARSE_LEVELS=0). After: the default coarse "
        "pass first (the full search when it finds no face, a face near its floor or one "
        "the image's edge cuts). tests/unit/test_coarse_detection.py shows both find the same "
        "faces (same scores, IoU ≥ 0.8, embeddings within 0.05) on every photo and shrunk copies.",
        "",
        "| photo | size | before ms | after ms | speed-up | answered by |",
        "|---|---|---:|---:|---:|---|",
        *rows,
        "",
        f"Median speed-up: {statistics.median(ratios):.2f}×.",
    ]
    print("\n".join(lines))
    write_section("detection", "Detection coarse to fine (`make bench-detection`)", lines)


if __name__ == "__main__":
    main()
