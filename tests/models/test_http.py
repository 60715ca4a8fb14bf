"""The shared HTTP seam: retry-after in every form, and no httpx error ever escapes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from agentrt import ModelRequestRejected
from agentrt.models import ChatMessage, ChatRequest, OllamaBackend
from agentrt.models._http import parse_retry_after

NOW = datetime(2026, 12, 4, 18, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "12"}, 12.0),
        ({"retry-after": " 0.5 "}, 0.5),
        ({"retry-after": "Fri, 04 Dec 2026 18:00:30 GMT"}, 30.0),
        ({"retry-after": "Fri, 04 Dec 2026 17:59:00 GMT"}, 0.0),  # in the past: now
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # OpenAI's finer header first
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "nan"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == seconds


def test_nonpositive_timeouts_are_refused_at_construction() -> None:
    with pytest.raises(ValueError) as caught:
        OllamaBackend("local", "http://127.0.0.1:1", stall_timeout_s=0)
    assert str(caught.value) == (
        "backend 'local': timeout_s (120.0) and stall_timeout_s (0) must be positive"
    )


async def test_an_unusable_url_is_a_typed_error() -> None:
    backend = OllamaBackend("local", "ftp://127.0.0.1:1")
    ask = ChatRequest(model="m", messages=(ChatMessage(role="user", content="hi"),))
    with pytest.raises(ModelRequestRejected) as caught:
        await backend.chat(ask)
    await backend.aclose()
    assert str(caught.value).startswith(
        "model 'm' on backend 'local': the url 'ftp://127.0.0.1:1' cannot be used ("
    )
    assert str(caught.value).endswith("); set an http:// or https:// url")
