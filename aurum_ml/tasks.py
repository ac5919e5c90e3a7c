"""``aurum_ml.tasks`` (score_face.delay and the other tasks): the path the README
documented before the package had doors. It is the very module ``aurum_ml.pipeline.tasks``,
not a copy (patching one patches the other). Nothing in the package imports this name."""

import sys

import aurum_ml.pipeline.tasks  # noqa: F401  (loads it, so sys.modules holds it)

sys.modules[__name__] = sys.modules["aurum_ml.pipeline.tasks"]
