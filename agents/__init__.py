"""Ready-made actors (``agentrt.agents``): the MCP bridge lands here, the LLM agent next.

The MCP bridge (``McpBridge``) runs MCP servers and hosts their tools, gated, on a node.
"""

from __future__ import annotations

from ._llm import LlmAgent as LlmAgent
from ._llm import LlmReply as LlmReply
from ._llm import LlmTask as LlmTask
from ._mcp import McpBridge as McpBridge
from ._mcp import McpServerConfig as McpServerConfig
from ._mcp import check_server_config as check_server_config

__all__ = ["LlmAgent", "LlmReply", "LlmTask", "McpBridge", "McpServerConfig", "check_server_config"]
