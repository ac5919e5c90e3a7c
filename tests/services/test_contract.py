"""The services over real HTTP: agreement with the in-process model, every error status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import urlparse

import numpy as np
import pytest
import requests

from samples import b64, one_pixel_png, png_header_claiming, raw_reply, read_rgb

PHOTOS = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "32bit.png",
          "biden.jpg"]  # fmt: skip


def _post(url: str, path: str, body, headers, **kwargs) -> requests.Response:
    return requests.post(f"{url}{path}", json=body, headers=headers, timeout=30, **kwargs)


@pytest.mark.parametrize("name", PHOTOS)
def test_detection_and_embedding_agree_with_the_in_process_model(
    name, detection_url, embedding_url, auth, model, photos
):
    data = (photos / name).read_bytes()
    image = read_rgb(photos / name)
    (local_face,) = model.detect_image(image)
    local_vector = model.embed_image(image, local_face)

    found = _post(detection_url, "/detect", {"image_base64": b64(data)}, auth)
    assert found.status_code == 200
    body = found.json()
    assert (body["image_width"], body["image_height"]) == image.shape[1::-1]
    assert body["model"] == "dlib-hog-5pt" and body["processing_time_ms"] > 0
    (face,) = body["faces"]
    assert tuple(face["bounding_box"]) == local_face.box
    assert [tuple(p) for p in face["landmarks"]] == list(local_face.landmarks)

    given = {"bounding_box": face["bounding_box"], "landmarks": face["landmarks"]}
    for path, request in (("/extract", {"face": given}), ("/embed", {}), ("/extract", {})):
        answer = _post(embedding_url, path, {"image_base64": b64(data), **request}, auth)
        assert answer.status_code == 200, answer.text
        out = answer.json()
        assert (out["dim"], out["model"]) == (128, "dlib-resnet-v1")
        assert np.linalg.norm(np.array(out["embedding"]) - local_vector) < 0.01


def test_detect_options(detection_url, auth, photos, model):
    from samples import two_faces

    both = b64(two_faces(photos))
    assert len(_post(detection_url, "/detect", {"image_base64": both}, auth).json()["faces"]) == 2
    one = _post(detection_url, "/detect", {"image_base64": both, "max_faces": 1}, auth).json()
    assert len(one["faces"]) == 1
    strict = {"image_base64": both, "min_confidence": 5.0}
    assert _post(detection_url, "/detect", strict, auth).json()["faces"] == []


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"image_base64": ""}, 400, "invalid_image"),
        ({"image_base64": "%%% not base64"}, 400, "invalid_image"),
        ({"image_base64": b64(b"\xff\xd8\xff garbage" * 50)}, 400, "invalid_image"),
        ({"image_base64": b64(one_pixel_png())}, 400, "invalid_image"),
        ({"image_base64": b64(png_header_claiming(100_000, 100_000))}, 413, "image_too_large"),
        ({"image_base64": b64(png_header_claiming(4000, 3000))}, 413, "image_too_large"),
        ({"image_base64": "A" * 3_000_000}, 413, "image_too_large"),
        ({}, 422, "invalid_request"),
        ({"image_base64": 42}, 422, "invalid_request"),
        ({"image_base64": "AAAA", "upsample": 5}, 422, "invalid_request"),
        ({"image_base64": "AAAA", "unknown": 1}, 422, "invalid_request"),
    ],
    ids=[
        "empty",
        "not-base64",
        "undecodable",
        "1x1",
        "header-100k",
        "pixels",
        "bytes",
        "missing",
        "wrong-type",
        "out-of-range",
        "extra-field",
    ],  # fmt: skip
)
def test_bad_requests_get_json_errors(body, status, error, detection_url, embedding_url, auth):
    for url, path in ((detection_url, "/detect"), (embedding_url, "/extract")):
        answer = _post(url, path, body, auth)
        assert answer.status_code == status, (path, answer.text)
        assert answer.json()["error"] == error and answer.json()["message"]


@pytest.mark.parametrize(
    "landmarks",
    [
        [[1], [2], [3], [4], [5]],  # IndexError in the service before #24
        [[1e30, 1], [2, 2], [3, 3], [4, 4], [5, 5]],  # TypeError before #24
        [[1, 2, 3], [2, 2], [3, 3], [4, 4], [5, 5]],
        [[-1e9, 1], [2, 2], [3, 3], [4, 4], [5, 5]],
    ],
    ids=["short-points", "huge", "three-coordinates", "far-negative"],
)
def test_malformed_landmarks_are_a_422(landmarks, embedding_url, auth, photos):
    face = {"bounding_box": [0, 0, 100, 100], "landmarks": landmarks}
    image = b64((photos / "obama.jpg").read_bytes())
    answer = _post(embedding_url, "/extract", {"image_base64": image, "face": face}, auth)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_request"


def test_json_nested_too_deep_is_a_422(detection_url, embedding_url, auth):
    deep = b"[" * 5000 + b"]" * 5000
    for url, path in ((detection_url, "/detect"), (embedding_url, "/extract")):
        answer = requests.post(
            f"{url}{path}",
            data=deep,
            headers=auth | {"Content-Type": "application/json"},
            timeout=10,
        )
        assert answer.status_code == 422 and answer.json()["error"] == "invalid_request", path


def test_a_service_refuses_a_public_address_without_a_token():
    env = {k: v for k, v in os.environ.items() if k != "ML_SERVICE_TOKEN"}
    for service in ("detection", "embedding"):
        out = subprocess.run(
            [sys.executable, "-m", "aurum_ml.surfaces.cli", "serve", service, "--host", "0.0.0.0"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 1 and "without a token" in out.stderr, out.stderr


def test_not_json_is_a_422(detection_url, auth):
    answer = requests.post(f"{detection_url}/detect", data=b"{not json", headers=auth, timeout=10)
    assert answer.status_code == 422 and answer.json()["error"] == "invalid_request"


def test_extract_without_a_face_in_the_image(embedding_url, auth, photos):
    from samples import no_face

    answer = _post(embedding_url, "/extract", {"image_base64": b64(no_face(photos))}, auth)
    assert (answer.status_code, answer.json()["error"]) == (422, "no_face")


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic test-token"}]
)
def test_a_token_is_required(headers, detection_url, embedding_url, photos):
    body = {"image_base64": b64((photos / "obama.jpg").read_bytes())}
    for url, path in ((detection_url, "/detect"), (embedding_url, "/extract")):
        answer = _post(url, path, body, headers)
        assert (answer.status_code, answer.json()["error"]) == (401, "unauthorized")


def test_a_declared_oversized_body_is_refused_before_it_is_read(detection_url, auth):
    address = urlparse(detection_url)
    reply = raw_reply(
        address.hostname,
        address.port,
        b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer test-token\r\nContent-Length: 1000000000\r\n\r\n",
    )  # and no body at all: the answer must not wait for one
    assert reply.startswith(b"HTTP/1.1 413") and b"image_too_large" in reply


def test_a_streamed_oversized_body_is_cut_off(detection_url, auth):
    def chunks():
        yield b'{"image_base64": "'
        for _ in range(400):
            yield b"A" * 10_000  # 4 MB in all, over the ~2.7 MB limit
        yield b'"}'

    headers = dict(auth, **{"Content-Type": "application/json"})
    answer = requests.post(f"{detection_url}/detect", data=chunks(), headers=headers, timeout=30)
    assert (answer.status_code, answer.json()["error"]) == (413, "image_too_large")


def test_health_and_openapi(detection_url, embedding_url):
    for url, service, model in (
        (detection_url, "detection", "dlib-hog-5pt"),
        (embedding_url, "embedding", "dlib-resnet-v1"),
    ):
        health = requests.get(f"{url}/health", timeout=5)  # no token needed
        assert health.status_code == 200
        body = health.json()
        assert (body["status"], body["service"], body["model"]) == ("ok", service, model)
        assert body["uptime_s"] >= 0 and body["version"]
        spec = requests.get(f"{url}/openapi.json", timeout=5).json()
        assert ("/detect" if service == "detection" else "/extract") in spec["paths"]


def test_loading_answers_503(settings):
    from fastapi.testclient import TestClient

    from aurum_ml.surfaces.services.detection import create_app

    client = TestClient(create_app(settings))  # no lifespan: the model never loads
    health = client.get("/health")
    assert (health.status_code, health.json()["status"]) == (503, "loading")
    busy = client.post("/detect", json={"image_base64": "AAAA"})
    assert (busy.status_code, busy.json()["error"]) == (503, "loading")


def test_the_caller_is_checked_before_the_body(detection_url):
    """A huge body without a token is a 401, answered from the headers (not a 413)."""
    address = urlparse(detection_url)
    reply = raw_reply(
        address.hostname,
        address.port,
        b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 50000000\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 401") and b"unauthorized" in reply


def test_health_proves_the_token_is_accepted(detection_url, embedding_url):
    """`aurum-ml health` with a wrong token: /health answers (it needs none), jobs would
    get 401 — so health says "token refused" and exits 1; with the right one, ok."""
    import os
    import subprocess
    import sys

    from servers import TOKEN

    def health(token: str) -> subprocess.CompletedProcess:
        env = dict(
            os.environ,
            FACE_DETECTION_SERVICE=detection_url,
            FACE_EMBEDDING_SERVICE=embedding_url,
            ML_SERVICE_TOKEN=token,
        )
        command = [sys.executable, "-m", "aurum_ml.surfaces.cli", "health", "--json"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    wrong = health("not-the-token")
    assert wrong.returncode == 1, wrong.stderr
    report = json.loads(wrong.stdout)
    assert {e["status"] for e in report.values()} == {"token refused"}
    right = health(TOKEN)
    assert right.returncode == 0, right.stdout
    assert {e["status"] for e in json.loads(right.stdout).values()} == {"ok"}


def test_a_chip_gives_the_same_vector_in_process_and_through_the_service(
    embedding_url, photos, model, settings
):
    """The embed stage sends the detect stage's aligned chip (not the photo): the service's
    vector equals the in-process one to 1e-6, and both equal the whole-image path's."""
    from aurum_ml.pipeline.backends.http import HttpFaceBackend
    from aurum_ml.pipeline.backends.local import face_chip

    from servers import TOKEN

    image = read_rgb(photos / "obama2.jpg")
    face = model.detect_image(image)[0]
    chip = face_chip(image, face)
    assert chip.shape == (150, 150, 3)
    local = model.embed_chip(chip)
    service = HttpFaceBackend(
        settings.model_copy(update={"ml_service_token": TOKEN}), None, embedding_url
    ).embed_chip(chip)
    assert np.max(np.abs(local - service)) < 1e-6
    assert np.max(np.abs(local - model.embed_image(image, face))) < 1e-6


def test_a_chip_that_is_not_one_is_a_400(embedding_url, auth):
    answer = _post(embedding_url, "/extract", {"chip_base64": b64(one_pixel_png())}, auth)
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_image")
    both = _post(embedding_url, "/extract", {"chip_base64": "AAAA", "image_base64": "AAAA"}, auth)
    assert both.status_code == 422
