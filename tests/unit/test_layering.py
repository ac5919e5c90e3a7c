"""The one rule of direction (README, "Layout"): surfaces → pipeline → population → core.

Every module of ``aurum_ml`` belongs to one door; the test reads each module's imports
(at its top and inside functions, with ``ast``: nothing is imported) and fails on an
import that points the wrong way, or on a module no door claims.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "aurum_ml"

# the door of each module (a package's modules: by its name); core is imported by all
DOORS = {
    "core": {
        "settings", "errors", "schemas", "callbacks", "logs", "connection", "broker",
        "request", "keys", "client",
    },
    "population": {
        "population", "faces", "index", "rerank", "queries", "users", "vibes", "forget", "vectors",
        "transfer", "persistence",
    },
    "pipeline": {
        "celery_app", "tasks", "runtime", "stages", "backends", "imaging", "quality",
        "health", "state", "recovery", "redrive", "webhooks", "telemetry",
    },
    "surfaces": {"api", "cli", "services", "metrics", "serving", "webapp", "embedded"},
}  # fmt: skip
# what each door may import, besides itself
MAY_IMPORT = {
    "core": {"core"},
    "population": {"core"},
    "pipeline": {"core", "population"},
    "surfaces": {"core", "population", "pipeline"},
}


def _door(module: str) -> str | None:
    """The door of ``aurum_ml.a.b`` (by ``a``); None for the package itself."""
    parts = module.split(".")
    if parts[0] != "aurum_ml" or len(parts) == 1:
        return None
    return next((door for door, names in DOORS.items() if parts[1] in names), "unclaimed")


def _is_module(name: str) -> bool:
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name).is_dir()


def _imports(path: Path) -> set[str]:
    """The aurum_ml modules ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("aurum_ml")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "aurum_ml":  # from aurum_ml import tasks → aurum_ml.tasks
                found |= {f"aurum_ml.{a.name}" for a in node.names if _is_module(a.name)}
            elif node.module.startswith("aurum_ml."):
                found.add(node.module)
    return found


def _modules() -> list[tuple[str, Path]]:
    modules = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":  # a package: named as such
            parts = parts[:-1]
        modules.append((".".join(("aurum_ml", *parts)), path))
    return sorted(modules)


def test_every_module_is_in_a_door() -> None:
    unclaimed = [name for name, _ in _modules() if _door(name) == "unclaimed"]
    assert not unclaimed, f"put these in a door (DOORS here, and the README's Layout): {unclaimed}"


@pytest.mark.parametrize("name,path", _modules(), ids=[name for name, _ in _modules()])
def test_imports_point_one_way(name: str, path: Path) -> None:
    door = _door(name)
    if door in (None, "unclaimed"):  # the package's face (loads the app lazily); or above
        return
    wrong = sorted(
        f"{target} ({_door(target)})"
        for target in _imports(path)
        if _door(target) not in (None, door, *MAY_IMPORT[door])
    )
    assert not wrong, f"{name} ({door}) imports against the direction: {wrong}"


def test_the_rule_catches_an_import_up(tmp_path: Path) -> None:
    """The reader sees imports inside functions too: an import up is never missed."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from aurum_ml.runtime import Runtime\n    return Runtime\n")
    assert _imports(module) == {"aurum_ml.runtime"}
    assert _door("aurum_ml.runtime") not in MAY_IMPORT["population"]
