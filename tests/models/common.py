"""What the backend tests share: a rich tool schema, tools, a conversation, a stream reader."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

from agentrt.models import ChatChunk, ChatMessage, ChatRequest, ModelBackend, ToolDef

# A schema with the keys the ollama client drops ($defs, anyOf, patterns, formats, examples...).
RICH_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"unit": {"enum": ["celsius", "fahrenheit"]}},
    "properties": {
        "city": {"type": "string", "minLength": 1, "pattern": "^[A-Z]", "examples": ["Oslo"]},
        "unit": {"$ref": "#/$defs/unit"},
        "days": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 7}, {"type": "null"}]},
        "when": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    },
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = ToolDef(name="weather", description="Weather for a city.", parameters=RICH_SCHEMA)
CLOCK = ToolDef(name="clock", description="The time.", parameters={"type": "object"})
ASK = (ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi"))


async def collect(backend: ModelBackend, req: ChatRequest) -> list[ChatChunk]:
    chunks = []
    async with aclosing(backend.stream(req)) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    return chunks
