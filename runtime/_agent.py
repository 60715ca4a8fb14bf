"""Agents: Python classes whose typed ``on_*`` methods handle messages.

Handlers are found and checked when the class is defined, so a wrong signature fails at import
with the class, the method and the fix, not at the first message in production.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

import msgspec

from ._errors import AgentDefinitionError, ConfigError
from ._ids import AgentId
from ._messages import message_tag, register_message

if TYPE_CHECKING:
    from ._node import Node
    from ._scheduler import ModelSession

__all__ = ["Agent", "Handler", "RestartPolicy"]

R = TypeVar("R", bound=msgspec.Struct)

_LIFECYCLE = frozenset({"on_start", "on_stop"})


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How an actor is restarted after its handler raises.

    Attributes:
        backoff_s: pause before the first restart; doubled on each consecutive crash.
        max_backoff_s: cap on that pause.
        max_restarts: crashes allowed within ``window_s`` before the actor is stopped; while
            stopped, messages to it get ``AgentUnavailable`` until the window has passed.
        window_s: the window for ``max_restarts``.
    """

    backoff_s: float = 0.05
    max_backoff_s: float = 5.0
    max_restarts: int = 10
    window_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Handler:
    """One handler method: the message type it takes and the reply type it declares."""

    name: str
    message_type: type[msgspec.Struct]
    tag: str
    returns: type[msgspec.Struct] | None
    func: Callable[[Any, Any], Awaitable[msgspec.Struct | None]]


def _reply_type(cls: type, name: str, hint: Any) -> type[msgspec.Struct] | None:
    if hint is None or hint is type(None):
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if len(args) != 1:
            raise AgentDefinitionError(
                f"{cls.__qualname__}.{name} returns {hint!r}: a handler returns one message type "
                "or None; use a tagged union message if you need alternatives"
            )
        hint = args[0]
    register_message(hint, where=f"{cls.__qualname__}.{name} return annotation")
    return typing.cast(type[msgspec.Struct], hint)


def _collect_handlers(cls: type) -> dict[str, Handler]:
    handlers: dict[str, Handler] = {}
    for name, func in inspect.getmembers(cls, inspect.isfunction):
        if not name.startswith("on_") or name in _LIFECYCLE:
            continue
        where = f"{cls.__qualname__}.{name}"
        if not inspect.iscoroutinefunction(func):
            raise AgentDefinitionError(
                f"{where} must be `async def` (handlers run on the actor's trio task)"
            )
        params = list(inspect.signature(func).parameters.values())
        if len(params) != 2:
            raise AgentDefinitionError(
                f"{where} must take exactly (self, msg: SomeMessage); it takes "
                f"({', '.join(p.name for p in params)})"
            )
        try:
            hints = typing.get_type_hints(func)
        except Exception as exc:
            raise AgentDefinitionError(
                f"cannot resolve the annotations of {where}: {exc}; define message types at "
                "module level before the agent class"
            ) from exc
        msg_param = params[1].name
        if msg_param not in hints:
            raise AgentDefinitionError(
                f"{where}: annotate the message parameter, e.g. `{msg_param}: Hello`, "
                "so agentrt knows which message type it handles"
            )
        msg_type = hints[msg_param]
        tag = message_tag(msg_type, where=where)
        register_message(msg_type, where=where)
        if tag in handlers:
            raise AgentDefinitionError(
                f"{cls.__qualname__} has two handlers for {tag!r}: {handlers[tag].name} and "
                f"{name}; keep one"
            )
        returns = _reply_type(cls, name, hints.get("return"))
        handlers[tag] = Handler(name, msg_type, tag, returns, func)
    return handlers


