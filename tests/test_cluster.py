"""Node processes under the supervisor, and a NATS cluster of two servers."""

from __future__ import annotations

import os
import signal
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import trio
from agentrt import AgentId, AgentUnavailable, DeadlineExceeded, NodeConfig, open_client, open_node
from agentrt._cluster import Supervisor
from agentrt._config import load_config
from agentrt._natsserver import NatsServer

from .helpers import Auditor, Echo, Forward, Ping, Pong, Seen, SeenReply

AGENTS = """
from __future__ import annotations

import os

import trio

import agentrt
from agentrt import AgentId


class Work(agentrt.Message, tag="proctest.work"):
    n: int


class Done(agentrt.Message, tag="proctest.done"):
    n: int
    pid: int
    count: int


class Relay(agentrt.Message, tag="proctest.relay"):
    key: str
    n: int


class Worker(agentrt.Agent):
    async def on_start(self) -> None:
        self.count = 0

    async def on_work(self, msg: Work) -> Done:
        await trio.sleep(0.005)
        self.count += 1
        return Done(n=msg.n, pid=os.getpid(), count=self.count)


class Front(agentrt.Agent):
    async def on_relay(self, msg: Relay) -> Done:
        return await self.send(AgentId("Worker", msg.key), Work(n=msg.n), expect=Done)
"""


def write_cluster(tmp_path: Path, name: str, **extra: str) -> Path:
    (tmp_path / "proc_agents.py").write_text(AGENTS)
    (tmp_path / "agentrt.toml").write_text(
        textwrap.dedent(f"""
        [cluster]
        name = "{name}"
        default_deadline_s = {extra.get("deadline", "5.0")}
        drain_timeout_s = 5.0

        [[nodes]]
        name = "front"
        agents = ["proc_agents:Front"]

        [[nodes]]
        name = "work"
        agents = ["proc_agents:Worker"]
        replicas = {extra.get("replicas", "1")}
    """)
    )
    return tmp_path


async def _forever(_: Supervisor) -> None:
    await trio.sleep_forever()


@pytest.mark.slow
async def test_request_reply_across_two_node_processes(tmp_path: Path, cluster_name: str) -> None:
    cfg = load_config(write_cluster(tmp_path, cluster_name, replicas="2"))
    from proc_agents import Done, Relay  # type: ignore[import-not-found]

    sup = Supervisor(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, _forever)
        with trio.fail_after(60):
            await sup.wait_ready()
            assert sup.client is not None
            # client -> Front (process 1) -> Worker (process 2 or 3, by key), typed all the way
            first = await sup.client.send(AgentId("Front"), Relay(key="w1", n=1), expect=Done)
            second = await sup.client.send(AgentId("Front"), Relay(key="w1", n=2), expect=Done)
            other = await sup.client.send(AgentId("Front"), Relay(key="w2", n=3), expect=Done)
            statuses = await sup.node_statuses()
        sup.stop()
    pids = {np.name: np.last_exit for np in sup.procs}
    assert (first.n, second.n, first.count, second.count) == (1, 2, 1, 2)
    assert first.pid == second.pid != os.getpid()
    assert other.count == 1
    assert [s.node for s in statuses] == ["front", "work-0", "work-1", "supervisor"]
    assert all(code == 0 for code in pids.values())  # every node drained and exited cleanly
    assert not (tmp_path / ".agentrt" / "state.json").exists()


@pytest.mark.slow
async def test_kill_9_of_a_node_under_load(tmp_path: Path, cluster_name: str) -> None:
    cfg = load_config(write_cluster(tmp_path, cluster_name, deadline="2.0"))
    from proc_agents import Done, Work

    sup = Supervisor(cfg)
    outcomes: Counter[str] = Counter()
    killed = trio.Event()
    warmed = trio.Event()
    recovered = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, _forever)
        with trio.fail_after(90):
            await sup.wait_ready()
            client = sup.client
            assert client is not None
            work = next(np for np in sup.procs if np.name == "work")
            assert work.proc is not None
            old_pid = work.proc.pid

            async def load(i: int) -> None:
                while not recovered.is_set():
                    try:
                        done = await client.send(AgentId("Worker", f"k{i}"), Work(n=i),
                                                 expect=Done)  # fmt: skip
                    except DeadlineExceeded:
                        outcomes["deadline"] += 1
                    except AgentUnavailable:
                        outcomes["unavailable"] += 1
                        await trio.sleep(0.05)  # client back-off while the node restarts
                    else:
                        outcomes["ok"] += 1
                        if outcomes["ok"] >= 50:
                            warmed.set()
                        if killed.is_set() and done.pid != old_pid:
                            outcomes["ok_after_restart"] += 1
                            recovered.set()

            async with trio.open_nursery() as loaders:
                for i in range(8):
                    loaders.start_soon(load, i)
                await warmed.wait()
                os.kill(old_pid, signal.SIGKILL)
                killed.set()
                await sup.wait_until(lambda s: work.restarts == 1 and work.ready.is_set())
            processes = {p.name: p for p in sup.cluster_status().processes}
        sup.stop()
    # Calls in flight when the node died got a typed error (not a hang), the supervisor
    # restarted the node, and calls succeed again on the new process.
    assert outcomes["deadline"] + outcomes["unavailable"] >= 1
    assert outcomes["ok_after_restart"] >= 1
    assert processes["work"].restarts == 1
    assert processes["work"].pid not in (0, old_pid)
    assert work.last_exit == 0  # the restarted node drained cleanly at the end


