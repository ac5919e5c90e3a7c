"""A virtualenv with only celery, kombu and redis, for the thin caller (aurum_ml.client).

Built at test-setup time into the git-ignored cache, from the package registry, with the
versions this project's own environment has (so pip finds them in its cache), and reused
while those versions stay the same. The package itself is not installed there: the caller
runs with the checkout on PYTHONPATH, so nothing but its own files comes along.
``python tests/thin_venv.py`` prints its interpreter, building it if needed.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("celery", "kombu", "redis")  # and what they need
# what the caller must never need: present in the project's environment, absent here
HEAVY = (
    *("numpy", "cv2", "PIL", "pydantic", "pydantic_settings", "qdrant_client", "qdrant_edge"),
    *("onnxruntime", "dlib", "fastapi", "prometheus_client", "fakeredis"),
)


def thin_python() -> Path:
    """The thin virtualenv's interpreter."""
    # what an app installs for a Redis broker: celery[redis] (kombu's Redis transport
    # needs the extra's packages)
    pins = [f"{name}{'[redis]' if name == 'celery' else ''}=={version(name)}" for name in PACKAGES]
    home = ROOT / ".cache" / ("thin-venv-" + "-".join(f"{n}{version(n)}" for n in PACKAGES))
    python = home / "bin" / "python"
    marker = home / ".installed"
    if marker.is_file():
        return python
    venv.EnvBuilder(clear=True, with_pip=True).create(home)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins],
        check=True,
    )
    marker.touch()
    return python


if __name__ == "__main__":
    print(thin_python())
    sys.exit(0)
