"""``[models]`` in ``agentrt.toml``: backends, tiers, prices and which agent uses what.

Decoded by msgspec with the rest of the file (unknown keys refused, key paths in errors); the
cross-references msgspec cannot see (a tier naming an undefined backend, a price for a model no
tier lists, an agent type no node hosts) are checked by :func:`check_models`, which
``load_config`` calls, so a typo fails at ``agentrt up`` and not at an actor's first model call.

A model is written ``"<backend>:<model>"`` everywhere (``"local:llama3.2:1b"``): the backend
name has no colon, the provider's model name may have several.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

import msgspec

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._agent import Agent

__all__ = [
    "TIERS",
    "AgentModels",
    "BackendSection",
    "ModelsSection",
    "Price",
    "TierLists",
    "check_agent_class",
    "check_models",
    "split_label",
]

TierName = Literal["small", "medium", "large"]
TIERS: tuple[str, ...] = ("small", "medium", "large")

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
# Headers that carry credentials: their values belong in the environment, not in the file.
_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})


class BackendSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[models.backends.<name>]``: one provider endpoint.

    Attributes:
        kind: the protocol it speaks.
        url: base URL (``http://127.0.0.1:11434``, ``https://api.openai.com``).
        api_key_env: name of the environment variable holding the key (never the key itself).
        headers: extra HTTP headers (not credentials: those go through ``api_key_env``).
        timeout_s: longest one call may take on this backend.
        max_concurrent: calls in flight at once; more wait in a queue fair between actors.
    """

    kind: Literal["ollama", "openai", "anthropic"]
    url: str
    api_key_env: str = ""
    headers: dict[str, str] = {}
    timeout_s: float = 120.0
    max_concurrent: int = 4


