"""The committed C transforms in sandbox/transforms/wasm/, run directly with wasmtime-py.

These tests do not use the agentrt host; they pin the behaviour of the modules themselves:
stdin bytes in, stdout bytes out, exit code 2 with nothing on stdout for malformed input.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

wasmtime = pytest.importorskip("wasmtime")

TRANSFORMS = Path(__file__).resolve().parents[2] / "sandbox" / "transforms"
WASM = TRANSFORMS / "wasm"


@functools.cache
def _engine() -> wasmtime.Engine:
    return wasmtime.Engine()


@functools.cache
def _module(name: str) -> wasmtime.Module:
    return wasmtime.Module.from_file(_engine(), str(WASM / f"{name}.wasm"))


def run(name: str, data: bytes, tmp_path: Path) -> tuple[int, bytes, bytes]:
    """Run transform `name` on `data`; return (exit code, stdout, stderr)."""
    stdin, stdout, stderr = tmp_path / "stdin", tmp_path / "stdout", tmp_path / "stderr"
    stdin.write_bytes(data)
    config = wasmtime.WasiConfig()
    config.stdin_file = str(stdin)
    config.stdout_file = str(stdout)
    config.stderr_file = str(stderr)
    store = wasmtime.Store(_engine())
    store.set_wasi(config)
    linker = wasmtime.Linker(_engine())
    linker.define_wasi()
    instance = linker.instantiate(store, _module(name))
    code = 0
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as exit_trap:
        code = exit_trap.code
    return code, stdout.read_bytes(), stderr.read_bytes()


def ok(name: str, data: bytes, tmp_path: Path) -> bytes:
    code, out, err = run(name, data, tmp_path)
    assert code == 0, err.decode()
    assert err == b""
    return out


def rejected(name: str, data: bytes, tmp_path: Path) -> str:
    code, out, err = run(name, data, tmp_path)
    assert code == 2
    assert out == b""
    assert err.startswith(name.encode() + b": ")
    return err.decode()


def test_every_source_has_a_committed_module() -> None:
    sources = {p.stem for p in (TRANSFORMS / "src").glob("*.c")}
    assert sources == {"csv2json", "normalize_text", "ppm2pgm"}
    assert {p.stem for p in WASM.glob("*.wasm")} == sources


# --- csv2json ---------------------------------------------------------------------------------

TRICKY_CSV = (
    "\ufeffname,quote,note,empty\r\n"
    'Ada,"She said ""hi""","line one\r\nline two",\r\n'
    '"Lovelace, A.",plain,"back\\slash\ttab",""\n'
    "\n"  # blank lines are skipped
    'Zoë,"日本語 ✓","ctl\x01\x1f",x\r\n'
    "last,row,no newline,"
).encode()

TRICKY_JSON = [
    {"name": "Ada", "quote": 'She said "hi"', "note": "line one\r\nline two", "empty": ""},
    {"name": "Lovelace, A.", "quote": "plain", "note": "back\\slash\ttab", "empty": ""},
    {"name": "Zoë", "quote": "日本語 ✓", "note": "ctl\x01\x1f", "empty": "x"},
    {"name": "last", "quote": "row", "note": "no newline", "empty": ""},
]


def test_csv2json_tricky(tmp_path: Path) -> None:
    out = ok("csv2json", TRICKY_CSV, tmp_path)
    assert json.loads(out) == TRICKY_JSON
    assert out.endswith(b"]\n")
    # escaping: ASCII control characters as \uXXXX, non-ASCII passed through as UTF-8
    assert b'"ctl\\u0001\\u001f"' in out
    assert "日本語".encode() in out


def test_csv2json_exact_output(tmp_path: Path) -> None:
    out = ok("csv2json", b'a,b\n1,"x""y"\n', tmp_path)
    assert out == b'[{"a":"1","b":"x\\"y"}]\n'


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", []),
        (b"a,b\n", []),
        (b"a,b\r\n\r\n", []),
        (b"a\rb\rc", [{"a": "b"}, {"a": "c"}]),  # lone CR line endings
        (b'a\n"\n"\n', [{"a": "\n"}]),
        (b"a,b\n,\n", [{"a": "", "b": ""}]),
        (b'a\nun"quoted\n', [{"a": 'un"quoted'}]),  # a bare quote inside a field is literal
    ],
)
def test_csv2json_edge_cases(tmp_path: Path, data: bytes, expected: list[object]) -> None:
    assert json.loads(ok("csv2json", data, tmp_path)) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'a,b\n1,"never closed\n2,3\n', "line 2: unterminated quoted field"),
        (b'a,b\n1,"x"y\n', "unexpected character after closing quote"),
        (b"a,b\n1,2,3\n", "line 2: record has 3 fields, header has 2"),
        (b"a,b\n1\n", "record has 1 fields, header has 2"),
        (b"a,a\n1,2\n", "duplicate header name"),
        (b"a\n\xff\n", "invalid UTF-8 at byte offset 2"),
    ],
)
def test_csv2json_rejects(tmp_path: Path, data: bytes, message: str) -> None:
    assert message in rejected("csv2json", data, tmp_path)


