"""Confined file operations: an agent reads and writes files only as its node's policy allows.

``FileAccess`` enforces a policy's ``[files]`` rules: every path must lie inside one of the
roots (after resolving symlinks), reads and writes need the root's ``read`` / ``write`` flag,
content larger than ``max_bytes`` is refused before it is read, and the content's type, detected
from its bytes and never from the file name, must be one of ``types``. Every denial is written
to the ``agentrt.audit`` logger and raised as ``PolicyDenied`` naming the deciding rule.

Type detection uses ``puremagic`` (pure Python, no libmagic, so nothing to install besides the
wheel, and maintained). Its 2.x line needs Python 3.12 and this project supports 3.11, so the
dependency is ``puremagic>=1.30`` (the newest 1.x release). ``filetype`` was not picked: it has
had no release since 2022 and knows fewer formats. ``python-magic`` needs the system libmagic.
puremagic does not name every format it recognises (an ELF executable matches, but without a
MIME type); those are reported as ``application/octet-stream``, so a policy that allows
``application/octet-stream`` allows *any* binary. Text and JSON have no magic bytes and are
decided here: see ``detect_type``.

The operations are synchronous (small files, blocking I/O). From async agent code call
``aread`` / ``awrite``, which run them in a worker thread (``trio.to_thread.run_sync``), so a
slow disk never blocks the node's event loop.

Race window: paths are checked and then opened. The final component is opened with
``O_NOFOLLOW`` and checked again with ``fstat`` (a symlink or fifo swapped in after the check is
refused), and writes go through ``os.replace``, which never follows a symlink. A directory
higher up swapped for a symlink between check and open is not covered; that would need
``openat`` walks, and the agents that can create symlinks inside a root are the ones the policy
already trusts with writing there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path, PurePath

import msgspec
import puremagic
import trio
from agentrt import PolicyDenied

from ._policy import FileRoot, Policy

__all__ = ["FileAccess", "detect_type"]

audit = logging.getLogger("agentrt.audit")

_BINARY = "application/octet-stream"
# puremagic's confidence grows with the length of the matched magic; matches on fewer than three
# bytes ("BM", "MZ", "{") are too weak to overrule content that is clean UTF-8 text.
_WEAK = 0.3


def _as_text(data: bytes) -> bool:
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def detect_type(data: bytes) -> str:
    """The MIME type of ``data``, from its content only (the file name is never consulted).

    Magic bytes first (puremagic); the strongest match with a MIME type wins, and a match that
    names no MIME type (ELF, some Windows binaries) gives ``application/octet-stream``. Without
    magic: ``application/json`` if the bytes parse as a JSON object or array, ``text/plain`` if
    they are UTF-8 without NUL bytes, else ``application/octet-stream``. JSON is decided by
    parsing because a leading ``{`` proves nothing. A magic match claiming ``text/*`` counts only
    for clean UTF-8 (a UTF-16 BOM before binary bytes must not pass as text), and matches on
    fewer than three bytes do not overrule clean UTF-8 text (a note starting with "BM").
    """
    text = _as_text(data)
    try:
        matches = puremagic.magic_string(data) if data else []
    except (puremagic.PureError, ValueError):
        matches = []
    matches = [
        m
        for m in matches
        if m.mime_type != "application/json"
        and not (text and m.confidence < _WEAK)
        and not (m.mime_type.startswith("text/") and not text)
    ]
    if matches:
        best = max(m.confidence for m in matches)
        named = [m.mime_type for m in matches if m.confidence == best and m.mime_type]
        return named[0] if named else _BINARY
    if not text:
        return _BINARY
    try:
        if isinstance(msgspec.json.decode(data), (dict, list)):
            return "application/json"
    except msgspec.DecodeError:
        pass
    return "text/plain"


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class FileAccess:
    """File operations for one node, confined by its policy's ``[files]`` rules.

    Roots are resolved relative to the policy file's directory (the current directory when the
    policy has no path), the same way ``agentrt.toml`` paths are, so a policy means the same
    thing wherever the node is started from.
    """

    def __init__(self, policy: Policy, *, node: str) -> None:
        self.policy = policy
        self.node = node
        base = Path(policy.path).parent if policy.path else Path.cwd()
        self._roots: list[tuple[FileRoot, str, str]] = [
            (r, os.path.abspath(base / r.path), os.path.realpath(base / r.path))
            for r in policy.files.roots
        ]

    # -- denials ------------------------------------------------------------------------------

    def _deny(self, action: str, target: str, rule: str) -> PolicyDenied:
        """Audit the denial and build the error (the caller raises it, so tracebacks point
        at the check that failed)."""
        audit.warning(
            "denied node=%s action=%s target=%s rule=%s policy=%s",
            self.node, action.replace(" ", "_"), target, rule, self.policy.path,
        )  # fmt: skip
        return PolicyDenied(action, target, rule, self.policy.path)

    # -- path resolution ----------------------------------------------------------------------

    def _resolve(
        self, path: str, action: str, *, write: bool
    ) -> tuple[Path, os.stat_result | None]:
        if "\x00" in path:
            raise self._deny(action, path, "path contains a NUL byte")
        if ".." in PurePath(path).parts:
            raise self._deny(action, path, "path contains '..'")
        if not self._roots:
            raise self._deny(action, path, "files.roots: no roots (no file access)")
        if os.path.isabs(path):
            lexical = os.path.normpath(path)
            found = [i for i, (_, absolute, real) in enumerate(self._roots)
                     if _inside(lexical, absolute) or _inside(lexical, real)]  # fmt: skip
            if not found:
                raise self._deny(action, path, "files.roots: outside every root")
            index, candidate = found[0], lexical
        else:
            index, candidate = 0, os.path.join(self._roots[0][2], path)
        root, _, root_real = self._roots[index]
        real = os.path.realpath(candidate)
        if not _inside(real, root_real):
            raise self._deny(action, path, f"files.roots[{index}]: resolves outside {root.path!r}")
        if write and not root.write:
            raise self._deny(action, path, f"files.roots[{index}].write = false")
        if not write and not root.read:
            raise self._deny(action, path, f"files.roots[{index}].read = false")
        try:
            st: os.stat_result | None = os.stat(real)  # never opens: a fifo cannot block here
        except FileNotFoundError:
            st = None
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise self._deny(action, path, f"not a regular file or directory ({_kind(st.st_mode)})")
        return Path(real), st

    def resolve(self, path: str, *, write: bool) -> Path:
        """The real path ``path`` names, if the policy allows reading (or writing) it.

        Relative paths are taken relative to the first root; absolute ones must lie in a root.
        The path may not exist yet (a file about to be written).

        Raises:
            PolicyDenied: ``..`` in the path, outside every root, a symlink leading out of its
                root, a device/fifo/socket, or the root does not allow the access.
        """
        return self._resolve(path, "write file" if write else "read file", write=write)[0]

    # -- content checks -----------------------------------------------------------------------

    def _check_size(self, action: str, path: str, size: int) -> None:
        cap = self.policy.files.max_bytes
        if cap == 0:
            raise self._deny(action, path, "files.max_bytes = 0 (no file content)")
        if size > cap:
            raise self._deny(action, path, f"files.max_bytes = {cap}")

    def _check_type(self, action: str, path: str, data: bytes) -> None:
        detected = detect_type(data)
        if detected not in self.policy.files.types:
            raise self._deny(
                action, path, f"files.types: {detected} not in {self.policy.files.types}"
            )

    # -- operations ---------------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        """The file's bytes, if the policy allows the path, its size and its detected type.

        The size is checked from ``stat`` before anything is read, so an oversized file costs
        nothing; the open does not follow a symlink in the final component.

        Raises:
            PolicyDenied: the path, size or type is not allowed.
            FileNotFoundError, IsADirectoryError: nothing to read there.
        """
        action = "read file"
        real, st = self._resolve(path, action, write=False)
        if st is None:
            raise FileNotFoundError(f"{path}: no such file")
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{path}: is a directory")
        self._check_size(action, path, st.st_size)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(real, flags)
        except OSError as exc:  # ELOOP: swapped for a symlink after the check
            raise self._deny(action, path, "path changed after the check (symlink)") from exc
        with os.fdopen(fd, "rb") as f:
            now = os.fstat(f.fileno())
            if not stat.S_ISREG(now.st_mode):
                raise self._deny(action, path, f"not a regular file ({_kind(now.st_mode)})")
            self._check_size(action, path, now.st_size)
            data = f.read(self.policy.files.max_bytes + 1)  # it may have grown since fstat
        self._check_size(action, path, len(data))
        self._check_type(action, path, data)
        return data

    def write(self, path: str, data: bytes) -> None:
        """Write ``data`` to the file atomically (a temp file in the same directory, then
        ``os.replace``): readers see the old content or the new, never half of it.

        Size and detected type of ``data`` are checked before anything touches the disk. An
        existing file keeps its permission bits; a new one gets 0o644.

        Raises:
            PolicyDenied: the path, root, size or type is not allowed.
            FileNotFoundError: the directory does not exist.
            IsADirectoryError: the path is a directory.
        """
        action = "write file"
        real, st = self._resolve(path, action, write=True)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{path}: is a directory")
        self._check_size(action, path, len(data))
        self._check_type(action, path, data)
        fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode) if st is not None else 0o644)
                os.fsync(f.fileno())
            os.replace(tmp, real)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def list(self, path: str = ".") -> list[str]:
        """The sorted names in a directory inside a readable root (types are not checked:
        names are not content).

        Raises:
            PolicyDenied: the path is not allowed.
            FileNotFoundError, NotADirectoryError: no directory there.
        """
        real, st = self._resolve(path, "list directory", write=False)
        if st is None:
            raise FileNotFoundError(f"{path}: no such directory")
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{path}: not a directory")
        return sorted(os.listdir(real))

    async def aread(self, path: str) -> bytes:
        """``read`` in a worker thread, for async agent code."""
        return await trio.to_thread.run_sync(self.read, path)

    async def awrite(self, path: str, data: bytes) -> None:
        """``write`` in a worker thread, for async agent code."""
        await trio.to_thread.run_sync(self.write, path, data)
