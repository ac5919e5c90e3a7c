"""Write one section of BENCHMARKS.md, keeping the others."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

FILE = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Written by `make bench` (each section by its own script). Numbers from one run on the\n"
    "machine named in the section: medians and ratios measured together, not promises.\n"
)


def write_section(name: str, title: str, lines: list[str]) -> None:
    text = FILE.read_text() if FILE.exists() else HEADER
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join([f"<!-- bench:{name} -->", f"## {title}", "", f"Run {stamp}.", "", *lines,
                      f"<!-- /bench:{name} -->"])  # fmt: skip
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = (
        pattern.sub(lambda _: body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body
    )
    FILE.write_text(text.rstrip() + "\n")
    print(f"wrote the {name} section of {FILE.name}")
