"""Vibe tags: up to three names derived from where a face's embedding points.

Ten fixed orthonormal directions (from a fixed seed, so the same embedding always gets the
same tags) are read off the face's unit embedding *relative to a reference*: the
population's centre and, per direction, its spread. Centring matters because every dlib
embedding shares a large common component; scaling makes each direction equally likely to
come first, so no vibe dominates. The reference is frozen once the population is large
enough (``VIBE_REFERENCE_MIN_FACES``): from then on a face's tags never change. Before that
the running centroid is used, and the re-rank recomputes every face's tags.

Tags are fun labels with no claim about a person; they say which way a face differs from
the average face in a space the model learned for identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "VIBES",
    "ReferenceMoments",
    "VibeReference",
    "directions",
    "reference_from",
    "vibes_of",
]

VIBES = (
    "mysterious",
    "confident",
    "gentle",
    "sophisticated",
    "natural",
    "artistic",
    "radiant",
    "serene",
    "intense",
    "playful",
)
_SEED = 20_261_126  # changing it changes every tag


@lru_cache(maxsize=4)
def directions(dim: int) -> np.ndarray:
    """(10, dim) orthonormal rows, the same in every process."""
    q, _ = np.linalg.qr(np.random.default_rng(_SEED).normal(size=(dim, len(VIBES))))
    return np.ascontiguousarray(q.T)


@dataclass(frozen=True)
class VibeReference:
    center: np.ndarray  # (dim,) mean of the unit embeddings
    scale: np.ndarray  # (10,) spread of the population along each direction
    frozen: bool = False


class ReferenceMoments:
    """Running sums from which a population's reference follows, so a population read in
    batches (the re-rank) needs no more than one batch in memory: the sum of the unit
    embeddings (also the centroid's direction) and, per direction, the sum of the
    projections and of their squares."""

    def __init__(self, dim: int) -> None:
        self.total = np.zeros(dim)
        self.projected = np.zeros(len(VIBES))
        self.squares = np.zeros(len(VIBES))
        self.count = 0

    def add(self, units: np.ndarray) -> ReferenceMoments:
        p = units @ directions(units.shape[1]).T
        self.total += units.sum(axis=0)
        self.projected += p.sum(axis=0)
        self.squares += (p * p).sum(axis=0)
        self.count += len(units)
        return self

    def reference(self, frozen: bool = False) -> VibeReference:
        """The population's centre and its spread along each direction (std; 1 where the
        population does not spread, so no division by zero)."""
        n = max(self.count, 1)
        mean = self.projected / n
        spread = np.sqrt(np.maximum(self.squares / n - mean * mean, 0.0))
        return VibeReference(self.total / n, np.where(spread > 1e-9, spread, 1.0), frozen)


def reference_from(units: np.ndarray, frozen: bool = False) -> VibeReference:
    """The reference of a population of unit embeddings (one per row)."""
    return ReferenceMoments(units.shape[1]).add(units).reference(frozen)


def vibes_of(unit: np.ndarray, reference: VibeReference, limit: int = 3) -> list[str]:
    """The strongest directions this face leans along (at least one, at most ``limit``)."""
    z = ((unit - reference.center) @ directions(unit.shape[0]).T) / reference.scale
    order = np.argsort(-z, kind="stable")
    tags = [VIBES[i] for i in order[:limit] if z[i] > 0]
    return tags or [VIBES[int(order[0])]]
