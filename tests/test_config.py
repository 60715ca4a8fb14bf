"""``agentrt.toml`` checking: every bad variant fails before anything starts, with the file,
the key path and a message that says what is expected."""

from __future__ import annotations

import itertools
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentrt import ConfigError
from agentrt._config import (
    ClusterConfig,
    load_config,
    owned_partitions,
    partitions,
    resolve_agents,
)

# Every test gets its own agents module (unique module name and message tags): modules stay
# cached in sys.modules and a message tag may be owned by one module only.
_module_numbers = itertools.count(1)

_AGENTS_SOURCE = '''\
"""Agents for one config test."""

import agentrt


class Ping(agentrt.Message, tag="{module}.ping"):
    text: str


class Pinger(agentrt.Agent):
    async def on_ping(self, msg: Ping) -> Ping:
        return msg


class Ponger(agentrt.Agent):
    async def on_ping(self, msg: Ping) -> Ping:
        return msg


class Impostor(agentrt.Agent):
    """A different class claiming Pinger's agent type."""

    agent_type = "Pinger"


class NotAnAgent:
    pass


def sync_job(client):
    return None


async def job(client):
    return "done"


NOT_CALLABLE = 42
'''


@pytest.fixture(autouse=True)
def _restore_imports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """load_config puts the config's directory on sys.path and imports agent modules: undo."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def mod(tmp_path: Path) -> str:
    """Name of a fresh agents module in tmp_path (next to the agentrt.toml the test writes)."""
    name = f"cfgt_{next(_module_numbers)}"
    (tmp_path / f"{name}.py").write_text(_AGENTS_SOURCE.format(module=name))
    return name


def write(tmp_path: Path, toml: str) -> Path:
    path = tmp_path / "agentrt.toml"
    path.write_text(textwrap.dedent(toml))
    return path


def config_error(tmp_path: Path, toml: str) -> ConfigError:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    exc = info.value
    assert exc.path == str(path)
    # str() is one line: file, key path (if any), problem.
    where = f"{path}: {exc.key}" if exc.key else str(path)
    assert str(exc) == f"{where}: {exc.problem}"
    return exc


def one_node(mod: str, node: str = "", cluster: str = "", tail: str = "") -> str:
    """A minimal valid config; ``node``/``cluster`` add lines to those tables."""
    return (
        f'[cluster]\nname = "cfgtest"\n{cluster}\n'
        f'[[nodes]]\nname = "n1"\nagents = ["{mod}:Pinger"]\n{node}\n{tail}'
    )


# ---------------------------------------------------------------------------- the file


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert info.value.key == ""
    assert "file not found" in info.value.problem
    assert "agentrt.toml" in info.value.problem  # says what to pass instead


def test_directory_without_agentrt_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.path == str(tmp_path / "agentrt.toml")
    assert info.value.key == ""
    assert "file not found" in info.value.problem


def test_directory_means_its_agentrt_toml(tmp_path: Path, mod: str) -> None:
    path = write(tmp_path, one_node(mod))
    cfg = load_config(tmp_path)
    assert cfg.path == str(path.resolve())
    assert cfg.directory == tmp_path.resolve()


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "agentrt.toml").mkdir()  # a directory, so its agentrt.toml is read...
    (tmp_path / "agentrt.toml" / "agentrt.toml").mkdir()  # ...and that is a directory too
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "agentrt.toml")
    assert info.value.key == ""
    assert "cannot read it" in info.value.problem


def test_invalid_toml_syntax(tmp_path: Path) -> None:
    exc = config_error(tmp_path, '[cluster\nname = "x"\n')
    assert exc.key == ""
    assert exc.problem.startswith("not valid TOML: ")
    assert "line 1" in exc.problem  # where in the file


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "agentrt.toml"
    path.write_bytes(b'[cluster]\nname = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problem.startswith("not valid TOML: ")
    assert "utf-8" in info.value.problem


# ---------------------------------------------------------------------------- shape and types


def test_missing_cluster_table(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, f'[[nodes]]\nname = "n1"\nagents = ["{mod}:Pinger"]\n')
    assert exc.key == ""
    assert exc.problem == "Object missing required field `cluster`"


def test_missing_nodes(tmp_path: Path) -> None:
    exc = config_error(tmp_path, '[cluster]\nname = "x"\n')
    assert exc.problem == "Object missing required field `nodes`"


def test_missing_node_agents(tmp_path: Path) -> None:
    exc = config_error(tmp_path, '[cluster]\nname = "x"\n[[nodes]]\nname = "n1"\n')
    assert exc.key == "$.nodes[0].agents"
    assert exc.problem == "list at least one agent (module:Class) or tool (module:function)"


def test_wrong_type_names_the_key_path(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod, node='replicas = "two"'))
    assert exc.key == "$.nodes[0].replicas"
    assert "Expected `int`" in exc.problem
    assert "got `str`" in exc.problem
    assert str(exc) == (
        f"{tmp_path / 'agentrt.toml'}: $.nodes[0].replicas: Expected `int`, got `str`"
    )


def test_wrong_type_in_second_node(tmp_path: Path, mod: str) -> None:
    toml = one_node(mod) + f'[[nodes]]\nname = "n2"\nagents = "{mod}:Ponger"\n'
    exc = config_error(tmp_path, toml)
    assert exc.key == "$.nodes[1].agents"
    assert "Expected `array`, got `str`" in exc.problem


def test_unknown_key_reported_with_its_table(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod, node="replica = 2"))
    assert exc.key == "$.nodes[0]"
    assert exc.problem == "Object contains unknown field `replica`"


def test_unknown_key_in_cluster_table(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod, cluster="deadline = 3"))
    assert exc.key == "$.cluster"
    assert exc.problem == "Object contains unknown field `deadline`"


def test_unknown_top_level_table(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod, tail="[natz]\nurl = 'nats://x:1'\n"))
    assert exc.key == ""  # the top level: the whole file
    assert exc.problem == "Object contains unknown field `natz`"


# ---------------------------------------------------------------------------- [cluster]


@pytest.mark.parametrize("name", ["my cluster", "a.b", "", "x" * 65, "wild*"])
def test_invalid_cluster_name(tmp_path: Path, mod: str, name: str) -> None:
    toml = one_node(mod).replace('name = "cfgtest"', f'name = "{name}"')
    exc = config_error(tmp_path, toml)
    assert exc.key == "$.cluster.name"
    assert f"{name!r} is not a valid cluster name" in exc.problem
    assert "1-64 letters, digits, '_' or '-'" in exc.problem


@pytest.mark.parametrize("value", ["0", "-1.5", "nan"])
def test_non_positive_durations(tmp_path: Path, mod: str, value: str) -> None:
    exc = config_error(tmp_path, one_node(mod, cluster=f"default_deadline_s = {value}"))
    assert exc.key == "$.cluster.default_deadline_s"
    assert exc.problem == "must be a positive number of seconds"


# ---------------------------------------------------------------------------- [[nodes]]


def test_no_nodes(tmp_path: Path) -> None:
    exc = config_error(tmp_path, '[cluster]\nname = "x"\nnodes = []\n')
    # TOML puts `nodes = []` after [cluster] inside that table: msgspec says so exactly.
    assert exc.key == "$.cluster"
    assert exc.problem == "Object contains unknown field `nodes`"
    exc = config_error(tmp_path, 'nodes = []\n[cluster]\nname = "x"\n')
    assert exc.key == "$.nodes"
    assert "add at least one [[nodes]] table" in exc.problem


def test_invalid_node_name(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod).replace('name = "n1"', 'name = "front end"'))
    assert exc.key == "$.nodes[0].name"
    assert "'front end' is not a valid node name" in exc.problem


def test_duplicate_node_names(tmp_path: Path, mod: str) -> None:
    toml = one_node(mod) + f'[[nodes]]\nname = "n1"\nagents = ["{mod}:Ponger"]\n'
    exc = config_error(tmp_path, toml)
    assert exc.key == "$.nodes[1].name"
    assert "node name 'n1' is already used by $.nodes[0]" in exc.problem
    assert "unique" in exc.problem


@pytest.mark.parametrize("replicas", [0, -1, 65])
def test_replicas_out_of_range(tmp_path: Path, mod: str, replicas: int) -> None:
    exc = config_error(tmp_path, one_node(mod, node=f"replicas = {replicas}"))
    assert exc.key == "$.nodes[0].replicas"
    assert exc.problem == f"must be between 1 and 64, got {replicas}"


def test_empty_agents_list(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod).replace(f'["{mod}:Pinger"]', "[]"))
    assert exc.key == "$.nodes[0].agents"
    assert exc.problem == "list at least one agent (module:Class) or tool (module:function)"


def test_policy_file_missing(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod, node='policy = "policies/strict.toml"'))
    assert exc.key == "$.nodes[0].policy"
    assert "policy file 'policies/strict.toml' not found" in exc.problem
    assert str(tmp_path.resolve()) in exc.problem  # relative to the config's directory


def test_policy_file_present(tmp_path: Path, mod: str) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "strict.toml").write_text("")
    cfg = load_config(write(tmp_path, one_node(mod, node='policy = "policies/strict.toml"')))
    assert cfg.nodes[0].policy == "policies/strict.toml"


# ---------------------------------------------------------------------------- agent references


@pytest.mark.parametrize("ref", ["Pinger", "cfgt.Pinger", "mod:", ":Pinger", "a:b:c", "x-y:Z"])
def test_agent_ref_not_module_colon_class(tmp_path: Path, mod: str, ref: str) -> None:
    exc = config_error(tmp_path, one_node(mod).replace(f"{mod}:Pinger", ref))
    assert exc.key == "$.nodes[0].agents[0]"
    assert exc.problem == f"{ref!r} is not a reference; expected 'module:Name'"


def test_agent_ref_error_points_at_the_list_item(tmp_path: Path, mod: str) -> None:
    toml = one_node(mod).replace(f'"{mod}:Pinger"', f'"{mod}:Pinger", "{mod}:Nope"')
    exc = config_error(tmp_path, toml)
    assert exc.key == "$.nodes[0].agents[1]"


def test_module_not_found(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod).replace(f"{mod}:Pinger", "no_such_mod_q:Pinger"))
    assert exc.key == "$.nodes[0].agents[0]"
    assert "module 'no_such_mod_q' not found" in exc.problem
    assert str(tmp_path.resolve()) in exc.problem  # where it looked


def test_module_whose_dependency_is_missing(tmp_path: Path, mod: str) -> None:
    (tmp_path / f"{mod}_deps.py").write_text("import zz_missing_dependency\n")
    exc = config_error(tmp_path, one_node(mod).replace(f"{mod}:Pinger", f"{mod}_deps:Pinger"))
    assert exc.key == "$.nodes[0].agents[0]"
    assert f"importing '{mod}_deps' failed" in exc.problem
    assert "zz_missing_dependency" in exc.problem


def test_missing_dependency_whose_name_prefixes_the_module(tmp_path: Path, mod: str) -> None:
    # `openai_agents.py` doing `import openai` (not installed) must not be reported as
    # "module 'openai_agents' not found": the module exists, its dependency does not.
    (tmp_path / f"{mod}x_agents.py").write_text(f"import {mod}x\n")
    exc = config_error(tmp_path, one_node(mod).replace(f"{mod}:Pinger", f"{mod}x_agents:Pinger"))
    assert exc.key == "$.nodes[0].agents[0]"
    assert f"module '{mod}x_agents' not found" not in exc.problem
    assert f"importing '{mod}x_agents' failed" in exc.problem
    assert f"No module named '{mod}x'" in exc.problem


def test_module_that_raises_on_import(tmp_path: Path, mod: str) -> None:
    (tmp_path / f"{mod}_boom.py").write_text("raise RuntimeError('no API key configured')\n")
    exc = config_error(tmp_path, one_node(mod).replace(f"{mod}:Pinger", f"{mod}_boom:Pinger"))
    assert exc.key == "$.nodes[0].agents[0]"
    assert exc.problem == (f"importing '{mod}_boom' failed: RuntimeError: no API key configured")


def test_class_not_found(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod).replace(f"{mod}:Pinger", f"{mod}:Pnger"))
    assert exc.key == "$.nodes[0].agents[0]"
    assert exc.problem.startswith(f"module '{mod}' has no 'Pnger' (in ")
    assert str(tmp_path / f"{mod}.py") in exc.problem


@pytest.mark.parametrize("name", ["NotAnAgent", "Ping", "job", "NOT_CALLABLE"])
def test_class_that_is_not_an_agent(tmp_path: Path, mod: str, name: str) -> None:
    exc = config_error(tmp_path, one_node(mod).replace(f"{mod}:Pinger", f"{mod}:{name}"))
    assert exc.key == "$.nodes[0].agents[0]"
    assert exc.problem == f"{mod}:{name} is not an agentrt.Agent subclass"


def test_the_agent_base_class_itself(tmp_path: Path, mod: str) -> None:
    # agentrt.Agent is not an agent type anyone can serve: a ConfigError, not a ValueError.
    exc = config_error(tmp_path, one_node(mod).replace(f"{mod}:Pinger", "agentrt:Agent"))
    assert exc.key == "$.nodes[0].agents[0]"


def test_two_classes_with_one_agent_type(tmp_path: Path, mod: str) -> None:
    toml = one_node(mod) + f'[[nodes]]\nname = "n2"\nagents = ["{mod}:Impostor"]\n'
    exc = config_error(tmp_path, toml)
    assert exc.key == "$.nodes[1].agents[0]"
    assert f"agent type 'Pinger' is already provided by {mod}.Pinger" in exc.problem


# ---------------------------------------------------------------------------- [nats]


@pytest.mark.parametrize(
    ("url", "bad", "index"),
    [
        ("http://10.0.0.5:4222", "http://10.0.0.5:4222", 1),
        ("10.0.0.5:4222", "10.0.0.5:4222", 1),
        ("nats://a:4222, nats://b :4222", "nats://b :4222", 2),
        ("nats://a:4222/path", "nats://a:4222/path", 1),
    ],
)
def test_nats_url_invalid(tmp_path: Path, mod: str, url: str, bad: str, index: int) -> None:
    exc = config_error(tmp_path, one_node(mod, tail=f'[nats]\nurl = "{url}"\n'))
    assert exc.key == "$.nats.url"
    assert f"server {index} ({bad!r}) is not a NATS URL" in exc.problem
    assert "nats://10.0.0.5:4222" in exc.problem  # an example of what is expected


def test_nats_urls_valid(tmp_path: Path, mod: str) -> None:
    url = "nats://10.0.0.5:4222, tls://nats.example.com:4443"
    cfg = load_config(write(tmp_path, one_node(mod, tail=f'[nats]\nurl = "{url}"\n')))
    assert cfg.nats.url == url
    assert cfg.nats.embedded is None


def test_nats_embedded_and_url(tmp_path: Path, mod: str) -> None:
    tail = '[nats]\nembedded = true\nurl = "nats://10.0.0.5:4222"\n'
    exc = config_error(tmp_path, one_node(mod, tail=tail))
    assert exc.key == "$.nats"
    assert exc.problem == "set either `embedded = true` or `url`, not both"


def test_nats_not_embedded_without_url(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod, tail="[nats]\nembedded = false\n"))
    assert exc.key == "$.nats.url"
    assert exc.problem == "`embedded = false` needs `url` (the NATS servers to join)"


def test_nats_embedded_wrong_type(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod, tail='[nats]\nembedded = "yes"\n'))
    assert exc.key == "$.nats.embedded"
    assert "Expected `bool | null`, got `str`" in exc.problem


# ---------------------------------------------------------------------------- [demo]


def test_demo_job_not_async(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod, tail=f'[demo]\njob = "{mod}:sync_job"\n'))
    assert exc.key == "$.demo.job"
    assert exc.problem == f"{mod}:sync_job must be an `async def job(client)`"


def test_demo_job_not_callable(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod, tail=f'[demo]\njob = "{mod}:NOT_CALLABLE"\n'))
    assert exc.key == "$.demo.job"
    assert exc.problem == f"{mod}:NOT_CALLABLE is not callable"


def test_demo_job_missing(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod, tail=f'[demo]\njob = "{mod}:nope"\n'))
    assert exc.key == "$.demo.job"
    assert f"module '{mod}' has no 'nope'" in exc.problem


def test_demo_without_job(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, one_node(mod, tail="[demo]\ntimeout_s = 5\n"))
    assert exc.key == "$.demo"
    assert exc.problem == "Object missing required field `job`"


# ---------------------------------------------------------------------------- valid configs


def test_quickstart_loads(repo_root: Path) -> None:
    directory = repo_root / "examples" / "quickstart"
    cfg = load_config(directory)
    assert isinstance(cfg, ClusterConfig)
    assert cfg.path == str((directory / "agentrt.toml").resolve())
    assert cfg.cluster.name == "quickstart"
    assert cfg.cluster.default_deadline_s == 30.0
    assert [(n.name, n.agents, n.replicas) for n in cfg.nodes] == [
        ("front", ["greetings:Coordinator"], 1),
        ("workers", ["greetings:Greeter"], 2),
    ]
    assert cfg.nats.embedded is None and cfg.nats.url == ""
    assert cfg.demo is not None and cfg.demo.job == "greetings:demo"

    assert [c.agent_type for c in resolve_agents(cfg, "front")] == ["Coordinator"]
    assert [c.agent_type for c in resolve_agents(cfg, "workers")] == ["Greeter"]
    assert partitions(cfg) == {"Coordinator": 1, "Greeter": 2}
    assert owned_partitions(cfg, "front", 0) == {"Coordinator": 0}
    assert owned_partitions(cfg, "workers", 0) == {"Greeter": 0}
    assert owned_partitions(cfg, "workers", 1) == {"Greeter": 1}


def test_unknown_node_name_in_lookups(repo_root: Path) -> None:
    cfg = load_config(repo_root / "examples" / "quickstart")
    with pytest.raises(ConfigError) as info:
        resolve_agents(cfg, "backend")
    assert info.value.key == "$.nodes"
    assert info.value.problem == "no node named 'backend' (nodes: front, workers)"
    with pytest.raises(ConfigError) as info:
        owned_partitions(cfg, "backend", 0)
    assert info.value.problem == "no node named 'backend'"


def test_one_agent_type_on_several_nodes_splits_partitions(tmp_path: Path, mod: str) -> None:
    toml = f"""\
        [cluster]
        name = "split"

        [[nodes]]
        name = "a"
        agents = ["{mod}:Pinger", "{mod}:Ponger"]
        replicas = 2

        [[nodes]]
        name = "b"
        agents = ["{mod}:Pinger"]
        replicas = 3

        [demo]
        job = "{mod}:job"
        timeout_s = 5
        """
    cfg = load_config(write(tmp_path, toml))
    assert partitions(cfg) == {"Pinger": 5, "Ponger": 2}
    assert owned_partitions(cfg, "a", 1) == {"Pinger": 1, "Ponger": 1}
    # b's replicas come after a's two partitions of Pinger.
    assert owned_partitions(cfg, "b", 0) == {"Pinger": 2}
    assert owned_partitions(cfg, "b", 2) == {"Pinger": 4}
    assert cfg.demo is not None and cfg.demo.timeout_s == 5.0
