"""A NATS core client written on trio: the bus's hot path, with no thread crossings.

Why hand-written, next to nats-py: nats-py is asyncio-only, and the best bridge from trio (an
asyncio loop in a thread, every crossing batched: ``_bus.py``) was measured at ~2x raw nats-py
latency and ~0.3x its throughput (``docs/benchmarks.md``): four thread hand-offs per request
cost ~300 µs on these machines before any work is done. The core protocol (INFO, CONNECT,
PUB/HPUB, SUB/UNSUB, MSG/HMSG, PING/PONG, -ERR) is small and stable, so speaking it directly
from trio removes the hand-offs. JetStream stays with nats-py (not on the hot path).

What this client does: connect with user/password, headers and no-responders; publish
(buffered and written in batches: everything published while a write is in progress goes out
in the next single write), subscribe with queue groups into bounded channels, request/reply on
one wildcard inbox, flush (PING/PONG); reconnect to the configured and discovered servers
forever once connected, re-subscribing everything. Not done: TLS, NKEYS/JWT credentials,
WebSocket; ``open_bus`` falls back to the nats-py bridge for those (``tls://`` URLs).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import trio

from ._bus import InboundMsg, MessageHandler, OverflowHandler, ReplyWaiters, Subscription
from ._errors import BusError, PayloadTooLarge, PermissionViolation

__all__ = ["TrioNatsBus", "open_trio_bus"]

log = logging.getLogger("agentrt.bus")

_CRLF = b"\r\n"
_MAX_PENDING = 64 * 1024 * 1024  # bytes buffered while disconnected before publishes fail
_RECONNECT_WAIT_S = 0.5
_FIRST_CONNECT_ATTEMPTS = 3
_PING_INTERVAL_S = 30.0


class _Disconnected(Exception):
    pass


_VIOLATION_RE = re.compile(r'Permissions Violation for (Publish|Subscription) to "([^"]+)"')
_CONNECTION_LOST = (_Disconnected, trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_WARN_AFTER_S = 5.0


def _parse_headers(raw: bytes) -> dict[str, str]:
    lines = raw.split(_CRLF)
    headers: dict[str, str] = {}
    status = lines[0][len(b"NATS/1.0") :].strip()
    if status:
        code, _, desc = status.partition(b" ")
        headers["Status"] = code.decode()
        if desc:
            headers["Description"] = desc.decode()
    for line in lines[1:]:
        if not line:
            continue
        key, _, value = line.partition(b":")
        headers[key.decode().strip()] = value.decode().strip()
    return headers


def _encode_headers(headers: dict[str, str]) -> bytes:
    out = [b"NATS/1.0"]
    for k, v in headers.items():
        if not k or any(c in k for c in ": \r\n") or "\r" in v or "\n" in v:
            raise BusError(f"invalid NATS header {k!r}: {v!r}")
        out.append(f"{k}: {v}".encode())
    return _CRLF.join(out) + _CRLF + _CRLF


class TrioNatsBus:
    """A NATS connection owned by a trio program. Create it with ``open_trio_bus()``."""

    def __init__(
        self, servers: Sequence[str], *, name: str, user: str | None, password: str | None,
        connect_timeout: float,
    ) -> None:  # fmt: skip
        self._servers = list(servers)
        self._discovered: list[str] = []
        self._name, self._user, self._password = name, user, password
        self._connect_timeout = connect_timeout
        self.max_payload = 1024 * 1024
        self._stream: trio.SocketStream | None = None
        self._out = bytearray()
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._pongs: deque[trio.Event] = deque()
        self._subs: dict[int, Subscription] = {}
        self._sub_lines: dict[int, bytes] = {}
        self._sids = itertools.count(1)
        self._inbox_prefix = f"_INBOX.{os.urandom(8).hex()}."
        self._inbox_sid = 0
        self._replies = ReplyWaiters()
        self._connected = trio.Event()
        self._reconnected = trio.Event()
        self._connections = 0
        self._closed = False
        self._broken: BusError | None = None

    # ------------------------------------------------------------------ the Transport API

    def _write(self, data: bytes) -> None:
        self._out += data
        self._writer_lot.unpark()

    def publish_nowait(
        self, subject: str, data: bytes, *, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        """Queue a publish; it goes out with the next write. Never blocks.

        Raises:
            PayloadTooLarge: ``data`` exceeds the server's ``max_payload``.
            BusError: the connection is closed, or too much is buffered while disconnected.
        """
        if self._broken is not None:
            raise self._broken
        if len(data) > self.max_payload:
            raise PayloadTooLarge(subject, len(data), self.max_payload)
        if len(self._out) > _MAX_PENDING:
            raise BusError(
                f"{len(self._out)} bytes are waiting for the NATS connection to come back; "
                "refusing more until it does"
            )
        reply_part = f" {reply}" if reply else ""
        if headers:
            hdr = _encode_headers(headers)
            head = f"HPUB {subject}{reply_part} {len(hdr)} {len(hdr) + len(data)}\r\n".encode()
            self._write(head + hdr + data + _CRLF)
        else:
            self._write(f"PUB {subject}{reply_part} {len(data)}\r\n".encode() + data + _CRLF)

    async def publish(
        self, subject: str, data: bytes, *, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        self.publish_nowait(subject, data, reply=reply, headers=headers)
        await trio.lowlevel.checkpoint()

    async def request(
        self, subject: str, data: bytes, *, headers: dict[str, str] | None = None,
        deadline: float = math.inf,
    ) -> InboundMsg:  # fmt: skip
        """Publish and wait for one reply, until ``deadline`` (trio time) or the caller's scope.

        Raises:
            AgentUnavailable: the server reports no subscriber on ``subject``.
            PayloadTooLarge: ``data`` exceeds the server's ``max_payload``.
            BusError: the connection was closed while waiting.
            trio.TooSlowError: ``deadline`` passed.
        """
        req_id = self._replies.new_id()
        self.publish_nowait(subject, data, reply=f"{self._inbox_prefix}{req_id}", headers=headers)
        return await self._replies.wait(req_id, subject, deadline)

    async def subscribe(
        self, subject: str, *, queue: str = "", capacity: int = 1024,
        on_overflow: OverflowHandler | None = None, handler: MessageHandler | None = None,
    ) -> Subscription:  # fmt: skip
        """Subscribe; returns once the server has registered the interest (a PING round trip).

        See ``NatsBus.subscribe`` for the arguments.
        """
        if self._broken is not None:
            raise self._broken
        sid = next(self._sids)
        sub = Subscription(self, sid, subject, queue, capacity, on_overflow, handler)
        self._subs[sid] = sub
        line = f"SUB {subject} {queue} {sid}\r\n" if queue else f"SUB {subject} {sid}\r\n"
        self._sub_lines[sid] = line.encode()
        self._write(self._sub_lines[sid])
        await self.flush()
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        if self._subs.pop(sub._sid, None) is None:
            return
        self._sub_lines.pop(sub._sid, None)
        sub._send.close()
        if self._broken is None and not self._closed:
            self._write(f"UNSUB {sub._sid}\r\n".encode())
            await self.flush()

    async def wait_reconnected(self) -> None:
        """Return after the next reconnection (subscriptions are already restored by then).

        Server-side state that is not a subscription (a JetStream consumer, say) may be gone:
        this is the hook to rebuild it.
        """
        await self._reconnected.wait()

    async def flush(self) -> None:
        """Wait until the server has processed everything written so far (PING/PONG)."""
        if self._broken is not None:
            raise self._broken
        await self._connected.wait()
        pong = trio.Event()
        self._pongs.append(pong)
        self._write(b"PING\r\n")
        await pong.wait()
        if self._broken is not None:
            raise self._broken

    # ------------------------------------------------------------------ connection

    def _server_list(self) -> list[str]:
        seen: list[str] = []
        for url in [*self._servers, *self._discovered]:
            if url not in seen:
                seen.append(url)
        return seen

    async def _handshake(self, url: str) -> tuple[trio.SocketStream, bytearray]:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        if parts.scheme not in ("nats", ""):
            raise BusError(f"{url}: only nats:// URLs are supported by the trio client")
        host, port = parts.hostname or "127.0.0.1", parts.port or 4222
        user = self._user or (parts.username or None)
        password = self._password if self._user else (parts.password or None)
        with trio.fail_after(self._connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
            try:
                buf = bytearray()
                line = await self._read_line(stream, buf)
                if not line.startswith(b"INFO "):
                    raise BusError(f"{url} did not greet with INFO: {line[:80]!r}")
                info = json.loads(line[5:])
                self.max_payload = int(info.get("max_payload", self.max_payload))
                self._update_discovered(info)
                connect: dict[str, Any] = {
                    "verbose": False, "pedantic": False, "lang": "python-trio",
                    "version": "agentrt", "protocol": 1, "name": self._name,
                    "headers": True, "no_responders": True, "echo": True,
                }  # fmt: skip
                if user is not None:
                    connect["user"], connect["pass"] = user, password or ""
                stream_data = f"CONNECT {json.dumps(connect)}\r\nPING\r\n".encode()
                await stream.send_all(stream_data)
                while True:
                    line = await self._read_line(stream, buf)
                    if line == b"PONG":
                        return stream, buf
                    if line.startswith(b"-ERR"):
                        raise BusError(f"nats: {line[5:].decode(errors='replace').strip()}")
                    if line.startswith(b"INFO "):
                        self._update_discovered(json.loads(line[5:]))
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise

    async def _read_line(self, stream: trio.SocketStream, buf: bytearray) -> bytes:
        while True:
            i = buf.find(_CRLF)
            if i >= 0:
                line = bytes(buf[:i])
                del buf[: i + 2]
                return line
            data = await stream.receive_some(65536)
            if not data:
                raise BusError("the server closed the connection during the handshake")
            buf += data

    def _update_discovered(self, info: dict[str, Any]) -> None:
        for url in info.get("connect_urls", []) or []:
            full = f"nats://{url}"
            if full not in self._discovered:
                self._discovered.append(full)

    async def _connect_first(self) -> tuple[trio.SocketStream, bytearray]:
        errors: list[str] = []
        for attempt in range(_FIRST_CONNECT_ATTEMPTS):
            for url in self._server_list():
                try:
                    return await self._handshake(url)
                except (OSError, BusError, trio.TooSlowError, ValueError) as exc:
                    errors.append(str(exc) or type(exc).__name__)
                    if "Authorization" in str(exc):
                        raise BusError(
                            f"cannot connect to NATS at {', '.join(self._servers)} ({exc}); "
                            "the server refused the credentials: check the NATS user and password"
                        ) from exc
            if attempt + 1 < _FIRST_CONNECT_ATTEMPTS:
                await trio.sleep(_RECONNECT_WAIT_S)
        raise BusError(
            f"cannot connect to NATS at {', '.join(self._servers)} ({errors[-1]}); "
            "is the server running and are the credentials right?"
        )

    async def run(
        self, stream: trio.SocketStream, buf: bytearray,
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:  # fmt: skip
        """Serve a connected stream, then reconnect whenever it drops, until cancelled."""
        self._inbox_sid = next(self._sids)
        self._sub_lines[self._inbox_sid] = (
            f"SUB {self._inbox_prefix}* {self._inbox_sid}\r\n".encode()
        )
        task_status.started()
        while True:
            await self._serve_connection(stream, buf)
            if self._closed:
                return
            stream, buf = await self._reconnect()

    async def _reconnect(self) -> tuple[trio.SocketStream, bytearray]:
        since = trio.current_time()
        warned = False
        while True:
            if not warned and trio.current_time() - since > _WARN_AFTER_S:
                warned = True
                log.warning(
                    "NATS: still disconnected from %s after %.0fs; retrying every %.1fs",
                    ", ".join(self._server_list()), _WARN_AFTER_S, _RECONNECT_WAIT_S,
                )  # fmt: skip
            for url in self._server_list():
                try:
                    stream, buf = await self._handshake(url)
                    log.info("NATS: reconnected to %s", url)
                    return stream, buf
                except (OSError, BusError, trio.TooSlowError, ValueError) as exc:
                    log.info("NATS: reconnect to %s failed: %s", url, exc)
            await trio.sleep(_RECONNECT_WAIT_S)

    async def _serve_connection(self, stream: trio.SocketStream, buf: bytearray) -> None:
        self._stream = stream
        self._connections += 1
        if self._connections > 1:
            event, self._reconnected = self._reconnected, trio.Event()
            event.set()
        # Subscriptions first, then everything published while we were away.
        resub = b"".join(self._sub_lines.values())
        self._out[:0] = resub
        self._connected.set()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, stream, nursery.cancel_scope)
                nursery.start_soon(self._pinger)
                await self._reader(stream, buf)
                nursery.cancel_scope.cancel()
        except* _CONNECTION_LOST as group:
            if not self._closed:
                # A blip is routine (server restart, lame duck); _reconnect warns if it lasts.
                exc = group.exceptions[0]
                log.info("NATS: connection lost (%s); reconnecting", exc or type(exc).__name__)
        finally:
            self._connected = trio.Event()
            self._stream = None
            # PINGs sent on this connection will never be answered; the next flush re-PINGs.
            pongs, self._pongs = self._pongs, deque()
            for pong in pongs:
                pong.set()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _writer(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        try:
            while True:
                if not self._out:
                    await self._writer_lot.park()
                    # Let every task woken in the same batch publish first: one write (one
                    # syscall, and one wake-up of the server) then carries all of them.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    continue
                data, self._out = self._out, bytearray()
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            scope.cancel()

    async def _pinger(self) -> None:
        while True:
            await trio.sleep(_PING_INTERVAL_S)
            self._write(b"PING\r\n")

    async def _reader(self, stream: trio.SocketStream, buf: bytearray) -> None:
        subs, replies, inbox_sid = self._subs, self._replies, self._inbox_sid
        prefix_len = len(self._inbox_prefix)
        while True:
            # Parse every complete op in the buffer, then read more.
            pos = 0
            n = len(buf)
            while True:
                i = buf.find(_CRLF, pos)
                if i < 0:
                    break
                op = buf[pos : pos + 4]
                if op == b"MSG " or op == b"HMSG":
                    args = bytes(buf[pos:i]).split(b" ")
                    hmsg = op == b"HMSG"
                    size = int(args[-1])
                    end = i + 2 + size
                    if end + 2 > n:
                        break  # payload not complete yet
                    payload = bytes(buf[i + 2 : end])
                    sid = int(args[2])
                    reply = args[3].decode() if len(args) == (6 if hmsg else 5) else ""
                    subject = args[1].decode()
                    headers = None
                    if hmsg:
                        hlen = int(args[-2])
                        headers = _parse_headers(payload[:hlen])
                        payload = payload[hlen:]
                    pos = end + 2
                    if sid == inbox_sid:
                        replies.deliver(
                            int(subject[prefix_len:]), InboundMsg(subject, reply, payload, headers)
                        )
                    else:
                        sub = subs.get(sid)
                        if sub is not None:
                            sub._deliver(InboundMsg(subject, reply, payload, headers))
                    continue
                line = bytes(buf[pos:i])
                pos = i + 2
                if line == b"PING":
                    self._write(b"PONG\r\n")
                elif line == b"PONG":
                    if self._pongs:
                        self._pongs.popleft().set()
                elif line.startswith(b"-ERR"):
                    self._on_error(line[5:].decode(errors="replace").strip().strip("'"))
                elif line.startswith(b"INFO "):
                    info = json.loads(line[5:])
                    self._update_discovered(info)
                    if info.get("ldm"):
                        log.warning("NATS: server entering lame-duck mode; will reconnect")
            if pos:
                del buf[:pos]
            data = await stream.receive_some(262144)
            if not data:
                raise _Disconnected("server closed the connection")
            buf += data

    def _on_error(self, message: str) -> None:
        if "Permissions Violation" in message:
            # The server refused one publish or subscribe; the connection stays up. A refused
            # request would otherwise wait for its deadline: fail it now, with the reason.
            log.error("NATS: %s", message)
            m = _VIOLATION_RE.search(message)
            if m is not None and m.group(1) == "Publish":
                self._replies.fail_subject(
                    m.group(2), PermissionViolation("publish to", m.group(2))
                )
            return
        log.warning("NATS: server error: %s", message)

    async def aclose(self) -> None:
        self._closed = True
        if self._stream is not None and self._broken is None:
            with trio.move_on_after(2):
                await self.flush()
        self._broken = BusError("the NATS connection is closed")
        self._replies.fail_all(self._broken)
        for sub in self._subs.values():
            sub._send.close()
        self._subs.clear()
        for pong in self._pongs:
            pong.set()


@asynccontextmanager
async def open_trio_bus(
    servers: Sequence[str], *, name: str, user: str | None, password: str | None,
    connect_timeout: float,
) -> AsyncIterator[TrioNatsBus]:  # fmt: skip
    """Connect; the connection and its tasks live exactly as long as the block.

    Raises:
        BusError: no server could be reached (or the credentials were refused).
    """
    bus = TrioNatsBus(
        servers, name=name, user=user, password=password, connect_timeout=connect_timeout
    )
    # The first connect happens outside the nursery, so its BusError reaches the caller as
    # itself rather than wrapped in an exception group.
    stream, buf = await bus._connect_first()
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run, stream, buf)
        nursery.start_soon(bus._replies.expire_forever)
        try:
            yield bus
        finally:
            with trio.CancelScope(shield=True):
                await bus.aclose()
            nursery.cancel_scope.cancel()
