"""The ``agentrt`` command line, run as a real subprocess against a copy of the quickstart.

Each test copies ``examples/quickstart`` into its tmp_path, so the cluster's state directory
(``.agentrt/``) and its embedded nats-server are private to the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

AGENTRT = Path(sys.executable).parent / "agentrt"
UP_TIMEOUT_S = 90.0  # `up --demo` from cold start to clean exit, on a slow shared machine
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
CMD_TIMEOUT_S = 60.0
NODES = ("front", "workers-0", "workers-1")

# A first row of the status table: node, pid, state, restarts, uptime, agent type, ...
STATUS_ROW = re.compile(
    r"^\s*(?P<node>front|workers-\d)\s+(?P<pid>\d+)\s+serving\s+\d+\s+\S+\s+(?P<agent>\w+)",
    re.MULTILINE,
)
HELLO_ALICE = json.dumps({"type": "quickstart.hello", "name": "Alice"})


# ---------------------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    env = dict(os.environ)  # conftest already removed AGENTRT_* / NATS_* settings
    for key in ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS", "LINES"):
        env.pop(key, None)
    env["NO_COLOR"] = "1"
    return env


def cli(
    *args: str, cwd: Path | None = None, timeout: float = CMD_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``agentrt ARGS`` to completion and capture its output."""
    assert AGENTRT.exists(), f"console script {AGENTRT} missing: pip install -e . in the venv"
    return subprocess.run(
        [str(AGENTRT), *args], cwd=cwd, env=_env(), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def one_line(text: str) -> str:
    """Collapse whitespace (rich may wrap long lines at 120 columns when piped)."""
    return " ".join(text.split())


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (an exited, unreaped process)."""
    if Path("/proc/self/stat").exists():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def state_file(directory: Path) -> Path:
    return directory / ".agentrt" / "state.json"


@pytest.fixture
def quickstart(tmp_path: Path, repo_root: Path) -> Path:
    """A private copy of examples/quickstart."""
    directory = tmp_path / "qs"
    shutil.copytree(
        repo_root / "examples" / "quickstart", directory,
        ignore=shutil.ignore_patterns(".agentrt", "__pycache__"),
    )  # fmt: skip
    return directory


@pytest.fixture
def broken(quickstart: Path) -> Path:
    """The quickstart with a type error at $.nodes[1].replicas."""
    toml = quickstart / "agentrt.toml"
    text = toml.read_text()
    assert "replicas = 2" in text
    toml.write_text(text.replace("replicas = 2", 'replicas = "two"'))
    return quickstart


@dataclass
class Up:
    """A background `agentrt up` process and what the test learnt about its children."""

    directory: Path
    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    pids: set[int] = field(default_factory=set)

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"--- up stdout:\n{self.stdout()}\n--- up stderr:\n{self.stderr()}"

    def wait_serving(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Wait until the state file exists and every node reports "serving".

        Polls an external condition (state file, then `agentrt status --json`) under one
        deadline; returns the last status.
        """
        deadline = time.monotonic() + timeout
        state = state_file(self.directory)
        last = "the state file was never written"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"`agentrt up` exited with code {self.proc.returncode} before the cluster "
                    f"was ready\n{self.describe()}"
                )
            if not state.exists():
                time.sleep(0.05)  # poll interval while nats-server starts
                continue
            r = cli("status", "--json", "-c", str(self.directory))
            if r.returncode != 0:
                last = f"status exited {r.returncode}: {r.stderr}"
                continue
            status: dict[str, Any] = json.loads(r.stdout)
            states = {n["node"]: n["state"] for n in status["nodes"]}
            self.pids.update(n["pid"] for n in status["nodes"])
            if sorted(states) == sorted(NODES) and set(states.values()) == {"serving"}:
                return status
            last = f"node states: {states}"
        raise TimeoutError(
            f"cluster in {self.directory} not serving within {timeout}s; last: {last}\n"
            f"{self.describe()}"
        )


