"""Benchmark of the ML services: requests/s and latency with 1 and 2 uvicorn workers, against
the in-process call on the same photo. Writes its section of BENCHMARKS.md.

    python bench/services.py [--requests 80] [--clients 4]

Not a test: these machines are shared and noisy, so it reports medians and ratios measured
in one run, and asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from aurum_ml.pipeline.backends.local import LocalFaceModel, face_chip  # noqa: E402
from aurum_ml.pipeline.imaging import decode_image  # noqa: E402
from aurum_ml.settings import Settings  # noqa: E402

from photos import fetch  # noqa: E402
from report import write_section  # noqa: E402

PHOTO = "obama.jpg"  # 910×1137 JPEG, one face of 258 px


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(kind: str, workers: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "aurum_ml.surfaces.cli", "serve", kind, "--port", str(port),
         "--workers", str(workers), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    healthy = 0
    while healthy < 3 * workers:  # every worker process answers healthy a few times
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                healthy += 1
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{kind} did not start")
        time.sleep(0.05)
    return process, url


def _load(url: str, path: str, body: dict, requests_n: int, clients: int) -> dict[str, float]:
    session_per_thread: dict[int, requests.Session] = {}

    def one(_: int) -> float:
        import threading

        session = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        started = time.perf_counter()
        answer = session.post(url + path, json=body, timeout=60)
        answer.raise_for_status()
        return time.perf_counter() - started

    warm, deadline = 0, time.monotonic() + 60
    while warm < clients * 4:  # warm up every worker and connection: answers in a row
        try:
            one(0)
            warm += 1
        except requests.HTTPError as exc:  # 503: a worker process still loading its model
            if exc.response is None or exc.response.status_code != 503:
                raise
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} kept answering 503") from None
            warm = 0
            time.sleep(0.1)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(one, range(requests_n)))
    wall = time.perf_counter() - started
    return {
        "rps": requests_n / wall,
        "p50": statistics.median(latencies) * 1000,
        "p95": latencies[int(0.95 * (len(latencies) - 1))] * 1000,
    }


def _in_process(model: LocalFaceModel, data: bytes, n: int) -> dict[str, dict[str, float]]:
    model.warm_up()
    chip = face_chip(decode_image(data, model.settings), model.detect(data)[0])
    out = {}
    for name, call in (
        ("detect", lambda: model.detect(data)),
        ("embed", lambda: model.embed_chip(chip)),  # what the embed stage sends
    ):
        call()
        times = []
        for _ in range(n):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        times.sort()
        out[name] = {
            "rps": 1 / statistics.mean(times),
            "p50": statistics.median(times) * 1000,
            "p95": times[int(0.95 * (len(times) - 1))] * 1000,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=80)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    data = (fetch() / PHOTO).read_bytes()
    image_b64 = base64.b64encode(data).decode()
    model = LocalFaceModel(Settings())
    local = _in_process(model, data, n=30)
    chip = face_chip(decode_image(data, model.settings), model.detect(data)[0])
    png = cv2.imencode(".png", cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))[1].tobytes()
    bodies = {
        "detection": ("/detect", {"image_base64": image_b64}),
        "embedding": ("/extract", {"chip_base64": base64.b64encode(png).decode()}),
    }
    rows = []
    for kind, (path, body) in bodies.items():
        stage = "detect" if kind == "detection" else "embed"
        base = local[stage]
        rows.append((kind, "in-process, 1 thread", base["rps"], base["p50"], base["p95"], 1.0))
        for workers in (1, 2):
            process, url = _start(kind, workers)
            try:
                r = _load(url, path, body, args.requests, args.clients)
            finally:
                process.terminate()
                process.wait(30)
            rows.append(
                (kind, f"HTTP, {workers} uvicorn worker{'s' if workers > 1 else ''}",
                 r["rps"], r["p50"], r["p95"], r["rps"] / base["rps"])
            )  # fmt: skip
            print(kind, workers, r, flush=True)

    lines = [
        f"Photo: `{PHOTO}` (910×1137 JPEG, one face; the embedding service gets its "
        "aligned 150 px chip as a PNG, as the embed stage sends it), "
        f"{args.requests} requests from "
        f"{args.clients} concurrent clients per service setting; in-process: 30 sequential "
        f"calls. Machine: {os.cpu_count()} cores, Python {platform.python_version()}. "
        "Latency includes base64 and JSON; the HTTP client runs on the same 2 cores. With 4 "
        "requests in flight, HTTP latency ≈ 4 / throughput: it is mostly queueing; the "
        "in-process rows are single calls.",
        "",
        "| service | how | requests/s | p50 ms | p95 ms | × in-process rate |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {kind} | {how} | {rps:.1f} | {p50:.0f} | {p95:.0f} | {ratio:.2f} |"
        for kind, how, rps, p50, p95, ratio in rows
    ]
    write_section("services", "ML services vs the in-process call (`make bench-services`)", lines)


if __name__ == "__main__":
    main()
