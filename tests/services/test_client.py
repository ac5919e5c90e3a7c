"""The client and the chain through the services: error mapping, attempts under faults
(counted by a fault-injecting server and by the worker), and the full chain end to end."""

from __future__ import annotations

import numpy as np
import pytest
from celery.signals import task_retry

from aurum_ml.errors import BadInput, ServiceError, ServiceUnavailable
from aurum_ml.pipeline import tasks
from aurum_ml.pipeline.backends import Detection
from aurum_ml.pipeline.backends.http import HttpFaceBackend, ServiceClient
from aurum_ml.pipeline.runtime import build_runtime, set_runtime

from faults import FaultServer
from samples import b64, read_rgb
from servers import TOKEN

TIMEOUT = 120
FACE = Detection(box=(366, 136, 624, 394), landmarks=((571, 217),) * 5, score=2.4)


def _backend(settings, detect_url=None, embed_url=None, **updates) -> HttpFaceBackend:
    tuned = settings.model_copy(
        update={"ml_service_token": TOKEN, "ml_service_timeout": 1.0, **updates}
    )
    return HttpFaceBackend(tuned, detect_url, embed_url)


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        ("reset", ServiceUnavailable),
        ("500", ServiceUnavailable),
        ("503", ServiceUnavailable),
        ("429", ServiceUnavailable),
        ("stall", ServiceUnavailable),
        ("400", BadInput),
        ("401", ServiceError),
        ("garbage", ServiceError),
    ],
)
def test_each_answer_maps_to_one_error(behaviour, error, detection_url, settings, photos):
    server = FaultServer(detection_url, [behaviour], stall_s=2.0).start()
    try:
        backend = _backend(settings, detect_url=server.url)
        with pytest.raises(error):
            backend.detect((photos / "obama.jpg").read_bytes())
        assert len(server.requests) == 1  # the client itself never retries
        faces = backend.detect((photos / "obama.jpg").read_bytes())  # then it recovers
        assert faces[0].box == FACE.box
    finally:
        server.stop()


def test_a_refused_connection_is_retryable(settings):
    closed = FaultServer("http://unused", [])  # never started: its port refuses
    with pytest.raises(ServiceUnavailable, match="connection refused"):
        _backend(settings, detect_url=closed.url).detect(b"x")


def test_a_404_means_a_wrong_url_and_is_permanent(detection_url, settings, photos):
    backend = _backend(settings, detect_url=detection_url + "/v9")
    with pytest.raises(ServiceError, match="404"):
        backend.detect((photos / "obama.jpg").read_bytes())


def test_an_embedding_of_another_model_is_refused(detection_url, settings, photos):
    # the detection service answers /extract with 404; point the embedder at a fake model
    backend = _backend(settings, embed_url=detection_url)
    with pytest.raises(ServiceError):
        backend.embed((photos / "obama.jpg").read_bytes(), FACE)


def test_health_accepts_the_plain_ok_of_older_services(detection_url, tmp_path):
    client = ServiceClient(detection_url, 2.0)
    health, latency = client.health()
    assert health is not None and health.status == "ok" and latency > 0

    from http.server import BaseHTTPRequestHandler, HTTPServer
    from threading import Thread

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Ok)
    Thread(target=server.handle_request, daemon=True).start()
    plain, _ = ServiceClient(f"http://127.0.0.1:{server.server_port}", 2.0).health()
    server.server_close()
    assert plain is None


@pytest.fixture()
def via_services(runtime, detection_url, embedding_url):
    """Install a runtime whose stages call ``urls`` (set per test) with the test token."""

    def install(detect_url: str, embed_url: str) -> None:
        settings = runtime.settings.model_copy(
            update={
                "face_detection_service": detect_url,
                "face_embedding_service": embed_url,
                "ml_service_token": TOKEN,
                "ml_service_timeout": 1.0,
            }
        )
        set_runtime(build_runtime(settings, local=runtime.local))

    yield install
    set_runtime(runtime)


