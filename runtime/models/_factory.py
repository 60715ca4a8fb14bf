"""``make_backend``: a backend from its ``[models.backends.<name>]`` settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

from ._anthropic import AnthropicBackend
from ._ollama import OllamaBackend
from ._openai import OpenAIBackend
from ._types import ModelBackend

__all__ = ["KINDS", "make_backend"]


class _Backend(Protocol):
    def __call__(
        self,
        name: str,
        url: str,
        *,
        api_key: str | None,
        timeout_s: float,
        stall_timeout_s: float,
        headers: Mapping[str, str] | None,
    ) -> ModelBackend: ...


_CLASSES: Final[dict[str, _Backend]] = {
    "anthropic": AnthropicBackend,
    "ollama": OllamaBackend,
    "openai": OpenAIBackend,
}
KINDS: Final = tuple(sorted(_CLASSES))
"""The protocols a backend can speak."""


def make_backend(
    kind: str,
    *,
    name: str,
    url: str,
    api_key: str | None = None,
    timeout_s: float = 120.0,
    stall_timeout_s: float = 30.0,
    headers: Mapping[str, str] | None = None,
) -> ModelBackend:
    """The backend for ``kind``; close it with ``aclose`` (it owns a connection pool).

    Raises:
        ValueError: ``kind`` is not one of ``KINDS`` (``agentrt.toml`` checks this earlier,
            with the file and key; this is the last line for callers building backends by hand).
    """
    cls = _CLASSES.get(kind)
    if cls is None:
        raise ValueError(f"backend {name!r}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    return cls(
        name,
        url,
        api_key=api_key,
        timeout_s=timeout_s,
        stall_timeout_s=stall_timeout_s,
        headers=headers,
    )
