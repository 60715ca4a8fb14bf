"""Ready-made actors (``agentrt.agents``): the MCP bridge and the LLM agent land here.

Empty for now: see the open issues (MCP bridge, model scheduler).
"""

from __future__ import annotations

__all__: list[str] = []