async def test_nodes_on_two_joined_nats_servers_talk(tmp_path: Path, cluster_name: str) -> None:
    s1 = NatsServer(tmp_path / "s1", name="s1", cluster_name="pair", jetstream=False)
    await trio.to_thread.run_sync(s1.start)
    s2 = NatsServer(tmp_path / "s2", name="s2", cluster_name="pair", routes=(s1.route_url,),
                    jetstream=False)  # fmt: skip
    try:
        await trio.to_thread.run_sync(s2.start)
        a_cfg = NodeConfig(cluster=cluster_name, name="a", servers=(s1.url,))
        b_cfg = NodeConfig(cluster=cluster_name, name="b", servers=(s2.url,))
        async with open_node(a_cfg, [Echo]) as a, open_node(b_cfg, [Auditor]) as b:
            with trio.fail_after(20):
                # Subscription interest crosses the route asynchronously; nothing announces
                # it, so wait for it with a bounded retry.
                while True:
                    try:
                        pong = await b.send(AgentId("Echo", "x"), Ping(n=5), expect=Pong)
                        break
                    except AgentUnavailable:
                        await trio.sleep(0.02)
                while True:
                    try:
                        seen = await a.send(AgentId("Auditor"), Seen(), expect=SeenReply)
                        break
                    except AgentUnavailable:
                        await trio.sleep(0.02)
                relayed = await b.send(AgentId("Echo", "y"), Forward(to="Echo/z", n=9),
                                       expect=Pong)  # fmt: skip
    finally:
        s2.stop()
        s1.stop()
    assert (pong.node, pong.n) == ("a", 5)  # b (on s2) reached a (on s1)
    assert seen.node == "b"  # and a reached b
    assert (relayed.key, relayed.n) == ("z", 9)


async def test_client_with_wrong_credentials_gets_a_clear_bus_error(tmp_path: Path) -> None:
    from agentrt import BusError
    from agentrt._natsserver import NatsUser

    server = NatsServer(tmp_path / "auth", name="auth", users=(NatsUser("node", "s3cret"),))
    await trio.to_thread.run_sync(server.start)
    try:
        good = NodeConfig(cluster="auth", servers=(server.url,), user="node", password="s3cret")
        async with open_client(good) as client:
            assert client.name == "node"
        bad = NodeConfig(cluster="auth", servers=(server.url,), user="node", password="wrong")
        with pytest.raises(BusError) as info:
            async with open_client(bad):
                pass
    finally:
        server.stop()
    assert str(info.value) == (
        f"cannot connect to NATS at {server.url} (nats: 'Authorization Violation'); "
        "the server refused the credentials: check the NATS user and password"
    )


@pytest.mark.slow
async def test_up_joins_an_existing_nats_server_given_by_url(
    tmp_path: Path, nats_server: NatsServer, cluster_name: str
) -> None:
    root = write_cluster(tmp_path, cluster_name)
    with (root / "agentrt.toml").open("a") as f:
        f.write(f'\n[nats]\nurl = "{nats_server.url}"\n')
    cfg = load_config(root)
    from proc_agents import Done, Relay

    sup = Supervisor(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, _forever)
        with trio.fail_after(60):
            await sup.wait_ready()
            # A client of our own, on the shared server, reaches the cluster's nodes.
            own = NodeConfig(cluster=cluster_name, name="outsider", servers=(nats_server.url,))
            async with open_client(own) as client:
                done = await client.send(AgentId("Front"), Relay(key="w", n=4), expect=Done)
        status = sup.cluster_status()
        sup.stop()
    assert done.n == 4
    assert (status.embedded, status.servers) == (False, [nats_server.url])
    assert sup.nats is None  # nothing was started besides the node processes
