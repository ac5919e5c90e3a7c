"""Move a collection between engines: ``aurum-ml export-vectors`` / ``import-vectors``.

The file is JSON Lines (gzip-compressed when its name ends in ``.gz``): a header line, one
line per face — ``{"id", "vector", "payload"}`` — and an end line with the count, so an
import of a cut-off file fails before it writes anything it cannot vouch for... and says
how many faces it read. Ids, vectors and payloads are copied as they are, so a deployment
moves from a local folder (Qdrant Edge) to a Qdrant server, or back, with the same point
ids and the same answers.

The file holds face embeddings — biometric data. It is written readable by its owner only
(0600); delete it once imported. An import skips the faces of users erased after the face
was stored (their ``erasure_epoch`` is behind the user's), so an erasure that landed
between the export and the import is not undone.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from aurum_ml.errors import BadInput
from aurum_ml.population.handles import Population

__all__ = ["FORMAT", "ImportReport", "export_vectors", "import_vectors"]

FORMAT = "aurum-ml vectors"
_VERSION = 1
_BATCH = 1000


@dataclass(frozen=True)
class ImportReport:
    imported: int
    skipped_erased: int
    collection: str
    engine: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _open(path: Path, mode: str, named: Path | None = None) -> IO[str]:
    """The file as text; gzip when it (or the file it will become, ``named``) ends in .gz."""
    if (named or path).suffix == ".gz":
        return cast(IO[str], gzip.open(path, mode + "t", encoding="utf-8"))
    return path.open(mode, encoding="utf-8")


def export_vectors(runtime: Population, path: Path) -> int:
    """Write every face of the runtime's collection to ``path`` (created 0600, or
    replaced). Returns how many."""
    vectors = runtime.vectors
    header = {
        "format": FORMAT,
        "version": _VERSION,
        "collection": vectors.collection,
        "dim": vectors.dim,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    count = 0
    try:
        with _open(partial, "w", named=path) as out:
            out.write(json.dumps(header) + "\n")
            for pid, vector, payload in vectors.points(batch=_BATCH, with_payload=True):
                line = {"id": pid, "vector": [float(x) for x in vector], "payload": payload}
                out.write(json.dumps(line) + "\n")
                count += 1
            out.write(json.dumps({"end": True, "count": count}) + "\n")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return count


def _lines(path: Path, dim: int) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """The faces of an export file, checked; BadInput for anything that is not one."""
    try:
        with _open(path, "r") as source:
            try:
                header = json.loads(source.readline() or "null")
            except json.JSONDecodeError:
                header = None
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise BadInput(f"{path} is not an aurum-ml vectors export (no header line)")
            if header.get("version") != _VERSION or header.get("dim") != dim:
                raise BadInput(
                    f"{path} holds version {header.get('version')} vectors of dimension "
                    f"{header.get('dim')}; this store takes version {_VERSION}, dimension {dim}"
                )
            seen = 0
            for number, text in enumerate(source, start=2):
                try:
                    line = json.loads(text)
                    if line.get("end"):
                        if line.get("count") != seen:
                            raise BadInput(
                                f"{path} says it holds {line.get('count')} faces; it has {seen}"
                            )
                        return
                    vector = np.asarray(line["vector"], dtype=np.float32)
                    if vector.shape != (dim,) or not np.isfinite(vector).all():
                        raise ValueError("not a vector of the store's dimension")
                    yield str(line["id"]), vector, dict(line["payload"])
                    seen += 1
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise BadInput(f"{path}, line {number}: {exc}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path} is not an aurum-ml vectors export (it is not text)") from None
    except (OSError, EOFError) as exc:
        raise BadInput(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    raise BadInput(f"{path} ends before its end line: it was cut off ({seen} faces read)")


def check_export(path: Path, dim: int) -> int:
    """Read the whole file once before writing anything: how many faces it holds."""
    return sum(1 for _ in _lines(path, dim))


def import_vectors(runtime: Population, path: Path) -> ImportReport:
    """Write the faces of an export into the runtime's collection (the same ids: importing
    twice is harmless), skipping erased users' faces; then bring the vector index up to
    date. The file is checked whole first, so a bad file writes nothing."""
    vectors, users = runtime.vectors, runtime.users
    check_export(path, vectors.dim)
    imported = skipped = 0
    batch: list[tuple[str, np.ndarray, dict[str, Any]]] = []

    def flush() -> None:
        nonlocal imported, skipped
        epochs = users.erasure_epochs(sorted({str(p.get("user_id")) for _, _, p in batch}))
        kept = [
            point
            for point in batch
            if epochs.get(str(point[2].get("user_id")), 0) <= int(point[2].get("erasure_epoch", 0))
        ]
        vectors.upsert_many(kept)
        imported += len(kept)
        skipped += len(batch) - len(kept)
        batch.clear()

    for point in _lines(path, vectors.dim):
        batch.append(point)
        if len(batch) == _BATCH:
            flush()
    flush()
    vectors.optimize()
    return ImportReport(imported, skipped, vectors.collection, vectors.status()["engine"])
