"""The model scheduler through the real Ollama backend against HTTP doubles: tier assignment,
escalation, fallback, rate limits, capacity and fairness, queue deadlines, exact accounting.

Every model call here is a real HTTP exchange with a double (``tests/models/doubles.py``); no
backend is faked. Nothing sleeps: tests wait on the double's recorded requests, on held
replies they release themselves, or on ``wait_all_tasks_blocked`` for queue order.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import agentrt
import msgspec
import pytest
import trio
import trio.testing
from agentrt import (
    ConfigError,
    ModelOverloaded,
    ModelRequestRejected,
    ModelTimeout,
    NoModelAvailable,
    RateLimited,
)
from agentrt._accounting import models_prometheus
from agentrt._modelconfig import ModelsSection
from agentrt._scheduler import Scheduler, open_scheduler
from agentrt.models import ChatMessage

from .models.doubles import ModelDouble, Reply, serve_double

ASK = (ChatMessage(role="user", content="hi"),)


def refused_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def section(
    backends: dict[str, str],
    tiers: dict[str, list[str]],
    *,
    max_concurrent: int = 4,
    prices: dict[str, dict[str, str]] | None = None,
    agents: dict[str, dict[str, Any]] | None = None,
    queue_timeout_s: float = 30.0,
) -> ModelsSection:
    """A ``[models]`` section (as load_config would decode it) for Ollama backends at URLs."""
    raw = {
        "backends": {
            name: {"kind": "ollama", "url": url, "max_concurrent": max_concurrent,
                   "timeout_s": 10.0}
            for name, url in backends.items()
        },
        "tiers": tiers,
        "prices": prices or {},
        "agents": agents or {},
        "queue_timeout_s": queue_timeout_s,
    }  # fmt: skip
    return msgspec.convert(raw, ModelsSection)


@asynccontextmanager
async def doubles(n: int) -> AsyncIterator[list[ModelDouble]]:
    async with serve_double("ollama") as a:
        if n == 1:
            yield [a]
            return
        async with serve_double("ollama") as b:
            yield [a, b]


def asked(double: ModelDouble) -> list[str]:
    """The model named in each chat request the double received, in order."""
    return [r.body["model"] for r in double.chat_requests]


# ------------------------------------------------------------------ tier assignment


class Drafter(agentrt.Agent):
    tier = "medium"


class Pinned(agentrt.Agent):
    model = "local:pinned:1b"


class Plain(agentrt.Agent):
    pass


async def test_tier_comes_from_config_then_class_then_the_lowest_tier() -> None:
    async with doubles(1) as [d]:
        models = section(
            {"local": d.url},
            {"small": ["local:s1", "local:s2"], "medium": ["local:m1"], "large": ["local:l1"]},
            agents={"Configured": {"tier": "large"}, "Drafter": {"escalate_after": 5}},
        )
        async with open_scheduler(models, agents=[Drafter, Pinned, Plain]) as sched:
            configured = sched.session("Configured/1", "Configured")
            by_class = sched.session("Drafter/1", "Drafter")
            default = sched.session("Plain/1", "Plain")
            pinned = sched.session("Pinned/1", "Pinned")
            assert (configured.tier, configured.model) == ("large", "local:l1")
            assert (by_class.tier, by_class.model, by_class.escalate_after) == (
                "medium", "local:m1", 5)  # fmt: skip
            assert (default.tier, default.model, default.escalate_after) == ("small", "local:s1", 2)
            assert (pinned.tier, pinned.model) == ("pinned", "local:pinned:1b")
            with trio.fail_after(10):
                for s in (configured, by_class, default, pinned):
                    reply = await s.chat(ASK)
                    assert reply.message.content == "ok"
    assert asked(d) == ["l1", "m1", "s1", "pinned:1b"]


async def test_config_wins_over_the_class() -> None:
    async with doubles(1) as [d]:
        models = section({"local": d.url}, {"small": ["local:s"], "medium": ["local:m"]},
                         agents={"Drafter": {"tier": "small"}})  # fmt: skip
        async with open_scheduler(models, agents=[Drafter]) as sched:
            assert sched.session("Drafter/1", "Drafter").tier == "small"


async def test_a_pinned_model_listed_in_a_tier_escalates_above_it() -> None:
    async with doubles(1) as [d]:
        models = section(
            {"local": d.url}, {"small": ["local:s", "local:pinned:1b"], "large": ["local:l"]}
        )
        async with open_scheduler(models, agents=[Pinned]) as sched:
            s = sched.session("Pinned/1", "Pinned")
            assert (s.tier, s.model) == ("small", "local:pinned:1b")
            assert s.escalate("too hard") is True
            assert (s.tier, s.model) == ("large", "local:l")


# ------------------------------------------------------------------ escalation


async def test_escalation_small_to_large_is_counted_and_stops_at_the_top() -> None:
    async with doubles(2) as [local, remote]:
        models = section(
            {"local": local.url, "remote": remote.url},
            {"small": ["local:tiny"], "medium": ["remote:mid"], "large": ["remote:big"]},
        )
        async with open_scheduler(models) as sched:
            s = sched.session("Writer/k", "Writer")
            with trio.fail_after(10):
                await s.chat(ASK)
                assert s.escalate("gate failed 2 times on tool 'lookup'") is True
                assert (s.tier, s.model) == ("medium", "remote:mid")
                await s.chat(ASK)
                assert s.escalate("same failing call repeated") is True
                assert (s.tier, s.model) == ("large", "remote:big")
                await s.chat(ASK)
                assert s.escalate("still failing") is False
                assert (s.tier, s.model) == ("large", "remote:big")
            acc = sched.accounting
            assert acc.get("Writer", "small", "local:tiny").escalations == 1
            assert acc.get("Writer", "medium", "remote:mid").escalations == 1
            assert acc.get("Writer", "large", "remote:big").escalations == 0
            assert [acc.get("Writer", t, m).calls for t, m in (
                ("small", "local:tiny"), ("medium", "remote:mid"), ("large", "remote:big"))
            ] == [1, 1, 1]  # fmt: skip
            s.reset()
            assert (s.tier, s.model) == ("small", "local:tiny")
    assert asked(local) == ["tiny"]
    assert asked(remote) == ["mid", "big"]


# ------------------------------------------------------------------ fallback


async def test_fallback_on_provider_outage_then_next_tier() -> None:
    async with doubles(2) as [failing, remote]:
        failing.default = Reply.error(500, "model runner crashed")
        models = section(
            {"local": failing.url, "down": refused_url(), "remote": remote.url},
            {"small": ["local:tiny", "down:tiny"], "large": ["remote:big"]},
        )
        async with open_scheduler(models) as sched:
            s = sched.session("Writer/k", "Writer")
            with trio.fail_after(10):
                reply = await s.chat(ASK)
            assert reply.message.content == "ok"
            assert (s.tier, s.model) == ("small", "remote:big")  # the session stays on small
            acc = sched.accounting
            tiny = acc.get("Writer", "small", "local:tiny")
            down = acc.get("Writer", "small", "down:tiny")
            big = acc.get("Writer", "large", "remote:big")
            assert (tiny.calls, tiny.errors, tiny.fallbacks) == (0, {"ModelOverloaded": 1}, 1)
            assert (down.calls, down.errors, down.fallbacks) == (0, {"ModelOverloaded": 1}, 1)
            assert (big.calls, big.errors, big.fallbacks) == (1, {}, 0)
    assert asked(failing) == ["tiny"]
    assert asked(remote) == ["big"]


async def test_timeout_falls_back_to_the_next_model() -> None:
    async with doubles(2) as [stalled, other]:
        stalled.push(Reply.stall("headers"))
        models = section({"a": stalled.url, "b": other.url}, {"small": ["a:m", "b:m"]})
        models = msgspec.structs.replace(
            models,
            backends={
                "a": msgspec.structs.replace(models.backends["a"], timeout_s=0.3),
                "b": models.backends["b"],
            },
        )
        async with open_scheduler(models) as sched:
            s = sched.session("W/1", "W")
            with trio.fail_after(10):
                reply = await s.chat(ASK)
            assert reply.message.content == "ok"
            assert sched.accounting.get("W", "small", "a:m").errors == {"ModelTimeout": 1}
            assert s.model == "b:m"


async def test_malformed_output_moves_this_call_up_a_tier_only() -> None:
    async with doubles(1) as [d]:
        d.push(Reply.malformed())
        models = section({"local": d.url}, {"small": ["local:s"], "large": ["local:l"]})
        async with open_scheduler(models) as sched:
            s = sched.session("W/1", "W")
            with trio.fail_after(10):
                await s.chat(ASK)
                assert (s.tier, s.model) == ("small", "local:l")
                await s.chat(ASK)
            assert sched.accounting.get("W", "small", "local:s").errors == {
                "MalformedModelOutput": 1
            }
            assert sched.accounting.get("W", "small", "local:s").escalations == 0
    assert asked(d) == ["s", "l", "s"]


async def test_context_too_long_moves_the_session_up() -> None:
    async with doubles(1) as [d]:
        d.push(Reply.error(400, "the prompt is too long for the context window"))
        models = section({"local": d.url}, {"small": ["local:s"], "large": ["local:l"]})
        async with open_scheduler(models) as sched:
            s = sched.session("W/1", "W")
            with trio.fail_after(10):
                await s.chat(ASK)
                assert (s.tier, s.model) == ("large", "local:l")
                await s.chat(ASK)
            small = sched.accounting.get("W", "small", "local:s")
            assert (small.errors, small.escalations) == ({"ContextTooLong": 1}, 1)
    assert asked(d) == ["s", "l", "l"]


async def test_rejected_request_is_not_sent_elsewhere() -> None:
    async with doubles(2) as [bad, good]:
        bad.push(Reply.error(401, "unauthorized"))
        models = section({"a": bad.url, "b": good.url}, {"small": ["a:m", "b:m"]})
        async with open_scheduler(models) as sched:
            s = sched.session("W/1", "W")
            with trio.fail_after(10), pytest.raises(ModelRequestRejected) as info:
                await s.chat(ASK)
            assert str(info.value) == (
                "model 'm' on backend 'a': the server refused the request (HTTP 401): "
                "unauthorized; fix the request or the backend's configuration (url, api_key, "
                "model name): retrying it unchanged will not help; a refused request is a "
                "configuration problem (key, model name, request), so no other model was "
                "tried: check [models.backends.a] and the model name in agentrt.toml"
            )
            assert info.value.status == 401
            assert sched.accounting.get("W", "small", "a:m").errors == {"ModelRequestRejected": 1}
    assert asked(good) == []


async def test_no_model_available_lists_every_attempt() -> None:
    async with doubles(1) as [d]:
        d.default = Reply.error(503, "loading model")
        down = refused_url()
        models = section(
            {"local": d.url, "remote": down}, {"small": ["local:tiny"], "large": ["remote:big"]}
        )
        async with open_scheduler(models) as sched:
            s = sched.session("Writer/k", "Writer")
            with trio.fail_after(10), pytest.raises(NoModelAvailable) as info:
                await s.chat(ASK)
    exc = info.value
    assert len(exc.attempts) == 2
    assert exc.attempts[0] == (
        "local:tiny (small): ModelOverloaded: the server failed or is overloaded (HTTP 503): "
        "loading model; retry later or fall back to another model"
    )
    # the middle is httpx's own words for the refused connection
    assert exc.attempts[1].startswith(
        f"remote:big (large): ModelOverloaded: cannot connect to {down} ("
    )
    assert exc.attempts[1].endswith(
        "); check that the server is running and that the backend's url is right"
    )
    assert str(exc) == (
        f"no model could serve 'Writer/k' from tier 'small' up: {exc.attempts[0]}; "
        f"{exc.attempts[1]} (check the backends in agentrt.toml [models] and that they are "
        "running)"
    )
    assert isinstance(exc.__cause__, ModelOverloaded)


# ------------------------------------------------------------------ rate limits


async def test_rate_limited_waits_retry_after_when_nothing_else_can_serve() -> None:
    async with doubles(2) as [local, remote]:
        local.push(Reply.error(429, "slow down", retry_after="0.2"))
        models = section(
            {"local": local.url, "remote": remote.url},
            {"small": ["local:tiny"], "large": ["remote:big"]},
        )
        async with open_scheduler(models) as sched:
            s = sched.session("W/1", "W")
            started = trio.current_time()
            with trio.fail_after(10):
                reply = await s.chat(ASK)
            waited = trio.current_time() - started
            assert reply.message.content == "ok"
            # honoured: the retry went out no sooner than the provider asked (a lower bound,
            # not a speed claim), and to the same cheap model rather than up a tier
            assert waited >= 0.2
            tiny = sched.accounting.get("W", "small", "local:tiny")
            assert (tiny.calls, tiny.errors, tiny.fallbacks) == (1, {"RateLimited": 1}, 0)
    assert asked(local) == ["tiny", "tiny"]
    assert asked(remote) == []


async def test_rate_limited_goes_to_a_free_model_of_the_tier_first() -> None:
    async with doubles(1) as [d]:
        d.push(Reply.error(429, "slow down", retry_after="30"))
        models = section({"local": d.url}, {"small": ["local:a", "local:b"]})
        async with open_scheduler(models) as sched:
            s = sched.session("W/1", "W")
            with trio.fail_after(10):
                await s.chat(ASK)
                await s.chat(ASK)  # a is still cooling down: other sessions skip it too
                await sched.session("V/1", "V").chat(ASK)
            assert sched.accounting.get("W", "small", "local:a").fallbacks == 1
    assert asked(d) == ["a", "b", "b", "b"]


async def test_retry_after_beyond_the_deadline_is_not_waited() -> None:
    async with doubles(1) as [d]:
        d.push(Reply.error(429, "slow down", retry_after="30"))
        models = section({"local": d.url}, {"small": ["local:a"]})
        async with open_scheduler(models) as sched:
            s = sched.session("W/1", "W")
            with trio.fail_after(5), pytest.raises(NoModelAvailable) as info:
                await s.chat(ASK)
    assert info.value.attempts == [
        "local:a (small): RateLimited: rate limited (HTTP 429): slow down; retry after 30 s",
        "local:a (small): cooling down after a 429 past the deadline",
    ]
    assert isinstance(info.value.__cause__, RateLimited)


# ------------------------------------------------------------------ capacity and fairness


async def test_capacity_holds_under_100_concurrent_requests() -> None:
    limit, total = 3, 100
    async with doubles(1) as [d]:
        held: list[trio.Event] = []
        seen = {"arrived": 0, "released": 0, "max": 0}

        def responder(path: str, body: Any) -> Reply:
            event = trio.Event()
            held.append(event)
            seen["arrived"] += 1
            seen["max"] = max(seen["max"], seen["arrived"] - seen["released"])
            return Reply.text(f"answer {len(held)}", hold=event)

        d.responder = responder
        models = section({"local": d.url}, {"small": ["local:m"]}, max_concurrent=limit)
        async with open_scheduler(models) as sched:
            replies: list[str] = []

            async def one(actor: str) -> None:
                replies.append((await sched.session(actor, "W").chat(ASK)).message.content)

            async def release_in_order() -> None:
                for i in range(total):
                    # every slot is taken (or the tail is all in): only then free one
                    await d.wait_for_requests(min(i + limit, total))
                    seen["released"] += 1
                    held[i].set()

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(release_in_order)
                    for i in range(total):
                        nursery.start_soon(one, f"W/{i % 10}")
            stats = sched.capacity("local")
            row = sched.accounting.get("W", "small", "local:m")
        assert sorted(replies) == sorted(f"answer {i}" for i in range(1, total + 1))
        assert seen["max"] == limit  # the double never saw more than max_concurrent at once
        assert (stats.max_in_use, stats.in_use, stats.waiting) == (limit, 0, 0)
        assert stats.waited == total - limit
        assert (row.calls, row.queued) == (total, total - limit)
        assert row.queue_wait_s > 0


async def test_queue_is_round_robin_between_actors() -> None:
    async with doubles(1) as [d]:
        first = trio.Event()
        d.push(Reply.text("first", hold=first))
        models = section({"local": d.url}, {"small": ["local:m"]}, max_concurrent=1)
        async with open_scheduler(models) as sched:

            async def one(actor: str, label: str) -> None:
                await sched.session(actor, "W").chat([ChatMessage(role="user", content=label)])

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(one, "W/a", "a1")
                    await d.wait_for_requests(1)
                    # queue a2..a5 from the busy actor, then b1 from another, in that order
                    for actor, label in [("W/a", f"a{i}") for i in range(2, 6)] + [("W/b", "b1")]:
                        nursery.start_soon(one, actor, label)
                        await trio.testing.wait_all_tasks_blocked()
                    assert sched.capacity("local").waiting == 5
                    first.set()
    order = [r.body["messages"][-1]["content"] for r in d.chat_requests]
    assert order == ["a1", "a2", "b1", "a3", "a4", "a5"]  # FIFO would put b1 last


async def test_queue_timeout_is_a_typed_error_and_frees_nothing_it_did_not_take() -> None:
    async with doubles(1) as [d]:
        hold = trio.Event()
        d.push(Reply.text("slow", hold=hold))
        models = section(
            {"local": d.url}, {"small": ["local:m"]}, max_concurrent=1, queue_timeout_s=0.3
        )
        async with open_scheduler(models) as sched:
            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sched.session("W/a", "W").chat, ASK)
                    await d.wait_for_requests(1)
                    with pytest.raises(ModelTimeout) as info:
                        await sched.session("W/b", "W").chat(ASK)
                    assert sched.capacity("local").waiting == 0
                    # the caller's own, tighter deadline governs with the caller's exception
                    with pytest.raises(trio.TooSlowError), trio.fail_after(0.05):
                        await sched.session("W/c", "W").chat(ASK)
                    assert (sched.capacity("local").waiting, sched.capacity("local").in_use) == (
                        0, 1)  # fmt: skip
                    hold.set()
            assert sched.capacity("local").in_use == 0
            await sched.session("W/d", "W").chat(ASK)  # the slot is usable again
            row = sched.accounting.get("W", "small", "local:m")
            # W/b gave up on queue_timeout_s; W/c's own deadline is not the queue's doing
            assert (row.calls, row.queued, row.queue_timeouts) == (2, 0, 1)
    assert str(info.value) == (
        "model 'local:m' on backend 'local': no free slot for W/b on tier 'small' within "
        "queue_timeout_s = 0.3 s (local max_concurrent=1); raise max_concurrent, add models to "
        "the tier, or raise [models] queue_timeout_s"
    )


# ------------------------------------------------------------------ accounting


async def test_cost_and_token_totals_are_exact() -> None:
    async with doubles(2) as [local, remote]:
        local.default = Reply.text("small answer", input_tokens=1234, output_tokens=567)
        remote.default = Reply.text("large answer", input_tokens=100_001, output_tokens=33_333)
        models = section(
            {"local": local.url, "remote": remote.url},
            {"small": ["local:tiny"], "large": ["remote:big"]},
            prices={"local:tiny": {"input": "0.1", "output": "0.2"},
                    "remote:big": {"input": "3", "output": "15.01"}},
        )  # fmt: skip
        async with open_scheduler(models) as sched:
            s = sched.session("W/1", "W")
            with trio.fail_after(20):
                for _ in range(7):
                    await s.chat(ASK)
                s.escalate("needs the big one")
                for _ in range(3):
                    await s.chat(ASK)
            tiny = sched.accounting.get("W", "small", "local:tiny")
            big = sched.accounting.get("W", "large", "remote:big")
            text = models_prometheus(sched.snapshot())
    # 7 * (1234 * 0.1 + 567 * 0.2) / 1e6 and 3 * (100001 * 3 + 33333 * 15.01) / 1e6, exactly
    assert (tiny.calls, tiny.input_tokens, tiny.output_tokens) == (7, 8638, 3969)
    assert tiny.cost == Decimal("0.0016576")
    assert (big.calls, big.input_tokens, big.output_tokens) == (3, 300_003, 99_999)
    assert big.cost == Decimal("2.40099399")
    assert tiny.cost + big.cost == Decimal("2.40265159")
    assert 'agentrt_model_cost_total{agent="W",tier="small",model="local:tiny"} 0.0016576' in text
    assert 'agentrt_model_cost_total{agent="W",tier="large",model="remote:big"} 2.40099399' in text
    assert tiny.latency_count == 7 and sum(tiny.latency_buckets) == 7
    assert 0 < tiny.quantile(0.5) <= tiny.quantile(0.95)


async def test_streaming_passes_text_through_and_accounts_the_call() -> None:
    async with doubles(1) as [d]:
        d.default = Reply.text("one two three", chunks=["one ", "two ", "three"])
        models = section({"local": d.url}, {"small": ["local:m"]})
        async with open_scheduler(models) as sched:
            pieces: list[str] = []
            with trio.fail_after(10):
                reply = await sched.session("W/1", "W").chat(ASK, on_text=pieces.append)
            assert reply.message.content == "one two three"
            assert "".join(pieces) == "one two three" and len(pieces) == 3
            assert sched.accounting.get("W", "small", "local:m").calls == 1
    assert d.chat_requests[0].body["stream"] is True


def test_scheduler_needs_an_object_for_every_backend() -> None:
    models = section({"local": "http://127.0.0.1:1"}, {"small": ["local:m"]})
    with pytest.raises(ValueError, match=r"no backend object for local"):
        Scheduler(models, {})


class Lofty(agentrt.Agent):
    tier = "large"


async def test_a_class_tier_without_models_fails_when_the_session_is_made() -> None:
    # load_config refuses this earlier; a Scheduler built by hand still says what to fix
    async with doubles(1) as [d]:
        models = section({"local": d.url}, {"small": ["local:s"]})
        async with open_scheduler(models, agents=[Lofty]) as sched:
            with pytest.raises(agentrt.ConfigError) as info:
                sched.session("Lofty/1", "Lofty")
    assert str(info.value) == (
        "agentrt.toml: $.models.agents.Lofty: agent type 'Lofty' starts on tier 'large', which "
        "lists no models; add models to [models.tiers] large or give the agent another tier"
    )


async def test_a_pinned_model_no_tier_lists_cannot_escalate() -> None:
    async with doubles(1) as [d]:
        models = section({"local": d.url}, {"small": ["local:s"], "large": ["local:l"]})
        async with open_scheduler(models, agents=[Pinned]) as sched:
            s = sched.session("Pinned/1", "Pinned")
            assert (s.tier, s.model) == ("pinned", "local:pinned:1b")
            assert s.escalate("too hard") is False
            assert sched.accounting.snapshot() == []  # nothing happened, nothing counted


async def test_a_stream_that_fails_midway_restarts_on_the_next_model() -> None:
    async with doubles(1) as [d]:
        d.push(Reply.error(500, "runner died", mid_stream=True))
        d.default = Reply.text("all good", chunks=["all ", "good"])
        models = section({"local": d.url}, {"small": ["local:a", "local:b"]})
        async with open_scheduler(models) as sched:
            pieces: list[str] = []
            with trio.fail_after(10):
                reply = await sched.session("W/1", "W").chat(ASK, on_text=pieces.append)
            assert reply.message.content == "all good"
            assert sched.accounting.get("W", "small", "local:a").errors == {"ModelOverloaded": 1}
    assert pieces == ["partial ", "all ", "good"]  # documented: the text starts again
    assert asked(d) == ["a", "b"]


async def test_tiers_across_the_three_protocols_with_keys_from_the_environment() -> None:
    async with (
        serve_double("ollama") as local,
        serve_double("openai") as openai,
        serve_double("anthropic") as anthropic,
    ):
        local.push(Reply.error(500, "runner crashed"))
        openai.push(Reply.error(429, retry_after="60"))
        anthropic.default = Reply.text("from claude", input_tokens=2000, output_tokens=100)
        raw = {
            "backends": {
                "local": {"kind": "ollama", "url": local.url},
                "oai": {"kind": "openai", "url": openai.url, "api_key_env": "OAI_KEY"},
                "ant": {"kind": "anthropic", "url": anthropic.url, "api_key_env": "ANT_KEY"},
            },
            "tiers": {"small": ["local:tiny"], "medium": ["oai:gpt-mini"], "large": ["ant:opus"]},
            "prices": {"ant:opus": {"input": "15", "output": "75"}},
        }
        models = msgspec.convert(raw, ModelsSection)
        environ = {"OAI_KEY": "sk-oai-test", "ANT_KEY": "sk-ant-test"}
        async with open_scheduler(models, environ=environ) as sched:
            s = sched.session("W/1", "W")
            pieces: list[str] = []
            with trio.fail_after(10):
                reply = await s.chat(ASK, on_text=pieces.append)
            snapshot = {x.key: x for x in sched.snapshot()}
    assert reply.message.content == "from claude" and "".join(pieces) == "from claude"
    assert s.model == "ant:opus"
    assert snapshot[("W", "small", "local:tiny")].errors == {"ModelOverloaded": 1}
    assert snapshot[("W", "medium", "oai:gpt-mini")].errors == {"RateLimited": 1}
    opus = snapshot[("W", "large", "ant:opus")]
    assert (opus.calls, opus.input_tokens, opus.output_tokens) == (1, 2000, 100)
    assert opus.cost == Decimal("0.0375")  # (2000 * 15 + 100 * 75) / 1e6
    assert openai.chat_requests[0].headers["authorization"] == "Bearer sk-oai-test"
    assert anthropic.chat_requests[0].headers["x-api-key"] == "sk-ant-test"
    assert anthropic.chat_requests[0].body["model"] == "opus"


async def test_a_pinned_session_never_leaves_its_tier() -> None:
    async with serve_double("ollama") as d:
        d.push(Reply.error(500, "runner crashed"))
        models = section({"local": d.url}, {"small": ["local:s"], "large": ["local:l"]})
        async with open_scheduler(models) as sched:
            session = sched.session("eval/x", "x", pin="small")
            with pytest.raises(NoModelAvailable) as info:
                await session.chat([ChatMessage(role="user", content="hi")])
            assert session.escalate("no") is False
            assert (session.tier, session.model) == ("small", "local:s")
            with pytest.raises(ConfigError) as bad:
                sched.session("eval/x", "x", pin="medium")
    assert [r.body["model"] for r in d.chat_requests] == ["s"]  # the large tier was not tried
    assert "local:l" not in str(info.value)
    assert str(bad.value) == (
        "agentrt.toml: $.models.tiers.medium: tier 'medium' lists no models; the tiers with "
        "models are small, large"
    )
