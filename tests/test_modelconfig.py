"""``[models]`` in agentrt.toml: every bad variant fails at load time with the key path and
the fix; a good one decodes into exact types (prices as decimals)."""

from __future__ import annotations

import itertools
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from agentrt import AgentDefinitionError, ConfigError
from agentrt._config import load_config

_module_numbers = itertools.count(1)

_AGENTS_SOURCE = """\
import agentrt


class Ask(agentrt.Message, tag="{module}.ask"):
    text: str


class Writer(agentrt.Agent):
    async def on_ask(self, msg: Ask) -> None:
        return None


class Reviewer(agentrt.Agent):
    tier = "large"

    async def on_ask(self, msg: Ask) -> None:
        return None


class Pinned(agentrt.Agent):
    model = "cloud:gpt-x"

    async def on_ask(self, msg: Ask) -> None:
        return None
"""

BACKENDS = """
[models.backends.local]
kind = "ollama"
url = "http://127.0.0.1:11434"
max_concurrent = 2

[models.backends.remote]
kind = "openai"
url = "https://api.example.com"
api_key_env = "REMOTE_KEY"
"""

TIERS = """
[models.tiers]
small = ["local:llama3.2:1b", "local:qwen2.5:0.5b"]
large = ["remote:gpt-big"]
"""


@pytest.fixture(autouse=True)
def _restore_imports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def mod(tmp_path: Path) -> str:
    name = f"mcfgt_{next(_module_numbers)}"
    (tmp_path / f"{name}.py").write_text(_AGENTS_SOURCE.format(module=name))
    return name


def config(mod: str, models: str, *, agents: str = "Writer") -> str:
    listed = ", ".join(f'"{mod}:{a.strip()}"' for a in agents.split(","))
    return (
        f'[cluster]\nname = "mtest"\n\n[[nodes]]\nname = "n1"\nagents = [{listed}]\n'
        + textwrap.dedent(models)
    )


def config_error(tmp_path: Path, toml: str) -> ConfigError:
    path = tmp_path / "agentrt.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    exc = info.value
    assert exc.path == str(path)
    assert str(exc) == f"{path}: {exc.key}: {exc.problem}"
    return exc


def test_a_full_section_decodes(tmp_path: Path, mod: str) -> None:
    toml = config(mod, BACKENDS + TIERS + """
        [models.prices."remote:gpt-big"]
        input = 2.5
        output = "10.01"

        [models.agents.Writer]
        tier = "small"
        escalate_after = 3
        """)  # fmt: skip
    (tmp_path / "agentrt.toml").write_text(toml)
    cfg = load_config(tmp_path / "agentrt.toml")
    assert cfg.models is not None
    assert cfg.models.backends["local"].max_concurrent == 2
    assert cfg.models.backends["remote"].api_key_env == "REMOTE_KEY"
    assert cfg.models.tiers.small == ["local:llama3.2:1b", "local:qwen2.5:0.5b"]
    price = cfg.models.prices["remote:gpt-big"]
    assert (price.input, price.output) == (Decimal("2.5"), Decimal("10.01"))
    assert cfg.models.agents["Writer"].escalate_after == 3


def test_no_models_section_is_fine(tmp_path: Path, mod: str) -> None:
    (tmp_path / "agentrt.toml").write_text(config(mod, ""))
    assert load_config(tmp_path / "agentrt.toml").models is None


def test_unknown_key_in_a_backend(tmp_path: Path, mod: str) -> None:
    exc = config_error(
        tmp_path,
        config(
            mod,
            BACKENDS + TIERS + "[models.backends.x]\n"
            'kind = "ollama"\nurl = "http://h:1"\napi_key = "sk"\n',
        ),
    )
    assert exc.key == "$.models.backends.x"
    assert exc.problem == "Object contains unknown field `api_key`"


def test_unknown_backend_kind(tmp_path: Path, mod: str) -> None:
    exc = config_error(
        tmp_path,
        config(mod, TIERS + '[models.backends.local]\nkind = "vllm"\nurl = "http://h:1"\n'),
    )
    assert exc.key == "$.models.backends.local.kind"
    assert exc.problem == "Invalid enum value 'vllm'"


