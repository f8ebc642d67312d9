"""What one server process holds for its clients, bounded: connections, headers, request bodies.

Measured before these bounds (issue 17): 64 concurrent 15 MB bodies peaked at 1.1 GiB, and 1,200
half-open connections (a request line, then nothing) were held indefinitely, since uvicorn arms
its keep-alive timer only after a response.

* **Connections**: uvicorn's ``limit_concurrency`` answers 503 past ``--max-connections``.
* **Headers and bodies**: :class:`HeaderDeadlineProtocol` closes a connection whose request headers
  are not complete within ``--header-timeout`` seconds of the connection (or of the request's first
  byte), or whose body is not complete within ``--body-timeout`` seconds of its headers. (A deadline in
  the protocol costs one timer per request; ``asyncio.timeout`` around the handler's body read cost
  4 us, a tenth of a small model's whole request.)
* **Answers**: :func:`answer_bytes` bounds what one request makes the server build: an output may be
  asked for once (a request naming ``logits`` 4,000 times once got a 789 MB answer), and an answer
  whose size, judged from the output arrays before a byte of it is built, would pass
  ``--max-answer-bytes`` is a 413.
* **HTTP/0.9**: a request line without a version is answered 400 and the connection closed (uvicorn
  served it as a request like any other).
* **Bodies**: :class:`BodyBudget` bounds the request bytes being read and decoded at once; past
  ``--max-inflight-bytes`` a request is answered 503 with ``Retry-After`` before its body is read.
  Decoding JSON numbers into arrays takes several times the body's size, so the budget, not the
  body limit alone, is what bounds memory.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .defaults import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
)

ENV_HEADER_TIMEOUT = "PARITYBUNDLE_HEADER_TIMEOUT_S"
ENV_BODY_TIMEOUT = "PARITYBUNDLE_BODY_TIMEOUT_S"
# The most bytes one element can take in a JSON answer: orjson writes a float's shortest round-trip
# form (at most 24 characters, "-2.2250738585072014e-308"), an int64 at most 20, then a comma.
_JSON_ELEMENT_BYTES = {
    "bool": 6,
    "int8": 5,
    "uint8": 4,
    "int16": 7,
    "uint16": 6,
    "int32": 12,
    "uint32": 11,
    "int64": 21,
    "uint64": 21,
}
_JSON_FLOAT_BYTES = 25


def answer_bytes(arrays: list[Any], dtypes: list[str], as_bytes: list[bool]) -> int:
    """An upper bound on the answer's size for these output arrays (each with its manifest dtype, and
    whether it goes as binary data), judged before any of it is built."""
    total = 0
    for array, dtype, binary in zip(arrays, dtypes, as_bytes, strict=True):
        if dtype == "string":  # a character is at most 4 bytes of UTF-8, or 6 escaped in JSON (\u001f)
            characters = sum(len(str(v)) for v in array.reshape(-1))
            total += characters * 4 + array.size * 4 if binary else characters * 6 + array.size * 3
        elif binary:
            total += array.nbytes
        else:
            total += array.size * _JSON_ELEMENT_BYTES.get(dtype, _JSON_FLOAT_BYTES)
        total += 256  # the output's name, shape and datatype
    return total


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
    """uvicorn's httptools protocol, closing connections whose requests do not arrive in time.

    A deadline runs from the connection and from each request's first byte until its headers are
    complete (``--header-timeout``), then until its body is (``--body-timeout``); between
    requests uvicorn's own keep-alive timeout applies.
    """

    _timeouts: tuple[float, float] | None = None

    @classmethod
    def timeouts(cls) -> tuple[float, float]:
        """``(headers, body)`` seconds, from the environment, so that uvicorn's worker processes (which
        build this class themselves) agree with the process that read the options."""
        if cls._timeouts is None:
            cls._timeouts = (
                float(os.environ.get(ENV_HEADER_TIMEOUT, DEFAULT_HEADER_TIMEOUT_S)),
                float(os.environ.get(ENV_BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT_S)),
            )
        return cls._timeouts

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    _refused = False

    def on_headers_complete(self) -> None:
        self._disarm()
        if self.parser.get_http_version() == "0.9":  # a request line with no version: HTTP/0.9 has no status
            self._refused = True  # line, no headers, no way to say what went wrong
            self.send_400_response("HTTP/0.9 requests are not served; send HTTP/1.1 (or 1.0).")
            return
        self._header_timer = self.loop.call_later(self.timeouts()[1], self._headers_too_slow)  # now for the body
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if not self._refused:
            super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if getattr(self, "_header_timer", None) is None:
            self._header_timer = self.loop.call_later(self.timeouts()[0], self._headers_too_slow)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
