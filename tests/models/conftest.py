"""The provider doubles as fixtures for every test in this folder."""

from __future__ import annotations

from .doubles import anthropic_double, ollama_double, openai_double

__all__ = ["anthropic_double", "ollama_double", "openai_double"]
