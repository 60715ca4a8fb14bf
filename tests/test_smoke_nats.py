from __future__ import annotations

import trio

from agentrt._bus import open_bus


async def test_bus_round_trip(nats_url: str) -> None:
    async with open_bus(nats_url) as a, open_bus(nats_url) as b:
        sub = await b.subscribe("smoke.echo")
        async with trio.open_nursery() as n:

            async def echo() -> None:
                msg = await sub.receive()
                b.publish_nowait(msg.reply, msg.data.upper())

            n.start_soon(echo)
            with trio.fail_after(5):
                reply = await a.request("smoke.echo", b"hi")
        assert reply.data == b"HI"
