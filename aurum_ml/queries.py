"""``aurum_ml.queries`` (get_score, similar, leaderboard, stats): the path the README
documented before the package had doors. It is the very module ``aurum_ml.population.queries``,
not a copy (patching one patches the other). Nothing in the package imports this name."""

import sys

import aurum_ml.population.queries  # noqa: F401  (loads it, so sys.modules holds it)

sys.modules[__name__] = sys.modules["aurum_ml.population.queries"]
