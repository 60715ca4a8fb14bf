"""``agentrt up``: start NATS, spawn and supervise node processes, answer control requests.

The supervisor is one trio program. It owns the embedded ``nats-server`` (or joins a NATS URL),
one task per node process (restart with backoff when a process dies), and a client connection
that answers ``ctl.cluster`` (process table) and ``ctl.down`` (graceful stop). Node processes
get the NATS credentials through their environment, never their command line, and watch their
stdin: when the supervisor dies, the pipe closes and they drain and exit instead of lingering.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import trio

from ._config import (
    ClusterConfig,
    load_node_policy,
    partitions,
    resolve_agents,
    resolve_tools,
    tool_registry,
)
from ._control import NodeStatus
from ._envelope import encode
from ._errors import ClusterNotRunning
from ._natsserver import NatsServer, NatsUser
from ._node import Node, NodeConfig, Subjects, open_client

__all__ = [
    "ClusterState",
    "ClusterStatus",
    "ProcessStatus",
    "Supervisor",
    "gather_node_statuses",
    "node_config_from_state",
    "node_users",
    "read_state",
    "state_path",
]

log = logging.getLogger("agentrt.cluster")

READY_WAIT_S = 60.0
_MAX_BACKOFF_S = 10.0
_STABLE_AFTER_S = 30.0


class ClusterState(msgspec.Struct, kw_only=True):
    """``.agentrt/state.json``: how CLI commands find a running cluster (file mode 0600)."""

    cluster: str
    servers: list[str]
    user: str = ""
    password: str = ""
    supervisor_pid: int = 0
    nats_pid: int = 0
    nodes: list[str] = []


class ProcessStatus(msgspec.Struct, kw_only=True):
    """One node process as the supervisor sees it."""

    name: str
    pid: int
    state: str
    restarts: int
    last_exit: int | None = None


class ClusterStatus(msgspec.Struct, kw_only=True):
    """The supervisor's answer to ``ctl.cluster``."""

    cluster: str
    servers: list[str]
    embedded: bool
    processes: list[ProcessStatus]


def state_path(cfg: ClusterConfig) -> Path:
    return cfg.directory / ".agentrt" / "state.json"


def read_state(cfg: ClusterConfig) -> ClusterState:
    """Read the state file of a running cluster.

    Raises:
        ClusterNotRunning: there is no state file (the cluster is not up from this directory).
    """
    path = state_path(cfg)
    try:
        return msgspec.json.decode(path.read_bytes(), type=ClusterState)
    except FileNotFoundError:
        raise ClusterNotRunning(
            f"cluster {cfg.cluster.name!r} is not running ({path} does not exist); "
            f"start it with `agentrt up -c {cfg.path}`"
        ) from None


def node_config_from_state(cfg: ClusterConfig, state: ClusterState, name: str) -> NodeConfig:
    return NodeConfig(
        cluster=cfg.cluster.name, name=name, servers=tuple(state.servers),
        user=state.user or None, password=state.password or None,
        default_deadline_s=cfg.cluster.default_deadline_s,
        drain_timeout_s=cfg.cluster.drain_timeout_s, idle_timeout_s=cfg.cluster.idle_timeout_s,
        partitions=partitions(cfg), tool_rules=cfg.tools,
    )  # fmt: skip


class _ProcState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@dataclass
class _NodeProcess:
    name: str
    section: str
    replica: int
    state: _ProcState = _ProcState.STARTING
    restarts: int = 0
    last_exit: int | None = None
    proc: trio.Process | None = None
    ready: trio.Event = field(default_factory=trio.Event)

    def status(self) -> ProcessStatus:
        pid = self.proc.pid if self.proc is not None and self.proc.returncode is None else 0
        return ProcessStatus(
            name=self.name, pid=pid, state=self.state.value, restarts=self.restarts,
            last_exit=self.last_exit,
        )  # fmt: skip


