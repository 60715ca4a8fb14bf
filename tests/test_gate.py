"""The gate pipeline: typed tools, sender/receiver checks, the fallback ladder, metrics."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from agentrt import GateError, NodeConfig, open_client, open_node
from agentrt._connect import open_bus
from agentrt._envelope import (
    ContentType,
    Envelope,
    ErrorCode,
    Kind,
    decode_envelope,
    decode_error,
    encode,
)
from agentrt._gate import Gate, Outcome
from agentrt._tools import Fallback, ToolRegistry, ToolSpec, make_tool, tool

CALLS: list[dict[str, Any]] = []


@tool(pure=True)
def add(a: int, b: int = 0) -> int:
    """Add two integers.

    More text that the model does not need."""
    CALLS.append({"a": a, "b": b})
    return a + b


@tool(name="math.broken")
def broken(x: int) -> int:
    """Claims to return an integer, returns a string."""
    return "not an int"  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


def test_tool_schema_comes_from_the_signature() -> None:
    assert add.spec.name == "add"
    assert add.spec.description == "Add two integers."
    assert add.spec.input_schema == {
        "title": "add_args",
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "default": 0}},
        "required": ["a"],
        "additionalProperties": False,
    }
    assert add.spec.output_schema == {"type": "integer"}
    assert add.spec.pure


class Script:
    """A model double that proposes scripted arguments and records the feedback it got."""

    def __init__(self, model: str, outputs: list[Any]) -> None:
        self.model, self.outputs, self.feedback = model, list(outputs), []  # type: ignore[var-annotated]

    async def propose(self, feedback: str | None) -> Any:
        self.feedback.append(feedback)
        return self.outputs.pop(0)


def gate_with(*tools: Any) -> Gate:
    registry = ToolRegistry()
    for t in tools:
        registry.register(t)
    return Gate(registry)


async def run(args: dict[str, Any]) -> Any:
    assert add.func is not None
    return await add.func(args)


async def test_valid_call_is_counted_valid() -> None:
    gate = gate_with(add)
    result = await gate.call("add", Script("small", ['{"a": 2, "b": 3}']), run)
    assert (result.value, result.outcome, result.attempts) == (5, Outcome.VALID, 1)
    assert gate.metrics.get("small", "add", Outcome.VALID) == 1


async def test_repaired_call_is_counted_repaired() -> None:
    gate = gate_with(add)
    result = await gate.call("add", Script("small", ["```json\n{'a': '2', 'b': 3,}\n```"]), run)
    assert (result.value, result.outcome) == (5, Outcome.REPAIRED)
    assert {s.rule for s in result.steps} >= {"extract_from_fence", "coerce_integer"}


async def test_invalid_call_is_retried_with_the_error_fed_back() -> None:
    gate = gate_with(add)
    model = Script("small", ['{"b": 3}', '{"a": 1, "b": 3}'])
    result = await gate.call("add", model, run)
    assert (result.value, result.attempts) == (4, 2)
    assert model.feedback[0] is None
    assert model.feedback[1] is not None and "/a: required" in model.feedback[1]
    assert gate.metrics.get("small", "add", Outcome.RETRIED) == 1
    assert CALLS == [{"a": 1, "b": 3}]  # the invalid proposal never ran


async def test_escalates_to_a_bigger_model_after_the_retries() -> None:
    gate = gate_with(add)
    small = Script("small", ['{"a": "x"}'] * 3)  # retries = 2: three tries, all invalid
    large = Script("large", ['{"a": 7}'])
    escalations: list[GateError] = []

    async def escalate(err: GateError) -> Script:
        escalations.append(err)
        return large

    result = await gate.call("add", small, run, escalate=escalate)
    assert (result.value, result.model) == (7, "large")
    assert escalations[0].violations[0].pointer == "/a"
    assert large.feedback == [escalations[0].render_compact()]
    counts = {(c.model, c.outcome): c.count for c in gate.metrics.snapshot()}
    assert counts == {("small", "retried"): 2, ("small", "escalated"): 1, ("large", "valid"): 1}


@pytest.mark.parametrize(("degrade", "expected"), [("default", {"fallback": True}), ("skip", None)])
async def test_degrades_as_the_tool_declares(degrade: str, expected: Any) -> None:
    t = make_tool(
        ToolSpec(name="lookup", input_schema={"type": "object", "required": ["q"],
                 "properties": {"q": {"type": "string"}}},
                 fallback=Fallback(retries=0, degrade=degrade, default={"fallback": True})),  # type: ignore[arg-type]
        None,
    )  # fmt: skip
    gate = gate_with(t)

    async def never(_: dict[str, Any]) -> Any:
        raise AssertionError("an invalid call must not execute")

    result = await gate.call("lookup", Script("small", ["{}"]), never)
    assert (result.value, result.outcome) == (expected, Outcome.DEGRADED)
    assert gate.metrics.get("small", "lookup", Outcome.DEGRADED) == 1


async def test_degrade_cached_returns_the_last_good_result() -> None:
    t = make_tool(
        ToolSpec(name="quote", input_schema={"type": "object", "required": ["s"],
                 "properties": {"s": {"type": "string"}}},
                 fallback=Fallback(retries=0, degrade="cached")),
        None,
    )  # fmt: skip
    gate = gate_with(t)

    async def execute(args: dict[str, Any]) -> Any:
        return {"price": 42}

    await gate.call("quote", Script("m", ['{"s": "ACME"}']), execute)
    result = await gate.call("quote", Script("m", ["{}"]), execute)
    assert (result.value, result.outcome) == ({"price": 42}, Outcome.DEGRADED)


async def test_fail_is_a_typed_error_and_counted_rejected() -> None:
    gate = gate_with(add)
    with pytest.raises(GateError) as info:
        await gate.call("add", Script("small", ["no json here"] * 3), run)
    assert info.value.stage == "parse"
    assert gate.metrics.get("small", "add", Outcome.REJECTED) == 1
    assert CALLS == []


async def test_output_schema_is_enforced() -> None:
    gate = gate_with(broken)
    assert broken.func is not None
    with pytest.raises(GateError) as info:
        await gate.call("math.broken", Script("m", ['{"x": 1}']), broken.func)
    assert info.value.stage == "output"
    assert info.value.violations[0].keyword == "type"


def test_unknown_tool_lists_the_known_ones() -> None:
    with pytest.raises(GateError) as info:
        gate_with(add).check_call("sub", {"a": 1})
    assert info.value.violations[0].expected == "a known tool (add)"


def test_prometheus_text() -> None:
    gate = gate_with(add)
    gate.metrics.count("gemma3:270m", "add", Outcome.VALID)
    gate.metrics.count("gemma3:270m", "add", Outcome.VALID)
    gate.metrics.count('we"ird', "add", Outcome.REJECTED)
    assert gate.metrics.prometheus() == (
        "# HELP agentrt_gate_calls_total Tool calls through the schema gate, by outcome.\n"
        "# TYPE agentrt_gate_calls_total counter\n"
        'agentrt_gate_calls_total{model="gemma3:270m",tool="add",outcome="valid"} 2\n'
        'agentrt_gate_calls_total{model="we\\"ird",tool="add",outcome="rejected"} 1\n'
    )


def registry_of(*tools: Any) -> ToolRegistry:
    r = ToolRegistry()
    for t in tools:
        r.register_spec(t.spec)
    return r


async def test_tool_call_over_nats_is_gated_on_both_sides(nats_url: str, cluster_name: str) -> None:
    cfg = NodeConfig(cluster=cluster_name, name="tools", servers=(nats_url,))
    ccfg = NodeConfig(cluster=cluster_name, name="c", servers=(nats_url,))
    async with (
        open_node(cfg, tools=[add, broken]) as node,
        open_client(ccfg, registry=registry_of(add, broken)) as client,
        open_bus(nats_url) as raw,
    ):
        with trio.fail_after(10):
            assert await client.call_tool("add", {"a": 2, "b": 3}) == 5
            assert await client.call_tool("add", "```json\n{'a': '2', 'b': 3,}\n```") == 5
            # Invalid at the sender: never sent, never run.
            with pytest.raises(GateError) as info:
                await client.call_tool("add", {"a": "two"})
            assert info.value.violations[0].pointer == "/a"
            # Invalid call published raw, bypassing the sender's gate: the node refuses it.
            env = Envelope(id="x1", kind=Kind.REQUEST, type="agentrt.tool_call", sender="rogue",
                           recipient="add", payload=b'{"a": "two", "extra": 1}',
                           content_type=ContentType.JSON)  # fmt: skip
            reply = await raw.request(node.subjects.tool("add"), encode(env))
            err = decode_error(decode_envelope(reply.data))
            assert err.code is ErrorCode.GATE_REJECTED
            assert {v.pointer for v in err.violations} == {"/a", "/extra"}
            # A tool breaking its output schema: the caller gets a GateError, stage output.
            with pytest.raises(GateError) as out:
                await client.call_tool("math.broken", {"x": 1})
            assert out.value.stage == "output"
    assert CALLS == [{"a": 2, "b": 3}, {"a": 2, "b": 3}]
    counts = {(c.model, c.tool, c.outcome): c.count for c in node.status().gate}
    assert counts[("rogue", "add", "rejected")] == 1


@tool(name="kv.lookup", fallback=Fallback(retries=1, degrade="cached"))
def lookup(key: str) -> dict[str, int]:
    """Look a key up."""
    CALLS.append({"key": key})
    return {key: len(key)}


def ladder_tool(degrade: str) -> Any:
    @tool(name=f"ladder.{degrade}",
          fallback=Fallback(retries=1, degrade=degrade, default={"x": -1}))  # type: ignore[arg-type]  # fmt: skip
    def ladder(x: int) -> dict[str, int]:
        """Echo x."""
        CALLS.append({"x": x})
        return {"x": x}

    return ladder


LADDER = {d: ladder_tool(d) for d in ("fail", "default", "skip", "cached")}


async def test_every_rung_of_the_fallback_ladder_over_nats(
    nats_url: str, cluster_name: str
) -> None:
    cfg = NodeConfig(cluster=cluster_name, name="tools", servers=(nats_url,))
    ccfg = NodeConfig(cluster=cluster_name, name="llm", servers=(nats_url,))
    tools = [lookup, *LADDER.values()]
    async with (
        open_node(cfg, tools=tools) as node,
        open_client(ccfg, registry=registry_of(*tools)) as c,
    ):
        with trio.fail_after(20):
            # retry: the error goes back to the model, the second proposal runs remotely
            small = Script("small", ['{"k": "a"}', '{"key": "abc"}'])
            r = await c.call_tool_with("kv.lookup", small, sender="small")
            assert (r.value, r.outcome, r.attempts) == ({"abc": 3}, Outcome.VALID, 2)
            assert small.feedback[1] is not None and "/key: required" in small.feedback[1]

            # escalate: small keeps failing, large gets the error and succeeds
            small = Script("small", ['{"key": 1}', '{"key": 2}'])
            large = Script("large", ['{"key": "zz"}'])

            async def bigger(_: GateError) -> Script:
                return large

            r = await c.call_tool_with("kv.lookup", small, escalate=bigger, sender="small")
            assert (r.value, r.model) == ({"zz": 2}, "large")

            # degrade to the cached (last good) result once every rung failed
            r = await c.call_tool_with("kv.lookup", Script("small", ["{}", "{}"]), sender="small")
            assert (r.value, r.outcome) == ({"zz": 2}, Outcome.DEGRADED)

            # degrade to the declared default, to nothing, or fail with a typed error
            r = await c.call_tool_with("ladder.default", Script("m", ["{}", "{}"]))
            assert (r.value, r.outcome) == ({"x": -1}, Outcome.DEGRADED)
            r = await c.call_tool_with("ladder.skip", Script("m", ["{}", "{}"]))
            assert (r.value, r.outcome) == (None, Outcome.DEGRADED)
            with pytest.raises(GateError) as info:
                await c.call_tool_with("ladder.fail", Script("m", ["{}", "[1]"]))
            assert info.value.violations[0].keyword in ("required", "type")
    # Only valid calls ever reached the tools' node.
    assert CALLS == [{"key": "abc"}, {"key": "zz"}]
    counts = {(x.model, x.tool, x.outcome): x.count for x in c.gate.metrics.snapshot()}
    assert counts[("small", "kv.lookup", "retried")] == 3
    assert counts[("small", "kv.lookup", "escalated")] == 1
    assert counts[("large", "kv.lookup", "valid")] == 1
    assert counts[("small", "kv.lookup", "degraded")] == 1
    assert counts[("m", "ladder.fail", "rejected")] == 1
    assert node.status().gate == []  # the node refused nothing: the sender's gate held


@tool(name="late.square")
def square(x: int) -> int:
    """Square x."""
    return x * x


async def test_tool_specs_are_shared_through_jetstream(nats_url: str, cluster_name: str) -> None:
    def cfg(name: str) -> NodeConfig:
        return NodeConfig(cluster=cluster_name, name=name, servers=(nats_url,))

    # The client knows no tool from any config: everything it gates with comes from the bucket.
    async with open_node(cfg("tools"), tools=[add]), open_client(cfg("c")) as client:
        with trio.fail_after(10):
            assert client.registry.get("add") is not None  # replayed before the client was ready
            assert await client.call_tool("add", {"a": 20, "b": 22}) == 42
            with pytest.raises(GateError) as info:
                await client.call_tool("add", {"a": "x"})  # refused here, by the shared schema
            assert info.value.violations[0].pointer == "/a"
            # A node that starts later with a new tool: the running client learns it.
            async with open_node(cfg("late"), tools=[square]):
                await client.registry.wait_for("late.square")  # pushed by the bucket
                assert await client.call_tool("late.square", {"x": 7}) == 49


@tool(name="late.cube")
def cube(x: int) -> int:
    """Cube x."""
    return x**3


async def test_tool_bucket_is_followed_again_after_a_server_restart(tmp_path: Any) -> None:
    from agentrt._natsserver import NatsServer

    server = NatsServer(tmp_path / "js", name="restart-js")  # JetStream, stored on disk
    await trio.to_thread.run_sync(server.start)
    try:
        cfg = NodeConfig(cluster="restarts", name="c", servers=(server.url,))
        reconnected = trio.Event()
        async with open_client(cfg) as client, trio.open_nursery() as nursery:

            async def watch() -> None:
                await client.bus.wait_reconnected()
                reconnected.set()

            nursery.start_soon(watch)  # parks before the server is back: no reconnect missed
            server.kill()
            restarted = NatsServer(tmp_path / "js", name="restart-js", port=server.port)
            await trio.to_thread.run_sync(restarted.start)
            server = restarted
            with trio.fail_after(20):
                await reconnected.wait()  # the client is back (and follows the bucket again)
                late = NodeConfig(cluster="restarts", name="late", servers=(server.url,))
                async with open_node(late, tools=[cube]):
                    await client.registry.wait_for("late.cube")
                    assert await client.call_tool("late.cube", {"x": 3}) == 27
    finally:
        server.stop()


async def test_tools_hosted_at_run_time_are_gated_and_reach_every_node(
    nats_url: str, cluster_name: str
) -> None:
    def cfg(name: str) -> NodeConfig:
        return NodeConfig(cluster=cluster_name, name=name, servers=(nats_url,))

    async with open_node(cfg("bridge")) as bridge, open_client(cfg("c")) as client:
        with trio.fail_after(20):
            await bridge.host_tool(square)
            await client.registry.wait_for("late.square")  # the spec went through the bucket
            assert await client.call_tool("late.square", {"x": 9}) == 81
            with pytest.raises(GateError):
                await client.call_tool("late.square", {"x": "nine"})
            seen = client.registry.version
            await bridge.unhost_tool("late.square")
            while client.registry.get("late.square") is not None:  # the delete marker arrives
                seen = await client.registry.wait_changed(seen)
            with pytest.raises(GateError) as info:  # gone from the cluster, not just unserved
                await client.call_tool("late.square", {"x": 2})
            assert info.value.violations[0].keyword == "tool"
