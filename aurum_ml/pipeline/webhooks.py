"""Signed webhooks: tell the app when a job has ended instead of making it poll.

A job submitted with a callback URL (the HTTP API's ``callback_url``, or
``AURUM_WEBHOOK_URL``) gets a record ``aurum:hook:{job_id}`` (the URL and the delivery
state; no user data). When the job ends — scored, rejected or failed — the task that ended
it sends ``aurum_ml.notify(job_id)`` to the ``notify`` queue; that task reads the outcome from
the result backend and POSTs it. The message carries the job id only, so an erased user's
result is never sitting in a queue: it is read at delivery time, and an erased one is gone.

Signature: ``X-Aurum-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``
over the exact bytes of the body. A receiver recomputes it, compares in constant time and
refuses a ``t`` older than a few minutes (replay). Deliveries are at least once: dedupe by
``job_id``.

Retries: timeouts, connection errors, 5xx and 429 are retried with exponential backoff (1 s
doubling to 5 min, jittered) for up to ``WEBHOOK_RETRY_FOR`` seconds; any other 4xx is
final. Redirects are not followed. Only the exact hosts and ports in
``AURUM_WEBHOOK_ALLOWED_HOSTS`` are ever called, and never a loopback, private or
link-local address the operator did not list itself: checked when the job is submitted
and again before each attempt, by the same parser that the POST is sent with, on the
address that was checked (:mod:`aurum_ml.callbacks`). The job's submitter sees only
whether the webhook was delivered and how many attempts were made, never the far side's
answer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import redis

from aurum_ml.callbacks import Callback, parse_callback
from aurum_ml.connection import redis_errors
from aurum_ml.errors import InvalidRequest
from aurum_ml.settings import Settings

__all__ = [
    "Delivery",
    "deliver",
    "HookRecords",
    "check_callback",
    "sign",
    "signature_header",
    "verify",
]

log = logging.getLogger("aurum_ml.pipeline.webhooks")

SIGNATURE_HEADER = "X-Aurum-Signature"
MAX_BACKOFF_S = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={sign(secret, t, body)}"


def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """What a receiver does (the README shows it in JavaScript): parse, recompute, compare
    in constant time, refuse an old timestamp."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        t = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, t, body), fields.get("v1", ""))


def check_callback(url: str, settings: Settings) -> Callback:
    """The callback, parsed, if webhooks are configured and it is allowed
    (:mod:`aurum_ml.callbacks`); InvalidRequest otherwise."""
    if not settings.webhook_secret:
        raise InvalidRequest(
            "webhooks are not configured on this server (AURUM_WEBHOOK_SECRET is unset)",
            "invalid_request",
        )
    return settings.webhook_allow_list.check(parse_callback(url))


@dataclass(frozen=True)
class Delivery:
    """The state of a job's webhook, as ``GET /v1/jobs/{id}`` shows it."""

    url: str
    delivered: bool
    attempts: int
    last_status: int | str | None  # an HTTP status, or "timeout" / "connection_error"
    final: bool  # delivered, refused for good, or out of time
    tenant: str | None = None  # the submitter's tenant: matches are limited to its users
    next_attempt: int = 1  # the attempt a notify message must carry to be the one to POST

    def public(self) -> dict[str, Any]:
        """What the job's submitter sees: delivered or not, and how many POSTs left —
        never the far side's answer (that would make the workers a port scanner)."""
        return {"delivered": self.delivered, "attempts": self.attempts}


