"""Model backends: provider-neutral chat types and clients for Ollama, OpenAI-compatible
servers and Anthropic, each over its real HTTP protocol.

The scheduler (``agentrt._scheduler``) picks which backend and model serves a call; the LLM
agent (``agentrt.agents``) only sees ``ChatRequest`` / ``ChatResponse``.
"""

from __future__ import annotations

from ._types import ChatChunk as ChatChunk
from ._types import ChatMessage as ChatMessage
from ._types import ChatRequest as ChatRequest
from ._types import ChatResponse as ChatResponse
from ._types import ModelBackend as ModelBackend
from ._types import ModelInfo as ModelInfo
from ._types import ToolCall as ToolCall
from ._types import ToolDef as ToolDef
from ._types import Usage as Usage
