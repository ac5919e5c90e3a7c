"""The population's handles: what "where does this face stand" is answered from.

The population (index, rerank, queries, users, vibes, forget, vectors, transfer,
persistence) works on a :class:`Population`: the stored vectors and payloads (Qdrant), the
score index and the users' records (Redis). It never imports the pipeline. The pipeline's
:class:`aurum_ml.pipeline.runtime.Runtime` *is* a Population (a subclass) with the models, the
services and the jobs in flight added, so a task hands its runtime to a query as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aurum_ml.population.index import ScoreIndex
from aurum_ml.population.users import UserRecords
from aurum_ml.population.vectors import VectorStore
from aurum_ml.settings import Settings

__all__ = ["Population"]


@dataclass(frozen=True)
class Population:
    settings: Settings
    redis: Any  # the state Redis (aurum_ml.connection.connect)
    vectors: VectorStore
    index: ScoreIndex
    users: UserRecords