def test_unknown_tier_name(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, config(mod, BACKENDS + TIERS.replace("large", "huge")))
    assert exc.key == "$.models.tiers"
    assert exc.problem == "Object contains unknown field `huge`"


def test_tier_names_an_undefined_backend(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, config(mod, BACKENDS + TIERS.replace("remote:gpt", "cloud:gpt")))
    assert exc.key == "$.models.tiers.large[0]"
    assert exc.problem == (
        "'cloud:gpt-big' names backend 'cloud', which is not defined (backends: local, remote); "
        "add [models.backends.cloud] or fix the name"
    )


def test_tier_entry_without_a_backend(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, config(mod, BACKENDS + '[models.tiers]\nsmall = ["llama3"]\n'))
    assert exc.key == "$.models.tiers.small[0]"
    assert exc.problem == (
        "'llama3' is not a model reference; write '<backend>:<model>', e.g. 'local:llama3.2:1b'"
    )


def test_no_tier_lists_a_model(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, config(mod, BACKENDS))
    assert exc.key == "$.models.tiers"
    assert exc.problem == 'no tier lists a model; add e.g. small = ["local:<model>"]'


def test_price_for_an_unknown_model(tmp_path: Path, mod: str) -> None:
    toml = config(mod, BACKENDS + TIERS + '[models.prices."remote:gpt-small"]\ninput = 1\n')
    exc = config_error(tmp_path, toml)
    assert exc.key == "$.models.prices['remote:gpt-small']"
    assert exc.problem == (
        "price for 'remote:gpt-small', which no tier or agent uses; list it in [models.tiers] "
        "or fix the name"
    )


def test_unknown_key_in_a_price_names_the_model(tmp_path: Path, mod: str) -> None:
    toml = config(mod, BACKENDS + TIERS + '[models.prices."remote:gpt-big"]\ninptu = 1\n')
    exc = config_error(tmp_path, toml)
    assert exc.key == "$.models.prices['remote:gpt-big']"
    assert exc.problem == "Object contains unknown field `inptu`"


def test_negative_price(tmp_path: Path, mod: str) -> None:
    toml = config(mod, BACKENDS + TIERS + '[models.prices."remote:gpt-big"]\noutput = -1\n')
    exc = config_error(tmp_path, toml)
    assert exc.key == "$.models.prices['remote:gpt-big'].output"
    assert exc.problem == "must be a non-negative price per million tokens"


def test_agent_type_no_node_hosts(tmp_path: Path, mod: str) -> None:
    exc = config_error(
        tmp_path, config(mod, BACKENDS + TIERS + '[models.agents.Writr]\ntier = "small"\n')
    )
    assert exc.key == "$.models.agents.Writr"
    assert exc.problem == (
        "no node hosts agent type 'Writr' (hosted: Writer); fix the name or add the agent to a "
        "[[nodes]] agents list"
    )


def test_agent_on_a_tier_without_models(tmp_path: Path, mod: str) -> None:
    exc = config_error(
        tmp_path, config(mod, BACKENDS + TIERS + '[models.agents.Writer]\ntier = "medium"\n')
    )
    assert exc.key == "$.models.agents.Writer.tier"
    assert exc.problem == (
        "tier 'medium' lists no models (configured tiers: small, large); add models to "
        '[models.tiers] medium = ["<backend>:<model>"] or pick another tier'
    )


def test_agent_on_an_unknown_tier(tmp_path: Path, mod: str) -> None:
    exc = config_error(
        tmp_path, config(mod, BACKENDS + TIERS + '[models.agents.Writer]\ntier = "huge"\n')
    )
    assert exc.key == "$.models.agents.Writer.tier"
    assert exc.problem == "Invalid enum value 'huge'"


def test_agent_escalate_after_must_be_positive(tmp_path: Path, mod: str) -> None:
    exc = config_error(
        tmp_path, config(mod, BACKENDS + TIERS + "[models.agents.Writer]\nescalate_after = 0\n")
    )
    assert exc.key == "$.models.agents.Writer.escalate_after"
    assert exc.problem == "must be at least 1, got 0"


