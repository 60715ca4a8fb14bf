"""An MCP server written with the SDK's low-level ``Server``, for the bridge's failure tests.

Run as ``python mcp_test_server.py stdio`` or ``python mcp_test_server.py http [PORT]``; over
HTTP it listens on 127.0.0.1 (port 0 = any free port) and prints ``PORT <n>`` once the socket
accepts connections. Its tools let a test make it misbehave on demand:

- ``echo(text)``: the text back (structured ``{"text": ...}``, output schema declared);
- ``crash()``: the process exits at once, mid-call;
- ``hang()``: never answers; when the client cancels it, the cancellation is counted;
- ``cancelled(at_least)``: waits (at most 20 s) until ``hang`` was cancelled that many times
  and returns the count: proof that ``notifications/cancelled`` reached the server;
- ``bad_output()``: structured content that breaks its own output schema;
- ``add_tool(name)`` / ``remove_tool(name)`` / ``retype_echo()``: change the tool list (echo's
  ``text`` becomes an integer) and send ``notifications/tools/list_changed``;
- ``calls()``: every call this process received so far (name and arguments), in order;
- ``header(name)``: that HTTP header of the request carrying this call;
- ``pid()``: the server's process id (a test stops it with SIGSTOP to make it hang).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import NotificationOptions, Server

TEXT_IN: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}
EMPTY: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
NAME_IN: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "required": ["name"],
}
COUNT_OUT: dict[str, Any] = {
    "type": "object",
    "properties": {"n": {"type": "integer"}},
    "required": ["n"],
}
TEXT_OUT: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {}},
    "required": ["text"],
}

tools: dict[str, types.Tool] = {
    t.name: t
    for t in [
        types.Tool(name="echo", description="The text back.", input_schema=TEXT_IN,
                   output_schema=TEXT_OUT),
        types.Tool(name="crash", description="Exit mid-call.", input_schema=EMPTY),
        types.Tool(name="hang", description="Never answer.", input_schema=EMPTY),
        types.Tool(name="cancelled", description="Wait for cancellations of hang.",
                   input_schema={"type": "object",
                                 "properties": {"at_least": {"type": "integer"}}},
                   output_schema=COUNT_OUT),
        types.Tool(name="bad_output", description="Break the output schema.",
                   input_schema=EMPTY, output_schema=COUNT_OUT),
        types.Tool(name="add_tool", description="Add a tool.", input_schema=NAME_IN),
        types.Tool(name="remove_tool", description="Remove a tool.", input_schema=NAME_IN),
        types.Tool(name="retype_echo", description="echo takes an integer now.",
                   input_schema=EMPTY),
        types.Tool(name="calls", description="The calls received.", input_schema=EMPTY),
        types.Tool(name="header", description="An HTTP header of this call's request.",
                   input_schema=NAME_IN),
        types.Tool(name="pid", description="This server's process id.", input_schema=EMPTY),
    ]
}  # fmt: skip
received: list[dict[str, Any]] = []
cancellations = 0
cancelled_event = anyio.Event()


def _text(text: str, structured: Any = None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=structured
    )


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=list(tools.values()))


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    global cancellations, cancelled_event
    args = dict(params.arguments or {})
    received.append({"name": params.name, "arguments": args})
    name = params.name
    if name == "echo" or name.startswith("extra_"):
        return _text(str(args.get("text")), {"text": args.get("text")})
    if name == "crash":
        os._exit(1)
    if name == "hang":
        try:
            await anyio.sleep_forever()
        finally:
            cancellations += 1
            cancelled_event.set()
            cancelled_event = anyio.Event()
    if name == "cancelled":
        with anyio.move_on_after(20):
            while cancellations < int(args.get("at_least", 1)):
                await cancelled_event.wait()
        return _text(str(cancellations), {"n": cancellations})
    if name == "bad_output":
        return _text("not a number", {"n": "not a number"})
    if name == "header":
        request = getattr(ctx, "request", None)
        value = request.headers.get(args["name"]) if request is not None else None
        return _text(str(value), {"value": value})
    if name == "pid":
        return _text(str(os.getpid()), {"pid": os.getpid()})
    if name == "calls":
        return _text(str(received), {"calls": received})
    if name == "add_tool":
        tools[args["name"]] = types.Tool(name=args["name"], input_schema=TEXT_IN)
    elif name == "remove_tool":
        tools.pop(args["name"], None)
    elif name == "retype_echo":
        schema = {"type": "object", "properties": {"text": {"type": "integer"}},
                  "required": ["text"]}  # fmt: skip
        tools["echo"] = types.Tool(name="echo", input_schema=schema, output_schema=TEXT_OUT)
    else:
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"no {name}")],
                                    is_error=True)  # fmt: skip
    await ctx.session.send_tool_list_changed()
    return _text("ok")


server: Server[Any] = Server("test", on_list_tools=list_tools, on_call_tool=call_tool)


async def run_stdio() -> None:
    from mcp.server.stdio import stdio_server

    options = server.create_initialization_options(NotificationOptions(tools_changed=True))
    async with stdio_server() as (read, write):
        await server.run(read, write, options)


def run_http(port: int) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    app = server.streamable_http_app()
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        anyio.run(run_stdio)
    else:
        run_http(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
