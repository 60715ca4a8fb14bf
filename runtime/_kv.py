"""A JetStream key-value bucket spoken over the core protocol on the node's own bus.

A KV bucket is a stream ``KV_<bucket>`` over the subjects ``$KV.<bucket>.>`` plus a few JSON
API requests, so the trio client (``_trionats.py``) needs no JetStream library and no second
connection. What is used, and why:

- ``$JS.API.STREAM.CREATE.<stream>``: idempotent for us; "already in use" (another node made
  it first, or with other limits) is fine, since every reader copes with any of its limits.
- a request to ``$KV.<bucket>.<key>``: the value, answered by a PubAck (or refused by the
  broker when the node's NATS user may not write that key).
- ``$JS.API.DIRECT.GET.<stream>`` with ``last_by_subj`` (the stream has ``allow_direct``): one
  request/reply answered by any server holding the stream, without a consumer.
- an ephemeral push consumer with ``deliver_policy=last_per_subject``: replays the current value
  of every key, then delivers updates (``watch``).
- a publish to ``$KV.<bucket>.<key>`` with the header ``KV-Operation: DEL``: the delete marker
  (``delete``); a normal write, so the stream's ``deny_delete`` does not refuse it.

Without JetStream every API subject has no responders: ``ensure`` returns False and the
caller decides how to carry on without the bucket.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import msgspec
import trio

from ._bus import MessageHandler, Subscription, Transport
from ._envelope import new_id
from ._errors import AgentUnavailable, BusError

__all__ = ["KvBucket", "KvEntry"]

API_TIMEOUT_S = 5.0
_STREAM_IN_USE = 10058  # JetStream error code: stream name already in use
_NOT_FOUND = "404"
_OPERATION = "KV-Operation"  # header of delete / purge markers


class KvEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One key's current value, as the server stored it.

    Attributes:
        value: the bytes.
        seq: its sequence number in the stream.
        stored_at: when the server stored it (Unix seconds from the server's own stamp, which
            the writer cannot choose), or NaN if the server sent none.
    """

    value: bytes
    seq: int
    stored_at: float


def _timestamp(stamp: str) -> float:
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return math.nan


