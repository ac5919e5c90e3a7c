"""Who is asking, and how often: the X-API-Key (compared in constant time against every
key), its tenant, and the per-key rate limits (429 with Retry-After)."""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, Header, Request

from aurum_ml.pipeline.state import JobOwners
from aurum_ml.pipeline.webhooks import HookRecords
from aurum_ml.population.users import UserRecords
from aurum_ml.schemas import check_user_id
from aurum_ml.settings import Settings
from aurum_ml.surfaces.api.models import ApiError

if TYPE_CHECKING:
    from aurum_ml.pipeline.runtime import Runtime


NOT_YOURS = "no such user for this key"


ANONYMOUS = "local"


# --- the parts a request needs --------------------------------------------------------------------
@dataclass(frozen=True)
class Caller:
    """Who is asking: the key's name, its tenant (the name's part before ``/``:
    ``miniapp/web`` and ``miniapp/ios`` share the tenant ``miniapp``) and whether it is an
    operator's key (``AURUM_API_ADMIN_KEYS``: rights over every tenant's users)."""

    key: str
    tenant: str
    admin: bool

    @property
    def scope(self) -> str | None:
        """The tenant whose users this caller sees; None: every user."""
        return None if self.admin else self.tenant


def caller_of(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> Caller:
    """The caller's key (every key is compared: no early exit). Without keys (loopback
    only) the one caller is an operator."""
    settings: Settings = request.app.state.settings
    table = settings.api_key_table
    if not table:
        return Caller(ANONYMOUS, ANONYMOUS, admin=True)
    given = (x_api_key or "").encode()
    found = None
    for name, key in table.items():
        if secrets.compare_digest(given, key.encode()):
            found = name
    if found is None:
        raise ApiError(401, "unauthorized", "a valid X-API-Key header is required")
    return Caller(found, found.partition("/")[0], found in settings.api_admin_key_names)


def rate_limited(bucket: Literal["score", "erase", "read"]) -> Any:
    """A dependency: the caller, once its key is under the bucket's rate limit (429 with
    Retry-After otherwise). Submissions and erasures count against AURUM_API_RATE_LIMIT,
    each in a bucket of its own; reads against AURUM_API_READ_RATE_LIMIT."""

    def limited(request: Request, caller: Annotated[Caller, Depends(caller_of)]) -> Caller:
        limiter, item = request.app.state.limiter, request.app.state.limits[bucket]
        try:
            allowed = limiter.hit(item, bucket, caller.key)
            if not allowed:
                reset = limiter.get_window_stats(item, bucket, caller.key).reset_time
        except Exception as exc:  # noqa: BLE001 - the limiter's storage is Redis
            raise ApiError(
                503, "unavailable", f"rate limiter unavailable: {type(exc).__name__}"
            ) from None
        if not allowed:
            wait = max(1, math.ceil(reset - time.time()))
            raise ApiError(
                429,
                "rate_limited",
                f"over {item} ({bucket}) for this key; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        return caller

    return limited


Submitter = Annotated[Caller, Depends(rate_limited("score"))]


Reader = Annotated[Caller, Depends(rate_limited("read"))]


Eraser = Annotated[Caller, Depends(rate_limited("erase"))]


def checked_user_id(user_id: str) -> str:
    try:
        return check_user_id(user_id)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


@dataclass(frozen=True)
class Wiring:
    """What the routes reach, built once by :func:`~aurum_ml.surfaces.api.app.create_app`
    (``app.state.wiring``)."""

    settings: Settings
    runtime: Runtime
    users: UserRecords
    owners: JobOwners  # a job id → the key that submitted it
    hooks: HookRecords  # the jobs' webhooks
    tasks: ModuleType  # aurum_ml.pipeline.tasks, loaded by create_app


def wiring(request: Request) -> Wiring:
    wired: Wiring = request.app.state.wiring
    return wired


def owned(api: Wiring, caller: Caller, user_id: str) -> str:
    """The user id, if the caller's tenant owns that user (an operator's key: any
    user); 404 otherwise — the same answer as for a user nobody submitted."""
    user_id = checked_user_id(user_id)
    if caller.scope is not None and api.users.tenants([user_id])[user_id] != caller.scope:
        raise ApiError(404, "not_found", NOT_YOURS)
    return user_id
