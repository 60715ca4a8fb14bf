"""Choosing the bus implementation: the trio-native client by default, nats-py when needed.

``AGENTRT_BUS=thread`` forces the nats-py bridge (for comparison, or if the trio client
misbehaves somewhere); ``tls://`` servers always use it, because the trio client has no TLS.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from ._bus import NatsBus, open_thread_bus
from ._errors import BusError
from ._trionats import TrioNatsBus, open_trio_bus

__all__ = ["bus_kind", "open_bus"]


def bus_kind(servers: Sequence[str]) -> str:
    """``"trio"`` or ``"thread"``: which implementation ``open_bus`` uses for these servers."""
    wanted = os.environ.get("AGENTRT_BUS", "trio")
    if wanted not in ("trio", "thread"):
        raise BusError(f"AGENTRT_BUS={wanted!r} is not a bus; use 'trio' (default) or 'thread'")
    if any(not s.startswith("nats://") and "://" in s for s in servers):
        return "thread"
    return wanted


@asynccontextmanager
async def open_bus(
    servers: str | Sequence[str],
    *,
    name: str = "agentrt",
    user: str | None = None,
    password: str | None = None,
    connect_timeout: float = 5.0,
) -> AsyncIterator[TrioNatsBus | NatsBus]:
    """Connect to NATS for as long as the block runs.

    Raises:
        BusError: no server could be reached, or the credentials were refused.
    """
    if isinstance(servers, str):
        servers = [s.strip() for s in servers.split(",") if s.strip()]
    if bus_kind(servers) == "thread":
        async with open_thread_bus(
            servers, name=name, user=user, password=password, connect_timeout=connect_timeout
        ) as thread_bus:
            yield thread_bus
    else:
        async with open_trio_bus(
            servers, name=name, user=user, password=password, connect_timeout=connect_timeout
        ) as trio_bus:
            yield trio_bus
