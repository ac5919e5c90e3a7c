"""The bad-input corpus: every case gets a typed answer — through score_face (an
InvalidRequest in the caller, or a rejected result with a reason code) and through both ML
services (an HTTP error with a JSON {error, message}) — never a crash, a hang, a retry loop
or anything stored. Real worker thread, real services on loopback."""

from __future__ import annotations

import base64
import gzip
import io
import struct
import zlib

import cv2
import numpy as np
import pytest
import requests
from PIL import Image

from aurum_ml.errors import InvalidRequest
from aurum_ml.forget import forget_user
from aurum_ml.tasks import score_face

from samples import encode, png_header_claiming, read_rgb

TIMEOUT = 60
REASONS = {
    "invalid_image",
    "image_too_large",
    "no_face",
    "multiple_faces",
    "face_too_small",
    "low_quality",
    "invalid_request",
}


def _pil(mode: str, fmt: str, size=(200, 200), **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt, **save)
    return buf.getvalue()


def _gif_animated() -> bytes:
    frames = [Image.new("P", (120, 120), i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _png_bad_crc(photo: bytes) -> bytes:
    data = bytearray(photo)
    data[29] ^= 0xFF  # inside IHDR's CRC
    return bytes(data)


def _jpeg_bomb_header() -> bytes:
    """A JPEG whose SOF0 claims 60000 × 60000 px and carries no data."""
    sof = struct.pack(">HBHHB", 11, 8, 60000, 60000, 1) + b"\x01\x11\x00"
    return b"\xff\xd8\xff\xc0" + sof + b"\xff\xd9"


def _corpus(photos) -> dict[str, bytes]:
    jpeg = (photos / "obama.jpg").read_bytes()
    rgb = read_rgb(photos / "obama.jpg")
    png = encode(rgb, ".png")
    return {
        "truncated JPEG (half)": jpeg[: len(jpeg) // 2],
        "header-only JPEG": jpeg[:200],
        "JPEG SOI only": b"\xff\xd8",
        "JPEG bomb header 60000²": _jpeg_bomb_header(),
        "PNG bomb header 100000²": png_header_claiming(100_000, 100_000),
        "PNG header claiming 9000²": png_header_claiming(9000, 9000),
        "truncated PNG": png[: len(png) // 3],
        "PNG with a bad CRC": _png_bad_crc(png),
        "16-bit PNG": encode((rgb.astype(np.uint16) * 257), ".png"),
        "CMYK JPEG": _pil("CMYK", "JPEG"),
        "greyscale JPEG": encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)),
        "palette PNG": _pil("P", "PNG"),
        "animated GIF": _gif_animated(),
        "static GIF": _pil("RGB", "GIF"),
        "TIFF": _pil("RGB", "TIFF"),
        "ICO": _pil("RGB", "ICO", size=(64, 64)),
        "PDF": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "SVG": b'<svg xmlns="http://www.w3.org/2000/svg" width="900" height="900"/>',
        "HTML": b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
        "JSON": b'{"image": "not really"}',
        "gzip of a JPEG": gzip.compress(jpeg),
        "zlib of a PNG": zlib.compress(png),
        "ZIP header": b"PK\x03\x04" + b"\x00" * 100,
        "ELF header": b"\x7fELF" + b"\x00" * 100,
        "random bytes": np.random.default_rng(7).integers(0, 256, 5000, np.uint8).tobytes(),
        "zero bytes": b"\x00" * 4096,
        "1×1 PNG": encode(np.zeros((1, 1, 3), np.uint8), ".png"),
        "64×1 PNG": encode(np.zeros((1, 64, 3), np.uint8), ".png"),
        "2000×40 strip": encode(np.full((40, 2000, 3), 128, np.uint8)),
        "blank white JPEG": encode(np.full((400, 400, 3), 255, np.uint8)),
        "blank black PNG": encode(np.zeros((400, 400, 3), np.uint8), ".png"),
        "transparent RGBA PNG": _pil("RGBA", "PNG"),
        "BMP": encode(rgb, ".bmp"),
        "WebP": encode(rgb, ".webp"),
        "JPEG with junk appended": jpeg + b"\x00junk" * 1000,
        "JPEG with junk before": b"junk" + jpeg,
    }


def _texts(photos) -> dict[str, object]:
    """Arguments that are not base64 of an image at all."""
    jpeg_b64 = base64.b64encode((photos / "obama.jpg").read_bytes()).decode()
    return {
        "empty string": "",
        "whitespace": "   \n\t ",
        "invalid base64 characters": "@@@@!!!!####",
        "base64 with a bad length": "QUJD=",
        "data: URL with a bad type": "data:text/html;base64,PGh0bWw+",
        "data: URL prefix only": "data:image/jpeg;base64,",
        "base64 of nothing useful": base64.b64encode(b"hello").decode(),
        "base64 with embedded NUL": jpeg_b64[:100] + "\x00" + jpeg_b64[100:],
        "non-ASCII text": "фото-лица",
        "an int": 12345,
        "None": None,
        "a list": [jpeg_b64],
        "a dict": {"image": jpeg_b64},
    }


def _typed(out: dict) -> bool:
    return out["status"] == "scored" or (
        out["status"] == "rejected" and out["reason"] in REASONS and bool(out["message"])
    )


def test_every_corpus_image_gets_a_typed_answer_from_score_face(pipeline_worker, photos, runtime):
    corpus = {name: base64.b64encode(data).decode() for name, data in _corpus(photos).items()}
    corpus |= _texts(photos)
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
    corpus = {name: base64.b64encode(data).decode() for name, data in _corpus(photos).items()}
    corpus |= {k: v for k, v in _texts(photos).items()}
    for name, image in corpus.items():
        answer = requests.post(url, json={"image_base64": image}, headers=auth, timeout=30)
        if answer.status_code == 200:
            continue  # a real image (BMP, WebP, 16-bit …): answered, typed by the contract
        assert answer.status_code in (400, 413, 422), (name, answer.status_code, answer.text)
        body = answer.json()
        assert set(body) == {"error", "message"} and body["error"], (name, body)
    assert requests.get(f"{detection_url}/health", timeout=5).status_code == 200
    assert requests.get(f"{embedding_url}/health", timeout=5).status_code == 200
