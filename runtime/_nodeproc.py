"""Entry point of one node process: ``python -m agentrt._nodeproc CONFIG NODE REPLICA NAME``.

Started by ``agentrt up``; credentials arrive in ``AGENTRT_NATS_*`` environment variables. The
process serves until SIGTERM/SIGINT or until its stdin closes (the supervisor is gone), then
drains: no new messages, queued ones finished, exit 0.
"""

from __future__ import annotations

__all__ = ["main"]

import logging
import os
import signal
import sys

import msgspec
import trio

from ._config import (
    load_config,
    load_node_policy,
    owned_partitions,
    partitions,
    resolve_agents,
    resolve_tools,
    tool_registry,
)
from ._node import NodeConfig, Subjects, open_node
from ._scheduler import open_models


async def _watch_stdin(node_stop: trio.Event) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some(4096):
            pass
    node_stop.set()


async def main(config_path: str, section: str, replica: int, name: str) -> None:
    cfg = load_config(config_path)
    agents = resolve_agents(cfg, section)
    tools = resolve_tools(cfg, section)
    policy = load_node_policy(cfg, section)
    user = os.environ.get("AGENTRT_NATS_USER") or None
    node_cfg = NodeConfig(
        cluster=cfg.cluster.name, name=name,
        servers=tuple(os.environ["AGENTRT_NATS_SERVERS"].split(",")),
        user=user, password=os.environ.get("AGENTRT_NATS_PASSWORD") if user else None,
        default_deadline_s=cfg.cluster.default_deadline_s,
        drain_timeout_s=cfg.cluster.drain_timeout_s, idle_timeout_s=cfg.cluster.idle_timeout_s,
        partitions=partitions(cfg), owned=owned_partitions(cfg, section, replica),
        tool_rules=cfg.tools,
    )  # fmt: skip
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            open_models(cfg.models, agents=agents) as scheduler,  # None without [models]
            open_node(
                node_cfg,
                agents,
                tools=tools,
                registry=tool_registry(cfg),
                policy=policy,
                scheduler=scheduler,
            ) as node,
            trio.open_nursery() as nursery,
        ):

            async def on_signal() -> None:
                async for _ in signals:
                    stop.set()

            nursery.start_soon(on_signal)
            if not sys.stdin.isatty():
                nursery.start_soon(_watch_stdin, stop)
            mcp = next(n.mcp for n in cfg.nodes if n.name == section)
            if mcp:
                from agentrt.agents import McpBridge, McpServerConfig

                servers = [McpServerConfig(**msgspec.structs.asdict(m)) for m in mcp]
                await nursery.start(McpBridge(node, servers).serve)
            node.bus.publish_nowait(Subjects(cfg.cluster.name).ctl("ready"), name.encode())
            await stop.wait()
            logging.getLogger("agentrt.node").info("node %s draining", name)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    _config, _section, _replica, _name = sys.argv[1:5]
    logging.basicConfig(
        level=os.environ.get("AGENTRT_LOG_LEVEL", "WARNING"),
        format=f"%(asctime)s {_name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    trio.run(main, _config, _section, int(_replica), _name)