class Agent:
    """Base class of every agent.

    Subclass it and write ``async def on_<anything>(self, msg: SomeMessage) -> Reply | None``
    methods. Each actor (one instance per key) handles one message at a time. Class attributes:

    * ``agent_type``: the name other actors address it by (default: the class name).
    * ``topics``: pub/sub topics this agent type receives (one actor of the type per message,
      load-balanced across replicas).
    * ``restart``: the :class:`RestartPolicy` applied when a handler raises.
    * ``mailbox_size``: messages queued per actor before senders get ``Overloaded``.
    * ``tier`` / ``model``: the model tier (``small``/``medium``/``large``) or the
      ``"<backend>:<model>"`` its actors start on; ``[models.agents.<type>]`` overrides them.
    """

    agent_type: ClassVar[str] = ""
    topics: ClassVar[tuple[str, ...]] = ()
    restart: ClassVar[RestartPolicy] = RestartPolicy()
    mailbox_size: ClassVar[int] = 256
    handlers: ClassVar[dict[str, Handler]] = {}
    tier: ClassVar[str | None] = None
    model: ClassVar[str | None] = None

    id: AgentId
    _node: Node

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.handlers = _collect_handlers(cls)
        if "agent_type" not in cls.__dict__:
            cls.agent_type = cls.__name__
        try:
            AgentId(cls.agent_type)
        except ValueError as exc:
            raise AgentDefinitionError(f"{cls.__qualname__}: {exc}") from None
        if not isinstance(cls.topics, tuple) or not all(isinstance(t, str) for t in cls.topics):
            raise AgentDefinitionError(
                f"{cls.__qualname__}.topics must be a tuple of strings, got {cls.topics!r}"
            )
        if not isinstance(cls.restart, RestartPolicy):
            raise AgentDefinitionError(
                f"{cls.__qualname__}.restart must be an agentrt.RestartPolicy"
            )
        if cls.tier not in (None, "small", "medium", "large"):
            raise AgentDefinitionError(
                f"{cls.__qualname__}.tier is {cls.tier!r}: use 'small', 'medium', 'large' or None"
            )
        if cls.model is not None and not re.fullmatch(r"[A-Za-z0-9_-]+:.+", cls.model):
            raise AgentDefinitionError(
                f"{cls.__qualname__}.model is {cls.model!r}: write '<backend>:<model>', e.g. "
                "'local:llama3.2:1b'"
            )

    @property
    def node_name(self) -> str:
        """Name of the node this actor runs on."""
        return self._node.name

    async def on_start(self) -> None:
        """Called once per activation, before the first message; override to set up state."""

    async def on_stop(self) -> None:
        """Called when the actor is deactivated (idle, restart, node drain); release resources."""

    @overload
    async def send(self, to: AgentId, msg: msgspec.Struct, *, expect: type[R]) -> R: ...

    @overload
    async def send(self, to: AgentId, msg: msgspec.Struct) -> msgspec.Struct | None: ...

    async def send(
        self, to: AgentId, msg: msgspec.Struct, *, expect: type[R] | None = None
    ) -> msgspec.Struct | None:
        """Send a request to another actor and return its typed reply.

        The caller's trio deadline travels with the message; without one, the node's default
        request deadline applies, so a call never waits forever.

        Raises:
            DeliveryError: a subclass saying why no reply came (see ``agentrt.errors`` tree).
        """
        return await self._node.send(to, msg, expect=expect, sender=str(self.id))

    async def call_tool(self, name: str, args: Any) -> Any:
        """Call a tool through the schema gate (see ``Node.call_tool``).

        Raises:
            GateError: the arguments (or the result) are invalid; nothing ran.
        """
        return await self._node.call_tool(name, args, sender=str(self.id))

    @property
    def models(self) -> ModelSession:
        """This actor's model session, made on first use and kept while the actor lives (so an
        escalation sticks across its messages; ``models.reset()`` goes back down).

        Raises:
            ConfigError: the node has no model scheduler (no ``[models]`` in agentrt.toml).
        """
        session: ModelSession | None = self.__dict__.get("_models_session")
        if session is None:
            scheduler = getattr(self._node, "scheduler", None)
            if scheduler is None:
                raise ConfigError(
                    "agentrt.toml", "$.models", f"{self.id} uses self.models, but node "
                    f"{self.node_name} has no model scheduler; add a [models] section "
                    "(backends and tiers, see docs/scheduler.md)",
                )  # fmt: skip
            session = scheduler.session(str(self.id), self.agent_type)
            self.__dict__["_models_session"] = session
        return session

    async def publish(self, topic: str, msg: msgspec.Struct, *, key: str = "default") -> None:
        """Publish an event to a topic; every agent type subscribed to it gets one copy."""
        await self._node.publish(topic, msg, key=key, sender=str(self.id))