def test_class_default_tier_is_checked(tmp_path: Path, mod: str) -> None:
    no_large = TIERS.replace('large = ["remote:gpt-big"]', 'medium = ["remote:gpt-big"]')
    exc = config_error(tmp_path, config(mod, BACKENDS + no_large, agents="Reviewer"))
    assert exc.key == "$.models.agents.Reviewer"
    assert exc.problem == (
        f"{mod}.Reviewer declares tier = 'large', which lists no models (configured tiers: "
        "small, medium); add models to that tier, or override it with tier = ... in this table"
    )


def test_config_overrides_a_bad_class_default(tmp_path: Path, mod: str) -> None:
    no_large = TIERS.replace('large = ["remote:gpt-big"]', 'medium = ["remote:gpt-big"]')
    toml = config(mod, BACKENDS + no_large + '[models.agents.Reviewer]\ntier = "medium"\n',
                  agents="Reviewer")  # fmt: skip
    (tmp_path / "agentrt.toml").write_text(toml)
    cfg = load_config(tmp_path / "agentrt.toml")
    assert cfg.models is not None and cfg.models.agents["Reviewer"].tier == "medium"


def test_class_default_model_is_checked(tmp_path: Path, mod: str) -> None:
    exc = config_error(tmp_path, config(mod, BACKENDS + TIERS, agents="Pinned"))
    assert exc.key == "$.models.agents.Pinned"
    assert exc.problem == (
        f"{mod}.Pinned declares model = 'cloud:gpt-x', but backend 'cloud' is not defined; add "
        "[models.backends.cloud], or override it with model = ... in this table"
    )


def test_key_in_the_file_is_refused(tmp_path: Path, mod: str) -> None:
    toml = config(mod, BACKENDS.replace('api_key_env = "REMOTE_KEY"', 'api_key_env = "sk-123"')
                  + TIERS)  # fmt: skip
    exc = config_error(tmp_path, toml)
    assert exc.key == "$.models.backends.remote.api_key_env"
    assert exc.problem == (
        "'sk-123'... is not an environment variable name: give the variable's name (e.g. "
        "OPENAI_API_KEY), never the key"
    )


def test_credentials_in_headers_are_refused(tmp_path: Path, mod: str) -> None:
    toml = config(mod, BACKENDS + '[models.backends.local.headers]\nAuthorization = "Bearer x"\n'
                  + TIERS)  # fmt: skip
    exc = config_error(tmp_path, toml)
    assert exc.key == "$.models.backends.local.headers.Authorization"
    assert exc.problem == (
        "credentials do not belong in the file: put the key in an environment variable and "
        "name it in api_key_env"
    )


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ("max_concurrent = 0", "max_concurrent", "must be between 1 and 10000, got 0"),
        ("timeout_s = -1", "timeout_s", "must be a positive number of seconds"),
        ('url = "localhost:11434"', "url",
         "'localhost:11434' is not an HTTP URL; expected e.g. http://127.0.0.1:11434 or "
         "https://api.openai.com"),
    ],
)  # fmt: skip
def test_backend_fields(tmp_path: Path, mod: str, line: str, key: str, problem: str) -> None:
    backend = f'[models.backends.local]\nkind = "ollama"\n{line}\n'
    if not line.startswith("url"):
        backend += 'url = "http://127.0.0.1:11434"\n'
    exc = config_error(tmp_path, config(mod, backend + '[models.tiers]\nsmall = ["local:m"]\n'))
    assert exc.key == f"$.models.backends.local.{key}"
    assert exc.problem == problem


def test_agent_class_tier_is_checked_at_definition() -> None:
    import agentrt

    with pytest.raises(AgentDefinitionError) as info:

        class Bad(agentrt.Agent):
            tier = "xl"

    assert str(info.value) == (
        "test_agent_class_tier_is_checked_at_definition.<locals>.Bad.tier is 'xl': use "
        "'small', 'medium', 'large' or None"
    )


def test_agent_class_model_is_checked_at_definition() -> None:
    import agentrt

    with pytest.raises(AgentDefinitionError) as info:

        class Bad(agentrt.Agent):
            model = "llama3"

    assert str(info.value) == (
        "test_agent_class_model_is_checked_at_definition.<locals>.Bad.model is 'llama3': write "
        "'<backend>:<model>', e.g. 'local:llama3.2:1b'"
    )
