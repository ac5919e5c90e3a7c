"""Turning untrusted bytes into pixels, with every limit checked before the costly step.

Order of checks: base64 text length → decoded byte size → format and pixel count from the
header (Pillow reads only the header) → full decode (OpenCV, which applies the EXIF
orientation) → minimum side. Each failure is a :class:`~aurum_ml.errors.BadInput` with a
reason code. Images are never written to disk or logged here.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from aurum_ml.errors import BadInput
from aurum_ml.settings import Settings

__all__ = ["ImageInfo", "decode_base64", "decode_image", "inspect_image"]

# Pillow's names for the formats we accept; MPO is what phones' multi-picture JPEGs open as.
_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}
_DATA_URL = re.compile(rb"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(rb"\s+")


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: format name (lower case) and size in px, before EXIF rotation."""

    format: str
    width: int
    height: int


def decode_base64(text: str | bytes, settings: Settings) -> bytes:
    """Base64 (optionally a ``data:image/...;base64,`` URL) → bytes, size-checked first."""
    if not isinstance(text, str | bytes):
        raise BadInput(f"image must be a base64 string, not {type(text).__name__}")
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = _WHITESPACE.sub(b"", _DATA_URL.sub(b"", raw.strip(), count=1))
    if not raw:
        raise BadInput("image is empty")
    if len(raw) // 4 * 3 > settings.image_max_bytes + 2:
        raise BadInput(
            f"image is larger than the {settings.image_max_bytes} byte limit",
            reason="image_too_large",
        )
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("image is not valid base64") from None
    if not data:
        raise BadInput("image is empty")
    return data


def inspect_image(data: bytes, settings: Settings) -> ImageInfo:
    """Read format and size from the header only; enforce byte and pixel limits."""
    if not data:
        raise BadInput("image is empty")
    if len(data) > settings.image_max_bytes:
        raise BadInput(
            f"image is {len(data)} bytes, over the {settings.image_max_bytes} byte limit",
            reason="image_too_large",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                fmt, (width, height) = header.format or "", header.size
    except Image.DecompressionBombError:
        raise BadInput(
            f"image has more pixels than the {settings.image_max_pixels} pixel limit",
            reason="image_too_large",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise BadInput("image format not recognised (send JPEG, PNG, WebP or BMP)") from None
    if fmt not in _FORMATS:
        raise BadInput(f"unsupported image format {fmt} (send JPEG, PNG, WebP or BMP)")
    if width * height > settings.image_max_pixels:
        raise BadInput(
            f"image is {width}×{height} px, over the {settings.image_max_pixels} pixel limit",
            reason="image_too_large",
        )
    if min(width, height) < settings.image_min_side:
        raise BadInput(
            f"image is {width}×{height} px; a face needs at least "
            f"{settings.image_min_side} px on each side"
        )
    return ImageInfo(_FORMATS[fmt], width, height)


def decode_image(data: bytes, settings: Settings) -> np.ndarray:
    """Bytes → RGB ``uint8`` array of shape (height, width, 3), EXIF orientation applied.

    RGBA is flattened to RGB, greyscale expanded, 16-bit reduced to 8-bit.
    """
    inspect_image(data, settings)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise BadInput("image could not be decoded (corrupt or truncated)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
