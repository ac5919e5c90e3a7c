"""Peak transient memory of one job on the largest image each format may be (#24).

For each kind of image (baseline and progressive JPEG, PNG, PNG with transparency, 16-bit
PNG with transparency, WebP) the largest 4:3 image the header check accepts is made — a
flat canvas with a real photo in it, so it also fits the byte limit and has a face — and
one job runs on it in a fresh process, through the pipeline's own stages with the
in-process models (detect → embed → score): the peak resident memory is reset after the
models are loaded and a first job has run (/proc/self/clear_refs), and the rise during the
job is what is reported. The README's "memory per job" is this table's largest number.

    python bench/memory.py
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from aurum_ml.errors import BadInput  # noqa: E402
from aurum_ml.pipeline.imaging import inspect_image  # noqa: E402
from aurum_ml.settings import Settings  # noqa: E402

from photos import fetch  # noqa: E402
from report import write_section  # noqa: E402

KINDS = ("jpeg", "jpeg-progressive", "png", "png-rgba", "png16-rgba", "webp")


def _encode(kind: str, rgb: np.ndarray) -> bytes:
    if kind.startswith("png"):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if kind != "png":
            bgr = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
        if kind == "png16-rgba":
            bgr = bgr.astype(np.uint16) * 257
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        assert ok
        return buf.tobytes()
    out = io.BytesIO()
    image = Image.fromarray(rgb)
    if kind == "webp":
        image.save(out, "WEBP", quality=80)
    else:
        image.save(out, "JPEG", quality=85, progressive=kind == "jpeg-progressive")
    return out.getvalue()


def _canvas(photo: np.ndarray, width: int) -> np.ndarray:
    """A flat canvas of ``width`` × 3/4 with the photo at a third of its height."""
    height = width * 3 // 4
    canvas = np.full((height, width, 3), 128, np.uint8)
    side = max(200, height // 3)
    scaled = cv2.resize(photo, (side * photo.shape[1] // photo.shape[0], side))
    top, left = (height - scaled.shape[0]) // 2, (width - scaled.shape[1]) // 2
    canvas[top : top + scaled.shape[0], left : left + scaled.shape[1]] = scaled
    return canvas


def largest(kind: str, photo: np.ndarray, settings: Settings) -> tuple[int, bytes]:
    """The widest image of this kind the header check accepts (binary search by 64 px)."""

    def accepted(width: int) -> bytes | None:
        data = _encode(kind, _canvas(photo, width))
        try:
            inspect_image(data, settings)
        except BadInput:
            return None
        return data

    low, high, best = 1000, 9000, b""
    while high - low > 64:
        middle = (low + high) // 2
        data = accepted(middle)
        if data is None:
            high = middle
        else:
            low, best = middle, data
    return low, best


JOB = textwrap.dedent(
    """
    import hashlib, json, sys, time
    from aurum_ml.pipeline.runtime import get_runtime
    from aurum_ml.schemas import Job

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    def run(rt, data, n):
        sha = hashlib.sha256(data).hexdigest()
        rt.state.put_image(sha, data, f"job-{n}")
        job = Job(job_id=f"job-{n}", status="pending", user_id="u-mem", image_sha256=sha,
                  submitted_at=time.time())
        job = rt.detect(job, rt.local)
        job = rt.embed(job, rt.local)
        return rt.score(job)

    rt = get_runtime()
    rt.local.warm_up()
    run(rt, open(sys.argv[1], "rb").read(), 0)  # every lazy allocation made once
    data = open(sys.argv[2], "rb").read()
    open("/proc/self/clear_refs", "w").write("5")
    before = rss("VmRSS:")
    started = time.perf_counter()
    job = run(rt, data, 1)
    print(json.dumps({"peak": rss("VmHWM:") - before, "status": job.status,
                      "reason": job.reason, "ms": (time.perf_counter() - started) * 1000}))
    """
)


def measure(image: Path, warm: Path, folder: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AURUM_", "QDRANT_"))}
    env["AURUM_DATA_DIR"] = str(folder)
    out = subprocess.run(
        [sys.executable, "-c", JOB, str(warm), str(image)],
        env=env, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    photos = fetch()
    settings = Settings()
    photo = cv2.cvtColor(cv2.imread(str(photos / "obama.jpg")), cv2.COLOR_BGR2RGB)
    rows = []
    with tempfile.TemporaryDirectory(prefix="aurum-memory-") as tmp:
        folder = Path(tmp)
        for kind in KINDS:
            started = time.monotonic()
            width, data = largest(kind, photo, settings)
            path = folder / f"{kind}.img"
            path.write_bytes(data)
            info = inspect_image(data, settings)
            result = measure(path, photos / "obama2.jpg", folder / "data")
            rows.append((kind, info, len(data), result))
            print(
                f"{kind:18} {info.width}x{info.height} {len(data) / 1e6:5.1f} MB file: "
                f"peak +{result['peak'] / 1e6:.0f} MB, {result['status']} "
                f"{result['reason'] or ''} ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
    worst = max(r[3]["peak"] for r in rows)
    lines = [
        "One job (detect → embed → score with the in-process models) on the largest image "
        "of each kind the header check accepts (`IMAGE_DECODE_BUDGET_MB` = "
        f"{settings.image_decode_budget_mb}, `IMAGE_MAX_PIXELS` = {settings.image_max_pixels}, "
        f"`IMAGE_MAX_BYTES` = {settings.image_max_bytes}): a flat canvas with a real photo, so "
        "the face is found and embedded. Peak = rise of the process's peak resident memory "
        "during the job, reset after the models loaded and a first job ran.",
        "",
        "| image | size (px) | file | peak during the job | outcome | job ms |",
        "|---|---|---:|---:|---|---:|",
    ]
    for kind, info, size, result in rows:
        outcome = (  # "pending": through score, only the store stage left
            "scored"
            if result["status"] == "pending"
            else f"{result['status']} ({result['reason']})"
        )
        lines.append(
            f"| {kind} | {info.width} × {info.height} | {size / 1e6:.1f} MB | "
            f"**{result['peak'] / 1e6:.0f} MB** | {outcome} | {result['ms']:.0f} |"
        )
    lines += ["", f"Largest: {worst / 1e6:.0f} MB per job."]
    print(f"\nlargest peak per job: {worst / 1e6:.0f} MB")
    write_section("memory", "Memory per job, largest accepted images (`make bench-memory`)", lines)


if __name__ == "__main__":
    main()
