"""Images made from the real photos (or from scratch) for the rejection paths."""

from __future__ import annotations

import base64
import gzip
import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode(rgb: np.ndarray, ext: str = ".jpg") -> bytes:
    image = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def no_face(photos: Path) -> bytes:
    """The lower part of obama.jpg (suit and flag, 910×500 px): a real photo, no face."""
    return encode(read_rgb(photos / "obama.jpg")[620:1120, :])


def two_faces(photos: Path) -> bytes:
    """obama.jpg and biden.jpg side by side, the same height; Biden's face is the larger."""
    left, right = read_rgb(photos / "obama.jpg"), read_rgb(photos / "biden.jpg")
    height = 900
    left = cv2.resize(left, (round(left.shape[1] * height / left.shape[0]), height))
    right = cv2.resize(right[:1100], (round(right.shape[1] * height / 1100), height))
    return encode(np.hstack([left, right]))


def one_pixel_png() -> bytes:
    return encode(np.zeros((1, 1, 3), np.uint8), ".png")


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height px (its data is one byte: never decodable)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x00") + chunk(b"IEND", b"")
    )


# --- the bad-input corpus (tests/services/test_corpus.py, bench/chaos.py) ---------------


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


def bad_images(photos: Path) -> dict[str, bytes]:
    """The bad-input corpus: files that are not a usable photo, or barely one."""
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


def bad_texts(photos: Path) -> dict[str, object]:
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


def raw_reply(host: str, port: int, head: bytes) -> bytes:
    """Send request headers alone (declaring a body that never comes) and read the reply up
    to the end of its JSON: what a server answers from the headers."""
    import socket

    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(head)
        reply = b""
        while b"}" not in reply:  # headers and body may come in separate packets
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply
