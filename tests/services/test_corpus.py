"""The bad-input corpus: every case gets a typed answer — through score_face (an
InvalidRequest in the caller, or a rejected result with a reason code) and through both ML
services (an HTTP error with a JSON {error, message}) — never a crash, a hang, a retry loop
or anything stored. Real worker thread, real services on loopback."""

from __future__ import annotations

import base64
from typing import get_args

import pytest
import requests

from aurum_ml.errors import InvalidRequest, Reason
from aurum_ml.pipeline.tasks import score_face
from aurum_ml.population.forget import forget_user

from samples import bad_images, bad_texts

TIMEOUT = 60
REASONS = set(get_args(Reason)) - {"cooldown"}


def _typed(out: dict) -> bool:
    return out["status"] == "scored" or (
        out["status"] == "rejected" and out["reason"] in REASONS and bool(out["message"])
    )


def test_every_corpus_image_gets_a_typed_answer_from_score_face(pipeline_worker, photos, runtime):
    corpus = {name: base64.b64encode(data).decode() for name, data in bad_images(photos).items()}
    corpus |= bad_texts(photos)
    assert len(corpus) >= 40
    answers: dict[str, str] = {}
    for i, (name, image) in enumerate(corpus.items()):
        user = f"u-corpus-{i}"
        try:
            out = score_face.delay(image, user_id=user).get(timeout=TIMEOUT)
        except InvalidRequest as refused:  # refused in this process, before publishing
            answers[name] = f"refused {refused.reason}"
            continue
        assert _typed(out), (name, out)
        answers[name] = out["status"] if out["status"] == "scored" else out["reason"]
        if out["status"] == "rejected":
            assert runtime.vectors.user_points(user) == [], name  # nothing stored
    # the worker is alive and well after all of it
    assert score_face.delay(corpus["BMP"], user_id="u-corpus-after").get(TIMEOUT)["status"]
    for expected, names in {
        "invalid_image": ["truncated JPEG (half)", "header-only JPEG", "PDF", "SVG", "HTML",
                          "animated GIF", "TIFF", "random bytes", "gzip of a JPEG"],
        "image_too_large": ["PNG bomb header 100000²", "JPEG bomb header 60000²"],
        "no_face": ["blank white JPEG", "transparent RGBA PNG"],
        "refused invalid_request": ["an int", "None", "a list", "a dict"],
    }.items():  # fmt: skip
        for name in names:
            assert answers[name] == expected, (name, answers[name])
    for user in [f"u-corpus-{i}" for i in range(len(corpus))] + ["u-corpus-after"]:
        forget_user(runtime, user)  # leave the population as it was


@pytest.mark.parametrize("service", ["detection", "embedding"])
def test_every_corpus_image_gets_a_typed_http_error_from_the_services(
    service, photos, detection_url, embedding_url, auth
):
    url = f"{detection_url}/detect" if service == "detection" else f"{embedding_url}/extract"
    corpus = {name: base64.b64encode(data).decode() for name, data in bad_images(photos).items()}
    corpus |= {k: v for k, v in bad_texts(photos).items()}
    for name, image in corpus.items():
        answer = requests.post(url, json={"image_base64": image}, headers=auth, timeout=30)
        if answer.status_code == 200:
            continue  # a real image (BMP, WebP, 16-bit …): answered, typed by the contract
        assert answer.status_code in (400, 413, 422), (name, answer.status_code, answer.text)
        body = answer.json()
        assert set(body) == {"error", "message"} and body["error"], (name, body)
    assert requests.get(f"{detection_url}/health", timeout=5).status_code == 200
    assert requests.get(f"{embedding_url}/health", timeout=5).status_code == 200
