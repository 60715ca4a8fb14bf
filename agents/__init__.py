"""Ready-made actors (``agentrt.agents``): the MCP bridge lands here, the LLM agent next.

The MCP bridge (``McpBridge``) runs MCP servers and hosts their tools, gated, on a node;
``serve_mcp_stdio``/``serve_mcp_http`` offer the cluster's tools to MCP clients in turn.
"""

from __future__ import annotations

from ._llm import LlmAgent as LlmAgent
from ._llm import LlmReply as LlmReply
from ._llm import LlmTask as LlmTask
from ._mcp import McpBridge as McpBridge
from ._mcp import McpServerConfig as McpServerConfig
from ._mcp import check_server_config as check_server_config
from ._mcpserve import build_mcp_server as build_mcp_server
from ._mcpserve import serve_mcp_http as serve_mcp_http
from ._mcpserve import serve_mcp_stdio as serve_mcp_stdio

__all__ = [
    "LlmAgent",
    "LlmReply",
    "LlmTask",
    "McpBridge",
    "McpServerConfig",
    "build_mcp_server",
    "check_server_config",
    "serve_mcp_http",
    "serve_mcp_stdio",
]