@contextmanager
def background_up(directory: Path, tmp_path: Path) -> Iterator[Up]:
    """Start `agentrt up DIRECTORY` in the background; always stopped (and reaped) on exit."""
    out_path, err_path = tmp_path / "up.out", tmp_path / "up.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [str(AGENTRT), "up", str(directory)], stdout=out, stderr=err,
            stdin=subprocess.DEVNULL, env=_env(),
        )  # fmt: skip
        up = Up(directory, proc, out_path, err_path)
        try:
            yield up
        finally:
            _stop(up)


def _stop(up: Up) -> None:
    try:
        state = json.loads(state_file(up.directory).read_text())
        up.pids.add(int(state.get("nats_pid") or 0))
    except (OSError, ValueError):
        pass
    if up.proc.poll() is None:
        up.proc.terminate()  # SIGTERM: a graceful stop
        try:
            up.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            up.proc.kill()
            up.proc.wait()
    for pid in up.pids - {0}:  # anything left behind by a failed test
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def assert_clean_failure(r: subprocess.CompletedProcess[str], code: int, *phrases: str) -> None:
    """Exit code ``code``, one `agentrt: error:` line naming ``phrases``, no traceback."""
    context = f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert r.returncode == code, context
    assert "Traceback" not in r.stderr, context
    assert r.stderr.startswith("agentrt: error: "), context
    assert r.stderr.count("\n") == 1, context  # one line, not wrapped
    for phrase in phrases:
        assert phrase in r.stderr, context


# ---------------------------------------------------------------------------- up --demo


@pytest.mark.slow
def test_up_demo_runs_the_job_and_stops_everything(quickstart: Path) -> None:
    r = cli("up", str(quickstart), "--demo", timeout=UP_TIMEOUT_S)
    context = f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert r.returncode == 0, context
    assert "Traceback" not in r.stderr and "error" not in r.stderr, context
    assert "cluster quickstart up, nodes: front, workers-0, workers-1" in r.stdout, context

    # The job's result, as JSON.
    start = r.stdout.index("{", r.stdout.index("result:"))
    result, _ = json.JSONDecoder().raw_decode(r.stdout, start)
    report = result["report"]
    assert report["type"] == "quickstart.report"
    assert report["initials"] == "A.G.L.A"  # the tool, called by the coordinator
    # The sloppy call (fence, single quotes, scalar for a list) was repaired, then ran.
    assert result["sloppy_tool_call"].startswith("Sure! ```json")
    assert result["repaired_result"] == "L"
    assert "gate: initials: repaired 1, valid 1" in r.stdout, context
    texts = [g["text"] for g in report["greetings"]]
    assert texts == ["Hello, Ada!", "Hello, Grace!", "Hello, Linus!", "Hello, Ada! (again, x2)"]
    assert report["total_greeted"] == 4
    # Key affinity: both greetings of Ada come from the one actor that owns key "Ada".
    assert report["greetings"][0]["by"] == report["greetings"][3]["by"]
    assert {g["by"] for g in report["greetings"]} <= {"workers-0", "workers-1"}

    # The status table after the job: every node serving, with its agent type.
    rows = {m["node"]: (int(m["pid"]), m["agent"]) for m in STATUS_ROW.finditer(r.stdout)}
    assert rows.keys() == set(NODES), context
    assert rows["front"][1] == "Coordinator"
    assert rows["workers-0"][1] == rows["workers-1"][1] == "Greeter"

    # Nothing is left: no state file, no node process.
    assert not state_file(quickstart).exists()
    left = [pid for pid, _ in rows.values() if pid_alive(pid)]
    assert left == [], f"node processes still alive after `up --demo` exited: {left}"


# ---------------------------------------------------------------------------- a running cluster


