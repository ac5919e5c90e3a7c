"""Every HTTP server we ship (the API, the detection and embedding services) runs uvicorn
through :func:`run`, with limits on time and connections that uvicorn does not set alone:

- **header timeout** (``HTTP_HEADER_TIMEOUT``, 10 s): a connection that has not sent a
  whole request head this long after it opened (or after its last response) is closed.
  uvicorn keeps a silent connection open for ever; 3 000 idle sockets stayed open.
- **body timeout** (``HTTP_BODY_TIMEOUT``, 60 s): the body must arrive within this long of
  the request head, or the answer is ``408 request_timeout``
  (:class:`aurum_ml.surfaces.webapp.BodyLimit` in
  ``aurum_ml.surfaces.services.app`` enforces it with the size cap).
- **keep-alive** (``HTTP_KEEPALIVE_TIMEOUT``, 5 s): an idle connection between requests.
- **connection cap** (``HTTP_MAX_CONNECTIONS``, 200 a process): past it, new requests get
  503 at once (uvicorn's ``limit_concurrency``), and a connection that sends nothing is
  closed by the header timeout.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from aurum_ml.settings import Settings, get_settings

__all__ = ["TimedH11Protocol", "run"]


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._watch_head()  # (still, or again) waiting for a whole request head
        else:
            self._stop_watching()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watching()
        super().connection_lost(exc)

    def _watch_head(self) -> None:
        if self._head_timer is None:
            seconds = get_settings().http_header_timeout_s
            self._head_timer = self.loop.call_later(seconds, self._head_too_slow)

    def _stop_watching(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def run(app: str, host: str, port: int, workers: int, log_level: str, access_log: bool) -> None:
    """uvicorn.run of the app factory ``app`` with the limits above."""
    import uvicorn

    settings: Settings = get_settings()
    uvicorn.run(
        app,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
        http=TimedH11Protocol,
        timeout_keep_alive=settings.http_keepalive_timeout_s,
        limit_concurrency=settings.http_max_connections,
        h11_max_incomplete_event_size=16 * 1024,  # a request head over 16 KB: 431/400
    )
