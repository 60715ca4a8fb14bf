"""Tool specs shared through a JetStream key-value bucket, so every node gates with the same schema.

A node that runs tools puts their specs into the bucket ``agentrt_tools_<cluster>`` (one key per
tool, history 1). Every node follows the bucket and registers what it sees, so a tool that
appears at run time (an MCP server's, later) is known to every sender without a config change,
and a changed schema replaces the old validator everywhere.

Why JetStream over the core protocol instead of nats-py's KV client: the bus is the trio-native
client (``_trionats.py``), and a KV bucket is a stream plus a few JSON API requests; speaking
them directly keeps one connection per node and no thread. What is used: ``STREAM.CREATE``
(idempotent: "already in use" with the same config is fine), a publish to ``$KV.<bucket>.<key>``
answered by a PubAck, and an ephemeral push consumer with ``deliver_policy=last_per_subject``
that first replays the current value of every key, then delivers updates.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import msgspec
import trio

from ._bus import InboundMsg, Subscription, Transport
from ._envelope import new_id
from ._errors import AgentUnavailable, BusError, SchemaError
from ._tools import ToolRegistry, ToolSpec

__all__ = ["ToolBucket"]

log = logging.getLogger("agentrt.registry")

_API_TIMEOUT_S = 5.0
_STREAM_IN_USE = 10058  # JetStream error code: stream name already in use
_warned = False  # the "no JetStream" warning is printed once per process


class ToolBucket:
    """The cluster's tool bucket, seen through one node's bus connection."""

    def __init__(self, bus: Transport, cluster: str, registry: ToolRegistry) -> None:
        self._bus, self._registry = bus, registry
        self.bucket = f"agentrt_tools_{cluster}"
        self.stream = f"KV_{self.bucket}"
        self.prefix = f"$KV.{self.bucket}."
        self.available = True
        self.seen = 0
        self._replayed = trio.Event()
        self._replay_size: int | None = None
        self._subscription: Subscription | None = None

    async def _api(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        with trio.fail_after(_API_TIMEOUT_S):
            reply = await self._bus.request(subject, json.dumps(body).encode())
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    async def ensure(self) -> bool:
        """Create the bucket's stream if needed; False (and a warning) without JetStream.

        Raises:
            BusError: JetStream refused the stream for another reason than "already exists".
        """
        config = {
            "name": self.stream, "subjects": [f"{self.prefix}>"], "retention": "limits",
            "max_msgs_per_subject": 1, "max_bytes": -1, "max_age": 0, "max_msg_size": -1,
            "storage": "file", "discard": "new", "num_replicas": 1, "duplicate_window": 0,
            "allow_rollup_hdrs": True, "deny_delete": True, "allow_direct": True,
        }  # fmt: skip
        try:
            answer = await self._api(f"$JS.API.STREAM.CREATE.{self.stream}", config)
        except (AgentUnavailable, trio.TooSlowError):
            self.available = False
            global _warned
            if _warned:
                return False
            _warned = True
            log.warning(
                "JetStream is not available on this NATS server: tool specs are shared "
                "from agentrt.toml only (enable JetStream to share tools registered at run time)"
            )
            return False
        error = answer.get("error")
        if error and error.get("err_code") != _STREAM_IN_USE:
            raise BusError(f"JetStream refused the tool bucket {self.bucket}: {error}")
        return True

    async def share(
        self,
        specs: list[ToolSpec],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Create the bucket if needed, put ``specs`` and follow it; again after reconnects.

        ``task_status.started()`` comes once the first replay is registered. The consumer is
        ephemeral server-side state: a restarted server forgets it (and, with memory storage,
        the bucket), so every reconnection rebuilds both.
        """
        if await self.ensure():
            for spec in specs:
                await self.put(spec)
            await self.follow()
        task_status.started()
        while self.available:
            await self._bus.wait_reconnected()
            try:
                if await self.ensure():
                    for spec in specs:
                        await self.put(spec)
                    await self.follow()
            except (BusError, AgentUnavailable, trio.TooSlowError) as exc:
                log.warning("could not follow the tool bucket again after reconnecting: %s", exc)

    async def put(self, spec: ToolSpec) -> None:
        """Publish a tool's spec (replacing the previous one).

        Raises:
            BusError: JetStream did not store it.
        """
        if not self.available:
            return
        with trio.fail_after(_API_TIMEOUT_S):
            reply = await self._bus.request(f"{self.prefix}{spec.name}", msgspec.json.encode(spec))
        ack = json.loads(reply.data) if reply.data else {}
        if "error" in ack or "seq" not in ack:
            raise BusError(f"JetStream did not store the spec of {spec.name!r}: {ack}")

    def _on_update(self, m: InboundMsg) -> None:
        # Called by the bus reader for each delivered key; must not raise.
        if not m.subject.startswith(self.prefix) or not m.data:
            return  # heartbeats and flow-control messages carry no data
        name = m.subject[len(self.prefix) :]
        try:
            spec = msgspec.json.decode(m.data, type=ToolSpec)
            self._registry.register_spec(spec)
        except (msgspec.DecodeError, SchemaError) as exc:
            log.error("ignored the spec of tool %r from the bucket %s: %s", name, self.bucket, exc)
        self.seen += 1
        if self._replay_size is not None and self.seen >= self._replay_size:
            self._replayed.set()

    async def follow(self) -> int:
        """Register every spec in the bucket now, and every update from now on.

        Returns the number of specs that were in the bucket; by then they are all registered.
        """
        if not self.available:
            return 0
        if self._subscription is not None:  # following again, after a reconnection
            await self._subscription.unsubscribe()
        self.seen, self._replay_size, self._replayed = 0, None, trio.Event()
        inbox = f"_INBOX.{new_id()}"
        self._subscription = await self._bus.subscribe(inbox, handler=self._on_update)
        consumer = {
            "stream_name": self.stream,
            "config": {
                "deliver_subject": inbox, "deliver_policy": "last_per_subject",
                "ack_policy": "none", "filter_subject": f"{self.prefix}>",
                "mem_storage": True, "inactive_threshold": 60_000_000_000,
                "flow_control": False, "num_replicas": 1,
            },
        }  # fmt: skip
        answer = await self._api(f"$JS.API.CONSUMER.CREATE.{self.stream}", consumer)
        if "error" in answer:
            raise BusError(f"JetStream refused a consumer on {self.bucket}: {answer['error']}")
        # The replay may start before this answer is read: count from the first delivery.
        self._replay_size = pending = int(answer.get("num_pending", 0))
        if self.seen >= pending:
            self._replayed.set()
        with trio.fail_after(_API_TIMEOUT_S):
            await self._replayed.wait()
        return pending