@pytest.mark.slow
def test_up_status_call_down(quickstart: Path, tmp_path: Path) -> None:
    d = str(quickstart)
    with background_up(quickstart, tmp_path) as up:
        status = up.wait_serving()
        state = json.loads(state_file(quickstart).read_text())
        assert state["supervisor_pid"] == up.proc.pid
        assert state["nodes"] == ["front", "workers-0", "workers-1"]
        up.pids.add(state["nats_pid"])

        # status --json: the supervisor's process table and each node's own report.
        assert status["cluster"]["cluster"] == "quickstart"
        assert status["cluster"]["embedded"] is True
        assert status["cluster"]["servers"] == state["servers"]
        procs = {p["name"]: p for p in status["cluster"]["processes"]}
        assert procs.keys() == set(NODES)
        assert {p["state"] for p in procs.values()} == {"running"}
        assert {p["restarts"] for p in procs.values()} == {0}
        agents = {n["node"]: [a["type"] for a in n["agents"]] for n in status["nodes"]}
        assert agents == {
            "front": ["Coordinator"], "workers-0": ["Greeter"], "workers-1": ["Greeter"],
        }  # fmt: skip
        assert {n["pid"] for n in status["nodes"]} == {p["pid"] for p in procs.values()}

        # status as a table.
        r = cli("status", "-c", d)
        assert r.returncode == 0, r.stderr
        assert "cluster quickstart" in r.stdout and "NATS embedded" in r.stdout
        for word in (*NODES, "Coordinator", "Greeter", "serving"):
            assert word in r.stdout, r.stdout

        # call: the reply as JSON; the same key reaches the same actor (state kept).
        r = cli("call", "Greeter/alice", HELLO_ALICE, "-c", d)
        assert r.returncode == 0, r.stderr
        first = json.loads(r.stdout)
        assert first["type"] == "quickstart.greeting"
        assert first["text"] == "Hello, Alice!"
        r = cli("call", "Greeter/alice", HELLO_ALICE, "-c", d)
        assert r.returncode == 0, r.stderr
        again = json.loads(r.stdout)
        assert again["text"] == "Hello, Alice! (again, x2)"
        assert again["by"] == first["by"]

        # call errors: exit 1, one line on stderr that says what is wrong.
        missing_type = 'MESSAGE must be a JSON object with a "type"'
        hello = "payload does not match 'quickstart.hello'"
        bad_calls: list[tuple[list[str], list[str]]] = [
            (["Greeter/alice", '{"type": '], ["MESSAGE is not JSON", "quote it"]),
            (["Greeter/alice", '{"name": "Alice"}'], [missing_type]),
            (["Greeter/alice", "[1, 2]"], [missing_type]),
            (["bad id/x", HELLO_ALICE], ["AGENT 'bad id/x'", "agent type 'bad id' is not valid"]),
            (["Greeter/a b", HELLO_ALICE], ["agent key 'a b' is not valid"]),
            (["Nobody/x", HELLO_ALICE], ["cluster 'quickstart' serves agent type 'Nobody'"]),
            (["Greeter/alice", '{"type": "quickstart.hello"}'],
             [hello, "missing required field `name`"]),
            (["Greeter/alice", '{"type": "quickstart.hello", "name": 7}'],
             [hello, "Expected `str`, got `int`"]),
            (["Greeter/alice", '{"type": "quickstart.nope"}'],
             ["no message type 'quickstart.nope'"]),
        ]  # fmt: skip
        for args, phrases in bad_calls:
            r = cli("call", *args, "-c", d)
            assert_clean_failure(r, 1, *phrases)
            assert r.stdout == ""

        # tools: called through the gate; sloppy arguments repaired, invalid ones refused.
        r = cli("tools", "call", "initials", '{"names": ["Ada", "Linus"]}', "-c", d)
        assert (r.returncode, json.loads(r.stdout)) == (0, "A.L"), r.stderr
        r = cli("tools", "call", "initials", "```json\n{'names': 'grace',}\n```", "-c", d)
        assert (r.returncode, json.loads(r.stdout)) == (0, "G"), r.stderr
        r = cli("tools", "call", "initials", '{"names": [1], "sep": "-"}', "-c", d)
        assert r.returncode == 1
        assert r.stderr.startswith(
            "agentrt: error: tool 'initials': input failed the schema gate (2 violations)"
        ), r.stderr
        assert "at /names/0: 'type' expects string; got 1" in r.stderr
        assert "at /sep: 'additionalProperties'" in r.stderr

        # metrics: Prometheus text, the gate's counters per model, tool and outcome.
        r = cli("metrics", "-c", d)
        assert r.returncode == 0, r.stderr
        assert "# TYPE agentrt_gate_calls_total counter" in r.stdout
        assert 'agentrt_agent_messages_total{node="workers-0",agent="Greeter",result="received"}' \
            in r.stdout or 'node="workers-1",agent="Greeter"' in r.stdout  # fmt: skip

        # A second `up` from the same directory is refused and leaves the first one alone.
        r = cli("up", d)
        assert_clean_failure(r, 1, "is already running from this directory", str(up.proc.pid))
        assert state_file(quickstart).exists()
        assert cli("status", "--json", "-c", d).returncode == 0

        # down: graceful stop of everything.
        r = cli("down", "-c", d, timeout=STOP_TIMEOUT_S)
        assert r.returncode == 0, r.stderr
        assert "agentrt: cluster quickstart stopped" in r.stdout
        assert up.proc.wait(STOP_TIMEOUT_S) == 0, up.describe()
        assert not state_file(quickstart).exists()
        assert "cluster quickstart starting" in up.stdout()
        assert "Traceback" not in up.stderr(), up.describe()
        left = sorted(pid for pid in up.pids if pid_alive(pid))
        assert left == [], f"processes still alive after `agentrt down`: {left}"


