"""What one server process holds for its clients, bounded: connections, headers, request bodies.

Measured before these bounds (issue 17): 64 concurrent 15 MB bodies peaked at 1.1 GiB, and 1,200
half-open connections (a request line, then nothing) were held indefinitely, since uvicorn arms
its keep-alive timer only after a response.

* **Connections**: uvicorn's ``limit_concurrency`` answers 503 past ``--max-connections``.
* **Headers**: :class:`HeaderDeadlineProtocol` closes a connection whose request headers are not
  complete within ``--header-timeout`` seconds of the connection (or of the request's first byte).
* **Bodies**: :class:`BodyBudget` bounds the request bytes being read and decoded at once; past
  ``--max-inflight-bytes`` a request is answered 503 with ``Retry-After`` before its body is read.
  Decoding JSON numbers into arrays takes several times the body's size, so the budget, not the
  body limit alone, is what bounds memory.
"""

from __future__ import annotations

import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

ENV_HEADER_TIMEOUT = "PARITYBUNDLE_HEADER_TIMEOUT_S"
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024


class BodyBudget:
    """Request bytes being read or decoded at once in this process (the event loop's thread only)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) when that would pass the limit."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose request headers do not complete in time.

    The deadline runs from the connection and from each request's first byte until its headers
    are complete; between requests uvicorn's own keep-alive timeout applies.
    """

    _timeout_s: float | None = None

    @classmethod
    def timeout_s(cls) -> float:
        # From the environment, so uvicorn's worker processes (which build this class themselves) agree.
        if cls._timeout_s is None:
            cls._timeout_s = float(os.environ.get(ENV_HEADER_TIMEOUT, DEFAULT_HEADER_TIMEOUT_S))
        return cls._timeout_s

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = None
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if getattr(self, "_header_timer", None) is None:
            self._header_timer = self.loop.call_later(self.timeout_s(), self._headers_too_slow)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