class Supervisor:
    """Runs one cluster from its config until stopped."""

    def __init__(self, cfg: ClusterConfig, *, log_level: str = "WARNING") -> None:
        self.cfg = cfg
        self.log_level = log_level
        self.state_dir = cfg.directory / ".agentrt"
        self.log_dir = self.state_dir / "logs"
        self.procs = [
            _NodeProcess(f"{n.name}-{r}" if n.replicas > 1 else n.name, n.name, r)
            for n in cfg.nodes
            for r in range(n.replicas)
        ]
        self.subjects = Subjects(cfg.cluster.name)
        self.state: ClusterState | None = None
        self.nats: NatsServer | None = None
        self._stopping = trio.Event()
        self._down_replies: list[str] = []
        self._changed = trio.Event()
        self._node_users: dict[str, NatsUser] = {}
        self.client: Node | None = None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[Supervisor], bool]) -> None:
        """Wait (without polling) until ``predicate(self)`` holds after some state change."""
        while not predicate(self):
            await self._changed.wait()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # ------------------------------------------------------------------ NATS

    def _check_not_running(self) -> None:
        path = state_path(self.cfg)
        if not path.exists():
            return
        try:
            old = msgspec.json.decode(path.read_bytes(), type=ClusterState)
        except msgspec.DecodeError:
            path.unlink()
            return
        if old.supervisor_pid and _alive(old.supervisor_pid):
            raise ClusterNotRunning(
                f"cluster {self.cfg.cluster.name!r} is already running from this directory "
                f"(supervisor pid {old.supervisor_pid}); stop it with `agentrt down` first"
            )
        if old.nats_pid and _alive(old.nats_pid):  # left behind by a killed supervisor
            os.kill(old.nats_pid, signal.SIGTERM)
        path.unlink()

    async def _start_nats(self) -> ClusterState:
        nats = self.cfg.nats
        if nats.url:
            return ClusterState(
                cluster=self.cfg.cluster.name, servers=[u.strip() for u in nats.url.split(",")],
                user=nats.user, password=nats.password, supervisor_pid=os.getpid(),
            )  # fmt: skip
        user = NatsUser.generate("agentrt")
        self._node_users = node_users(self.cfg)
        self.nats = NatsServer(
            store_dir=self.state_dir / "nats", users=(user, *self._node_users.values()),
            name=self.cfg.cluster.name,
        )  # fmt: skip
        await trio.to_thread.run_sync(self.nats.start)
        return ClusterState(
            cluster=self.cfg.cluster.name, servers=[self.nats.url], user=user.user,
            password=user.password, supervisor_pid=os.getpid(), nats_pid=self.nats.pid or 0,
        )  # fmt: skip

    def _write_state(self, state: ClusterState) -> None:
        path = state_path(self.cfg)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(state))
        tmp.replace(path)

    # ------------------------------------------------------------------ node processes

    def _node_env(self, state: ClusterState, section: str) -> dict[str, str]:
        # A node with a policy connects as its own NATS user, whose permissions come from that
        # policy; the others (and the supervisor and CLI) use the cluster's admin user.
        own = self._node_users.get(section)
        env = dict(os.environ)
        env.update(
            AGENTRT_NATS_SERVERS=",".join(state.servers),
            AGENTRT_NATS_USER=own.user if own else state.user,
            AGENTRT_NATS_PASSWORD=own.password if own else state.password,
            AGENTRT_LOG_LEVEL=self.log_level,
            PYTHONUNBUFFERED="1",
        )
        return env

    async def _supervise(self, np: _NodeProcess, env: dict[str, str]) -> None:
        backoff = 0.5
        log_path = self.log_dir / f"{np.name}.log"
        cmd = [
            sys.executable, "-m", "agentrt._nodeproc", self.cfg.path, np.section,
            str(np.replica), np.name,
        ]  # fmt: skip
        while not self.stopping:
            started = trio.current_time()
            with log_path.open("ab") as logf:
                np.proc = await trio.lowlevel.open_process(
                    cmd, stdin=subprocess.PIPE, stdout=logf, stderr=logf, env=env,
                    start_new_session=True,
                )  # fmt: skip
            np.state = _ProcState.RUNNING
            self._notify()
            try:
                await np.proc.wait()
            finally:
                if np.proc.stdin is not None:
                    with trio.CancelScope(shield=True):
                        await np.proc.stdin.aclose()
            np.last_exit = np.proc.returncode
            np.ready = trio.Event()
            self._notify()
            if self.stopping:
                break
            np.restarts += 1
            np.state = _ProcState.RESTARTING
            self._notify()
            if trio.current_time() - started > _STABLE_AFTER_S:
                backoff = 0.5
            print(
                f"agentrt: node {np.name} exited with code {np.last_exit}; restarting in "
                f"{backoff:.1f}s (restart #{np.restarts}, log: {log_path})",
                file=sys.stderr,
            )
            with trio.move_on_after(backoff):
                await self._stopping.wait()
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
        np.state = _ProcState.STOPPED
        self._notify()

    async def _terminate_all(self) -> None:
        timeout = self.cfg.cluster.drain_timeout_s + 5
        running = [np for np in self.procs if np.proc is not None and np.proc.returncode is None]
        for np in running:
            assert np.proc is not None
            np.proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            for np in running:
                assert np.proc is not None
                await np.proc.wait()
        for np in running:
            assert np.proc is not None
            if np.proc.returncode is None:
                print(f"agentrt: node {np.name} did not stop in {timeout}s; killing it",
                      file=sys.stderr)  # fmt: skip
                np.proc.kill()
                await np.proc.wait()

    # ------------------------------------------------------------------ control

    def cluster_status(self) -> ClusterStatus:
        assert self.state is not None
        return ClusterStatus(
            cluster=self.cfg.cluster.name, servers=self.state.servers,
            embedded=self.nats is not None, processes=[np.status() for np in self.procs],
        )  # fmt: skip

    async def node_statuses(self) -> list[NodeStatus]:
        assert self.client is not None
        expected = sum(1 for np in self.procs if np.state is _ProcState.RUNNING)
        nodes = await gather_node_statuses(self.client, self.subjects, expected)
        # The supervisor's own client makes calls too (the demo job): its gate counts belong
        # in the picture.
        return [*nodes, self.client.status()]

    async def _serve_control(
        self, client: Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        bus = client.bus
        cluster_sub = await bus.subscribe(self.subjects.ctl("cluster"), capacity=64)
        ready_sub = await bus.subscribe(self.subjects.ctl("ready"), capacity=256)
        down_sub = await bus.subscribe(self.subjects.ctl("down"), capacity=16)

        async def on_cluster() -> None:
            async for m in cluster_sub:
                if m.reply:
                    bus.publish_nowait(m.reply, encode(self.cluster_status()))

        async def on_ready() -> None:
            async for m in ready_sub:
                name = m.data.decode(errors="replace")
                for np in self.procs:
                    if np.name == name:
                        np.ready.set()
                        self._notify()

        async def on_down() -> None:
            async for m in down_sub:
                if m.reply:
                    self._down_replies.append(m.reply)
                self.stop()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_cluster)
            nursery.start_soon(on_ready)
            nursery.start_soon(on_down)
            task_status.started()

    async def wait_ready(self) -> None:
        """Wait until every node process has reported it is serving."""
        await self.wait_until(lambda s: all(np.ready.is_set() for np in s.procs))

    # ------------------------------------------------------------------ run

    async def run(
        self,
        body: Callable[[Supervisor], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start everything, run ``body`` (demo job or live view), then stop everything.

        ``body`` returning means "stop the cluster"; ``stop()`` or ``ctl.down`` also stop it,
        cancelling ``body``.
        """
        self._check_not_running()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        try:
            self.state = await self._start_nats()
            self.state.nodes = [np.name for np in self.procs]
            self._write_state(self.state)
            client_cfg = node_config_from_state(self.cfg, self.state, "supervisor")
            async with open_client(client_cfg, registry=tool_registry(self.cfg)) as client:
                self.client = client
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._serve_control, client)
                    async with trio.open_nursery() as nodes:
                        for np in self.procs:
                            env = self._node_env(self.state, np.section)
                            nodes.start_soon(self._supervise, np, env, name=f"node {np.name}")
                        task_status.started()
                        async with trio.open_nursery() as body_scope:
                            body_scope.start_soon(self._run_body, body)
                            await self._stopping.wait()
                            body_scope.cancel_scope.cancel()
                        with trio.CancelScope(shield=True):
                            await self._terminate_all()
                    for reply in self._down_replies:
                        client.bus.publish_nowait(reply, b"stopped")
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await client.bus.flush()
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._terminate_all()
                if self.nats is not None:
                    await trio.to_thread.run_sync(self.nats.stop)
                state_path(self.cfg).unlink(missing_ok=True)

    async def _run_body(self, body: Callable[[Supervisor], Awaitable[None]]) -> None:
        try:
            await body(self)
        finally:
            self.stop()


def node_users(cfg: ClusterConfig) -> dict[str, NatsUser]:
    """One NATS user per ``[[nodes]]`` entry that has a policy, with permissions from it.

    Raises:
        ConfigError: a policy file is invalid.
    """
    from agentrt.sandbox import nats_permissions

    known = [t.name for t in tool_registry(cfg)]
    users: dict[str, NatsUser] = {}
    for node in cfg.nodes:
        policy = load_node_policy(cfg, node.name)
        if policy is None:
            continue
        agents = [(a.agent_type, a.topics) for a in resolve_agents(cfg, node.name)]
        hosted = [t.name for t in resolve_tools(cfg, node.name)]
        publish, subscribe = nats_permissions(
            policy, cluster=cfg.cluster.name, agents=agents, hosted_tools=hosted,
            known_tools=known, cache=True, mcp_servers=[m.name for m in node.mcp],
            cluster_mcp_servers=[m.name for n in cfg.nodes for m in n.mcp],
        )  # fmt: skip
        user = NatsUser.generate(f"node-{node.name}")
        users[node.name] = NatsUser(
            user.user, user.password, tuple(publish), tuple(subscribe), allow_responses=True
        )
    return users


async def gather_node_statuses(
    client: Node, subjects: Subjects, expected: int | None, window_s: float = 1.0
) -> list[NodeStatus]:
    """Ask every node for its status; waits for ``expected`` answers or ``window_s``."""
    raw = await client.gather(subjects.ctl("status"), expected=expected, window_s=window_s)
    statuses = []
    for r in raw:
        try:
            statuses.append(msgspec.msgpack.decode(r, type=NodeStatus))
        except msgspec.DecodeError:
            log.warning("ignored an undecodable status reply (%d bytes)", len(r))
    return sorted(statuses, key=lambda s: s.node)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
