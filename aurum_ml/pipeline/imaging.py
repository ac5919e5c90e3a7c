"""Turning untrusted bytes into pixels, with every limit checked before the costly step.

Order of checks: base64 text length → decoded byte size → format and pixel count from the
header (Pillow reads only the header) → decode (OpenCV, which applies the EXIF
orientation) → minimum side. Each failure is a :class:`~aurum_ml.errors.BadInput` with a
reason code. Images are never written to disk or logged here.

Transparency is flattened against white before anything looks at the pixels: what is
scored is what a person sees (a fully transparent image is blank: ``no_face``).

Memory per decode is bounded. The pipeline works on :func:`decode_scaled`: an image whose
long side is at least 4 × ``DETECT_MAX_SIDE`` (5120 px by default) is decoded at 1/2, 1/4
or 1/8 scale, keeping its long side at or above 2 × ``DETECT_MAX_SIDE`` — a JPEG by the
decoder itself (libjpeg's DCT scaling: the full-size pixels never exist), other formats
resized after a full decode, which is why those are limited to
``IMAGE_MAX_PIXELS_FULL_DECODE`` (24 MP by default). Measured: a 39 MP JPEG's decode
peaked at 58 MB (227 MB at full size), a 23 MP PNG's at 134 MB. Boxes and landmarks stay in
the coordinates of the full-size image: callers scale by ``scale``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from aurum_ml import request
from aurum_ml.errors import BadInput
from aurum_ml.settings import Settings

__all__ = [
    "Decoded",
    "ImageInfo",
    "decode_base64",
    "decode_image",
    "decode_scale",
    "decode_scaled",
    "inspect_image",
]

# Pillow's names for the formats we accept; MPO is what phones' multi-picture JPEGs open as.
_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}


_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_REDUCED = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
_STRIP_PX = 65_536  # pixels flattened at a time: the float copies stay ~1 MB each


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: format name (lower case), size in px before EXIF rotation,
    whether it has transparency, its EXIF orientation (1–8), the bytes per pixel the
    decoder produces, and for a progressive JPEG the bytes per pixel of the coefficient
    buffer libjpeg holds for the whole image (at full size, whatever the output scale)."""

    format: str
    width: int
    height: int
    alpha: bool = False
    orientation: int = 1
    sample_bytes: int = 3
    coefficient_bytes: float = 0.0

    def decode_bytes(self, scale: int) -> int:
        """Peak bytes of decoding at 1/``scale`` (:func:`_decode`'s copies; checked
        against measured peaks by tests/unit/test_decode_memory.py): a JPEG's scaled
        output and its RGB copy, plus a progressive JPEG's coefficients; any other
        format's full-size decode, an 8-bit copy of 16-bit samples, the flattened RGB of
        an image with transparency, and the scaled copy."""
        full = self.width * self.height
        out = -(-self.width // scale) * -(-self.height // scale)
        if self.format == "jpeg" and not self.alpha:  # libjpeg's own buffers: +15 %
            return int((out * 3 * 2 + full * self.coefficient_bytes) * 1.15)
        # BGR(A), 8 or 16 bit (16: the alpha path only); OpenCV's PNG, WebP and BMP
        # decoders hold a second full-size copy while they convert (measured: up to 2.1x)
        raw = 2 * full * self.sample_bytes
        eight_bit = full * 4 if self.sample_bytes > 4 else 0
        flattened = full * 3 if self.alpha else 0  # colour is converted in place
        return int(1.1 * (raw + eight_bit + flattened + (out * 3 if scale > 1 else 0)))


@dataclass(frozen=True)
class Decoded:
    """RGB ``uint8`` pixels of an image decoded at 1/``scale`` of its size (``scale`` is 1,
    2, 4 or 8): a point (x, y) of ``image`` is (x·scale, y·scale) in the full image."""

    image: np.ndarray
    scale: int


def decode_base64(text: str | bytes, settings: Settings) -> bytes:
    """Base64 (optionally a ``data:image/...;base64,`` URL) → bytes, size-checked first
    (:func:`aurum_ml.request.decode_base64` against ``IMAGE_MAX_BYTES``)."""
    return request.decode_base64(text, settings.image_max_bytes)


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
                alpha = header.mode in _ALPHA_MODES or "transparency" in header.info
                orientation = _orientation(header)
                coefficients = _coefficient_bytes(header)
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
    if _FORMATS[fmt] != "jpeg" and width * height > settings.image_max_pixels_full_decode:
        raise BadInput(
            f"image is {width}×{height} px; a {fmt} image may have at most "
            f"{settings.image_max_pixels_full_decode} pixels (a JPEG up to "
            f"{settings.image_max_pixels})",
            reason="image_too_large",
        )
    if min(width, height) < settings.image_min_side:
        raise BadInput(
            f"image is {width}×{height} px; a face needs at least "
            f"{settings.image_min_side} px on each side"
        )
    info = ImageInfo(
        _FORMATS[fmt], width, height, alpha, orientation, _sample_bytes(data, fmt, alpha),
        coefficients,
    )  # fmt: skip
    needed = info.decode_bytes(decode_scale(info, settings))
    if needed > settings.image_decode_budget_bytes:
        raise BadInput(
            f"image is {width}×{height} px ({fmt}"
            f"{', progressive' if coefficients else ''}"
            f"{', 16-bit' if info.sample_bytes > 4 else ''}): decoding it would take "
            f"{needed / 1e6:.0f} MB, over the {settings.image_decode_budget_mb} MB limit "
            "(IMAGE_DECODE_BUDGET_MB); send a smaller image",
            reason="image_too_large",
        )
    return info


def decode_scale(info: ImageInfo, settings: Settings) -> int:
    """1, 2, 4 or 8: the largest reduction keeping the long side ≥ 2 × DETECT_MAX_SIDE —
    or, when decoding at that scale would not fit IMAGE_DECODE_BUDGET_MB, the next one
    that does and still keeps the long side ≥ DETECT_MAX_SIDE (a JPEG is scaled by its
    decoder: a 16 MP phone photo decodes at 1/2 rather than being refused)."""
    keep = 2 * settings.detect_max_side
    longest = max(info.width, info.height)
    preferred = max((f for f in (1, 2, 4, 8) if longest / f >= keep or f == 1), default=1)
    fitting = (  # never below what detection works on (DETECT_MAX_SIDE)
        f
        for f in (1, 2, 4, 8)
        if f >= preferred
        and (f == 1 or longest / f >= settings.detect_max_side)
        and info.decode_bytes(f) <= settings.image_decode_budget_bytes
    )
    return next(fitting, preferred)


def _orientation(header: Image.Image) -> int:
    """The EXIF orientation (1–8; 1 when absent or nonsense), for any format."""
    try:
        value = header.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: no rotation
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _coefficient_bytes(header: Image.Image) -> float:
    """For a progressive JPEG: bytes per image pixel of libjpeg's coefficient buffer (2
    per coefficient, each component at its sampling); 0 for anything else."""
    if header.format not in ("JPEG", "MPO") or not header.info.get("progressive"):
        return 0.0
    layers = getattr(header, "layer", None) or [("", 1, 1, 0)] * 3
    h_max = max(h for _, h, _, _ in layers)
    v_max = max(v for _, _, v, _ in layers)
    return 2.0 * sum(h * v for _, h, v, _ in layers) / (h_max * v_max)


def _sample_bytes(data: bytes, fmt: str, alpha: bool) -> int:
    """Bytes per pixel of the decoder's output before conversion: BGR, or BGRA for an
    image with transparency, read unchanged — 16-bit samples for a 16-bit PNG (IHDR's
    bit depth at byte 24)."""
    if not alpha:
        return 3
    return 8 if fmt == "PNG" and len(data) > 24 and data[24] == 16 else 4


def decode_image(data: bytes, settings: Settings) -> np.ndarray:
    """Bytes → RGB ``uint8`` array of shape (height, width, 3) at full size, EXIF
    orientation applied, transparency flattened against white, greyscale expanded, 16-bit
    reduced to 8-bit. The pipeline uses :func:`decode_scaled`."""
    return _decode(data, inspect_image(data, settings), 1)


def decode_scaled(data: bytes, settings: Settings) -> Decoded:
    """Like :func:`decode_image`, at reduced scale when the image is far larger than
    detection needs (see the module docstring)."""
    info = inspect_image(data, settings)
    scale = decode_scale(info, settings)
    return Decoded(_decode(data, info, scale), scale)


_IGNORE = cv2.IMREAD_IGNORE_ORIENTATION  # applied by _orient, the same way for every format
# EXIF orientation → how to turn the stored pixels upright (Pillow's exif_transpose)
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),
    5: cv2.transpose,
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.flip(cv2.transpose(a), -1),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def _decode(data: bytes, info: ImageInfo, scale: int) -> np.ndarray:
    buffer = np.frombuffer(data, np.uint8)
    by_decoder = info.format == "jpeg" and not info.alpha  # libjpeg scales as it decodes
    if info.alpha:  # keep the alpha channel to flatten it
        raw = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED | _IGNORE)
    elif by_decoder and scale > 1:
        raw = cv2.imdecode(buffer, _REDUCED[scale] | _IGNORE)
    else:
        raw = cv2.imdecode(buffer, cv2.IMREAD_COLOR | _IGNORE)
    if raw is None or raw.size == 0:
        raise BadInput("image could not be decoded (corrupt or truncated)")
    rgb = _to_rgb(raw)
    del raw
    if scale > 1 and not by_decoder:
        height, width = rgb.shape[:2]
        size = (-(-width // scale), -(-height // scale))  # as libjpeg rounds: up
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    turn = _ORIENT.get(info.orientation)
    return rgb if turn is None else np.ascontiguousarray(turn(rgb))


def _to_rgb(raw: np.ndarray) -> np.ndarray:
    """OpenCV's BGR / BGRA / grey, 8 or 16 bit → RGB uint8, alpha flattened on white;
    in place where it can be (the decode budget counts on it: ImageInfo.decode_bytes)."""
    if raw.dtype == np.uint16:
        np.right_shift(raw, 8, out=raw)  # 16 → 8 bit without a second 16-bit copy
        raw = raw.astype(np.uint8)
    elif raw.dtype != np.uint8:
        raw = raw.astype(np.uint8)
    if raw.ndim == 2:
        return cv2.cvtColor(raw, cv2.COLOR_GRAY2RGB)
    if raw.shape[2] == 3:
        return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB, dst=raw)
    if raw.shape[2] == 2:  # grey + alpha: as BGRA
        raw = raw[..., [0, 0, 0, 1]]
    out = np.empty((*raw.shape[:2], 3), np.uint8)
    rows = max(1, _STRIP_PX // raw.shape[1])
    for top in range(0, raw.shape[0], rows):
        strip = raw[top : top + rows].astype(np.float32)
        alpha = strip[..., 3:4] / 255.0
        flat = strip[..., 2::-1] * alpha + 255.0 * (1.0 - alpha)  # BGR → RGB on white
        out[top : top + rows] = np.rint(flat).astype(np.uint8)
    return out