class TierLists(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[models.tiers]``: each tier's models in the order the scheduler tries them."""

    small: list[str] = []
    medium: list[str] = []
    large: list[str] = []

    def of(self, tier: str) -> list[str]:
        models: list[str] = getattr(self, tier)
        return models


class Price(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[models.prices."<backend>:<model>"]``: price per million tokens, in and out.

    Decimals, so totals are exact (``0.15`` means exactly 0.15, not the nearest float).
    """

    input: Decimal = Decimal(0)
    output: Decimal = Decimal(0)


class AgentModels(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[models.agents.<agent_type>]``: what one agent type starts on.

    Attributes:
        tier: the tier it starts on.
        model: a ``"<backend>:<model>"`` it is pinned to (with ``tier``: pinned at that tier,
            escalating above it; alone: at the lowest tier listing it, or a tier of its own).
        escalate_after: gate failures in a row before the LLM agent escalates a tier.
    """

    tier: TierName | None = None
    model: str = ""
    escalate_after: int = 2


class ModelsSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[models]``: everything the scheduler needs.

    Attributes:
        queue_timeout_s: longest a call waits for a free slot when its caller set no tighter
            deadline (so no wait is unbounded).
    """

    backends: dict[str, BackendSection]
    tiers: TierLists = TierLists()
    prices: dict[str, Price] = {}
    agents: dict[str, AgentModels] = {}
    queue_timeout_s: float = 60.0


def split_label(label: str) -> tuple[str, str]:
    """``"local:llama3.2:1b"`` -> ``("local", "llama3.2:1b")`` (``("", label)`` if malformed)."""
    backend, sep, model = label.partition(":")
    if not sep or not backend or not model:
        return "", label
    return backend, model


def _check_label(models: ModelsSection, label: str, shown: str, key: str) -> None:
    backend, _ = split_label(label)
    if not backend:
        raise ConfigError(
            shown, key, f"{label!r} is not a model reference; write '<backend>:<model>', "
            "e.g. 'local:llama3.2:1b'",
        )  # fmt: skip
    if backend not in models.backends:
        known = ", ".join(sorted(models.backends)) or "none"
        raise ConfigError(
            shown, key, f"{label!r} names backend {backend!r}, which is not defined "
            f"(backends: {known}); add [models.backends.{backend}] or fix the name",
        )  # fmt: skip


def _check_tier(models: ModelsSection, tier: str, shown: str, key: str) -> None:
    if tier not in TIERS:
        raise ConfigError(shown, key, f"unknown tier {tier!r}; use one of {', '.join(TIERS)}")
    if not models.tiers.of(tier):
        configured = ", ".join(t for t in TIERS if models.tiers.of(t)) or "none"
        raise ConfigError(
            shown, key, f"tier {tier!r} lists no models (configured tiers: {configured}); "
            f"add models to [models.tiers] {tier} = [\"<backend>:<model>\"] or pick another tier",
        )  # fmt: skip


def check_models(models: ModelsSection, hosted: Mapping[str, type[Agent]], shown: str) -> None:
    """Check what msgspec cannot: names, numbers and cross-references of ``[models]``.

    Args:
        models: the decoded section.
        hosted: agent type -> class, for every agent any node hosts.
        shown: the file name used in errors.

    Raises:
        ConfigError: the first problem, with its key path and the fix.
    """
    if not models.backends:
        raise ConfigError(
            shown, "$.models.backends", "no backends: add a [models.backends.<name>] table "
            'with kind = "ollama" | "openai" | "anthropic" and url',
        )  # fmt: skip
    for name, b in models.backends.items():
        where = f"$.models.backends.{name}"
        if not _NAME_RE.match(name):
            raise ConfigError(
                shown, where, f"{name!r} is not a valid backend name: use 1-64 letters, "
                "digits, '_' or '-' (no ':', which separates backend and model)",
            )  # fmt: skip
        if not re.match(r"https?://[^\s/]+", b.url):
            raise ConfigError(
                shown, f"{where}.url", f"{b.url!r} is not an HTTP URL; expected e.g. "
                "http://127.0.0.1:11434 or https://api.openai.com",
            )  # fmt: skip
        if not (math.isfinite(b.timeout_s) and b.timeout_s > 0):
            raise ConfigError(shown, f"{where}.timeout_s", "must be a positive number of seconds")
        if not 1 <= b.max_concurrent <= 10_000:
            raise ConfigError(
                shown, f"{where}.max_concurrent", f"must be between 1 and 10000, got "
                f"{b.max_concurrent}",
            )  # fmt: skip
        if b.api_key_env and not re.match(r"[A-Za-z_][A-Za-z0-9_]*\Z", b.api_key_env):
            raise ConfigError(
                shown, f"{where}.api_key_env", f"{b.api_key_env[:8]!r}... is not an environment "
                "variable name: give the variable's name (e.g. OPENAI_API_KEY), never the key",
            )  # fmt: skip
        for header in b.headers:
            if header.lower() in _SECRET_HEADERS:
                raise ConfigError(
                    shown, f"{where}.headers.{header}", "credentials do not belong in the file: "
                    "put the key in an environment variable and name it in api_key_env",
                )  # fmt: skip
    if not (math.isfinite(models.queue_timeout_s) and models.queue_timeout_s > 0):
        raise ConfigError(shown, "$.models.queue_timeout_s", "must be a positive number of seconds")
    listed: set[str] = set()
    for tier in TIERS:
        for i, label in enumerate(models.tiers.of(tier)):
            _check_label(models, label, shown, f"$.models.tiers.{tier}[{i}]")
            listed.add(label)
    if not listed:
        raise ConfigError(
            shown, "$.models.tiers", 'no tier lists a model; add e.g. small = ["local:<model>"]'
        )
    for agent_type, a in models.agents.items():
        where = f"$.models.agents.{agent_type}"
        if agent_type not in hosted:
            known = ", ".join(sorted(hosted)) or "none"
            raise ConfigError(
                shown, where, f"no node hosts agent type {agent_type!r} (hosted: {known}); "
                "fix the name or add the agent to a [[nodes]] agents list",
            )  # fmt: skip
        if a.tier is not None:
            _check_tier(models, a.tier, shown, f"{where}.tier")
        if a.model:
            _check_label(models, a.model, shown, f"{where}.model")
            listed.add(a.model)
        if a.escalate_after < 1:
            raise ConfigError(
                shown, f"{where}.escalate_after", f"must be at least 1, got {a.escalate_after}"
            )
    for agent_type, cls in hosted.items():
        own = models.agents.get(agent_type)
        if own is None or (own.tier is None and not own.model):  # config wins where it speaks
            check_agent_class(models, cls, shown)
    for label, price in models.prices.items():
        where = f"$.models.prices['{label}']"
        _check_label(models, label, shown, where)
        if label not in listed:
            raise ConfigError(
                shown, where, f"price for {label!r}, which no tier or agent uses; list it "
                "in [models.tiers] or fix the name",
            )  # fmt: skip
        for field in ("input", "output"):
            value: Decimal = getattr(price, field)
            if not value.is_finite() or value < 0:
                raise ConfigError(
                    shown, f"{where}.{field}", "must be a non-negative price per million tokens"
                )


def check_agent_class(models: ModelsSection, cls: type[Agent], shown: str) -> None:
    """Check an agent class's own ``tier`` / ``model`` defaults against ``[models]``.

    Raises:
        ConfigError: the class names a tier with no models or an undefined backend; the key
            is where to override it (``$.models.agents.<type>``).
    """
    where = f"$.models.agents.{cls.agent_type}"
    owner = f"{cls.__module__}.{cls.__qualname__}"
    if cls.tier is not None and (cls.tier not in TIERS or not models.tiers.of(cls.tier)):
        configured = ", ".join(t for t in TIERS if models.tiers.of(t)) or "none"
        raise ConfigError(
            shown, where, f"{owner} declares tier = {cls.tier!r}, which lists no models "
            f"(configured tiers: {configured}); add models to that tier, or override it with "
            "tier = ... in this table",
        )  # fmt: skip
    if cls.model:
        backend, _ = split_label(cls.model)
        if backend not in models.backends:
            raise ConfigError(
                shown, where, f"{owner} declares model = {cls.model!r}, but backend "
                f"{backend!r} is not defined; add [models.backends.{backend}], or override "
                "it with model = ... in this table",
            )  # fmt: skip
