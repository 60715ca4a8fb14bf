"""The wire codec: round trips for any envelope, and a typed error for any bad bytes."""

from __future__ import annotations

import msgspec
import pytest
from agentrt import MalformedMessage
from agentrt._envelope import ContentType, Envelope, Kind, decode_envelope, encode, new_id
from agentrt._messages import lookup_message
from hypothesis import given
from hypothesis import strategies as st

from .helpers import Ping

text = st.text(max_size=40)
envelopes = st.builds(
    Envelope,
    id=text, kind=st.sampled_from(Kind), type=text, sender=text, recipient=text,
    payload=st.binary(max_size=256), correlation_id=text,
    deadline=st.floats(min_value=0, max_value=4e9, allow_nan=False), trace_id=text, span_id=text,
    content_type=st.sampled_from(ContentType),
)  # fmt: skip


@given(envelopes)
def test_any_envelope_round_trips(env: Envelope) -> None:
    assert decode_envelope(encode(env)) == env


@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_malformed_never_anything_else(data: bytes) -> None:
    try:
        decode_envelope(data)
    except MalformedMessage as exc:
        assert f"{len(data)} bytes are not an agentrt envelope" in str(exc)


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=100))
def test_messages_round_trip_through_their_registered_decoder(n: int, s: str) -> None:
    codec = lookup_message("test.ping")
    assert codec is not None
    msg = Ping(n=n, text=s)
    assert codec.msgpack.decode(encode(msg)) == msg
    assert codec.json.decode(msgspec.json.encode(msg)) == msg


def test_payload_of_the_wrong_shape_is_a_validation_error_with_a_path() -> None:
    codec = lookup_message("test.ping")
    assert codec is not None
    with pytest.raises(msgspec.ValidationError, match=r"Expected `int`, got `str` - at `\$.n`"):
        codec.msgpack.decode(msgspec.msgpack.encode({"type": "test.ping", "n": "x"}))


def test_ids_are_unique() -> None:
    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000
