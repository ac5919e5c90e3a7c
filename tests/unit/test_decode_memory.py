"""#24: decoding one image is bounded by IMAGE_DECODE_BUDGET_MB, measured. For each kind of
image, the largest one the header check accepts is decoded in a fresh process whose peak
resident memory is reset first (/proc/self/clear_refs): the rise must stay within the
budget. A slightly larger one is refused from its header as image_too_large, naming the
limit — before a single pixel is decoded."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
from PIL import Image

from aurum_ml.errors import BadInput
from aurum_ml.pipeline.imaging import inspect_image
from aurum_ml.settings import Settings

BUDGET_MB = 120
SETTINGS = Settings(IMAGE_DECODE_BUDGET_MB=BUDGET_MB)


def _image(kind: str, width: int, height: int) -> bytes:
    if kind.startswith("png"):
        channels, depth = (4, np.uint16) if kind == "png16-rgba" else (3, np.uint8)
        if kind == "png-rgba":
            channels = 4
        pixels = np.zeros((height, width, channels), depth)
        pixels[::5] = np.iinfo(depth).max // 2  # stripes: compressible, not blank
        if channels == 4:
            pixels[..., 3] = np.iinfo(depth).max
        ok, buf = cv2.imencode(".png", pixels)
        assert ok
        return buf.tobytes()
    out = io.BytesIO()
    options = {"quality": 70, "progressive": kind != "jpeg"}
    if kind == "jpeg-progressive-444":
        options["subsampling"] = 0
    Image.new("RGB", (width, height), (120, 90, 60)).save(out, "JPEG", **options)
    return out.getvalue()


def _largest_accepted(kind: str) -> int:
    """The largest 4:3 width whose image the header check accepts (binary search)."""

    def accepted(width: int) -> bool:
        try:
            inspect_image(_image(kind, width, width * 3 // 4), SETTINGS)
        except BadInput as exc:
            assert exc.reason == "image_too_large", exc.message
            return False
        return True

    low, high = 1000, 8000
    while high - low > 64:
        middle = (low + high) // 2
        low, high = (middle, high) if accepted(middle) else (low, middle)
    return low


PROBE = textwrap.dedent(
    """
    import sys
    from aurum_ml.pipeline.imaging import decode_scaled
    from aurum_ml.settings import Settings

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    data = sys.stdin.buffer.read()
    settings = Settings(IMAGE_DECODE_BUDGET_MB=int(sys.argv[1]))
    open("/proc/self/clear_refs", "w").write("5")  # the peak starts again from here
    before = rss("VmRSS:")
    decode_scaled(data, settings)
    print(rss("VmHWM:") - before)
    """
)


@pytest.mark.parametrize(
    "kind", ["jpeg", "jpeg-progressive", "jpeg-progressive-444", "png", "png-rgba", "png16-rgba"]
)
def test_the_largest_accepted_image_decodes_within_the_budget(kind):
    width = _largest_accepted(kind)
    data = _image(kind, width, width * 3 // 4)
    peak = subprocess.run(
        [sys.executable, "-c", PROBE, str(BUDGET_MB)],
        input=data, capture_output=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    assert int(peak) <= BUDGET_MB * 1_000_000, (kind, width, int(peak) / 1e6)
    bigger = _image(kind, width + 128, (width + 128) * 3 // 4)
    with pytest.raises(BadInput) as refused:
        inspect_image(bigger, SETTINGS)
    assert refused.value.reason == "image_too_large"
    # the decode budget, or for a baseline JPEG the pixel limit, whichever binds first
    assert f"{BUDGET_MB} MB limit" in refused.value.message or (
        kind == "jpeg" and "pixel limit" in refused.value.message
    )


def test_the_png_bomb_of_the_report_is_refused_from_its_header():
    """24 MP, 16-bit RGBA in a few hundred KB: ~460 MB to decode before #24."""
    bomb = _image("png16-rgba", 6000, 4000)
    with pytest.raises(BadInput) as refused:
        inspect_image(bomb, Settings())
    assert refused.value.reason == "image_too_large" and "16-bit" in refused.value.message


def test_every_phone_sized_jpeg_is_accepted():
    """A JPEG is scaled by its decoder, so no size up to IMAGE_MAX_PIXELS is refused for
    memory: a 16 MP phone photo decoded at full size would pass the budget, so it is
    decoded at 1/2 (found refused while the scale rule kept its long side ≥ 2560 px)."""
    for width in range(3000, 7300, 400):
        info = inspect_image(_image("jpeg", width, width * 3 // 4), Settings())
        assert info.width == width
