"""Tool specs shared through a JetStream key-value bucket, so every node gates with the same schema.

A node that runs tools puts their specs into the bucket ``agentrt_tools_<cluster>`` (one key per
tool, history 1). Every node follows the bucket and registers what it sees, so a tool that
appears at run time (an MCP server's, later) is known to every sender without a config change,
and a changed schema replaces the old validator everywhere.

The bucket is a ``KvBucket`` (``_kv.py``: JetStream over the core protocol on the node's own
trio connection); this module adds what is particular to tool specs: put every hosted spec,
replay and register every key before the node reports ready, and do both again after each
reconnection.

A tool that is no longer served anywhere leaves the cluster: the node that stops hosting it
puts a delete marker on its key (``remove``), and every follower unregisters it, so senders
get the gate's unknown-tool error instead of a call into a subject nobody answers. Several
nodes may host the same tool (replicas): a node that sees the marker on a tool it still hosts
puts its spec back at once. The other followers forget the tool for that one round trip;
that is the price of keying the bucket by tool name rather than by (tool, node).
"""

from __future__ import annotations

import logging

import msgspec
import trio

from ._bus import InboundMsg, Subscription, Transport
from ._errors import AgentUnavailable, BusError, SchemaError
from ._kv import API_TIMEOUT_S, KvBucket
from ._tools import ToolRegistry, ToolSpec

__all__ = ["ToolBucket"]

log = logging.getLogger("agentrt.registry")

_warned = False  # the "no JetStream" warning is printed once per process


class ToolBucket:
    """The cluster's tool bucket, seen through one node's bus connection."""

    def __init__(self, bus: Transport, cluster: str, registry: ToolRegistry) -> None:
        self._bus, self._registry = bus, registry
        self._kv = KvBucket(bus, f"agentrt_tools_{cluster}")
        self.bucket = self._kv.bucket
        self.seen = 0
        self._replayed = trio.Event()
        self._replay_size: int | None = None
        self._subscription: Subscription | None = None
        self._hosted: dict[str, ToolSpec] = {}  # what this node publishes, to put back
        self._reassert: set[str] = set()  # hosted here, and another node put a marker on it
        self._reassert_wanted = trio.Event()

    @property
    def available(self) -> bool:
        return self._kv.available

    async def ensure(self) -> bool:
        """Create the bucket's stream if needed; False (and a warning) without JetStream.

        Raises:
            BusError: JetStream refused the stream for another reason than "already exists".
        """
        if await self._kv.ensure():
            return True
        global _warned
        if not _warned:
            _warned = True
            log.warning(
                "JetStream is not available on this NATS server: tool specs are shared "
                "from agentrt.toml only (enable JetStream to share tools registered at run time)"
            )
        return False

    async def share(
        self,
        specs: list[ToolSpec],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Create the bucket if needed, put ``specs`` and follow it; again after reconnects
        (also if JetStream was missing before: the server may have been replaced by one with it).

        ``task_status.started()`` comes once the first replay is registered. The consumer is
        ephemeral server-side state: a restarted server forgets it (and, with memory storage,
        the bucket), so every reconnection rebuilds both and puts the specs this node hosts
        *now* (``put``/``remove`` keep that list), never a tool it has stopped hosting.
        """
        for spec in specs:
            self._hosted[spec.name] = spec
        if await self.ensure():
            for spec in specs:
                await self.put(spec)
            await self.follow()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._put_back)
            while True:  # also when JetStream was missing: the next server may have it
                await self._bus.wait_reconnected()
                try:
                    if await self.ensure():
                        for spec in list(self._hosted.values()):
                            await self.put(spec)
                        await self.follow()
                except (BusError, AgentUnavailable, trio.TooSlowError) as exc:
                    log.warning(
                        "could not follow the tool bucket again after reconnecting: %s", exc
                    )

    async def _put_back(self) -> None:
        """Put back the specs of tools still hosted here that another node marked deleted."""
        while True:
            await self._reassert_wanted.wait()
            self._reassert_wanted = trio.Event()
            while self._reassert:
                spec = self._hosted.get(self._reassert.pop())
                if spec is None:
                    continue  # stopped hosting it meanwhile: the marker stands
                try:
                    await self.put(spec)
                except (BusError, AgentUnavailable, trio.TooSlowError) as exc:
                    log.warning("could not put back the spec of %s: %s", spec.name, exc)

    async def put(self, spec: ToolSpec) -> None:
        """Publish a tool's spec (replacing the previous one); this node hosts it.

        Raises:
            BusError: JetStream did not store it.
        """
        self._hosted[spec.name] = spec
        if self.available:
            await self._kv.put(spec.name, msgspec.json.encode(spec))

    async def remove(self, name: str) -> None:
        """This node no longer hosts ``name``: mark its key deleted, so every follower
        unregisters it (a node still hosting it puts it back).

        Raises:
            BusError: JetStream did not store the marker.
        """
        self._hosted.pop(name, None)
        if self.available:
            await self._kv.delete(name)

    def _on_update(self, m: InboundMsg) -> None:
        # Called by the bus reader for each delivered key; must not raise.
        name = self._kv.key_of(m.subject)
        if name is None:
            return  # heartbeats and flow-control messages come on the inbox's subject
        if KvBucket.is_tombstone(m.headers):
            if name in self._hosted:
                self._reassert.add(name)
                self._reassert_wanted.set()
            else:
                self._registry.unregister(name)
        elif m.data:
            try:
                spec = msgspec.json.decode(m.data, type=ToolSpec)
                self._registry.register_spec(spec)
            except (msgspec.DecodeError, SchemaError) as exc:
                log.error(
                    "ignored the spec of tool %r from the bucket %s: %s", name, self.bucket, exc
                )
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
        self._subscription, pending = await self._kv.watch(self._on_update)
        # The replay may start before the consumer's answer is read: count from the first
        # delivery.
        self._replay_size = pending
        if self.seen >= pending:
            self._replayed.set()
        with trio.fail_after(API_TIMEOUT_S):
            await self._replayed.wait()
        return pending
