"""The wire format: one ``Envelope`` per NATS message, msgpack-encoded, payload opaque.

The envelope is ``array_like`` (compact and fast to decode), so its fields are append-only:
new fields go at the end with a default and old fields never change type.
"""

from __future__ import annotations

import enum
import itertools
import os

import msgspec

from ._errors import (
    AgentrtError,
    AgentUnavailable,
    DeadlineExceeded,
    GateError,
    HandlerFailed,
    MalformedMessage,
    NoHandler,
    Overloaded,
    RemoteError,
    UnknownMessageType,
    Violation,
)

__all__ = [
    "ContentType",
    "Envelope",
    "ErrorCode",
    "ErrorInfo",
    "Kind",
    "decode_envelope",
    "decode_error",
    "encode",
    "error_from_info",
    "new_id",
]


class Kind(enum.IntEnum):
    """What an envelope is for; decides whether a reply is owed."""

    REQUEST = 1
    EVENT = 2
    REPLY = 3
    ERROR = 4


class ContentType(enum.IntEnum):
    """How the payload is encoded: msgpack between nodes, JSON from the CLI and other clients."""

    MSGPACK = 0
    JSON = 1


class Envelope(msgspec.Struct, array_like=True, kw_only=True):
    """One message on the bus.

    Attributes:
        id: unique per message; the idempotency key for at-least-once delivery.
        kind: request, event, reply or error.
        type: the payload's message tag (``""`` for an empty reply).
        sender: who sent it (``type/key`` of an actor, or ``client:<name>``).
        recipient: the agent id (``type/key``) or topic it is for.
        correlation_id: on replies and errors, the ``id`` of the request they answer.
        deadline: wall-clock UNIX time after which nobody waits for an answer; 0 = none.
        trace_id: the trace this message belongs to (W3C trace-context sized, hex).
        span_id: the span of the sender that caused this message.
        content_type: encoding of ``payload``.
        payload: the encoded message.
    """

    id: str
    kind: Kind
    type: str
    sender: str
    recipient: str
    payload: bytes
    correlation_id: str = ""
    deadline: float = 0.0
    trace_id: str = ""
    span_id: str = ""
    content_type: ContentType = ContentType.MSGPACK


class ErrorCode(enum.StrEnum):
    """Why a request failed on the remote side; decides the exception class the caller gets."""

    HANDLER_FAILED = "handler_failed"
    NO_HANDLER = "no_handler"
    UNKNOWN_TYPE = "unknown_type"
    MALFORMED = "malformed"
    DEADLINE = "deadline"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    GATE_REJECTED = "gate_rejected"


class ErrorInfo(msgspec.Struct, kw_only=True):
    """Payload of an ``ERROR`` envelope (``stage``/``violations`` only for ``GATE_REJECTED``)."""

    code: ErrorCode
    message: str
    remote_type: str = ""
    agent_id: str = ""
    stage: str = ""
    violations: list[Violation] = []


_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_error_decoder = msgspec.msgpack.Decoder(ErrorInfo)

# Ids: a random per-process prefix plus a counter: unique across processes, cheap to make.
_id_prefix = os.urandom(6).hex()
_id_counter = itertools.count(1)


def new_id() -> str:
    """Return a new message id, unique across processes."""
    return f"{_id_prefix}{next(_id_counter):x}"


def decode_envelope(data: bytes) -> Envelope:
    """Decode one envelope from bus bytes.

    Raises:
        MalformedMessage: the bytes are not an agentrt envelope.
    """
    try:
        return _envelope_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedMessage(
            f"{len(data)} bytes are not an agentrt envelope ({exc}); "
            "publish with agentrt.open_client() or the `agentrt call` command"
        ) from exc


_ERROR_CLASSES: dict[ErrorCode, type[RemoteError]] = {
    ErrorCode.HANDLER_FAILED: HandlerFailed,
    ErrorCode.NO_HANDLER: NoHandler,
    ErrorCode.UNKNOWN_TYPE: UnknownMessageType,
    ErrorCode.MALFORMED: MalformedMessage,
}


def decode_error(env: Envelope) -> ErrorInfo:
    """Decode the payload of an ``ERROR`` envelope (a broken one becomes ``MALFORMED``)."""
    try:
        return _error_decoder.decode(env.payload)
    except msgspec.DecodeError as exc:
        return ErrorInfo(code=ErrorCode.MALFORMED, message=f"undecodable error reply ({exc})")


def error_from_info(
    info: ErrorInfo, recipient: str, *, deadline_s: float, elapsed_s: float
) -> AgentrtError:
    """Build the most specific exception for a remote (or local) failure, on the caller's side."""
    if info.code is ErrorCode.GATE_REJECTED:
        return GateError(recipient, info.stage or "input", info.violations)
    if info.code is ErrorCode.DEADLINE:
        return DeadlineExceeded(recipient, deadline_s, elapsed_s)
    if info.code is ErrorCode.OVERLOADED:
        return Overloaded(info.message, recipient=recipient)
    if info.code is ErrorCode.UNAVAILABLE:
        return AgentUnavailable(info.message, recipient=recipient)
    cls = _ERROR_CLASSES.get(info.code, RemoteError)
    return cls(
        info.message, remote_type=info.remote_type, agent_id=info.agent_id, recipient=recipient
    )
