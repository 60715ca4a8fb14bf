"""``agentrt mcp serve``: the cluster's tools offered to any MCP client, gated and policy-checked.

The server is the SDK's low-level ``Server`` over stdio or streamable HTTP (hypercorn, which
runs on trio, so the cluster client and the server share one event loop). It lists the tools
of the cluster's registry (the tool bucket) that its policy allows, with their exact input
schemas (and output schemas where MCP can carry them: an object at the root). Every call goes
through ``Node.call_tool``: the policy check, the gate on this side, the gate and the tool on
the tool's node. A refusal is an MCP tool result with ``isError`` set and a text a model can
act on (the gate's compact violation list), not a protocol error.

The tool list follows the cluster: when the set of offered tools (after the policy) or one of
their schemas changes (a tool hosted or removed at run time, through the tool bucket), each
connected client is told ``notifications/tools/list_changed`` (``tools.listChanged`` is
declared). The watch is one task per connection that waits on the registry's change signal
(``ToolRegistry.wait_changed``), never polls: on the handshake era it is the handler of the
client's ``notifications/initialized`` (the SDK runs it in the connection's task group and
cancels it when the connection ends), on the 2026 era the handler of
``subscriptions/listen`` (the SDK's ``ListenHandler``, with one event bus per stream).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import mcp_types as types
import trio
from agentrt import AgentrtError, GateError, Node, ToolSpec
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged

__all__ = ["build_mcp_server", "serve_mcp_http", "serve_mcp_stdio"]

log = logging.getLogger("agentrt.agents.mcpserve")


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


class _Server(Server[Any]):
    """The SDK's server, declaring ``tools.listChanged`` on every transport (the streamable
    HTTP manager builds its initialization options itself, with no way to pass ours)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True),
            experimental_capabilities, extensions,
        )  # fmt: skip


def build_mcp_server(node: Node) -> Server[Any]:
    """An MCP server whose tools are ``node``'s registry, filtered by ``node.policy``; its
    clients are told when that list changes."""

    def allowed() -> list[str]:
        names = [t.name for t in node.registry]
        return names if node.policy is None else node.policy.allowed_tools(names)

    def offered() -> dict[str, ToolSpec]:
        specs = {}
        for name in allowed():
            if (t := node.registry.get(name)) is not None:
                specs[name] = t.spec
        return specs

    async def follow(send: Callable[[], Awaitable[None]]) -> None:
        """Call ``send`` each time the offered tools change, until cancelled."""
        seen, last = node.registry.version, offered()
        while True:
            seen = await node.registry.wait_changed(seen)
            now = offered()
            if now != last:
                last = now
                await send()

    async def on_initialized(ctx: Any, params: types.NotificationParams) -> None:
        # Handshake era: lives as long as the connection (cancelled with it).
        await follow(ctx.session.send_tool_list_changed)

    async def listen(
        ctx: Any, params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        # 2026 era: the stream is the listen request's response; one bus per stream.
        bus = InMemorySubscriptionBus()

        async def publish() -> None:
            await bus.publish(ToolsListChanged())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, publish)
            result = await ListenHandler(bus)(ctx, params)
            nursery.cancel_scope.cancel()
        return result

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        tools = []
        for name in allowed():
            t = node.registry.get(name)
            if t is None:
                continue
            out = t.spec.output_schema
            tools.append(
                types.Tool(
                    name=name, description=t.spec.description or None,
                    input_schema=t.spec.input_schema,
                    output_schema=out if out is not None and out.get("type") == "object" else None,
                )
            )  # fmt: skip
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        try:
            result = await node.call_tool(params.name, dict(params.arguments or {}), sender="mcp")
        except GateError as exc:
            return _error(exc.render_compact())
        except AgentrtError as exc:  # PolicyDenied, DeliveryError, McpServerError ...
            return _error(str(exc))
        t = node.registry.get(params.name)
        structured = None
        if t is not None and t.spec.output_schema is not None and isinstance(result, dict):
            structured = result
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(result))],
            structured_content=structured,
        )

    server = _Server(
        "agentrt", on_list_tools=list_tools, on_call_tool=call_tool,
        on_subscriptions_listen=listen,
    )  # fmt: skip
    server.add_notification_handler(
        "notifications/initialized", types.NotificationParams, on_initialized
    )
    return server


async def serve_mcp_stdio(node: Node) -> None:
    """Serve MCP on this process's stdin/stdout until the client closes stdin."""
    from mcp.server.stdio import stdio_server

    server = build_mcp_server(node)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


async def serve_mcp_http(
    node: Node, host: str, port: int, *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:  # fmt: skip
    """Serve MCP over streamable HTTP at ``http://host:port/mcp`` until cancelled;
    ``task_status.started(url)`` once it listens (``port`` 0 picks a free port)."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    app: Any = build_mcp_server(node).streamable_http_app(host=host)  # an ASGI app
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = log

    async def started(*, task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(app, config, task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(started)
        task_status.started(f"{binds[0]}/mcp")
