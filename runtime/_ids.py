"""Actor identity: ``AgentId(type, key)``, printed and parsed as ``type/key``."""

from __future__ import annotations

import re

import msgspec

__all__ = ["AgentId"]

# A type is one NATS subject token; a key may hold dots (it becomes the subject's tail) but no
# wildcards, whitespace or empty tokens, so every id maps to exactly one subject and back.
_TYPE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")
_KEY_RE = re.compile(r"[A-Za-z0-9_@:+=-]+(?:\.[A-Za-z0-9_@:+=-]+)*\Z")


class AgentId(msgspec.Struct, frozen=True, order=True):
    """Names one actor: the agent type (a class registered on some node) and a key.

    Actors are virtual: sending to an id activates the actor for that key on first use.
    """

    type: str
    key: str = "default"

    def __post_init__(self) -> None:
        if not _TYPE_RE.match(self.type):
            raise ValueError(
                f"agent type {self.type!r} is not valid: use letters, digits, '_' or '-', "
                "starting with a letter or '_' (at most 64 characters)"
            )
        if len(self.key) > 256 or not _KEY_RE.match(self.key):
            raise ValueError(
                f"agent key {self.key!r} is not valid: use letters, digits and _@:+=- "
                "with single dots between parts (at most 256 characters)"
            )

    @classmethod
    def parse(cls, text: str) -> AgentId:
        """Parse ``type/key`` (or a bare ``type``, meaning key ``default``).

        Raises:
            ValueError: the text is not a valid agent id; the message says which part.
        """
        type_, sep, key = text.partition("/")
        return cls(type_, key) if sep else cls(type_)

    def __str__(self) -> str:
        return f"{self.type}/{self.key}"