@pytest.mark.slow
def test_down_reports_no_error_when_it_succeeds(quickstart: Path, tmp_path: Path) -> None:
    with background_up(quickstart, tmp_path) as up:
        up.wait_serving()
        r = cli("down", str(quickstart), timeout=STOP_TIMEOUT_S)
        assert r.returncode == 0, r.stderr
        assert up.proc.wait(STOP_TIMEOUT_S) == 0, up.describe()
        # A successful stop is not an error: nothing on stderr.
        assert r.stderr == "", r.stderr


@pytest.mark.slow
def test_ctrl_c_stops_the_cluster_gracefully(quickstart: Path, tmp_path: Path) -> None:
    with background_up(quickstart, tmp_path) as up:
        up.wait_serving()
        up.proc.send_signal(signal.SIGINT)
        code = up.proc.wait(STOP_TIMEOUT_S)
        assert code == 0, up.describe()
        assert "stopping" in up.stderr(), up.describe()
        assert "Traceback" not in up.stderr(), up.describe()
        assert "interrupted" not in up.stderr(), up.describe()  # one Ctrl-C is not a force-quit
        assert not state_file(quickstart).exists()
        left = sorted(pid for pid in up.pids if pid_alive(pid))
        assert left == [], f"node processes still alive after Ctrl-C: {left}"


# ---------------------------------------------------------------------------- nothing running


@pytest.mark.parametrize(
    "args",
    [["status"], ["status", "--json"], ["call", "Greeter/alice", HELLO_ALICE], ["down"]],
    ids=["status", "status-json", "call", "down"],
)
def test_commands_when_nothing_runs(quickstart: Path, args: list[str]) -> None:
    r = cli(*args, "-c", str(quickstart))
    state = quickstart.resolve() / ".agentrt" / "state.json"
    assert_clean_failure(r, 1, "cluster 'quickstart' is not running", str(state), "agentrt up")
    assert r.stdout == ""


def test_status_defaults_to_the_current_directory(quickstart: Path) -> None:
    r = cli("status", cwd=quickstart)
    assert_clean_failure(r, 1, "cluster 'quickstart' is not running")


