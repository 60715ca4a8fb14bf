"""Model backends: provider-neutral chat types and clients for Ollama, OpenAI-compatible
servers and Anthropic, each over its real HTTP protocol.

The scheduler (``agentrt._scheduler``) picks which backend and model serves a call; the LLM
agent (``agentrt.agents``) only sees ``ChatRequest`` / ``ChatResponse``. Build a backend with
``make_backend(kind, name=..., url=...)``; ``docs/models.md`` lists what each sends and how
provider errors map to the ``ModelError`` tree.
"""

from __future__ import annotations

from ._anthropic import AnthropicBackend as AnthropicBackend
from ._factory import KINDS as KINDS
from ._factory import make_backend as make_backend
from ._leak import Leak as Leak
from ._leak import find_leaked_tool_call as find_leaked_tool_call
from ._ollama import OllamaBackend as OllamaBackend
from ._openai import OpenAIBackend as OpenAIBackend
from ._types import ChatChunk as ChatChunk
from ._types import ChatMessage as ChatMessage
from ._types import ChatRequest as ChatRequest
from ._types import ChatResponse as ChatResponse
from ._types import ModelBackend as ModelBackend
from ._types import ModelInfo as ModelInfo
from ._types import ToolCall as ToolCall
from ._types import ToolDef as ToolDef
from ._types import Usage as Usage

__all__ = [
    "KINDS",
    "AnthropicBackend",
    "ChatChunk",
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "Leak",
    "ModelBackend",
    "ModelInfo",
    "OllamaBackend",
    "OpenAIBackend",
    "ToolCall",
    "ToolDef",
    "Usage",
    "find_leaked_tool_call",
    "make_backend",
]
