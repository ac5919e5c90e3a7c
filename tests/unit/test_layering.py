"""The one rule of direction (README, "Layout"): surfaces → pipeline → population → core.

Every module of ``aurum_ml`` belongs to one door; the test reads each module's imports
(at its top and inside functions, with ``ast``: nothing is imported) and fails on an
import that points the wrong way, or on a module no door claims.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "aurum_ml"

# the doors are aurum_ml's folders; the core is the modules beside them
DOORS = ("population", "pipeline", "surfaces")
CORE = {
    "settings", "errors", "schemas", "callbacks", "logs", "connection", "broker",
    "request", "keys", "client",
}  # fmt: skip
# the paths the README documented before the doors: aliases of a door's module, for users
MOVED = {
    "tasks": "pipeline",
    "queries": "population",
    "rerank": "population",
    "forget": "population",
}
# what each door may import, besides itself
MAY_IMPORT = {
    "core": {"core"},
    "population": {"core"},
    "pipeline": {"core", "population"},
    "surfaces": {"core", "population", "pipeline"},
    "moved": {"population", "pipeline"},
}


def _door(module: str) -> str | None:
    """The door of ``aurum_ml.a.b`` (by ``a``); None for the package itself."""
    parts = module.split(".")
    if parts[0] != "aurum_ml" or len(parts) == 1:
        return None
    if parts[1] in DOORS:
        return parts[1]
    return "core" if parts[1] in CORE else "moved" if parts[1] in MOVED else "unclaimed"


def _is_module(package: str, name: str) -> bool:
    folder = PACKAGE.joinpath(*package.split(".")[1:])
    return (folder / f"{name}.py").is_file() or (folder / name).is_dir()


def _imports(path: Path) -> set[str]:
    """The aurum_ml modules ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("aurum_ml")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "aurum_ml":
                continue
            found.add(node.module)  # from aurum_ml.pipeline import tasks → … and its module
            found |= {
                f"{node.module}.{a.name}" for a in node.names if _is_module(node.module, a.name)
            }
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
    assert not unclaimed, (
        f"put these in a door (a folder, or CORE here; README's Layout): {unclaimed}"
    )


def test_no_module_of_ours_imports_a_moved_path() -> None:
    """The old paths are for users; inside the package every import names the door."""
    users = sorted(
        f"{name} imports {target}"
        for name, path in _modules()
        if _door(name) != "moved"
        for target in _imports(path)
        if _door(target) == "moved"
    )
    assert not users, users


@pytest.mark.parametrize("old,door", sorted(MOVED.items()))
def test_a_moved_path_is_the_very_module(old: str, door: str) -> None:
    moved = importlib.import_module(f"aurum_ml.{old}")
    assert moved is importlib.import_module(f"aurum_ml.{door}.{old}")


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
    module.write_text(
        "def f():\n    from aurum_ml.pipeline.runtime import Runtime\n    return Runtime\n"
    )
    assert _imports(module) == {"aurum_ml.pipeline.runtime"}
    assert _door("aurum_ml.pipeline.runtime") not in MAY_IMPORT["population"]
