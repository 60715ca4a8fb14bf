"""Agent classes and message types are checked when they are defined, with the fix in the error."""

from __future__ import annotations

import agentrt
import msgspec
import pytest
from agentrt import AgentDefinitionError, AgentId, RestartPolicy
from agentrt._messages import register_message

from .helpers import Ping, Pong


def test_handlers_are_found_by_message_tag() -> None:
    class Good(agentrt.Agent):
        async def on_ping(self, msg: Ping) -> Pong:
            return Pong(n=msg.n, node="", key="")

        async def helper(self) -> None:  # not on_*: not a handler
            pass

    assert set(Good.handlers) == {"test.ping"}
    assert Good.handlers["test.ping"].returns is Pong
    assert Good.agent_type == "Good"


def test_sync_handler_is_refused() -> None:
    with pytest.raises(AgentDefinitionError, match=r"Bad.on_ping must be `async def`"):

        class Bad(agentrt.Agent):
            def on_ping(self, msg: Ping) -> None:  # type: ignore[override]
                pass


def test_missing_annotation_is_refused_with_an_example() -> None:
    with pytest.raises(
        AgentDefinitionError, match=r"annotate the message parameter, e.g. `msg: Hello`"
    ):

        class Bad(agentrt.Agent):
            async def on_ping(self, msg):  # type: ignore[no-untyped-def]
                pass


def test_wrong_arity_is_refused() -> None:
    with pytest.raises(
        AgentDefinitionError,
        match=r"must take exactly \(self, msg: SomeMessage\); it takes \(self, a, b\)",
    ):

        class Bad(agentrt.Agent):
            async def on_ping(self, a: Ping, b: Ping) -> None:
                pass


def test_two_handlers_for_one_tag_are_refused() -> None:
    with pytest.raises(AgentDefinitionError, match=r"two handlers for 'test.ping': on_a and on_b"):

        class Bad(agentrt.Agent):
            async def on_a(self, msg: Ping) -> None:
                pass

            async def on_b(self, msg: Ping) -> None:
                pass


class Plain(msgspec.Struct):
    x: int


def test_untagged_message_type_is_refused_with_the_fix() -> None:
    with pytest.raises(
        AgentDefinitionError,
        match=r"needs a namespaced string tag, got None: declare "
        r"`class Plain\(agentrt.Message, tag='yourapp.plain'\)`",
    ):

        class Bad(agentrt.Agent):
            async def on_plain(self, msg: Plain) -> None:
                pass


def test_non_struct_message_is_refused() -> None:
    with pytest.raises(AgentDefinitionError, match=r"is not a message type"):

        class Bad(agentrt.Agent):
            async def on_text(self, msg: str) -> None:
                pass


def test_union_return_is_refused() -> None:
    with pytest.raises(AgentDefinitionError, match=r"returns one message type or None"):

        class Bad(agentrt.Agent):
            async def on_ping(self, msg: Ping) -> Ping | Pong:
                return msg


def test_invalid_agent_type_name_is_refused() -> None:
    with pytest.raises(AgentDefinitionError, match=r"agent type 'has space' is not valid"):

        class Bad(agentrt.Agent):
            agent_type = "has space"


def test_bad_class_attributes_are_refused() -> None:
    with pytest.raises(AgentDefinitionError, match=r"topics must be a tuple of strings"):

        class BadTopics(agentrt.Agent):
            topics = "news"  # type: ignore[assignment]

    with pytest.raises(AgentDefinitionError, match=r"restart must be an agentrt.RestartPolicy"):

        class BadRestart(agentrt.Agent):
            restart = {"backoff_s": 1}  # type: ignore[assignment]

    assert RestartPolicy().max_restarts == 10


def test_one_tag_for_two_classes_is_refused() -> None:
    class Dup(agentrt.Message, tag="test.ping"):
        other: int

    with pytest.raises(AgentDefinitionError, match=r"message tag 'test.ping' is used by both"):
        register_message(Dup)


def test_agent_ids_validate_and_print() -> None:
    assert str(AgentId("Greeter", "alice@example.com")) == "Greeter/alice@example.com"
    assert AgentId.parse("Greeter/a.b") == AgentId("Greeter", "a.b")
    assert AgentId.parse("Greeter") == AgentId("Greeter", "default")
    for bad in ("Gre eter/x", "Greeter/a..b", "Greeter/*", "Greeter/a>", "/x", "Greeter/"):
        with pytest.raises(ValueError, match="is not valid"):
            AgentId.parse(bad)
