"""Questions about the population, as plain functions of a
:class:`~aurum_ml.population.handles.Population`.

Each is also a Celery task on the maintenance queue (``aurum_ml.pipeline.tasks``) and a CLI command.
They read the score index (Redis) and the vectors (Qdrant); none changes anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aurum_ml.population.faces import read_payload
from aurum_ml.population.handles import Population
from aurum_ml.population.index import score_of

__all__ = ["for_tenant", "get_score", "leaderboard", "similar", "stats", "stored_result"]


def _standing(runtime: Population, point_id: str | None) -> dict[str, Any]:
    placement = runtime.index.standing(point_id) if point_id else None
    if placement is None:
        return {}
    return {
        "score": score_of(placement.percentile),
        "percentile": round(placement.percentile, 4),
        "rank": placement.rank,
        "total_faces": placement.total,
    }


def stored_result(
    runtime: Population, point_id: str, raw: Mapping[str, Any], matches: list[dict[str, Any]]
) -> dict[str, Any]:
    """A scored result rebuilt from a stored point: its payload, its standing as it is
    now in the score index (the payload's score, percentile and rank are those of the day
    it was stored: the fallback when the index does not hold it) and ``matches`` (for a
    user whose cached result is gone, e.g. after the embedded default's restart)."""
    payload = read_payload(raw)
    summary = runtime.index.stats()
    stored = {
        "score": payload["score"],
        "percentile": payload["percentile"],
        "rank": payload["rank"],
        "total_faces": payload["total_faces"],
    }
    standing = _standing(runtime, point_id) or stored
    return {
        "job_id": payload["job_id"],
        "status": "scored",
        "reason": None,
        "message": None,
        "user_id": payload["user_id"],
        "face": payload["face"],
        "quality": payload["quality"],
        "score": standing["score"],
        "percentile": standing["percentile"],
        "point_id": point_id,
        "model": payload["model"],
        "source": payload["source"],
        "confidence": payload["confidence"],
        "vibes": payload["vibes"],
        "matches": matches,
        "distribution": summary["distribution"] if summary else None,
        "scored_at": payload["created_at"],
        "rank": standing["rank"],
        "total_faces": standing["total_faces"],
    }


def get_score(runtime: Population, user_id: str) -> dict[str, Any] | None:
    """The user's latest scored result, with score/rank/total as they stand now; None if
    the user has no stored face."""
    cached = runtime.users.latest_result(user_id)
    if cached is None or cached.get("status") != "scored":
        points = runtime.vectors.user_points(user_id)
        if not points:
            return None
        point_id, _, payload = points[0]
        cached = stored_result(runtime, point_id, payload, [])
    summary = runtime.index.stats()
    distribution = summary["distribution"] if summary else None
    return cached | _standing(runtime, cached.get("point_id")) | {"distribution": distribution}


def _of_tenant(runtime: Population, users: list[str], tenant: str | None) -> set[str]:
    """Those of ``users`` that ``tenant`` owns (all of them for ``tenant=None``)."""
    if tenant is None:
        return set(users)
    owners = runtime.users.tenants(sorted(set(users)))
    return {user for user, owner in owners.items() if owner == tenant}


def for_tenant(runtime: Population, result: Any, tenant: str | None) -> Any:
    """A result as ``tenant`` may see it: its matches limited to that tenant's users (an
    HTTP API key never learns another tenant's user ids). ``tenant=None``: as it is."""
    if tenant is None or not isinstance(result, dict) or not result.get("matches"):
        return result
    matches = result["matches"]
    visible = _of_tenant(runtime, [str(m.get("user_id")) for m in matches], tenant)
    return result | {"matches": [m for m in matches if m.get("user_id") in visible]}


def similar(
    runtime: Population, user_id: str, k: int = 10, tenant: str | None = None
) -> list[dict[str, Any]] | None:
    """The ``k`` other users whose faces are nearest to the user's latest face (nearest
    first, one entry per user); with ``tenant``, only users that tenant owns (an HTTP
    API key sees its own users only). None if the user has no stored face."""
    points = runtime.vectors.user_points(user_id)
    if not points:
        return None
    if k <= 0:
        return []
    _, vector, _ = points[0]
    window = max(4 * k, 20) if tenant is None else max(20 * k, 200)
    hits = runtime.vectors.nearest_others(vector, user_id, limit=window)
    visible = _of_tenant(runtime, [str(h[2].get("user_id")) for h in hits], tenant)
    found: dict[str, dict[str, Any]] = {}
    for pid, distance, payload in hits:
        other = payload.get("user_id")
        if other and other not in found and other in visible:
            found[other] = {
                "user_id": other,
                "point_id": pid,
                "distance": round(distance, 4),
                "same_person": distance < runtime.settings.same_person_distance,
            }
    return list(found.values())[:k]


LEADERBOARD_SCAN = 100_000  # a tenant's board is drawn from this many top faces at most


def leaderboard(
    runtime: Population, limit: int = 10, tenant: str | None = None
) -> list[dict[str, Any]]:
    """The most typical faces, one per user (their best), ties broken by the earlier
    stored time; with ``tenant``, that tenant's users only (their rank stays the one in
    the whole population), found among the top ``LEADERBOARD_SCAN`` faces."""
    if limit <= 0:
        return []
    window = limit
    while True:
        top = runtime.index.top(window)
        payloads = runtime.vectors.payloads([pid for pid, _ in top])
        ordered = sorted(
            ((t, payloads[pid].get("stored_at", 0.0), pid) for pid, t in top if pid in payloads),
            key=lambda entry: (-entry[0], entry[1]),
        )
        board: list[dict[str, Any]] = []
        users: set[str] = set()
        visible = _of_tenant(runtime, [str(p.get("user_id")) for p in payloads.values()], tenant)
        for _, _, pid in ordered:
            user = str(payloads[pid].get("user_id"))
            if user in users or user not in visible:
                continue
            users.add(user)
            board.append({"user_id": user, "point_id": pid} | _standing(runtime, pid))
            board[-1]["scored_at"] = payloads[pid].get("created_at")
        if len(board) >= limit or len(top) < window or window >= LEADERBOARD_SCAN:
            return [entry | {"position": i + 1} for i, entry in enumerate(board[:limit])]
        window *= 2  # some users hold several of the top faces: look further down


def stats(runtime: Population) -> dict[str, Any]:
    """Population statistics per model: count, score distribution, top 1/5/10 % thresholds
    (as of the last re-rank)."""
    summary = runtime.index.stats() or {"distribution": None, "thresholds": {}}
    return {
        "models": {
            runtime.index.model: {
                "count": runtime.index.count(),
                "distribution": summary["distribution"],
                "thresholds": summary["thresholds"],
                "collection": runtime.vectors.collection,
            }
        }
    }
