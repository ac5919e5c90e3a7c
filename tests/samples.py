"""Images made from the real photos (or from scratch) for the rejection paths."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np


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
