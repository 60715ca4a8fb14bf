"""The model scheduler: which model serves an actor's next call, and what happens when it fails.

Each actor gets a ``ModelSession`` that starts on its agent type's tier (``[models.agents]``
in agentrt.toml, else the class's ``tier`` / ``model``, else the lowest configured tier). A call
goes to the first model of the current tier whose backend has a free slot; if none has, it
queues (fairly between actors, ``_capacity.py``) until one frees or the queue bound passes.

When the model fails, the error class decides:

* ``ModelOverloaded`` / ``ModelTimeout``: the next model of the tier, then the tier above.
* ``RateLimited``: the model cools down for ``retry_after`` (for every session); the call tries
  the tier's other models, and waits out the cool-down only if nothing else in the tier can
  serve and the wait fits the caller's deadline.
* ``ContextTooLong``: the session moves up a tier (the conversation will not shrink).
* ``MalformedModelOutput``: this call tries the tier above (the session stays).
* ``ModelRequestRejected``: raised at once; the request or the configuration is wrong, and
  sending it to another model would hide that.

When nothing is left, ``NoModelAvailable`` lists every attempt. ``escalate()`` moves the
session up a tier for good: the gate's escalate hook and the LLM agent's loop detection call it.
Every attempt is counted in ``Accounting`` per (agent type, tier, model).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import msgspec
import trio

from ._accounting import Accounting, ModelStats
from ._capacity import Capacity, CapacityStats, acquire_any
from ._control import NodeStatus
from ._errors import (
    ConfigError,
    ContextTooLong,
    MalformedModelOutput,
    ModelError,
    ModelRequestRejected,
    ModelTimeout,
    NoModelAvailable,
    RateLimited,
    ToolCallAsText,
)
from ._modelconfig import TIERS, ModelsSection, split_label
from .models import ChatMessage, ChatRequest, ChatResponse, ModelBackend, ToolDef

if TYPE_CHECKING:
    from ._agent import Agent

__all__ = ["ModelSession", "Scheduler", "open_models", "open_scheduler"]

log = logging.getLogger("agentrt.scheduler")

PINNED: Final = "pinned"
"""The tier name of a session pinned to a model that no tier lists."""

MAX_TRIES_PER_MODEL: Final = 2
"""Attempts on one model within one call (a rate-limited model is retried once after its
cool-down; any other failure takes it out of the call at once)."""


class _Level(msgspec.Struct, frozen=True):
    tier: str
    labels: tuple[str, ...]


class _Plan(msgspec.Struct, frozen=True):
    levels: tuple[_Level, ...]
    escalate_after: int


class _NextLevel(Exception):
    """Internal: this tier cannot serve the call; ``escalate`` says the session moves too."""

    def __init__(self, escalate: bool) -> None:
        self.escalate = escalate


class ModelSession:
    """One actor's view of the scheduler: its current tier, and calls served from it.

    Attributes:
        actor: the actor's id (``type/key``), named in errors.
        agent_type: its agent type (the accounting key).
        tier: the tier calls start from now.
        model: ``"<backend>:<model>"`` that will serve next (before a call) or served last.
        escalate_after: gate failures in a row after which the caller should ``escalate()``
            (``[models.agents.<type>] escalate_after``, else the class's, else 2).
    """

    def __init__(self, scheduler: Scheduler, actor: str, agent_type: str, plan: _Plan) -> None:
        self._scheduler, self._plan = scheduler, plan
        self.actor, self.agent_type = actor, agent_type
        self.escalate_after = plan.escalate_after
        self._level = 0
        self.tier = plan.levels[0].tier
        self.model = plan.levels[0].labels[0]

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolDef] = (),
        tool_choice: str = "auto",
        response_schema: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> ChatResponse:
        """One model call, served from the current tier up (see the module docstring).

        ``on_text`` streams the answer's text as it arrives; if a model fails mid-stream and
        another one takes over, the text starts again from the new model's first piece.

        Raises:
            NoModelAvailable: every model the call may use failed (``attempts`` says how).
            ModelRequestRejected: the provider refused the request itself (not retried).
            ModelTimeout: no backend slot freed within ``[models] queue_timeout_s``.
        """
        request = ChatRequest(
            model="", messages=tuple(messages), tools=tuple(tools), tool_choice=tool_choice,
            response_schema=response_schema, max_tokens=max_tokens, temperature=temperature,
        )  # fmt: skip
        return await self._scheduler._serve(self, request, on_text)

    def escalate(self, reason: str) -> bool:
        """Move to the next tier up for the rest of this session; ``False`` at the top.

        Counted as an escalation of the tier and model being left.
        """
        return self._move_to(self._level + 1, reason)

    def reset(self) -> None:
        """Back to the starting tier (a new task; escalations so far stay counted)."""
        self._move_to(0, "", count=False)

    def _move_to(self, level: int, reason: str, *, count: bool = True) -> bool:
        levels = self._plan.levels
        if level >= len(levels):
            log.info("%s: cannot escalate past tier %s (%s)", self.actor, self.tier, reason)
            return False
        if count:
            self._scheduler.accounting.escalated(self.agent_type, self.tier, self.model)
            log.info("%s: %s -> %s: %s", self.actor, self.tier, levels[level].tier, reason)
        self._level = level
        self.tier = levels[level].tier
        self.model = levels[level].labels[0]
        return True


class Scheduler:
    """Backends, their capacity, the tier plan per agent type, and the accounting.

    Build it with :func:`open_scheduler` (which owns the backends' HTTP clients), or directly
    from backends you close yourself.
    """

    def __init__(
        self, models: ModelsSection, backends: Mapping[str, ModelBackend], *,
        agents: Iterable[type[Agent]] = (),
    ) -> None:  # fmt: skip
        missing = sorted(set(models.backends) - set(backends))
        if missing:
            raise ValueError(f"no backend object for {', '.join(missing)} (see [models.backends])")
        self.models = models
        self.accounting = Accounting(models.prices)
        self._backends = dict(backends)
        self._capacity = {
            name: Capacity(name, b.max_concurrent) for name, b in models.backends.items()
        }
        self._defaults: dict[str, tuple[str | None, str | None, int]] = {}
        self._plans: dict[str, _Plan] = {}
        self._cooldown: dict[str, float] = {}  # label -> trio time its retry-after ends
        self._labels: dict[str, tuple[str, str]] = {}  # label -> (backend, model), memoised
        self.register_agents(agents)

    def register_agents(self, agents: Iterable[type[Agent]]) -> None:
        """Learn agent classes' own ``tier`` / ``model`` (the config still wins over them)."""
        for cls in agents:
            escalate_after = getattr(cls, "escalate_after", 2)
            self._defaults[cls.agent_type] = (
                cls.tier,
                cls.model,
                escalate_after if isinstance(escalate_after, int) else 2,
            )
            self._plans.pop(cls.agent_type, None)

    def session(self, actor_id: str, agent_type: str, *, pin: str | None = None) -> ModelSession:
        """A new session for one actor, on its agent type's starting tier.

        ``pin`` serves every call from that tier alone: no fallback to another tier, no
        escalation (``agentrt eval`` measures one tier at a time this way).

        Raises:
            ConfigError: the agent type's tier lists no models (only when the scheduler was
                built without ``load_config``'s checks), or ``pin`` names a tier without models.
        """
        if pin is not None:
            models = self.models.tiers.of(pin) if pin in TIERS else []
            if not models:
                raise ConfigError(
                    "agentrt.toml", f"$.models.tiers.{pin}",
                    f"tier {pin!r} lists no models; the tiers with models are "
                    f"{', '.join(t for t in TIERS if self.models.tiers.of(t)) or 'none'}",
                )  # fmt: skip
            escalate_after = self._plan_for(agent_type).escalate_after
            plan = _Plan((_Level(pin, tuple(models)),), escalate_after)
            return ModelSession(self, actor_id, agent_type, plan)
        return ModelSession(self, actor_id, agent_type, self._plan_for(agent_type))

    def _plan_for(self, agent_type: str) -> _Plan:
        plan = self._plans.get(agent_type)
        if plan is None:
            plan = self._plans[agent_type] = self._plan(agent_type)
        return plan

    def _split(self, label: str) -> tuple[str, str]:
        parts = self._labels.get(label)
        if parts is None:
            parts = self._labels[label] = split_label(label)
        return parts

    def backend(self, name: str) -> ModelBackend:
        return self._backends[name]

    def capacity(self, backend: str) -> CapacityStats:
        """The queue of one backend: slots in use, waiting calls, the most ever in use."""
        return self._capacity[backend].statistics()

    def snapshot(self) -> list[ModelStats]:
        """Every counter, for the node's status (``NodeStatus.models``)."""
        return self.accounting.snapshot()

    def add_to_status(self, status: NodeStatus) -> None:
        """A node status hook: fills ``status.models``."""
        status.models = self.accounting.snapshot()

    def _plan(self, agent_type: str) -> _Plan:
        tiers = self.models.tiers
        own = self.models.agents.get(agent_type)
        cls_tier, cls_model, escalate_after = self._defaults.get(agent_type, (None, None, 2))
        tier: str | None
        if own is not None and (own.tier is not None or own.model):
            tier, model = own.tier, own.model
        else:
            tier, model = cls_tier, cls_model or ""
        if own is not None:
            escalate_after = own.escalate_after
        configured = [t for t in TIERS if tiers.of(t)]
        if model:
            first: str | None = tier or next((t for t in configured if model in tiers.of(t)), None)
            levels = [_Level(first or PINNED, (model,))]
            if first is not None:
                above = [t for t in configured if _rank(t) > _rank(first)]
                levels += [_Level(t, tuple(tiers.of(t))) for t in above]
        else:
            start: str = tier or (configured[0] if configured else "small")
            if start not in configured:
                raise ConfigError(
                    "agentrt.toml", f"$.models.agents.{agent_type}", f"agent type "
                    f"{agent_type!r} starts on tier {start!r}, which lists no models; add "
                    f"models to [models.tiers] {start} or give the agent another tier",
                )  # fmt: skip
            levels = [_Level(t, tuple(tiers.of(t))) for t in configured if _rank(t) >= _rank(start)]
        return _Plan(tuple(levels), escalate_after)

    # ------------------------------------------------------------------ one call

    async def _serve(
        self, session: ModelSession, request: ChatRequest, on_text: Callable[[str], None] | None
    ) -> ChatResponse:
        queue_deadline = min(
            trio.current_effective_deadline(), trio.current_time() + self.models.queue_timeout_s
        )
        attempts: list[str] = []
        last: list[_Failure] = []
        levels = session._plan.levels
        level = session._level
        start_tier = session.tier
        while level < len(levels):
            try:
                response, label = await self._serve_level(
                    session, levels[level], request, on_text, attempts, last,
                    queue_deadline,
                )  # fmt: skip
            except _NextLevel as nxt:
                if nxt.escalate and level + 1 < len(levels):
                    session._move_to(level + 1, "the conversation no longer fits the context")
                level += 1
                continue
            session.model = label
            return response
        cause = last[-1].error if last else None
        raise NoModelAvailable(session.actor, start_tier, attempts) from cause

    async def _serve_level(
        self, session: ModelSession, level: _Level, request: ChatRequest,
        on_text: Callable[[str], None] | None, attempts: list[str], last: list[_Failure],
        queue_deadline: float,
    ) -> tuple[ChatResponse, str]:  # fmt: skip
        tier = level.tier
        pending = list(level.labels)
        tries = dict.fromkeys(pending, 0)
        while pending:
            ready, cooling = pending, []
            if self._cooldown:  # some model answered 429 lately (the common case skips this)
                now = trio.current_time()
                for lb in [lb for lb, until in self._cooldown.items() if until <= now]:
                    del self._cooldown[lb]
                ready = [lb for lb in pending if lb not in self._cooldown]
                cooling = [lb for lb in pending if lb in self._cooldown]
            for lb in cooling:
                if self._cooldown[lb] >= queue_deadline:  # its retry-after outlasts the call
                    pending.remove(lb)
                    attempts.append(f"{lb} ({tier}): cooling down after a 429 past the deadline")
            cooling = [lb for lb in cooling if lb in pending]
            if not ready:
                if not cooling:
                    break
                await trio.sleep_until(min(self._cooldown[lb] for lb in cooling))
                continue
            wake = min([queue_deadline, *(self._cooldown[lb] for lb in cooling)])
            label, cap = await self._acquire(session, tier, ready, wake, queue_deadline)
            if cap is None:
                continue  # a cooling model is ready again: choose afresh
            if last and last[-1].label != label:
                prev = last[-1]
                self.accounting.fell_back(session.agent_type, prev.tier, prev.label)
            tries[label] += 1
            backend_name, model = self._split(label)
            try:
                response, latency = await self._call(
                    self._backends[backend_name], msgspec.structs.replace(request, model=model),
                    on_text,
                )  # fmt: skip
            except ModelError as exc:
                name = type(exc).__name__
                self.accounting.failed(session.agent_type, tier, label, name)
                attempts.append(f"{label} ({tier}): {name}: {exc.problem}")
                last.append(_Failure(tier, label, exc))
                if isinstance(exc, ModelRequestRejected):
                    raise ModelRequestRejected(
                        backend_name, model, f"{exc.problem}; a refused request is a "
                        "configuration problem (key, model name, request), so no other model "
                        f"was tried: check [models.backends.{backend_name}] and the model "
                        "name in agentrt.toml", status=exc.status,
                    ) from exc  # fmt: skip
                if isinstance(exc, ToolCallAsText):
                    raise  # the model's behaviour: the caller feeds it back (or escalates)
                if isinstance(exc, ContextTooLong | MalformedModelOutput):
                    raise _NextLevel(escalate=isinstance(exc, ContextTooLong)) from exc
                if isinstance(exc, RateLimited):
                    self._cooldown[label] = trio.current_time() + exc.retry_after
                    if tries[label] < MAX_TRIES_PER_MODEL:
                        continue
                pending.remove(label)
                continue
            finally:
                cap.release()
            usage = (response.usage.input_tokens, response.usage.output_tokens)
            self.accounting.answered(session.agent_type, tier, label, usage, latency)
            return response, label
        raise _NextLevel(escalate=False)

    async def _acquire(
        self, session: ModelSession, tier: str, ready: list[str], wake: float,
        queue_deadline: float,
    ) -> tuple[str, Capacity | None]:  # fmt: skip
        """A slot for the first ready model whose backend frees one; ``(_, None)`` at ``wake``.

        Raises:
            ModelTimeout: the queue bound (``queue_timeout_s``) passed first.
        """
        caps: list[Capacity] = []
        for lb in ready:
            cap = self._capacity[self._split(lb)[0]]
            if cap.try_acquire():  # the fast path: a free slot, no queue, no cancel scope
                return lb, cap
            if cap not in caps:
                caps.append(cap)
        started = trio.current_time()
        with trio.CancelScope(deadline=wake):
            got = await acquire_any(caps, session.actor)
            label = next(lb for lb in ready if self._split(lb)[0] == got.backend)
            waited = trio.current_time() - started
            self.accounting.waited(session.agent_type, tier, label, waited)
            return label, got
        if trio.current_time() >= queue_deadline:
            self.accounting.gave_up_waiting(session.agent_type, tier, ready[0])
            limits = ", ".join(f"{c.backend} max_concurrent={c.limit}" for c in caps)
            raise ModelTimeout(
                ", ".join(c.backend for c in caps),
                ", ".join(ready),
                f"no free slot for {session.actor} on tier {tier!r} within queue_timeout_s = "
                f"{self.models.queue_timeout_s:g} s ({limits}); raise max_concurrent, add "
                "models to the tier, or raise [models] queue_timeout_s",
            )
        return "", None

    async def _call(
        self, backend: ModelBackend, request: ChatRequest, on_text: Callable[[str], None] | None
    ) -> tuple[ChatResponse, float]:
        started = trio.current_time()
        if on_text is None:
            response = await backend.chat(request)
        else:
            response = await _streamed(backend, request, on_text)
        return response, response.latency_s or (trio.current_time() - started)


class _Failure(NamedTuple):
    tier: str
    label: str
    error: ModelError


def _rank(tier: str) -> int:
    return TIERS.index(tier) if tier in TIERS else -1


async def _streamed(
    backend: ModelBackend, request: ChatRequest, on_text: Callable[[str], None]
) -> ChatResponse:
    stream = backend.stream(request)
    response: ChatResponse | None = None
    try:
        async for chunk in stream:
            if chunk.text:
                on_text(chunk.text)
            if chunk.response is not None:
                response = chunk.response
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await aclose()
    if response is None:
        raise MalformedModelOutput(
            backend.name, request.model, "the stream ended without its final message; this is "
            "a backend bug or a cut connection (retry, or report it with the server's version)",
        )  # fmt: skip
    return response


@asynccontextmanager
async def open_scheduler(
    models: ModelsSection, *, agents: Iterable[type[Agent]] = (),
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[Scheduler]:  # fmt: skip
    """Build every ``[models.backends]`` entry (keys read from the environment) and a
    ``Scheduler`` over them; the backends' HTTP clients are closed when the block exits.

    Raises:
        ConfigError: a backend's ``api_key_env`` variable is not set.
    """
    from .models import make_backend

    env = os.environ if environ is None else environ
    async with AsyncExitStack() as stack:
        backends: dict[str, ModelBackend] = {}
        for name, b in models.backends.items():
            api_key = None
            if b.api_key_env:
                api_key = env.get(b.api_key_env)
                if not api_key:
                    raise ConfigError(
                        "agentrt.toml", f"$.models.backends.{name}.api_key_env",
                        f"environment variable {b.api_key_env} is not set; export it (the "
                        f"key of backend {name!r}) before starting the node",
                    )  # fmt: skip
            backend = make_backend(
                b.kind, name=name, url=b.url, api_key=api_key, timeout_s=b.timeout_s,
                headers=b.headers or None,
            )  # fmt: skip
            stack.push_async_callback(backend.aclose)
            backends[name] = backend
        yield Scheduler(models, backends, agents=agents)


def open_models(
    models: ModelsSection | None, *, agents: Iterable[type[Agent]] = ()
) -> AbstractAsyncContextManager[Scheduler | None]:
    """``open_scheduler`` for a ``[models]`` section, or ``None`` when the config has none."""
    if models is None:
        return nullcontext(None)
    return open_scheduler(models, agents=agents)