# --- normalize_text ---------------------------------------------------------------------------


def test_normalize_text(tmp_path: Path) -> None:
    data = (
        "\ufeff\r\n\r\n"  # BOM and leading blank lines dropped
        "Title  \r\n"
        "\r\n\r\n   \r\n"  # run of blank (or whitespace-only) lines -> one blank line
        "first\tline\t \n"
        "  indented stays\rcr line\n"
        "\n"
        "naïve ✓ end   "  # no final newline: one is added
        "\n\n\n"
    ).encode()
    expected = "Title\n\nfirst\tline\n  indented stays\ncr line\n\nnaïve ✓ end\n".encode()
    assert ok("normalize_text", data, tmp_path) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b""),
        (b" \r\n\t\n\n", b""),
        (b"x", b"x\n"),
        (b"a\r\n\r\nb\r\n", b"a\n\nb\n"),
    ],
)
def test_normalize_text_edge_cases(tmp_path: Path, data: bytes, expected: bytes) -> None:
    assert ok("normalize_text", data, tmp_path) == expected


def test_normalize_text_is_idempotent(tmp_path: Path) -> None:
    once = ok("normalize_text", b"a  \r\n\r\n\r\nb\t\r\n", tmp_path)
    assert ok("normalize_text", once, tmp_path) == once


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"ok\n\xc3\x28\n", "invalid UTF-8 at byte offset 3"),
        (b"\xed\xa0\x80", "invalid UTF-8"),  # UTF-16 surrogate
        (b"\xc0\xaf", "invalid UTF-8"),  # overlong
        (b"abc\x00def", "NUL byte at offset 3"),
    ],
)
def test_normalize_text_rejects(tmp_path: Path, data: bytes, message: str) -> None:
    assert message in rejected("normalize_text", data, tmp_path)


# --- ppm2pgm ----------------------------------------------------------------------------------

# 2x2: red, green / blue, white
PIXELS = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])


def luma(r: int, g: int, b: int) -> int:
    return (299 * r + 587 * g + 114 * b + 500) // 1000


def test_ppm2pgm_2x2(tmp_path: Path) -> None:
    out = ok("ppm2pgm", b"P6\n2 2\n255\n" + PIXELS, tmp_path)
    assert out == b"P5\n2 2\n255\n" + bytes([76, 150, 29, 255])


def test_ppm2pgm_header_comments_and_whitespace(tmp_path: Path) -> None:
    pixels = bytes(range(10, 10 + 3 * 3))  # 3x1
    ppm = b"P6 # made by hand\n3\t1 # size\r\n255 " + pixels
    out = ok("ppm2pgm", ppm, tmp_path)
    gray = bytes(luma(*pixels[i : i + 3]) for i in range(0, 9, 3))
    assert out == b"P5\n3 1\n255\n" + gray


def test_ppm2pgm_luma_matches_reference(tmp_path: Path) -> None:
    pixels = bytes((i * 37 + j * 11) % 256 for i in range(16) for j in range(3 * 16))
    out = ok("ppm2pgm", b"P6\n16 16\n255\n" + pixels, tmp_path)
    gray = bytes(luma(*pixels[i : i + 3]) for i in range(0, len(pixels), 3))
    assert out == b"P5\n16 16\n255\n" + gray


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a binary PPM (P6) image"),
        (b"P3\n2 2\n255\n", "not a binary PPM (P6) image"),
        (b"P62 2\n255\n" + PIXELS, "expected whitespace after P6"),
        (b"P6\n2\n", "expected height"),
        (b"P6\nx 2\n255\n" + PIXELS, "expected width"),
        (b"P6\n0 2\n255\n", "bad size 0x2"),
        (b"P6\n70000 1\n255\n", "bad size"),
        (b"P6\n2 2\n65535\n" + PIXELS * 2, "maxval 65535 unsupported"),
        (b"P6\n2 2\n15\n" + PIXELS, "maxval 15 unsupported"),
        (b"P6\n2 2\n255", "expected one whitespace byte"),
        (b"P6\n2 2\n255\n" + PIXELS[:-1], "raster truncated: 11 bytes, need 12"),
        (b"P6\n2 2\n255\n" + PIXELS + b"\n", "1 bytes of trailing data"),
        (b"P6\n99999999999 1\n255\n", "width too large"),
    ],
)
def test_ppm2pgm_rejects(tmp_path: Path, data: bytes, message: str) -> None:
    assert message in rejected("ppm2pgm", data, tmp_path)


# --- reproducibility --------------------------------------------------------------------------


@pytest.mark.slow
def test_committed_wasm_is_reproducible(tmp_path: Path) -> None:
    """A from-scratch rebuild (empty zig caches) matches the committed .wasm byte for byte."""
    pytest.importorskip("ziglang")
    env = dict(os.environ)
    env["ZIG_GLOBAL_CACHE_DIR"] = str(tmp_path / "zig-global-cache")
    env["ZIG_LOCAL_CACHE_DIR"] = str(tmp_path / "zig-local-cache")
    result = subprocess.run(
        [sys.executable, str(TRANSFORMS / "build.py"), "--check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check ok" in result.stdout
