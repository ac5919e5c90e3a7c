"""Input is checked at the door: in the caller's process before anything is published
(InvalidRequest), and again in the worker for a message published by other means (a
`rejected` result, never a crash). Real worker thread, real models, real photos."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
from celery.signals import before_task_publish

from aurum_ml.errors import InvalidRequest
from aurum_ml.pipeline.celery_app import app
from aurum_ml.pipeline.imaging import decode_scaled
from aurum_ml.pipeline.tasks import score_face
from aurum_ml.population.forget import forget_user

from samples import b64, encode, read_rgb

TIMEOUT = 60
BAD_USER_IDS = {
    "empty": "",
    "blank": "   ",
    "NUL": "u\x00x",
    "newline": "u\nINFO forged log line",
    "ANSI escape": "\x1b[31mred",
    "lone surrogate": "u\ud800",
    "bidi override": "u\u202egnp.exe",
    "129 chars": "u" * 129,
    "10 KB": "u" * 10_240,
    "not NFC": "jose\u0301",
    "leading space": " u1",
    "not a string": 42,
}


@pytest.fixture()
def published():
    sent: list[str] = []

    def record(headers=None, **_):
        sent.append((headers or {}).get("task", "?"))

    before_task_publish.connect(record, weak=False)
    yield sent
    before_task_publish.disconnect(record)


def test_an_image_over_the_limit_is_refused_before_it_is_published(
    pipeline_worker, settings, published
):
    huge = "A" * (80 * 1024 * 1024)  # 80 MB of base64: a len() is all it costs
    with pytest.raises(InvalidRequest) as refused:
        score_face.delay(huge, user_id="u-huge")
    assert refused.value.reason == "image_too_large"
    assert str(settings.image_max_bytes) in refused.value.message
    assert published == []


@pytest.mark.parametrize("user_id", BAD_USER_IDS.values(), ids=BAD_USER_IDS.keys())
def test_a_malformed_user_id_is_refused_in_the_caller(user_id, photos, published):
    with pytest.raises(InvalidRequest) as refused:
        score_face.delay(b64((photos / "obama.jpg").read_bytes()), user_id=user_id)
    assert refused.value.reason == "invalid_request"
    assert refused.value.message.startswith("user_id")
    if isinstance(user_id, str) and user_id.strip():
        assert user_id not in refused.value.message  # never echoed (logs, terminals)
    assert published == []


@pytest.mark.parametrize(
    "user_id", ["用户-42", "josé", "Zoë O'Brien", "u 1", "🙂", "u" * 128], ids=str
)
def test_printable_unicode_user_ids_are_accepted(user_id, pipeline_worker, photos, runtime):
    out = score_face.delay(b64((photos / "obama.jpg").read_bytes()), user_id=user_id).get(
        timeout=TIMEOUT
    )
    assert out["status"] == "scored" and out["user_id"] == user_id
    forget_user(runtime, user_id)  # leave the population as it was for other tests


@pytest.mark.parametrize("value", ["false", "true", 1, 0, "yes", [True]], ids=repr)
def test_allow_multiple_faces_must_be_a_boolean(value, photos, published):
    with pytest.raises(InvalidRequest) as refused:
        score_face.delay(
            b64((photos / "obama.jpg").read_bytes()), user_id="u-flag", allow_multiple_faces=value
        )
    assert refused.value.reason == "invalid_request"
    assert "allow_multiple_faces" in refused.value.message and published == []


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"user_id": "u\nforged"}, "invalid_request"),
        ({"user_id": "\x1b[2J"}, "invalid_request"),
        ({"user_id": "u-raw", "allow_multiple_faces": "false"}, "invalid_request"),
        ({"user_id": ["u"]}, "invalid_request"),
    ],
    ids=["newline", "ANSI", "string flag", "list id"],
)
def test_a_message_published_by_other_means_is_rejected_by_the_worker(
    kwargs, reason, pipeline_worker, photos, runtime
):
    image = b64((photos / "obama.jpg").read_bytes())
    out = app.send_task("aurum_ml.score_face", args=(image,), kwargs=kwargs).get(timeout=TIMEOUT)
    assert (out["status"], out["reason"]) == ("rejected", reason)
    assert out["user_id"] in ("", "u-raw")  # a malformed id is not repeated back
    assert runtime.vectors.user_points("u-raw") == []


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),  # nothing at all
        (("AAAA",), {}),  # no user id
        (("AAAA", "u-raw", None, "extra"), {}),  # one argument too many
        (("AAAA",), {"user_id": "u-raw", "surprise": 1}),  # an unknown keyword
        (("AAAA", "u-raw"), {"user_id": "u-raw"}),  # user_id twice
    ],
    ids=["empty", "missing", "extra-positional", "extra-keyword", "twice"],
)
def test_a_hand_made_message_with_wrong_arguments_is_a_typed_rejection(
    args, kwargs, pipeline_worker
):
    """#24: a TypeError before (Celery calls the function with what the message holds)."""
    out = app.send_task("aurum_ml.score_face", args=args, kwargs=kwargs).get(timeout=TIMEOUT)
    assert (out["status"], out["reason"]) == ("rejected", "invalid_request"), out
    assert out["message"]


