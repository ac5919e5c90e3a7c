"""Real ML services as subprocesses for the tests: `aurum-ml serve` on loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import requests

TOKEN = "test-token"
LIMITS = {"IMAGE_MAX_BYTES": "2000000", "IMAGE_MAX_PIXELS": "8000000"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServiceProcess:
    """`aurum-ml serve KIND` on a fixed loopback port, which a test may stop and restart."""

    def __init__(self, kind: str, log_dir, port: int | None = None) -> None:
        self.kind = kind
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{kind}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> ServiceProcess:
        env = dict(os.environ, ML_SERVICE_TOKEN=TOKEN, **LIMITS)
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aurum_ml.surfaces.cli", "serve", self.kind, "--port",
                 str(self.port), "--log-level", "warning"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, f"the {self.kind} service exited"
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:  # refused, or busy loading (a read timeout)
                pass
            assert time.monotonic() < deadline, f"the {self.kind} service did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        self.process = None
