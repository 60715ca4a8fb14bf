"""Node policies: what a node may do, decoded from TOML and checked before anything starts.

A policy file is data (``policies/*.toml``), decoded straight into these Structs. Everything a
file does not allow is denied: an empty file allows nothing. Rules are enforced twice: in the
node (``PolicyDenied`` before a call leaves) and by nats-server, whose per-node user may only
publish to the subjects the policy allows (``nats_permissions``), so a compromised node cannot
reach a tool it may not use even by writing to the socket itself.

This slice covers tools (and the subjects derived from them); file roots, types and sizes and
wasm transforms are declared here so policy files can state them, and are enforced by the
file-operation and transform hosts as they land.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import msgspec
from agentrt import ConfigError, PolicyDenied
from agentrt._config import decode_toml

__all__ = [
    "FileRoot",
    "FileRules",
    "NetworkRules",
    "Policy",
    "ToolRules",
    "TransformRules",
    "load_policy",
]

audit = logging.getLogger("agentrt.audit")

_GLOB_RE = re.compile(r"[A-Za-z0-9_.*?\[\]-]+\Z")


class ToolRules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which tools a node may call: globs over tool names; deny wins; default deny."""

    allow: list[str] = []
    deny: list[str] = []

    def decide(self, tool: str) -> tuple[bool, str]:
        """(allowed, the rule that decided), for audit and error messages."""
        for i, pattern in enumerate(self.deny):
            if fnmatch.fnmatchcase(tool, pattern):
                return False, f"tools.deny[{i}] = {pattern!r}"
        for i, pattern in enumerate(self.allow):
            if fnmatch.fnmatchcase(tool, pattern):
                return True, f"tools.allow[{i}] = {pattern!r}"
        return False, "tools.allow: no pattern matches (default deny)"


class FileRoot(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A directory the node may use, relative to the policy file unless absolute."""

    path: str
    read: bool = True
    write: bool = False


class FileRules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Files: roots, allowed types (MIME, detected from content), and a size cap."""

    roots: list[FileRoot] = []
    types: list[str] = []
    max_bytes: int = 0


class TransformRules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which wasm transforms the node may run (globs over transform names)."""

    allow: list[str] = []


class NetworkRules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Outbound network for tools and transforms: none unless allowed."""

    allow: bool = False


class Policy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A node's whole policy; the defaults deny everything."""

    description: str = ""
    tools: ToolRules = ToolRules()
    files: FileRules = FileRules()
    transforms: TransformRules = TransformRules()
    network: NetworkRules = NetworkRules()
    path: str = ""  # filled by load_policy

    def check_tool(self, tool: str, *, node: str) -> None:
        """Allow or raise; every decision that denies is written to the audit log.

        Raises:
            PolicyDenied: the tool is denied, naming the deciding rule.
        """
        allowed, rule = self.tools.decide(tool)
        if not allowed:
            audit.warning("denied node=%s action=call_tool tool=%s rule=%s policy=%s",
                          node, tool, rule, self.path)  # fmt: skip
            raise PolicyDenied("call tool", tool, rule, self.path)

    def check_transform(self, name: str, *, node: str) -> None:
        """Allow or raise for running the wasm transform ``name`` (globs in ``transforms.allow``).

        Raises:
            PolicyDenied: no pattern allows it (default deny); audited.
        """
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.transforms.allow):
            return
        rule = "transforms.allow: no pattern matches (default deny)"
        audit.warning("denied node=%s action=run_transform target=%s rule=%s policy=%s",
                      node, name, rule, self.path)  # fmt: skip
        raise PolicyDenied("run transform", name, rule, self.path)

    def allowed_tools(self, known: Iterable[str]) -> list[str]:
        """The known tool names this policy allows (globs expanded against what exists)."""
        return sorted(t for t in known if self.tools.decide(t)[0])

    def effective(self) -> list[str]:
        """The effective rules, one line each, for ``agentrt policy check``."""
        lines = [f"policy {self.path}" + (f": {self.description}" if self.description else "")]
        t = self.tools
        lines.append(f"  tools: allow {t.allow or 'nothing'}; deny {t.deny or 'nothing'}; "
                     "deny wins; anything unmatched is denied")  # fmt: skip
        if self.files.roots:
            for r in self.files.roots:
                mode = "+".join(m for m, on in (("read", r.read), ("write", r.write)) if on)
                lines.append(f"  files: {r.path} ({mode or 'no access'})")
        else:
            lines.append("  files: no roots (no file access)")
        size = f"{self.files.max_bytes} bytes" if self.files.max_bytes else "0 (no file content)"
        lines.append(f"  file types: {self.files.types or 'none'}; max size: {size}")
        lines.append(f"  transforms: {self.transforms.allow or 'none'}")
        lines.append(f"  network: {'allowed' if self.network.allow else 'none'}")
        return lines


def load_policy(path: str | Path) -> Policy:
    """Read and check a policy file.

    Raises:
        ConfigError: missing file, bad TOML, unknown key, wrong type, or an invalid glob; the
            key path says where (``$.tools.allow[1]``).
    """
    p = Path(path)
    shown = str(p)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(shown, "", "policy file not found") from None
    policy: Policy = decode_toml(raw, Policy, shown)
    for field in ("allow", "deny"):
        for i, pattern in enumerate(getattr(policy.tools, field)):
            if not _GLOB_RE.match(pattern):
                raise ConfigError(
                    shown, f"$.tools.{field}[{i}]",
                    f"{pattern!r} is not a tool-name glob: use letters, digits, '.', '_', '-' "
                    "and the wildcards * ? [...]",
                )  # fmt: skip
    if policy.files.max_bytes < 0:
        raise ConfigError(shown, "$.files.max_bytes", "must be 0 (no files) or a positive size")
    return msgspec.structs.replace(policy, path=str(p.resolve()))
