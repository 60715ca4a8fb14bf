"""The committed C transforms in sandbox/transforms/wasm/, run directly with wasmtime-py.

These tests do not use the agentrt host; they pin the behaviour of the modules themselves
through both of their entry points (the ``abi`` fixture):

* ``stdio``: the WASI command, ``_start`` with stdin bytes in and stdout bytes out, exit code 2
  with nothing on stdout for malformed input;
* ``buffer``: the buffer ABI exports (``agentrt_alloc``, ``agentrt_run``,
  ``agentrt_output_ptr``/``agentrt_output_len``), called without ``_start``; ``agentrt_run``
  returns the code that the command would exit with and writes the same stderr message.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
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


BUFFER_EXPORTS = {
    "memory",
    "agentrt_alloc",
    "agentrt_free",
    "agentrt_run",
    "agentrt_output_ptr",
    "agentrt_output_len",
}


@pytest.fixture(params=["stdio", "buffer"])
def abi(request: pytest.FixtureRequest) -> str:
    return request.param


def _instantiate(
    name: str, config: wasmtime.WasiConfig
) -> tuple[wasmtime.Store, dict[str, object]]:
    store = wasmtime.Store(_engine())
    store.set_wasi(config)
    linker = wasmtime.Linker(_engine())
    linker.define_wasi()
    instance = linker.instantiate(store, _module(name))
    exports = {
        export.name: instance.exports(store)[export.name] for export in _module(name).exports
    }
    return store, exports


def run_stdio(name: str, data: bytes, tmp_path: Path) -> tuple[int, bytes, bytes]:
    """Run transform `name` on `data` through _start; return (exit code, stdout, stderr)."""
    stdin, stdout, stderr = tmp_path / "stdin", tmp_path / "stdout", tmp_path / "stderr"
    stdin.write_bytes(data)
    config = wasmtime.WasiConfig()
    config.stdin_file = str(stdin)
    config.stdout_file = str(stdout)
    config.stderr_file = str(stderr)
    store, exports = _instantiate(name, config)
    code = 0
    try:
        exports["_start"](store)
    except wasmtime.ExitTrap as exit_trap:
        code = exit_trap.code
    return code, stdout.read_bytes(), stderr.read_bytes()


class BufferInstance:
    """One instance of a transform, driven through the buffer ABI (never calls _start)."""

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.stderr = tmp_path / "stderr"
        self.stderr.write_bytes(b"")
        config = wasmtime.WasiConfig()
        config.stderr_file = str(self.stderr)
        self.store, self.exports = _instantiate(name, config)
        if "_initialize" in self.exports:
            self.exports["_initialize"](self.store)
        self.memory = self.exports["memory"]

    def run(self, data: bytes) -> tuple[int, bytes, bytes]:
        """Run on `data`; return (return code, output, stderr written by this run)."""
        store, exports = self.store, self.exports
        err_before = self.stderr.stat().st_size
        ptr = exports["agentrt_alloc"](store, len(data))
        assert ptr != 0
        self.memory.write(store, data, ptr)
        code = exports["agentrt_run"](store, ptr, len(data))
        exports["agentrt_free"](store, ptr)
        out_ptr = exports["agentrt_output_ptr"](store)
        out_len = exports["agentrt_output_len"](store)
        out = bytes(self.memory.read(store, out_ptr, out_ptr + out_len)) if out_len else b""
        return code, out, self.stderr.read_bytes()[err_before:]


def run_buffer(name: str, data: bytes, tmp_path: Path) -> tuple[int, bytes, bytes]:
    """Run transform `name` on `data` through the buffer ABI on a fresh instance."""
    return BufferInstance(name, tmp_path).run(data)


def run(name: str, data: bytes, tmp_path: Path, abi: str = "stdio") -> tuple[int, bytes, bytes]:
    """Run transform `name` on `data`; return (exit code, output, stderr)."""
    return (run_buffer if abi == "buffer" else run_stdio)(name, data, tmp_path)


def ok(name: str, data: bytes, tmp_path: Path, abi: str = "stdio") -> bytes:
    code, out, err = run(name, data, tmp_path, abi)
    assert code == 0, err.decode()
    assert err == b""
    return out


def rejected(name: str, data: bytes, tmp_path: Path, abi: str = "stdio") -> str:
    code, out, err = run(name, data, tmp_path, abi)
    assert code == 2
    assert out == b""
    assert err.startswith(name.encode() + b": ")
    assert err.endswith(b"\n") and err.count(b"\n") == 1
    return err.decode()


def test_every_source_has_a_committed_module() -> None:
    sources = {p.stem for p in (TRANSFORMS / "src").glob("*.c")}
    assert sources == {"csv2json", "normalize_text", "ppm2pgm"}
    assert {p.stem for p in WASM.glob("*.wasm")} == sources


@pytest.mark.parametrize("name", ["csv2json", "normalize_text", "ppm2pgm"])
def test_module_exports_both_entry_points(name: str) -> None:
    exports = {export.name: export.type for export in _module(name).exports}
    assert BUFFER_EXPORTS | {"_start"} <= set(exports)
    i32 = wasmtime.ValType.i32()

    def sig(export: str) -> tuple[list[wasmtime.ValType], list[wasmtime.ValType]]:
        return list(exports[export].params), list(exports[export].results)

    assert sig("agentrt_alloc") == ([i32], [i32])
    assert sig("agentrt_free") == ([i32], [])
    assert sig("agentrt_run") == ([i32, i32], [i32])
    assert sig("agentrt_output_ptr") == ([], [i32])
    assert sig("agentrt_output_len") == ([], [i32])


def test_buffer_abi_reuses_one_instance(tmp_path: Path) -> None:
    """Runs on one instance are independent: a failure in between leaves no state behind."""
    csv = BufferInstance("csv2json", tmp_path)
    good, expected = b'a,b\n1,"x""y"\n', b'[{"a":"1","b":"x\\"y"}]\n'
    assert csv.run(good) == (0, expected, b"")
    code, out, err = csv.run(b'a,b\n1,"never closed\n')
    assert (code, out) == (2, b"")
    assert err == b"csv2json: line 2: unterminated quoted field\n"
    assert csv.run(good) == (0, expected, b"")
    assert csv.run(b"x\n1\n2\n") == (0, b'[{"x":"1"},{"x":"2"}]\n', b"")
    assert csv.run(b"") == (0, b"[]\n", b"")

    text = BufferInstance("normalize_text", tmp_path)
    for _ in range(3):
        assert text.run(b"a \r\n\r\n\r\nb") == (0, b"a\n\nb\n", b"")
    assert text.run(b"\n\n") == (0, b"", b"")


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("csv2json", b"a\n1\n", b"a,a\n"),
        ("normalize_text", b"x \r\n", b"\xff"),
        ("ppm2pgm", b"P6 1 1 255 abc", b"P3"),
    ],
)
def test_buffer_abi_makes_no_wasi_calls_on_success(name: str, good: bytes, bad: bytes) -> None:
    """A successful run makes no WASI calls at all; a failed one makes one fd_write to fd 2."""
    module = _module(name)
    store = wasmtime.Store(_engine())
    linker = wasmtime.Linker(_engine())
    calls: list[tuple[str, int]] = []
    memory: list[wasmtime.Memory] = []

    def stub(import_name: str, results: bool) -> Callable[..., int | None]:
        def call(*args: int) -> int | None:
            calls.append((import_name, args[0] if args else -1))
            if import_name == "fd_write":  # (fd, iovs, iovs_len, nwritten): report all written
                _fd, iovs, count, nwritten = args
                total = sum(
                    int.from_bytes(
                        memory[0].read(store, iovs + 8 * k + 4, iovs + 8 * k + 8), "little"
                    )
                    for k in range(count)
                )
                memory[0].write(store, total.to_bytes(4, "little"), nwritten)
            return 0 if results else None

        return call

    for imp in module.imports:
        linker.define_func(imp.module, imp.name, imp.type, stub(imp.name, bool(imp.type.results)))
    exports = linker.instantiate(store, module).exports(store)
    memory.append(exports["memory"])
    for data, code, expected_calls in [(good, 0, []), (bad, 2, [("fd_write", 2)]), (good, 0, [])]:
        calls.clear()
        ptr = exports["agentrt_alloc"](store, len(data))
        memory[0].write(store, data, ptr)
        assert exports["agentrt_run"](store, ptr, len(data)) == code
        exports["agentrt_free"](store, ptr)
        assert (exports["agentrt_output_len"](store) > 0) == (code == 0)
        assert calls == expected_calls


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 3 * 1024 * 1024 + 7])
def test_buffer_abi_matches_stdio_on_large_input(tmp_path: Path, size: int) -> None:
    line = "naïve text with trailing blanks \t \r\n\r\n\r\n".encode()
    data = (line * (size // len(line) + 1))[:size]
    data = data[: len(data.decode(errors="ignore").encode())]  # do not cut a UTF-8 sequence
    stdio = run_stdio("normalize_text", data, tmp_path)
    assert stdio[0] == 0
    assert run_buffer("normalize_text", data, tmp_path) == stdio


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


def test_csv2json_tricky(tmp_path: Path, abi: str) -> None:
    out = ok("csv2json", TRICKY_CSV, tmp_path, abi)
    assert json.loads(out) == TRICKY_JSON
    assert out.endswith(b"]\n")
    # escaping: ASCII control characters as \uXXXX, non-ASCII passed through as UTF-8
    assert b'"ctl\\u0001\\u001f"' in out
    assert "日本語".encode() in out


def test_csv2json_exact_output(tmp_path: Path, abi: str) -> None:
    out = ok("csv2json", b'a,b\n1,"x""y"\n', tmp_path, abi)
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
def test_csv2json_edge_cases(tmp_path: Path, abi: str, data: bytes, expected: list[object]) -> None:
    assert json.loads(ok("csv2json", data, tmp_path, abi)) == expected


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
def test_csv2json_rejects(tmp_path: Path, abi: str, data: bytes, message: str) -> None:
    assert message in rejected("csv2json", data, tmp_path, abi)


# --- normalize_text ---------------------------------------------------------------------------


def test_normalize_text(tmp_path: Path, abi: str) -> None:
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
    assert ok("normalize_text", data, tmp_path, abi) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b""),
        (b" \r\n\t\n\n", b""),
        (b"x", b"x\n"),
        (b"a\r\n\r\nb\r\n", b"a\n\nb\n"),
    ],
)
def test_normalize_text_edge_cases(tmp_path: Path, abi: str, data: bytes, expected: bytes) -> None:
    assert ok("normalize_text", data, tmp_path, abi) == expected


def test_normalize_text_is_idempotent(tmp_path: Path, abi: str) -> None:
    once = ok("normalize_text", b"a  \r\n\r\n\r\nb\t\r\n", tmp_path, abi)
    assert ok("normalize_text", once, tmp_path, abi) == once


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"ok\n\xc3\x28\n", "invalid UTF-8 at byte offset 3"),
        (b"\xed\xa0\x80", "invalid UTF-8"),  # UTF-16 surrogate
        (b"\xc0\xaf", "invalid UTF-8"),  # overlong
        (b"abc\x00def", "NUL byte at offset 3"),
    ],
)
def test_normalize_text_rejects(tmp_path: Path, abi: str, data: bytes, message: str) -> None:
    assert message in rejected("normalize_text", data, tmp_path, abi)


# --- ppm2pgm ----------------------------------------------------------------------------------

# 2x2: red, green / blue, white
PIXELS = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])


def luma(r: int, g: int, b: int) -> int:
    return (299 * r + 587 * g + 114 * b + 500) // 1000


def test_ppm2pgm_2x2(tmp_path: Path, abi: str) -> None:
    out = ok("ppm2pgm", b"P6\n2 2\n255\n" + PIXELS, tmp_path, abi)
    assert out == b"P5\n2 2\n255\n" + bytes([76, 150, 29, 255])


def test_ppm2pgm_header_comments_and_whitespace(tmp_path: Path, abi: str) -> None:
    pixels = bytes(range(10, 10 + 3 * 3))  # 3x1
    ppm = b"P6 # made by hand\n3\t1 # size\r\n255 " + pixels
    out = ok("ppm2pgm", ppm, tmp_path, abi)
    gray = bytes(luma(*pixels[i : i + 3]) for i in range(0, 9, 3))
    assert out == b"P5\n3 1\n255\n" + gray


def test_ppm2pgm_luma_matches_reference(tmp_path: Path, abi: str) -> None:
    pixels = bytes((i * 37 + j * 11) % 256 for i in range(16) for j in range(3 * 16))
    out = ok("ppm2pgm", b"P6\n16 16\n255\n" + pixels, tmp_path, abi)
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
def test_ppm2pgm_rejects(tmp_path: Path, abi: str, data: bytes, message: str) -> None:
    assert message in rejected("ppm2pgm", data, tmp_path, abi)


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
