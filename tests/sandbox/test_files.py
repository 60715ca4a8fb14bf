"""File access under a policy: types come from content, paths stay inside their roots (no
``..``, no symlink escape, no fifos or devices), sizes are capped before reading, read-only roots
stay read-only, and every denial is audited. Real files in tmp_path, no mocks."""

from __future__ import annotations

import logging
import os
import signal
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from agentrt import PolicyDenied
from agentrt.sandbox import FileAccess, FileRoot, FileRules, Policy, detect_type

TYPES = ["application/json", "application/pdf", "image/png", "text/plain"]


def png_bytes() -> bytes:
    """A real 1x1 PNG header: the 8-byte signature and a well-formed IHDR chunk."""
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


PNG = png_bytes()
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n"
# An x86-64 ELF header: what a renamed executable starts with.
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00\x01\x00\x00\x00" + b"\x00" * 40


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp_path/policy.toml (never read: roots are relative to its directory), a read-only
    root ``data`` and a writable root ``out``, and a secret outside both."""
    (tmp_path / "data").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "secret.txt").write_text("outside every root\n")
    return tmp_path


def access(tree: Path, *, max_bytes: int = 4096) -> FileAccess:
    policy = Policy(
        files=FileRules(
            roots=[FileRoot(path="data"), FileRoot(path="out", write=True)],
            types=TYPES,
            max_bytes=max_bytes,
        ),
        path=str(tree / "policy.toml"),
    )
    return FileAccess(policy, node="worker")


@pytest.fixture
def audit(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="agentrt.audit")
    return caplog


def denied(
    caplog: pytest.LogCaptureFixture, info: pytest.ExceptionInfo[PolicyDenied], action: str,
    target: str, rule: str,
) -> None:  # fmt: skip
    """The error names action, target and rule exactly, and the same denial was audited."""
    assert (info.value.action, info.value.target, info.value.rule) == (action, target, rule)
    line = (
        f"denied node=worker action={action.replace(' ', '_')} target={target} rule={rule} "
        f"policy={info.value.policy}"
    )
    assert [r.getMessage() for r in caplog.records if r.name == "agentrt.audit"] == [line]


@contextmanager
def no_blocking(seconds: int = 5) -> Iterator[None]:
    """Fail (instead of hanging the run) if the body blocks, e.g. by opening a fifo."""

    def fail(signum: int, frame: object) -> None:
        raise AssertionError("blocked: the fifo was opened")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_detect_type_uses_content_only() -> None:
    assert detect_type(PNG) == "image/png"
    assert detect_type(PDF) == "application/pdf"
    assert detect_type(ELF) == "application/octet-stream"  # no MIME name: an unnamed binary
    assert detect_type(b'{"a": [1, 2]}') == "application/json"
    assert detect_type(b"[1, 2]") == "application/json"
    assert detect_type(b"{not json") == "text/plain"  # a leading brace proves nothing
    assert detect_type("héllo\n".encode()) == "text/plain"
    assert detect_type(b"BM is how this note starts\n") == "text/plain"  # weak magic, clean text
    assert detect_type(b"") == "text/plain"
    assert detect_type(b"ab\x00cd") == "application/octet-stream"
    assert detect_type(b"\x80\x81\x82") == "application/octet-stream"
    assert detect_type(b"\xff\xfe\xfd\x00") == "application/octet-stream"  # no text/* for binary


def test_reads_a_real_png_and_pdf(tree: Path, audit: pytest.LogCaptureFixture) -> None:
    (tree / "data" / "pic.png").write_bytes(PNG)
    (tree / "data" / "doc.pdf").write_bytes(PDF)
    files = access(tree)
    assert files.read("pic.png") == PNG
    assert files.read("doc.pdf") == PDF
    assert files.read(str(tree / "data" / "doc.pdf")) == PDF  # absolute, inside a root
    assert not audit.records


def test_renamed_executable_is_denied_by_its_content(
    tree: Path, audit: pytest.LogCaptureFixture
) -> None:
    (tree / "data" / "report.pdf").write_bytes(ELF)
    with pytest.raises(PolicyDenied) as info:
        access(tree).read("report.pdf")
    rule = f"files.types: application/octet-stream not in {TYPES}"
    denied(audit, info, "read file", "report.pdf", rule)


def test_png_with_a_txt_extension_is_a_png(tree: Path, audit: pytest.LogCaptureFixture) -> None:
    (tree / "data" / "notes.txt").write_bytes(PNG)
    assert detect_type((tree / "data" / "notes.txt").read_bytes()) == "image/png"
    assert access(tree).read("notes.txt") == PNG  # allowed as image/png, not as text
    only_text = Policy(
        files=FileRules(roots=[FileRoot(path="data")], types=["text/plain"], max_bytes=4096),
        path=str(tree / "policy.toml"),
    )
    with pytest.raises(PolicyDenied) as info:
        FileAccess(only_text, node="worker").read("notes.txt")
    denied(audit, info, "read file", "notes.txt", "files.types: image/png not in ['text/plain']")


@pytest.mark.parametrize("path", ["../secret.txt", "sub/../../secret.txt", "./../secret.txt"])
def test_dotdot_is_denied(tree: Path, audit: pytest.LogCaptureFixture, path: str) -> None:
    with pytest.raises(PolicyDenied) as info:
        access(tree).read(path)
    denied(audit, info, "read file", path, "path contains '..'")


def test_absolute_path_outside_every_root_is_denied(
    tree: Path, audit: pytest.LogCaptureFixture
) -> None:
    target = str(tree / "secret.txt")
    with pytest.raises(PolicyDenied) as info:
        access(tree).read(target)
    denied(audit, info, "read file", target, "files.roots: outside every root")


@pytest.mark.parametrize("path", ["escape.txt", "linked/secret.txt"])
def test_symlink_out_of_the_root_is_denied(
    tree: Path, audit: pytest.LogCaptureFixture, path: str
) -> None:
    (tree / "data" / "escape.txt").symlink_to(tree / "secret.txt")  # a file link
    (tree / "data" / "linked").symlink_to(tree)  # a directory link
    with pytest.raises(PolicyDenied) as info:
        access(tree).read(path)
    denied(audit, info, "read file", path, "files.roots[0]: resolves outside 'data'")


def test_symlink_inside_the_root_is_followed(tree: Path) -> None:
    (tree / "data" / "real.pdf").write_bytes(PDF)
    (tree / "data" / "alias.pdf").symlink_to("real.pdf")
    files = access(tree)
    assert files.resolve("alias.pdf", write=False) == (tree / "data" / "real.pdf").resolve()
    assert files.read("alias.pdf") == PDF


def test_fifo_is_denied_without_opening_it(tree: Path, audit: pytest.LogCaptureFixture) -> None:
    os.mkfifo(tree / "data" / "pipe")
    files = access(tree)
    with no_blocking(), pytest.raises(PolicyDenied) as info:
        files.read("pipe")
    denied(audit, info, "read file", "pipe", "not a regular file or directory (fifo)")


def test_oversize_is_denied_before_reading(tree: Path, audit: pytest.LogCaptureFixture) -> None:
    (tree / "data" / "big.txt").write_bytes(b"x" * 101)
    with (tree / "data" / "huge.txt").open("wb") as f:
        f.truncate(8 << 30)  # sparse 8 GiB: reading it would take all the time and memory
    files = access(tree, max_bytes=100)
    for name in ("big.txt", "huge.txt"):
        audit.clear()
        with pytest.raises(PolicyDenied) as info:
            files.read(name)
        denied(audit, info, "read file", name, "files.max_bytes = 100")
    (tree / "data" / "fits.txt").write_bytes(b"x" * 100)
    assert files.read("fits.txt") == b"x" * 100


def test_max_bytes_zero_allows_no_content(tree: Path, audit: pytest.LogCaptureFixture) -> None:
    (tree / "data" / "empty.txt").write_bytes(b"")
    with pytest.raises(PolicyDenied) as info:
        access(tree, max_bytes=0).read("empty.txt")
    denied(audit, info, "read file", "empty.txt", "files.max_bytes = 0 (no file content)")


def test_write_to_a_read_only_root_is_denied(tree: Path, audit: pytest.LogCaptureFixture) -> None:
    with pytest.raises(PolicyDenied) as info:
        access(tree).write("new.txt", b"hello\n")
    denied(audit, info, "write file", "new.txt", "files.roots[0].write = false")
    assert not (tree / "data" / "new.txt").exists()


def test_write_then_read_back(tree: Path, audit: pytest.LogCaptureFixture) -> None:
    files = access(tree)
    out = tree / "out"
    files.write(str(out / "pic.png"), PNG)
    files.write(str(out / "pic.png"), PNG + b"\x00")  # replaced atomically
    files.write(str(out / "data.json"), b'{"ok": true}')
    assert files.read(str(out / "pic.png")) == PNG + b"\x00"
    assert files.read(str(out / "data.json")) == b'{"ok": true}'
    assert sorted(os.listdir(out)) == ["data.json", "pic.png"]  # no temp file left behind
    assert not audit.records
    with pytest.raises(PolicyDenied) as info:
        files.write(str(out / "tool.pdf"), ELF)  # type checked before writing
    rule = f"files.types: application/octet-stream not in {TYPES}"
    denied(audit, info, "write file", str(out / "tool.pdf"), rule)
    assert not (out / "tool.pdf").exists()


def test_write_oversize_is_denied(tree: Path, audit: pytest.LogCaptureFixture) -> None:
    target = str(tree / "out" / "big.txt")
    with pytest.raises(PolicyDenied) as info:
        access(tree, max_bytes=10).write(target, b"x" * 11)
    denied(audit, info, "write file", target, "files.max_bytes = 10")
    assert not (tree / "out" / "big.txt").exists()


def test_list(tree: Path, audit: pytest.LogCaptureFixture) -> None:
    (tree / "data" / "b.pdf").write_bytes(PDF)
    (tree / "data" / "a.png").write_bytes(PNG)
    (tree / "data" / "sub").mkdir()
    files = access(tree)
    assert files.list() == ["a.png", "b.pdf", "sub"]
    assert files.list(str(tree / "out")) == []
    with pytest.raises(PolicyDenied) as info:
        files.list("..")
    denied(audit, info, "list directory", "..", "path contains '..'")


def test_roots_are_relative_to_the_current_directory_without_a_policy_path(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tree / "data" / "a.txt").write_bytes(b"hi\n")
    monkeypatch.chdir(tree)
    policy = Policy(files=FileRules(roots=[FileRoot(path="data")], types=TYPES, max_bytes=10))
    assert FileAccess(policy, node="worker").read("a.txt") == b"hi\n"


async def test_async_wrappers_run_in_a_thread(tree: Path) -> None:
    files = access(tree)
    await files.awrite(str(tree / "out" / "x.json"), b"[1]")
    assert await files.aread(str(tree / "out" / "x.json")) == b"[1]"
