"""``python -m aurum_ml.surfaces.cli``: the ``aurum-ml`` command."""

from aurum_ml.surfaces.cli import main

main()
