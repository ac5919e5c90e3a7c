"""The score index's cost per face: placing it (``enter``, the score stage) and confirming it
(``add``, the store stage), on a redis-server of its own with AOF on (as production).

Prints the caller's CPU and wall time per face and the Redis server's CPU per face
(``INFO cpu``: its own process, so nothing else is counted), medians of 3 rounds of 1000
faces into an empty index; writes them into BENCHMARKS.md. ``make bench-index``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from chaos import RedisServer

from aurum_ml.population.index import ScoreIndex

from report import write_section

FACES, ROUNDS = 1000, 3


def _server_cpu(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main() -> None:
    vectors = np.random.default_rng(1).normal(size=(FACES, 128)).astype(np.float32)
    caller, wall, server = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        redis_server = RedisServer(Path(folder)).start()
        try:
            client = redis_server.client()
            index = ScoreIndex(client, "bench-model", 128)
            for _ in range(ROUNDS):
                index.clear()
                cpu0, wall0, srv0 = time.process_time(), time.perf_counter(), _server_cpu(client)
                for i, v in enumerate(vectors):
                    index.add(str(i), v, index.enter(str(i), v).typicality)
                srv1 = _server_cpu(client)  # before the next INFO call is counted
                caller.append((time.process_time() - cpu0) / FACES * 1000)
                wall.append((time.perf_counter() - wall0) / FACES * 1000)
                server.append((srv1 - srv0) / FACES * 1000)
        finally:
            redis_server.stop()
    row = (
        f"| {statistics.median(caller):.2f} | {statistics.median(server):.2f} "
        f"| {statistics.median(wall):.2f} |"
    )
    lines = [
        f"Per face, placed (`enter`) and confirmed (`add`) into an empty index, {FACES} faces",
        f"× {ROUNDS} rounds (medians), on a redis-server of its own with AOF on:",
        "",
        "| caller CPU ms | Redis CPU ms | wall ms |",
        "|---|---|---|",
        row,
    ]
    print("\n".join(lines))
    write_section("index", "The score index: cost per face", lines)


if __name__ == "__main__":
    main()
