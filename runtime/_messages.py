"""Message types: namespaced tags, one registry per process, one decoder per type.

A message is a ``msgspec.Struct`` with a string ``tag`` such as ``"quickstart.hello"``. The tag
travels in the envelope, and the receiving node decodes the payload with the decoder built once
for the registered type. Tags are namespaced (they contain a dot) because the bare class name
collides as soon as two teams write a ``Request`` class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from ._errors import AgentDefinitionError

__all__ = ["Message", "MessageCodec", "lookup_message", "message_tag", "register_message"]


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Convenience base for messages: frozen, keyword-only, found by tag without registration.

    ``class Hello(agentrt.Message, tag="app.hello")`` is all a message needs. Plain
    ``msgspec.Struct`` classes with a namespaced tag work too once registered (handler
    annotations register them automatically).
    """


@dataclass(frozen=True, slots=True)
class MessageCodec:
    """A registered message type with its decoders, built once."""

    type: type[msgspec.Struct]
    tag: str
    msgpack: msgspec.msgpack.Decoder[Any]
    json: msgspec.json.Decoder[Any]


_registry: dict[str, MessageCodec] = {}


def message_tag(cls: object, *, where: str = "") -> str:
    """Return the namespaced tag of a message class, or explain how to declare one.

    Raises:
        AgentDefinitionError: ``cls`` is not a Struct with a namespaced string tag.
    """
    at = f" (in {where})" if where else ""
    if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
        raise AgentDefinitionError(
            f"{cls!r}{at} is not a message type: messages are msgspec.Struct subclasses, "
            "e.g. `class Hello(agentrt.Message, tag='app.hello')`"
        )
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str) or "." not in tag.strip("."):
        raise AgentDefinitionError(
            f"message type {cls.__qualname__}{at} needs a namespaced string tag, got {tag!r}: "
            f"declare `class {cls.__name__}(agentrt.Message, tag='yourapp.{cls.__name__.lower()}')`"
        )
    return tag


def register_message(cls: type[msgspec.Struct], *, where: str = "") -> MessageCodec:
    """Register a message type under its tag (idempotent for the same class).

    Raises:
        AgentDefinitionError: the class has no namespaced tag, or another class owns the tag.
    """
    tag = message_tag(cls, where=where)
    known = _registry.get(tag)
    if known is not None:
        if known.type is cls:
            return known
        if f"{known.type.__module__}.{known.type.__qualname__}" != (
            f"{cls.__module__}.{cls.__qualname__}"
        ):
            raise AgentDefinitionError(
                f"message tag {tag!r} is used by both {known.type.__module__}."
                f"{known.type.__qualname__} and {cls.__module__}.{cls.__qualname__}; "
                "give one of them another tag"
            )
        # Same qualified name: the defining module was reloaded; the newest class wins.
    codec = MessageCodec(
        type=cls,
        tag=tag,
        msgpack=msgspec.msgpack.Decoder(cls),
        json=msgspec.json.Decoder(cls),
    )
    _registry[tag] = codec
    return codec


def _register_message_subclasses() -> None:
    pending: list[type[msgspec.Struct]] = list(Message.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        tag = cls.__struct_config__.tag
        if isinstance(tag, str) and tag not in _registry:
            register_message(cls)


def lookup_message(tag: str) -> MessageCodec | None:
    """Find the codec for a tag; ``Message`` subclasses are found without registration."""
    codec = _registry.get(tag)
    if codec is None:
        # msgspec sets the tag after __init_subclass__ runs, so subclasses of Message are
        # collected lazily, on the first miss, instead of at class creation.
        _register_message_subclasses()
        codec = _registry.get(tag)
    return codec
