"""The health probe and the shared fallback flag.

``probe_health`` (beat-scheduled every ``HEALTH_PROBE_INTERVAL`` on the maintenance queue)
GETs each configured service's ``/health`` with a short timeout and keeps the last
``HEALTH_WINDOW`` outcomes per service in Redis. The flag turns

- **on** when a service failed ``HEALTH_FAILURE_PROBES`` times in a row (a dead service), or
  its availability over a full window fell below ``SIMULATED_ML_THRESHOLD`` (a flaky one);
- **off** only after ``HEALTH_RECOVERY_PROBES`` consecutive successes of every service; the
  windows then start afresh, so the old failures cannot switch it straight back on.
  The hold adapts to a flapping service: each time the flag turned on within the last
  ``FALLBACK_FLAP_WINDOW`` seconds (15 min) doubles the successes it needs — 3, 6, 12, …
  — up to ``FALLBACK_MAX_HOLD`` seconds of probes (10 min). A service that dies every
  few seconds then keeps the pipeline on the fallback, rather than every few seconds
  sending jobs into a service about to die (each such job waits out its retries and ends
  on the fallback anyway) and switching back (each switch off queues a re-score). A
  service that stays up for the flap window is back to the plain hold.

The flag lives in Redis (``aurum:fallback``) with a TTL of three probe intervals, refreshed by
every probe: if beat dies the flag expires, and stages go back to trying the services first
(``active: null``). A probe that finds another one ran less than a quarter of an interval ago
does nothing, so two beats firing the same schedule cannot double-count; a quarter, not more,
so that a probe the worker's queue delayed does not make the next, punctual one skip (which
turned the flag on an interval late: docs/reliability.md). Every transition is logged once
and counted.

Keys: ``aurum:fallback``, ``aurum:health:{service}:outcomes`` (list, newest first),
``aurum:health:{service}:last`` (hash), ``aurum:health:lock``,
``aurum:metrics:fallback_transitions`` (hash: on, off), ``aurum:fallback:ons`` (when the
flag turned on, within the flap window).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aurum_ml.connection import redis_errors
from aurum_ml.errors import AurumError
from aurum_ml.pipeline.backends.http import ServiceClient
from aurum_ml.settings import Settings

__all__ = ["FallbackState", "fallback_state", "probe", "services_of"]

log = logging.getLogger("aurum_ml.pipeline.health")

FLAG_KEY = "aurum:fallback"
LOCK_KEY = "aurum:health:lock"
TRANSITIONS_KEY = "aurum:metrics:fallback_transitions"
ONS_KEY = "aurum:fallback:ons"  # sorted set: when the flag turned on (the flap window)


def recovery_probes(settings: Settings, recent_ons: int) -> int:
    """Consecutive successes the flag needs to turn off, after ``recent_ons`` times on
    within the flap window (the current one included): doubled for each one before it,
    capped at FALLBACK_MAX_HOLD seconds of probes (never below HEALTH_RECOVERY_PROBES)."""
    base = settings.health_recovery_probes
    cap = max(base, math.ceil(settings.fallback_max_hold_s / settings.health_probe_interval_s))
    return int(min(cap, base * 2 ** max(0, recent_ons - 1)))


def services_of(settings: Settings) -> dict[str, str]:
    """The services the pipeline would call: name → base URL."""
    if not settings.use_real_ml:
        return {}
    found = {
        "detection": settings.face_detection_service,
        "embedding": settings.face_embedding_service,
    }
    return {name: url for name, url in found.items() if url}


@dataclass(frozen=True)
class FallbackState:
    """``active`` is None when no fresh flag exists (no probe within 3 intervals)."""

    active: bool | None
    age_s: float | None
    last_probe: float | None
    reason: str | None = None
    hold_probes: int | None = None  # good probes in a row it needs to turn off (adaptive)

    def as_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "age_s": None if self.age_s is None else round(self.age_s, 1),
            "last_probe": self.last_probe,
            "reason": self.reason,
            "hold_probes": self.hold_probes,
        }


def fallback_state(client: Any) -> FallbackState:
    with redis_errors():
        raw = client.get(FLAG_KEY)
    if raw is None:
        return FallbackState(None, None, None)
    flag = json.loads(raw)
    return FallbackState(
        active=bool(flag["active"]),
        age_s=time.time() - flag["since"],
        last_probe=flag["probed_at"],
        reason=flag.get("reason"),
        hold_probes=flag.get("hold_probes"),
    )


def _leading(outcomes: list[bytes], value: bytes) -> int:
    count = 0
    for outcome in outcomes:
        if outcome != value:
            break
        count += 1
    return count


def probe(
    client: Any,
    settings: Settings,
    on_recovery: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """One probe round; returns what it saw and decided. ``on_recovery`` runs once when the
    flag turns off (the task passes "enqueue rescore_degraded")."""
    interval = settings.health_probe_interval_s
    with redis_errors():
        if not client.set(LOCK_KEY, "1", nx=True, px=max(1, int(interval * 250))):
            return {"skipped": "another probe ran less than a quarter of an interval ago"}
    seen: dict[str, dict[str, Any]] = {}
    for name, url in services_of(settings).items():
        started = time.perf_counter()
        try:
            ServiceClient(url, settings.health_timeout_s, settings.ml_service_token).health()
            ok, error = True, None
        except AurumError as exc:
            ok, error = False, str(exc)
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        key = f"aurum:health:{name}:outcomes"
        with redis_errors(), client.pipeline(transaction=True) as pipe:
            pipe.lpush(key, "1" if ok else "0")
            pipe.ltrim(key, 0, max(settings.health_window, recovery_probes(settings, 99)) - 1)
            pipe.lrange(key, 0, -1)
            pipe.hset(
                f"aurum:health:{name}:last",
                mapping={"ok": int(ok), "latency_ms": latency_ms, "at": time.time(),
                         "error": error or "", "url": url},
            )  # fmt: skip
            kept = pipe.execute()[2]
        outcomes = kept[: settings.health_window]  # the window; older ones count runs only
        full = len(outcomes) >= settings.health_window
        seen[name] = {
            "ok": ok,
            "latency_ms": latency_ms,
            "error": error,
            "availability": round(outcomes.count(b"1") / len(outcomes), 3),
            "window_full": full,
            "consecutive_failures": _leading(outcomes, b"0"),
            "consecutive_successes": _leading(kept, b"1"),
        }
    return seen | {"fallback": _decide(client, settings, seen, on_recovery)}


def _decide(
    client: Any,
    settings: Settings,
    seen: dict[str, dict[str, Any]],
    on_recovery: Callable[[], None],
) -> dict[str, Any]:
    now = time.time()
    with redis_errors():
        raw = client.get(FLAG_KEY)
    previous = json.loads(raw) if raw else None
    was_active = bool(previous and previous["active"])
    failing = [
        f"{name}: {s['consecutive_failures']} failed probes in a row"
        if s["consecutive_failures"] >= settings.health_failure_probes
        else f"{name}: availability {s['availability']:.0%}"
        for name, s in seen.items()
        if s["consecutive_failures"] >= settings.health_failure_probes
        or (s["window_full"] and s["availability"] < settings.simulated_ml_threshold)
    ]
    with redis_errors():
        client.zremrangebyscore(ONS_KEY, "-inf", now - settings.fallback_flap_window_s)
        recent_ons = int(client.zcard(ONS_KEY))
    hold = recovery_probes(settings, recent_ons)
    recovered = all(s["consecutive_successes"] >= hold for s in seen.values())
    active = not recovered if was_active else bool(failing)
    changed = previous is None or active != was_active
    since = previous["since"] if previous and not changed else now
    if active and was_active:
        reason = previous["reason"] if previous else None  # why it turned on, kept
    else:
        reason = "; ".join(failing) if active else None
    if active and not was_active:  # turning on: one more within the flap window
        with redis_errors(), client.pipeline(transaction=True) as pipe:
            pipe.zadd(ONS_KEY, {repr(now): now})
            pipe.expire(ONS_KEY, max(1, math.ceil(settings.fallback_flap_window_s)))
            pipe.zcard(ONS_KEY)
            hold = recovery_probes(settings, int(pipe.execute()[2]))
    flag = {"active": active, "since": since, "probed_at": now, "reason": reason,
            "hold_probes": hold if active else None}  # fmt: skip
    ttl = max(1, round(3 * settings.health_probe_interval_s))
    with redis_errors():
        client.set(FLAG_KEY, json.dumps(flag), ex=ttl)
        if previous is not None and active != was_active:
            client.hincrby(TRANSITIONS_KEY, "on" if active else "off", 1)
            if not active:  # recovered: start the windows afresh
                for name, s in seen.items():
                    key = f"aurum:health:{name}:outcomes"
                    client.ltrim(key, 0, s["consecutive_successes"] - 1)
    if previous is not None and active != was_active:
        if active:
            log.warning("fallback ON: %s (off after %d good probes in a row)", reason, hold)
        else:
            log.warning("fallback OFF: the services recovered")
            on_recovery()
    elif previous is None and active:
        log.warning("fallback ON: %s (off after %d good probes in a row)", reason, hold)
    return {"active": active, "changed": changed and previous is not None, "reason": reason,
            "hold_probes": flag["hold_probes"]}  # fmt: skip


def transitions(client: Any) -> dict[str, int]:
    with redis_errors():
        raw = client.hgetall(TRANSITIONS_KEY)
    return {k.decode(): int(v) for k, v in raw.items()}


def last_probes(client: Any, settings: Settings) -> dict[str, dict[str, Any]]:
    """What the last probe saw of each service, with availability over the window."""
    out: dict[str, dict[str, Any]] = {}
    for name, url in services_of(settings).items():
        with redis_errors():
            last = {
                k.decode(): v.decode()
                for k, v in client.hgetall(f"aurum:health:{name}:last").items()
            }
            outcomes = client.lrange(f"aurum:health:{name}:outcomes", 0, -1)
        out[name] = {
            "url": url,
            "ok": bool(int(last["ok"])) if last else None,
            "latency_ms": float(last["latency_ms"]) if last else None,
            "at": float(last["at"]) if last else None,
            "error": (last.get("error") or None) if last else None,
            "availability": round(outcomes.count(b"1") / len(outcomes), 3) if outcomes else None,
        }
    return out