@pytest.fixture()
def attempts(tasks_run):
    return tasks_run


def test_the_chain_runs_through_the_services(
    pipeline_worker, via_services, detection_url, embedding_url, photos, runtime, model
):
    via_services(detection_url, embedding_url)
    out = tasks.score_face.delay(b64((photos / "obama.jpg").read_bytes()), user_id="u-svc").get(
        timeout=TIMEOUT
    )
    assert out["status"] == "scored" and out["source"] == "service"
    assert out["face"]["box"] == list(FACE.box)
    assert out["timings_ms"]["detect"] > 0 and out["timings_ms"]["embed"] > 0
    stored, _ = runtime.vectors.get(out["point_id"])
    image = read_rgb(photos / "obama.jpg")
    local = model.embed_image(image, model.detect_image(image)[0])
    assert np.linalg.norm(stored - local) < 0.01


def test_every_fault_is_retried_until_the_service_recovers(
    pipeline_worker, via_services, detection_url, embedding_url, photos, attempts, monkeypatch
):
    server = FaultServer(detection_url, ["reset", "500", "503", "429", "stall"], stall_s=2.0)
    monkeypatch.setattr(tasks.detect, "max_retries", 8)

    retried: list[str] = []

    def open_after_first_refusal(sender=None, reason=None, **_):
        if sender.name == "aurum_ml.detect":
            retried.append(str(reason))
            if server._server is None:
                server.start()  # the port was closed: that attempt was refused

    task_retry.connect(open_after_first_refusal, weak=False)
    try:
        via_services(server.url, embedding_url)
        out = tasks.score_face.delay(
            b64((photos / "obama2.jpg").read_bytes()), user_id="u-faults"
        ).get(timeout=TIMEOUT)
    finally:
        task_retry.disconnect(open_after_first_refusal)
        server.stop()
    assert out["status"] == "scored" and out["source"] == "service"
    # Refused (once, or twice when the retry ran before the port opened), reset, 500, 503,
    # 429, timed out — each retried — then the proxied success.
    refused = [r for r in retried if "connection refused" in r]
    assert 1 <= len(refused) <= 2 and retried[: len(refused)] == refused
    after = [r.split(": ", 2)[-1] for r in retried[len(refused) :]]
    assert len(after) == 5
    assert "connection reset" in after[0] and "answered 500" in after[1]
    assert "answered 503" in after[2] and "answered 429" in after[3] and "timed out" in after[4]
    assert attempts.count("aurum_ml.detect") == len(retried) + 1
    assert server.requests == ["/detect"] * 6  # each fault seen once, then the success


def test_bad_input_reaches_the_service_exactly_once(
    pipeline_worker, via_services, detection_url, embedding_url, photos, attempts
):
    server = FaultServer(detection_url, ["400"]).start()
    try:
        via_services(server.url, embedding_url)
        out = tasks.score_face.delay(
            b64((photos / "obama3.jpg").read_bytes()), user_id="u-400"
        ).get(timeout=TIMEOUT)
    finally:
        server.stop()
    assert (out["status"], out["reason"]) == ("rejected", "invalid_image")
    assert server.requests == ["/detect"]
    assert attempts.count("aurum_ml.detect") == 1


def test_a_permanent_service_error_fails_the_job_at_once(
    pipeline_worker, via_services, detection_url, embedding_url, photos, attempts
):
    server = FaultServer(detection_url, ["401"]).start()
    try:
        via_services(server.url, embedding_url)
        result = tasks.score_face.delay(b64((photos / "biden.jpg").read_bytes()), user_id="u-401")
        with pytest.raises(ServiceError, match="401"):
            result.get(timeout=TIMEOUT)
    finally:
        server.stop()
    assert result.state == "FAILURE" and attempts.count("aurum_ml.detect") == 1
