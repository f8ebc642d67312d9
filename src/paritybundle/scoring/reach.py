"""A cluster address that nothing answers on is a usage error within seconds, not minutes of retries."""

from __future__ import annotations

import socket

from ..errors import UsageError


def require_reachable(address: str, scheme: str, what: str, hint: str, timeout_s: float = 5.0) -> None:
    """Connect to ``host:port`` of ``address`` (``scheme`` stripped) once; other forms are left to the engine.

    Raises:
        UsageError: nothing answers there (``what`` names the engine, ``hint`` the option to check).
    """
    host, _, port = address.removeprefix(scheme).rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UsageError(f"cannot reach {what} at {address} ({exc.strerror or exc}); check {hint}.") from None