def test_a_stored_image_reference_is_refused_at_the_door(photos, published):
    """#24: a reference sent as the image (through the API, or by a caller) failed the job
    later with ImageExpired; it is an invalid_request in the caller now."""
    with pytest.raises(InvalidRequest, match="stored-image reference") as refused:
        score_face.delay("aurum-image:sha256:" + "ab" * 32, user_id="u-ref")
    assert refused.value.reason == "invalid_request" and published == []


def test_a_serializer_other_than_json_is_refused_in_the_caller(photos, published):
    """#24: published with pickle, the worker refused it and .get() hung for ever."""
    image = b64((photos / "obama.jpg").read_bytes())
    with pytest.raises(InvalidRequest, match="JSON only"):
        score_face.apply_async((image,), {"user_id": "u-pickle"}, serializer="pickle")
    from aurum_ml.pipeline.tasks import stats

    with pytest.raises(InvalidRequest, match="JSON only"):
        stats.apply_async(serializer="pickle")
    assert published == []


def test_the_caller_check_and_the_worker_check_are_one_schema(photos):
    """One check (aurum_ml.request) for the thin caller, score_face.delay and the worker."""
    import inspect

    from aurum_ml import client
    from aurum_ml.pipeline import intake, lifecycle, tasks
    from aurum_ml.request import ScoreArgs, check_score_request

    request = check_score_request(
        (b64(b"x"), "u1"), {"allow_multiple_faces": True}, _limits().image_max_bytes
    )
    assert request == ScoreArgs(b64(b"x"), "u1", True)
    with pytest.raises(InvalidRequest, match="unexpected argument 'colour'"):
        check_score_request((b64(b"x"),), {"user_id": "u1", "colour": "red"}, 1000)
    for module in (client, intake, lifecycle):  # the one function, not a copy
        assert module.check_score_request is check_score_request, module
    assert "check_score_request" in inspect.getsource(tasks.score_face.run)


def _limits():
    from aurum_ml.settings import get_settings

    return get_settings()


# --- pixels: what a person sees is what is scored, at a bounded cost ---------------------------


def _png(rgba: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    assert ok
    return buf.tobytes()


def test_a_fully_transparent_image_is_blank_not_scored(pipeline_worker, photos, runtime):
    rgb = read_rgb(photos / "obama.jpg")
    rgba = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])  # the face, invisible
    out = score_face.delay(b64(_png(rgba)), user_id="u-transparent").get(timeout=TIMEOUT)
    assert (out["status"], out["reason"]) == ("rejected", "no_face")
    opaque = rgba.copy()
    opaque[..., 3] = 255
    shown = score_face.delay(b64(_png(opaque)), user_id="u-opaque").get(timeout=TIMEOUT)
    assert shown["status"] == "scored" and shown["face"]["box"] == [366, 136, 624, 394]
    forget_user(runtime, "u-opaque")


def test_a_huge_png_is_refused_from_its_header(pipeline_worker, settings):
    ok, buf = cv2.imencode(".png", np.zeros((6300, 6300, 3), np.uint8))
    assert ok and len(buf) < 1_000_000  # a small file, 39.7 MP of pixels
    out = score_face.delay(base64.b64encode(buf.tobytes()).decode(), user_id="u-bomb").get(
        timeout=TIMEOUT
    )
    assert (out["status"], out["reason"]) == ("rejected", "image_too_large")
    assert str(settings.image_max_pixels_full_decode) in out["message"]


def test_a_huge_jpeg_is_decoded_at_reduced_scale_in_full_size_coordinates(
    pipeline_worker, photos, settings, runtime
):
    original = read_rgb(photos / "obama.jpg")  # 910 × 1137, face box [366, 136, 624, 394]
    factor = 5
    big = cv2.resize(original, (910 * factor, 1137 * factor), interpolation=cv2.INTER_CUBIC)
    data = encode(big)
    decoded = decode_scaled(data, settings)
    assert decoded.scale == 2 and decoded.image.shape == (1137 * factor // 2 + 1, 2275, 3)
    out = score_face.delay(b64(data), user_id="u-huge-jpeg").get(timeout=TIMEOUT)
    assert out["status"] == "scored"
    # landmarks in the full-size frame (HOG's box differs a little with the searched size)
    expected = [(570, 217), (528, 215), (423, 217), (463, 216), (496, 295)]  # in obama.jpg
    for (x, y), (ex, ey) in zip(out["face"]["landmarks"], expected, strict=True):
        assert abs(x - ex * factor) <= 3 * factor and abs(y - ey * factor) <= 3 * factor
    width = out["face"]["box"][2] - out["face"]["box"][0]
    assert abs(width - (624 - 366) * factor) < 0.1 * (624 - 366) * factor
    assert out["quality"]["face_width_px"] == out["face"]["box"][2] - out["face"]["box"][0]
    forget_user(runtime, "u-huge-jpeg")
