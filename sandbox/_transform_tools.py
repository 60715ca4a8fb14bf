"""Transforms as tools: a wasm transform behind a JSON Schema, called like any other tool.

An agent calls ``await self.call_tool("transform.csv2json", {"text": ...})``: the call is gated
(schema at both ends, policy in the caller and at the broker) and runs on the node that lists
the tool in ``agentrt.toml`` (``tools = ["agentrt.sandbox:csv2json"]``), inside a fresh wasmtime
sandbox with the tool's limits. Text transforms take and return ``{"text": ...}``; binary ones
``{"data_b64": ...}`` (base64, because tool arguments are JSON).
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

from agentrt import GateError, Tool, ToolSpec, Violation, make_tool
from agentrt._node import executing_node

from ._transform import Limits, TransformHost

__all__ = ["csv2json", "normalize_text", "ppm2pgm", "transform_tool"]

WASM_DIR = Path(__file__).parent / "transforms" / "wasm"

_host: TransformHost | None = None
_host_lock = threading.Lock()


def _shared_host() -> TransformHost:
    """One host per process (the engine and the compiled modules are shared by all tools).

    The executing node's own checks happened before the call arrived (gate, broker
    permissions); the host itself enforces only the resource limits.
    """
    global _host
    with _host_lock:
        if _host is None:
            cache = Path(tempfile.gettempdir()) / f"agentrt-transforms-{os.getuid()}"
            _host = TransformHost(None, node="", cache_dir=cache)
        return _host


def transform_tool(
    name: str, wasm: Path, *, description: str, encoding: Literal["text", "base64"] = "text",
    limits: Limits | None = None,
) -> Tool:  # fmt: skip
    """A tool named ``transform.<name>`` that runs the wasm command ``wasm`` on its input.

    Raises:
        SchemaError: (not expected) the generated schema is refused.
    """
    field = "text" if encoding == "text" else "data_b64"
    value_schema: dict[str, Any] = {"type": "string"}
    if encoding == "base64":
        value_schema["contentEncoding"] = "base64"
    schema = {
        "type": "object", "properties": {field: value_schema}, "required": [field],
        "additionalProperties": False,
    }  # fmt: skip
    limits = limits or Limits()
    tool_name = f"transform.{name}"
    registered = threading.Event()

    async def run(args: dict[str, Any]) -> dict[str, str]:
        # The node running this call applies its own [transforms] rules (the caller's node
        # already applied its [tools] rules and its broker permissions).
        node, policy = executing_node.get(("", None))
        check = getattr(policy, "check_transform", None)
        if check is not None:
            check(tool_name, node=node)
        host = _shared_host()
        if not registered.is_set():
            host.register(tool_name, wasm)
            registered.set()
        if encoding == "text":
            data = args[field].encode()
        else:
            try:
                data = base64.b64decode(args[field], validate=True)
            except binascii.Error:
                raise GateError(tool_name, "input", [Violation(
                    pointer=f"/{field}", keyword="contentEncoding", expected="base64",
                    got=repr(args[field][:60]),
                )]) from None  # fmt: skip
        out = await host.arun(tool_name, data, limits=limits)
        if encoding == "text":
            return {field: out.decode(errors="replace")}
        return {field: base64.b64encode(out).decode()}

    spec = ToolSpec(
        name=tool_name, description=description, input_schema=schema,
        output_schema=schema, pure=True, timeout_s=limits.timeout_s + 5,
    )  # fmt: skip
    return make_tool(spec, run)


csv2json = transform_tool(
    "csv2json", WASM_DIR / "csv2json.wasm",
    description="CSV with a header row -> JSON array of objects (all values strings).",
)  # fmt: skip
normalize_text = transform_tool(
    "normalize_text", WASM_DIR / "normalize_text.wasm",
    description="Normalize text: LF line ends, no trailing spaces, single blank lines.",
)  # fmt: skip
ppm2pgm = transform_tool(
    "ppm2pgm", WASM_DIR / "ppm2pgm.wasm", encoding="base64",
    description="Binary PPM (P6) image -> grayscale PGM (P5), base64 in and out.",
)  # fmt: skip