class HookRecords:
    """``aurum:hook:{job_id}``: where to deliver a job's outcome, and how that went."""

    def __init__(self, client: redis.Redis, keep_s: int) -> None:
        self.redis: Any = client
        self.keep_s = keep_s

    @staticmethod
    def _key(job_id: str) -> str:
        return f"aurum:hook:{job_id}"

    def register(self, job_id: str, url: str, tenant: str | None = None) -> None:
        record: dict[str, Any] = {"url": url, "attempts": 0, "next": 1, "created": time.time()}
        if tenant is not None:
            record["tenant"] = tenant
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(job_id), mapping=record)
            pipe.expire(self._key(job_id), self.keep_s)
            pipe.execute()

    def drop(self, job_ids: list[str]) -> None:
        if job_ids:
            with redis_errors():
                self.redis.delete(*(self._key(j) for j in job_ids))

    def wanted(self, job_id: str) -> bool:
        with redis_errors():
            return bool(self.redis.exists(self._key(job_id)))

    def wanted_on(self, job_id: str, pipe: Any) -> None:
        """:meth:`wanted` on ``pipe``, executed by the caller (its reply: a count)."""
        pipe.exists(self._key(job_id))

    def get(self, job_id: str) -> Delivery | None:
        with redis_errors():
            raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(self._key(job_id)).items()}
        if not raw:
            return None
        status: int | str | None = raw.get("last_status")
        if isinstance(status, str) and status.isdigit():
            status = int(status)
        return Delivery(
            url=raw["url"],
            delivered=raw.get("delivered") == "1",
            attempts=int(raw.get("attempts", 0)),
            last_status=status,
            final=raw.get("final") == "1",
            tenant=raw.get("tenant"),
            next_attempt=int(raw.get("next", 1)),
        )

    def started(self, job_id: str) -> float:
        """When the first attempt was made (set by the first call)."""
        with redis_errors():
            self.redis.hsetnx(self._key(job_id), "first_attempt", time.time())
            return float(self.redis.hget(self._key(job_id), "first_attempt"))

    def claim(self, job_id: str, attempt: int, lease_s: float) -> bool:
        """May this copy of attempt ``attempt`` POST now? Yes for exactly one copy: the
        attempt the record waits for, while no other copy holds it (a lease, so a copy
        killed mid-POST does not block the redelivered one for ever). A copy of an attempt
        already made — Redis redelivers a retry waiting longer than the visibility
        timeout — or of one under way elsewhere is told no, and drops out. The attempt is
        counted here, before its POST leaves: a copy killed mid-POST is counted too."""
        key = self._key(job_id)

        def take(pipe: Any) -> bool:
            expected, lease, final = pipe.hmget(key, "next", "lease", "final")
            now = time.time()
            if final == b"1" or int(expected or 1) != attempt or float(lease or 0) > now:
                return False
            pipe.multi()  # ("next" set too: a record from before it existed has none)
            pipe.hset(key, mapping={"lease": now + lease_s, "next": attempt})
            pipe.hincrby(key, "attempts", 1)
            return True

        with redis_errors():  # (a concurrent change re-runs take, which then says no)
            return bool(self.redis.transaction(take, key, value_from_callable=True))

    def attempted(self, job_id: str, status: int | str, delivered: bool, final: bool) -> None:
        """A POST left (or was refused for good; :meth:`claim` counted it): the next
        attempt is due."""
        with redis_errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(self._key(job_id), "next", 1)
            pipe.hset(
                self._key(job_id),
                mapping={
                    "last_status": status,
                    "delivered": int(delivered),
                    "final": int(final),
                    "lease": 0,
                },
            )
            pipe.execute()


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (1-based): 1, 2, 4 … capped at 5 min, full jitter
    above half (so a receiver coming back is not hit by every retry at once)."""
    ceiling = min(MAX_BACKOFF_S, 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def body_of(job_id: str, state: str, result: Any, error: dict[str, str] | None) -> bytes:
    """The webhook body: compact JSON, keys sorted (what is signed is what is sent)."""
    payload = {"job_id": job_id, "state": state, "result": result, "error": error}
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def retryable(status: int | str) -> bool:
    return not isinstance(status, int) or status >= 500 or status == 429


def deliver(
    job_id: str,
    record: Delivery,
    hooks: HookRecords,
    settings: Settings,
    body: bytes,
) -> str:
    """One delivery attempt of ``body`` for ``job_id`` (whose webhook ``record`` the caller
    read, not final): "delivered", "retry" or "final" (refused for good, or out of time).
    The URL is checked again (the allow-list may have changed since submission), its host
    resolved once, and the POST sent to the address that was checked."""
    first = hooks.started(job_id)
    status: int | str
    try:
        callback = check_callback(record.url, settings)
        address = settings.webhook_allow_list.resolve(callback)
    except InvalidRequest as exc:
        log.warning("job %s: webhook not sent: %s", job_id, exc.message)
        hooks.attempted(job_id, "not_allowed", delivered=False, final=True)
        return "final"
    except OSError:  # the name does not resolve now
        status = "dns_error"
    else:
        assert settings.webhook_secret is not None  # check_callback requires it
        headers = {
            "Host": callback.host_header,
            "Content-Type": "application/json",
            "User-Agent": "aurum-ml-webhook/1",
            "X-Aurum-Job-Id": job_id,
            SIGNATURE_HEADER: signature_header(settings.webhook_secret, body),
        }
        status = post(callback, address, body, headers, settings.webhook_timeout_s)
    delivered = isinstance(status, int) and 200 <= status < 300
    out_of_time = time.time() - first >= settings.webhook_retry_for_s
    final = delivered or not retryable(status) or out_of_time
    hooks.attempted(job_id, status, delivered=delivered, final=final)
    log.info("job %s: webhook attempt answered %s", job_id, status)  # for operators only
    if delivered:
        return "delivered"
    return "final" if final else "retry"


def post(
    callback: Callback, address: Any, body: bytes, headers: dict[str, str], timeout_s: float
) -> int | str:
    """POST ``body`` to ``callback`` on the connection to ``address`` (no lookup of its
    own, no proxy from the environment, no redirect followed, no retry): the status, or
    "timeout" / "connection_error". For https the certificate is checked against the
    URL's host name."""
    import urllib3

    options: dict[str, Any] = {
        "port": callback.port,
        "timeout": urllib3.Timeout(connect=timeout_s, read=timeout_s),
        "retries": False,
        "maxsize": 1,
    }
    if callback.scheme == "https":
        pool: Any = urllib3.HTTPSConnectionPool(
            str(address), server_hostname=callback.host, assert_hostname=callback.host, **options
        )
    else:
        pool = urllib3.HTTPConnectionPool(str(address), **options)
    try:
        response = pool.urlopen(
            "POST",
            callback.target,
            body=body,
            headers=headers,
            redirect=False,
            retries=False,
            assert_same_host=False,
            preload_content=False,
        )
        status = int(response.status)
        response.release_conn()
        return status
    except urllib3.exceptions.TimeoutError:
        return "timeout"
    except (urllib3.exceptions.HTTPError, OSError):
        return "connection_error"
    finally:
        pool.close()