@pytest.fixture
def stale(quickstart: Path) -> tuple[Path, int]:
    """The state a killed supervisor leaves: its pid is gone, its NATS port is closed."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    state = state_file(quickstart)
    state.parent.mkdir()
    state.write_text(json.dumps({
        "cluster": "quickstart", "servers": [f"nats://127.0.0.1:{port}"], "user": "u",
        "password": "p", "supervisor_pid": dead.pid, "nats_pid": 0, "nodes": list(NODES),
    }))  # fmt: skip
    return quickstart, port


@pytest.mark.slow
def test_stale_state_status_and_call_say_why(stale: tuple[Path, int]) -> None:
    directory, port = stale
    r = cli("call", "Greeter/alice", HELLO_ALICE, "-c", str(directory))
    assert_clean_failure(r, 1, "cluster 'quickstart' does not answer", "run `agentrt down`")
    r = cli("status", "-c", str(directory))
    assert_clean_failure(
        r, 1, "cluster 'quickstart' does not answer", "run `agentrt down`",
        # the cause, as the bus words a failed first connect: where, why, what to check
        f"cannot connect to NATS at nats://127.0.0.1:{port} (", "is the server running",
    )  # fmt: skip
    assert state_file(directory).exists()  # only `down` cleans up


@pytest.mark.slow
def test_stale_state_down_cleans_up(stale: tuple[Path, int]) -> None:
    directory, _ = stale
    r = cli("down", "-c", str(directory))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "removed the stale state of quickstart" in r.stdout
    assert not state_file(directory).exists()
    r = cli("status", "-c", str(directory))
    assert_clean_failure(r, 1, "cluster 'quickstart' is not running")


# ---------------------------------------------------------------------------- check / bad config


def test_tools_list_and_show_need_no_running_cluster(quickstart: Path) -> None:
    r = cli("tools", "list", "-c", str(quickstart))
    assert r.returncode == 0, r.stderr
    assert "initials" in r.stdout and "workers" in r.stdout
    r = cli("tools", "show", "initials", "-c", str(quickstart))
    spec = json.loads(r.stdout)
    assert spec["input_schema"]["required"] == ["names"]
    assert spec["output_schema"] == {"type": "string"}
    r = cli("tools", "show", "nope", "-c", str(quickstart))
    assert_clean_failure(r, 1, "no tool named 'nope'", "(tools: initials)")


def test_check_ok(quickstart: Path) -> None:
    expected = (
        f"{(quickstart / 'agentrt.toml').resolve()}: OK — cluster quickstart, "
        "nodes front x1, workers x2"
    )
    r = cli("check", str(quickstart))
    assert r.returncode == 0, r.stderr
    assert one_line(r.stdout) == expected
    r = cli("check", cwd=quickstart)  # default: the current directory
    assert r.returncode == 0, r.stderr
    assert one_line(r.stdout) == expected
    assert not (quickstart / ".agentrt").exists()  # checking starts nothing


def test_check_broken_config(broken: Path) -> None:
    toml = broken / "agentrt.toml"
    r = cli("check", str(broken))
    assert_clean_failure(r, 2)
    assert r.stderr == f"agentrt: error: {toml}: $.nodes[1].replicas: Expected `int`, got `str`\n"


def test_check_missing_file(tmp_path: Path) -> None:
    r = cli("check", str(tmp_path))
    assert_clean_failure(r, 2, str(tmp_path / "agentrt.toml"), "file not found")


@pytest.mark.parametrize(
    "args",
    [["up", "{d}"], ["up", "{d}", "--demo"], ["status", "{d}"], ["down", "{d}"],
     ["call", "Greeter/a", HELLO_ALICE, "-c", "{d}"]],
    ids=["up", "up-demo", "status", "down", "call"],
)  # fmt: skip
def test_broken_config_starts_nothing(broken: Path, args: list[str]) -> None:
    r = cli(*(a.replace("{d}", str(broken)) for a in args))
    assert_clean_failure(r, 2, str(broken / "agentrt.toml"), "$.nodes[1].replicas")
    assert r.stdout == ""
    assert not (broken / ".agentrt").exists()


def test_up_demo_without_demo_table(quickstart: Path) -> None:
    toml = quickstart / "agentrt.toml"
    text = toml.read_text()
    toml.write_text(text[: text.index("[demo]")])
    r = cli("up", str(quickstart), "--demo")
    assert_clean_failure(r, 2, "$.demo: --demo needs a [demo] table")
    assert not (quickstart / ".agentrt").exists()