class KvBucket:
    """One JetStream KV bucket seen through one bus connection.

    Args:
        bus: the node's connection.
        bucket: the bucket's name (``agentrt_tools_<cluster>``); keys are NATS subject tokens.
        max_age_s: entries older than this are purged by the server (0 = kept forever).
    """

    def __init__(self, bus: Transport, bucket: str, *, max_age_s: float = 0.0) -> None:
        self._bus = bus
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.prefix = f"$KV.{bucket}."
        self.max_age_s = max_age_s
        self.available = True

    def subject(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def key_of(self, subject: str) -> str | None:
        """The key of a subject of this bucket, or None for any other subject."""
        return subject[len(self.prefix) :] if subject.startswith(self.prefix) else None

    async def _api(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        with trio.fail_after(API_TIMEOUT_S):
            reply = await self._bus.request(subject, json.dumps(body).encode())
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    async def ensure(self) -> bool:
        """Create the bucket's stream if needed; False (``available`` too) without JetStream.

        Raises:
            BusError: JetStream refused the stream for another reason than "already exists".
        """
        config = {
            "name": self.stream, "subjects": [f"{self.prefix}>"], "retention": "limits",
            "max_msgs_per_subject": 1, "max_bytes": -1,
            "max_age": int(self.max_age_s * 1e9) if math.isfinite(self.max_age_s) else 0,
            "max_msg_size": -1, "storage": "file", "discard": "new", "num_replicas": 1,
            "duplicate_window": 0, "allow_rollup_hdrs": True, "deny_delete": True,
            "allow_direct": True,
        }  # fmt: skip
        try:
            answer = await self._api(f"$JS.API.STREAM.CREATE.{self.stream}", config)
        except (AgentUnavailable, trio.TooSlowError):
            self.available = False
            return False
        error = answer.get("error")
        if error and error.get("err_code") != _STREAM_IN_USE:
            raise BusError(f"JetStream refused the bucket {self.bucket}: {error}")
        self.available = True
        return True

    async def put(self, key: str, value: bytes) -> int:
        """Store ``value`` under ``key`` (replacing the previous value); returns its sequence.

        Raises:
            PermissionViolation: the broker does not let this node write that key.
            BusError: JetStream did not store it.
            trio.TooSlowError: no acknowledgement within the API timeout.
        """
        with trio.fail_after(API_TIMEOUT_S):
            reply = await self._bus.request(self.subject(key), value)
        return self._acked(key, reply.data, "store")

    async def delete(self, key: str) -> int:
        """Put a delete marker on ``key``: readers see no value, watchers see the marker.

        The marker is an ordinary publish to the key's subject with the header
        ``KV-Operation: DEL`` (what every KV client writes), so the stream's ``deny_delete``
        (which refuses the ``STREAM.MSG.DELETE`` API) does not block it, and the node needs
        no permission beyond the one to write the key. With one message kept per key the
        marker replaces the value.

        Raises:
            PermissionViolation: the broker does not let this node write that key.
            BusError: JetStream did not store the marker.
            trio.TooSlowError: no acknowledgement within the API timeout.
        """
        with trio.fail_after(API_TIMEOUT_S):
            reply = await self._bus.request(self.subject(key), b"", headers={_OPERATION: "DEL"})
        return self._acked(key, reply.data, "delete")

    def _acked(self, key: str, data: bytes, what: str) -> int:
        try:
            ack = json.loads(data) if data else {}
        except ValueError:
            ack = {"error": data[:200].decode(errors="replace")}
        if "error" in ack or "seq" not in ack:
            raise BusError(f"JetStream did not {what} the key {key!r} of {self.bucket}: {ack}")
        return int(ack["seq"])

    @staticmethod
    def is_tombstone(headers: dict[str, str] | None) -> bool:
        """Whether a delivered (or directly read) message is a delete or purge marker."""
        return headers is not None and headers.get(_OPERATION) in ("DEL", "PURGE")

    async def get(self, key: str) -> KvEntry | None:
        """The current entry of ``key`` (one direct-get round trip), or None if there is none.

        Raises:
            AgentUnavailable: nobody answers direct gets for the stream (no JetStream, or the
                stream is gone).
            BusError: the server answered with an error status.
            trio.TooSlowError: no answer within the API timeout.
        """
        body = json.dumps({"last_by_subj": self.subject(key)}).encode()
        with trio.fail_after(API_TIMEOUT_S):
            reply = await self._bus.request(f"$JS.API.DIRECT.GET.{self.stream}", body)
        headers = reply.headers or {}
        status = headers.get("Status")
        if status == _NOT_FOUND or self.is_tombstone(headers):
            return None
        if status:
            raise BusError(
                f"direct get of {key!r} from {self.bucket} failed: {status} "
                f"{headers.get('Description', '')}"
            )
        return KvEntry(
            value=reply.data, seq=int(headers.get("Nats-Sequence", 0)),
            stored_at=_timestamp(headers.get("Nats-Time-Stamp", "")),
        )  # fmt: skip

    async def watch(self, handler: MessageHandler) -> tuple[Subscription, int]:
        """Deliver the current value of every key to ``handler``, then every update.

        ``handler`` runs in the bus reader and is subscribed before the consumer exists, so
        no delivery is missed; it also sees heartbeats (messages without data, not on a key's
        subject) and delete markers (``is_tombstone(m.headers)``, counted in the replay).
        Returns the subscription (unsubscribe to stop) and how many keys the replay holds.

        Raises:
            BusError: JetStream refused the consumer.
        """
        inbox = f"_INBOX.{new_id()}"
        subscription = await self._bus.subscribe(inbox, handler=handler)
        consumer = {
            "stream_name": self.stream,
            "config": {
                "deliver_subject": inbox, "deliver_policy": "last_per_subject",
                "ack_policy": "none", "filter_subject": f"{self.prefix}>",
                "mem_storage": True, "inactive_threshold": 60_000_000_000,
                "flow_control": False, "num_replicas": 1,
            },
        }  # fmt: skip
        answer = await self._api(f"$JS.API.CONSUMER.CREATE.{self.stream}", consumer)
        if "error" in answer:
            await subscription.unsubscribe()
            raise BusError(f"JetStream refused a consumer on {self.bucket}: {answer['error']}")
        return subscription, int(answer.get("num_pending", 0))
