"""Sandbox policies and wasmtime transforms (``agentrt.sandbox``).

Empty for now: see the open issue on per-node sandbox policies.
"""

from __future__ import annotations

__all__: list[str] = []
