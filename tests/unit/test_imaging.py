"""Untrusted bytes → pixels: every limit and format, with real encoders (OpenCV, Pillow)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from aurum_ml.errors import BadInput
from aurum_ml.pipeline.imaging import decode_base64, decode_image, inspect_image
from aurum_ml.settings import Settings

from samples import b64, encode, one_pixel_png, png_header_claiming, read_rgb


@pytest.fixture(scope="module")
def limits() -> Settings:
    return Settings(image_max_bytes=10_000_000, image_max_pixels=4_000_000, image_min_side=64)


def _reason(call) -> tuple[str, str]:
    with pytest.raises(BadInput) as info:
        call()
    return info.value.reason, info.value.message


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_input_is_invalid(text, limits):
    assert _reason(lambda: decode_base64(text, limits)) == ("invalid_image", "image is empty")


def test_bad_base64_is_invalid(limits):
    assert _reason(lambda: decode_base64("not base64!!", limits))[0] == "invalid_image"


def test_non_string_is_invalid(limits):
    reason, message = _reason(lambda: decode_base64(12345, limits))  # type: ignore[arg-type]
    assert (reason, message) == ("invalid_image", "image must be a base64 string, not int")


def test_base64_over_byte_limit_is_refused_before_decoding(limits):
    reason, _ = _reason(lambda: decode_base64("A" * 20_000_000, limits))
    assert reason == "image_too_large"


def test_data_url_and_line_breaks_are_accepted(limits):
    payload = b"\x89PNG some bytes"
    text = "data:image/png;base64," + b64(payload)[:8] + "\n" + b64(payload)[8:]
    assert decode_base64(text, limits) == payload


def test_corrupt_bytes_are_invalid(limits):
    assert _reason(lambda: inspect_image(b"\x00garbage" * 100, limits))[0] == "invalid_image"


def test_truncated_jpeg_header_is_invalid(limits, photos):
    data = (photos / "obama.jpg").read_bytes()[:200]
    assert _reason(lambda: decode_image(data, limits))[0] == "invalid_image"


def test_one_pixel_image_is_invalid_with_the_minimum_named(limits):
    reason, message = _reason(lambda: inspect_image(one_pixel_png(), limits))
    assert reason == "invalid_image"
    assert "1×1 px" in message and "64 px" in message


def test_header_claiming_100k_square_is_too_large_without_decoding(limits):
    reason, message = _reason(lambda: inspect_image(png_header_claiming(100_000, 100_000), limits))
    assert reason == "image_too_large"
    assert "pixel limit" in message


def test_header_just_over_pixel_limit_names_its_size(limits):
    reason, message = _reason(lambda: inspect_image(png_header_claiming(2500, 2000), limits))
    assert reason == "image_too_large" and "2500×2000 px" in message


def test_bytes_over_limit_are_too_large(limits, photos):
    data = (photos / "obama3.jpg").read_bytes()  # 596 kB
    small = limits.model_copy(update={"image_max_bytes": 100_000})
    assert _reason(lambda: inspect_image(data, small))[0] == "image_too_large"


def test_unsupported_format_is_named(limits):
    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, format="GIF")
    reason, message = _reason(lambda: inspect_image(buf.getvalue(), limits))
    assert reason == "invalid_image" and "GIF" in message


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp"])
def test_formats_decode_to_rgb(ext, limits, photos):
    original = read_rgb(photos / "obama2.jpg")
    decoded = decode_image(encode(original, ext), limits)
    assert decoded.shape == original.shape and decoded.dtype == np.uint8
    # lossless formats round-trip exactly; lossy ones closely
    assert np.abs(decoded.astype(int) - original).mean() < (0.01 if ext != ".jpg" else 3)


def test_rgba_png_decodes_to_rgb(limits, photos):
    decoded = decode_image((photos / "32bit.png").read_bytes(), limits)
    assert decoded.shape == (1200, 626, 3)


def test_16_bit_and_greyscale_decode_to_8_bit_rgb(limits, photos):
    grey = cv2.cvtColor(read_rgb(photos / "obama.jpg"), cv2.COLOR_RGB2GRAY)
    for image in (grey, grey.astype(np.uint16) * 257):
        ok, buf = cv2.imencode(".png", image)
        decoded = decode_image(buf.tobytes(), limits)
        assert decoded.shape == (*grey.shape, 3) and decoded.dtype == np.uint8
        assert np.abs(decoded[..., 0].astype(int) - grey).max() <= 1


def test_exif_orientation_is_applied(limits, photos):
    original = Image.open(photos / "obama.jpg")  # 910 wide × 1137 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buf = io.BytesIO()
    original.save(buf, format="JPEG", exif=exif.tobytes())
    decoded = decode_image(buf.getvalue(), limits)
    assert decoded.shape[:2] == (910, 1137)


def test_transparency_is_flattened_on_white(limits):
    from PIL import Image as PILImage

    for mode, pixel in (("RGBA", (10, 20, 30, 0)), ("LA", (10, 0))):
        buf = io.BytesIO()
        PILImage.new(mode, (80, 80), pixel).save(buf, format="PNG")
        decoded = decode_image(buf.getvalue(), limits)
        assert decoded.shape == (80, 80, 3) and int(decoded.min()) == 255, mode
    half = io.BytesIO()
    PILImage.new("RGBA", (80, 80), (0, 0, 0, 128)).save(half, format="PNG")
    assert abs(int(decode_image(half.getvalue(), limits)[0, 0, 0]) - 127) <= 1


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("kind", ["RGBA-PNG", "RGB-PNG", "RGB-JPEG", "RGBA-WEBP"])
def test_exif_orientation_is_applied_to_every_format(kind, orientation):
    """#24: an RGBA PNG rotated by EXIF was scored as stored (no_face); every format
    now turns upright the way Pillow's exif_transpose does."""
    from PIL import ImageOps

    rng = np.random.default_rng(orientation)
    base = rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)
    base[:30, :50] = (255, 0, 0)  # a corner to tell the turns apart
    mode, fmt = kind.split("-")
    image = Image.fromarray(base).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(
        buf,
        fmt,
        exif=exif,
        **({"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}),
    )
    data = buf.getvalue()
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    got = decode_image(data, Settings(IMAGE_MIN_SIDE=16))
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 2.0
