"""Real test photos, fetched at test-setup time into a git-ignored cache.

The ``face_recognition==1.3.0`` source distribution on PyPI carries ``tests/test_images/``:
obama.jpg, obama2.jpg, obama3.jpg (three photos of one person), two crops of obama.jpg with
the face at the edge, 32bit.png (an RGBA copy of obama2) and biden.jpg (another person).
Nothing is committed: ``python tests/photos.py`` prints the folder, fetching it if needed.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "test-photos"
NAMES = (
    "obama.jpg",
    "obama2.jpg",
    "obama3.jpg",
    "obama_partial_face.jpg",
    "obama_partial_face2.jpg",
    "32bit.png",
    "biden.jpg",
)


def fetch() -> Path:
    """The folder of test photos, downloaded with pip on first use."""
    if all((CACHE / name).is_file() for name in NAMES):
        return CACHE
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                "face_recognition",
                "face_recognition==1.3.0",
                "-d",
                tmp,
            ],
            check=True,
        )
        (sdist,) = Path(tmp).glob("face_recognition-1.3.0.tar.gz")
        CACHE.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                if "/tests/test_images/" in member.name and name in NAMES and member.isfile():
                    source = archive.extractfile(member)
                    assert source is not None
                    (CACHE / name).write_bytes(source.read())
    missing = [name for name in NAMES if not (CACHE / name).is_file()]
    if missing:
        raise RuntimeError(f"the sdist lacked {missing}")
    return CACHE


if __name__ == "__main__":
    print(fetch())
