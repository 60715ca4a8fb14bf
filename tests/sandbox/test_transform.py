"""The wasm transform host: real modules compiled from WAT here, real limits, no mocks.

Each limit (fuel, wall clock, memory, output) stops a module with our error, never a wasmtime
one, and the same host serves the next call; calls share no state; compiled modules are reused
from the on-disk cache by a new host; the policy decides which transforms may run, audited.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime
from agentrt import (
    PolicyDenied,
    TransformError,
    TransformMemoryExceeded,
    TransformOutOfFuel,
    TransformTimeout,
    TransformTrapped,
)
from agentrt.sandbox import Limits, Policy, TransformHost, TransformRules

WASI = "wasi_snapshot_preview1"

# stdin → stdout through a 64 KiB buffer at 65536. Scratch: read iovec at 0, write iovec at 8,
# nread at 16, nwritten at 20. Loops on short writes; exits 0 at end of input, 1/2 on an errno.
ECHO = f"""
(module
  (import "{WASI}" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $n i32) (local $off i32) (local $err i32)
    (loop $read
      (i32.store (i32.const 0) (i32.const 65536))
      (i32.store (i32.const 4) (i32.const 65536))
      (local.set $err (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
      (if (local.get $err) (then (call $proc_exit (i32.const 1))))
      (local.set $n (i32.load (i32.const 16)))
      (if (i32.eqz (local.get $n)) (then (call $proc_exit (i32.const 0))))
      (local.set $off (i32.const 65536))
      (loop $write
        (i32.store (i32.const 8) (local.get $off))
        (i32.store (i32.const 12) (local.get $n))
        (local.set $err (call $fd_write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 20)))
        (if (local.get $err) (then (call $proc_exit (i32.const 2))))
        (local.set $off (i32.add (local.get $off) (i32.load (i32.const 20))))
        (local.set $n (i32.sub (local.get $n) (i32.load (i32.const 20))))
        (br_if $write (local.get $n)))
      (br $read))))
"""
LOOP = '(module (func (export "_start") (loop $l (br $l))))'
GROW = """(module (memory (export "memory") 1)
  (func (export "_start")
    (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))"""
BIG_MEMORY = '(module (memory (export "memory") 100) (func (export "_start")))'
UNREACHABLE = '(module (func (export "_start") unreachable))'
OOB = '(module (memory 1) (func (export "_start") (drop (i32.load (i32.const 70000)))))'
# Writes "bad input" to stderr, then exits 3.
EXIT_3 = f"""
(module
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "bad input")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 9))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 3))))
"""
# Increments a mutable global and writes it as one ASCII digit: "1" on every call if each call
# gets a fresh instance, "2" on the second call if state leaked.
COUNTER = f"""
(module
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $n (mut i32) (i32.const 0))
  (func (export "_start")
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (i32.store8 (i32.const 100) (i32.add (i32.const 48) (global.get $n)))
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


# -- buffer ABI modules -----------------------------------------------------------------------


def buffer_module(run_body: str, *, extra: str = "", alloc_factor: int = 1) -> str:
    """A buffer-ABI module: alloc grows memory to fit ``alloc_factor * size`` bytes past 1024
    and returns 1024; ``run_body`` (params $p $n, result i32) sets globals $op/$ol, which
    agentrt_output_ptr/len return."""
    return f"""
(module
  {extra}
  (memory (export "memory") 1)
  (global $op (mut i32) (i32.const 0))
  (global $ol (mut i32) (i32.const 0))
  (func (export "agentrt_alloc") (param $size i32) (result i32)
    (local $pages i32)
    (local.set $pages
      (i32.sub
        (i32.shr_u (i32.add (i32.add (i32.mul (local.get $size) (i32.const {alloc_factor}))
                                     (i32.const 1024)) (i32.const 65535)) (i32.const 16))
        (memory.size)))
    (if (i32.gt_s (local.get $pages) (i32.const 0))
      (then (if (i32.eq (memory.grow (local.get $pages)) (i32.const -1))
        (then (return (i32.const 0))))))
    (i32.const 1024))
  (func (export "agentrt_run") (param $p i32) (param $n i32) (result i32)
    {run_body})
  (func (export "agentrt_output_ptr") (result i32) (global.get $op))
  (func (export "agentrt_output_len") (result i32) (global.get $ol)))
"""


# Zero-copy echo: the output is the input buffer itself.
BUF_ECHO = buffer_module(
    "(global.set $op (local.get $p)) (global.set $ol (local.get $n)) (i32.const 0)"
)
# Copying echo: memory.copy into a second region right after the input.
BUF_COPY = buffer_module(
    """(global.set $op (i32.add (local.get $p) (local.get $n)))
    (memory.copy (global.get $op) (local.get $p) (local.get $n))
    (global.set $ol (local.get $n)) (i32.const 0)""",
    alloc_factor=2,
)
# Writes "bad input" to stderr through WASI, then returns 3.
BUF_FAIL_3 = buffer_module(
    """(i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 9))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.const 3)""",
    extra=f"""(import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (data (i32.const 100) "bad input")""",
)
BUF_LOOP = buffer_module("(loop $l (br $l)) (i32.const 0)")
# Claims 2 GiB of output at 0: must be refused by the output cap before any bounds check/copy.
BUF_HUGE_OUTPUT = buffer_module("(global.set $ol (i32.const 0x7fff0000)) (i32.const 0)")
# Points its 16-byte output past the end of its one-page memory.
BUF_OOB_OUTPUT = buffer_module(
    "(global.set $op (i32.const 0xffff0000)) (global.set $ol (i32.const 16)) (i32.const 0)"
)
# A reactor: `_initialize` bumps a global the output reports as one ASCII digit, so "1" on
# every call proves it ran once per fresh instance.
BUF_REACTOR = buffer_module(
    """(i32.store8 (i32.const 0) (i32.add (i32.const 48) (global.get $n)))
    (global.set $ol (i32.const 1)) (i32.const 0)""",
    extra="""(global $n (mut i32) (i32.const 0))
  (func (export "_initialize") (global.set $n (i32.add (global.get $n) (i32.const 1))))""",
)
# alloc that always fails, and one that returns a pointer past the end of memory.
BUF_NO_ALLOC = BUF_ECHO.replace(
    '(i32.const 1024))\n  (func (export "agentrt_run")',
    '(drop (i32.const 1024)) (i32.const 0))\n  (func (export "agentrt_run")',
)
BUF_BAD_ALLOC = BUF_ECHO.replace(
    '(i32.const 1024))\n  (func (export "agentrt_run")',
    '(drop (i32.const 1024)) (i32.const 0x7fff0000))\n  (func (export "agentrt_run")',
)

LIMITS = Limits(fuel=10_000_000, timeout_s=5.0, memory_bytes=1 << 20, max_output_bytes=4 << 20)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[TransformHost]:
    with TransformHost(None, "n1", tmp_path / "cache") as h:
        h.register("echo", wasmtime.wat2wasm(ECHO))
        yield h


def assert_still_serves(host: TransformHost) -> None:
    assert host.run("echo", b"still here", limits=LIMITS) == b"still here"


def test_echo_round_trips_bytes(host: TransformHost) -> None:
    assert host.run("echo", b"hello, wasm", limits=LIMITS) == b"hello, wasm"
    assert host.run("echo", b"", limits=LIMITS) == b""
    big = os.urandom(1 << 20)  # 16 reads of the module's 64 KiB buffer
    assert host.run("echo", big, limits=LIMITS) == big


async def test_arun_runs_in_a_thread(host: TransformHost) -> None:
    assert await host.arun("echo", b"async", limits=LIMITS) == b"async"


def test_each_call_gets_a_fresh_instance(host: TransformHost) -> None:
    host.register("counter", wasmtime.wat2wasm(COUNTER))
    assert host.run("counter", b"", limits=LIMITS) == b"1"
    assert host.run("counter", b"", limits=LIMITS) == b"1"


def test_endless_loop_is_stopped_by_the_epoch_deadline(host: TransformHost) -> None:
    host.register("loop", wasmtime.wat2wasm(LOOP))
    limits = Limits(fuel=10**15, timeout_s=0.2)  # fuel that would last for hours
    started = time.monotonic()
    with pytest.raises(TransformTimeout) as info:
        host.run("loop", b"", limits=limits)
    took = time.monotonic() - started
    assert 0.2 <= took < 3.0
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout_s == 0.2 and info.value.elapsed_s >= 0.2
    assert "time limit" in str(info.value)
    assert_still_serves(host)


def test_fuel_budget_stops_a_busy_module(host: TransformHost) -> None:
    host.register("loop", wasmtime.wat2wasm(LOOP))
    with pytest.raises(TransformOutOfFuel) as info:
        host.run("loop", b"", limits=Limits(fuel=10_000, timeout_s=30.0))
    assert info.value.fuel == 10_000 and info.value.transform == "loop"
    assert_still_serves(host)


def test_memory_grow_past_the_cap(host: TransformHost) -> None:
    host.register("grow", wasmtime.wat2wasm(GROW))
    with pytest.raises(TransformMemoryExceeded) as info:
        host.run("grow", b"", limits=Limits(memory_bytes=1 << 20))
    assert info.value.memory_bytes == 1 << 20
    assert_still_serves(host)


def test_initial_memory_over_the_cap_fails_at_instantiation(host: TransformHost) -> None:
    host.register("big", wasmtime.wat2wasm(BIG_MEMORY))  # 100 pages = 6.25 MiB
    with pytest.raises(TransformMemoryExceeded):
        host.run("big", b"", limits=Limits(memory_bytes=1 << 20))
    assert_still_serves(host)


@pytest.mark.parametrize(
    ("wat", "reason"),
    [(UNREACHABLE, "unreachable"), (OOB, "out of bounds")],
)
def test_traps_become_transform_trapped(host: TransformHost, wat: str, reason: str) -> None:
    host.register("bad", wasmtime.wat2wasm(wat))
    with pytest.raises(TransformTrapped) as info:
        host.run("bad", b"", limits=LIMITS)
    assert reason in info.value.reason and info.value.exit_code is None
    assert "wasm backtrace" not in str(info.value)
    assert_still_serves(host)


def test_nonzero_exit_is_trapped_with_code_and_stderr(host: TransformHost) -> None:
    host.register("exit3", wasmtime.wat2wasm(EXIT_3))
    with pytest.raises(TransformTrapped) as info:
        host.run("exit3", b"", limits=LIMITS)
    assert info.value.exit_code == 3 and info.value.stderr == b"bad input"
    assert "exit status 3" in str(info.value) and "bad input" in str(info.value)
    assert_still_serves(host)


def test_output_over_the_cap_is_refused(host: TransformHost) -> None:
    with pytest.raises(TransformError) as info:
        host.run("echo", b"x" * 1000, limits=Limits(max_output_bytes=100))
    assert type(info.value) is TransformError and "100-byte output cap" in str(info.value)
    assert host.run("echo", b"x" * 100, limits=Limits(max_output_bytes=100)) == b"x" * 100


def test_second_host_loads_the_serialized_module(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    wasm = wasmtime.wat2wasm(ECHO)
    with TransformHost(None, "n1", cache) as first:
        first.register("echo", wasm)
        assert (first.compiled, first.loaded) == (1, 0)
    files = list(cache.glob("*.cwasm"))
    assert len(files) == 1 and wasmtime.__name__ in files[0].name
    with TransformHost(None, "n1", cache) as second:
        second.register("echo", wasm)
        assert (second.compiled, second.loaded) == (0, 1)
        assert second.run("echo", b"cached", limits=LIMITS) == b"cached"


def test_unloadable_cache_file_is_recompiled(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    wasm = wasmtime.wat2wasm(ECHO)
    with TransformHost(None, "n1", cache) as first:
        first.register("echo", wasm)
    (file,) = cache.glob("*.cwasm")
    file.write_bytes(b"not a serialized module")
    with TransformHost(None, "n1", cache) as second:
        second.register("echo", wasm)
        assert (second.compiled, second.loaded) == (1, 0)
        assert second.run("echo", b"ok", limits=LIMITS) == b"ok"


def test_policy_allows_and_denies_by_glob(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy = Policy(transforms=TransformRules(allow=["text.*"]), path="/etc/p.toml")
    with TransformHost(policy, "n7", tmp_path / "cache") as host:
        wasm = wasmtime.wat2wasm(ECHO)
        host.register("text.echo", wasm)
        host.register("image.echo", wasm)
        assert host.run("text.echo", b"ok", limits=LIMITS) == b"ok"
        with (
            caplog.at_level(logging.WARNING, logger="agentrt.audit"),
            pytest.raises(PolicyDenied) as info,
        ):
            host.run("image.echo", b"no", limits=LIMITS)
    assert info.value.action == "run transform" and info.value.target == "image.echo"
    assert info.value.rule == "transforms.allow: no pattern matches (default deny)"
    (record,) = [r for r in caplog.records if r.name == "agentrt.audit"]
    assert "node=n7 action=run_transform target=image.echo" in record.getMessage()


def test_empty_policy_denies_every_transform(tmp_path: Path) -> None:
    with TransformHost(Policy(), "n1", tmp_path / "cache") as host:
        host.register("echo", wasmtime.wat2wasm(ECHO))
        with pytest.raises(PolicyDenied):
            host.run("echo", b"", limits=LIMITS)


def test_bad_modules_are_refused_at_register(host: TransformHost) -> None:
    with pytest.raises(TransformError, match="not a valid wasm module"):
        host.register("junk", b"\x00asm junk")
    with pytest.raises(TransformError, match="no `_start`"):
        host.register("lib", wasmtime.wat2wasm('(module (func (export "f")))'))
    with pytest.raises(TransformError, match="cannot be linked"):
        host.register("net", wasmtime.wat2wasm('(module (import "env" "sock" (func)) '
                                               '(func (export "_start")))'))  # fmt: skip
    with pytest.raises(TransformError, match="no transform is registered"):
        host.run("junk", b"", limits=LIMITS)
    assert_still_serves(host)


def test_register_accepts_a_path(host: TransformHost, tmp_path: Path) -> None:
    path = tmp_path / "echo.wasm"
    path.write_bytes(wasmtime.wat2wasm(ECHO))
    host.register("from-file", path)
    assert host.run("from-file", b"file", limits=LIMITS) == b"file"
    assert host.compiled == 1  # same bytes as "echo": the in-memory cache served it


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"Limits\.fuel"):
        Limits(fuel=0)


# -- buffer ABI -------------------------------------------------------------------------------


@pytest.fixture
def bhost(host: TransformHost) -> TransformHost:
    host.register("buf", wasmtime.wat2wasm(BUF_ECHO))
    host.register("copy", wasmtime.wat2wasm(BUF_COPY))
    return host


def test_abi_is_chosen_by_exports(bhost: TransformHost) -> None:
    assert bhost.abi("echo") == "wasi"
    assert bhost.abi("buf") == "buffer" and bhost.abi("copy") == "buffer"
    with pytest.raises(TransformError, match="no transform is registered"):
        bhost.abi("nope")


@pytest.mark.parametrize("name", ["buf", "copy"])
def test_buffer_abi_round_trips_bytes(bhost: TransformHost, name: str) -> None:
    assert bhost.run(name, b"", limits=LIMITS) == b""
    assert bhost.run(name, b"hello, buffer", limits=LIMITS) == b"hello, buffer"
    big = os.urandom(16 << 20)
    limits = Limits(memory_bytes=40 << 20, max_output_bytes=16 << 20)
    assert bhost.run(name, big, limits=limits) == big


def test_buffer_input_over_the_memory_cap(bhost: TransformHost) -> None:
    with pytest.raises(TransformMemoryExceeded):
        bhost.run("buf", b"x" * (2 << 20), limits=LIMITS)  # cap is 1 MiB
    assert bhost.run("buf", b"ok", limits=LIMITS) == b"ok"


def test_buffer_nonzero_return_is_trapped_with_code_and_stderr(bhost: TransformHost) -> None:
    bhost.register("fail3", wasmtime.wat2wasm(BUF_FAIL_3))
    assert bhost.abi("fail3") == "buffer"
    with pytest.raises(TransformTrapped) as info:
        bhost.run("fail3", b"in", limits=LIMITS)
    assert info.value.exit_code == 3 and info.value.stderr == b"bad input"
    assert "agentrt_run returned 3" in str(info.value) and "bad input" in str(info.value)
    assert bhost.run("buf", b"after", limits=LIMITS) == b"after"


def test_buffer_endless_loop_times_out(bhost: TransformHost) -> None:
    bhost.register("bloop", wasmtime.wat2wasm(BUF_LOOP))
    with pytest.raises(TransformTimeout):
        bhost.run("bloop", b"x", limits=Limits(fuel=10**15, timeout_s=0.1))
    assert bhost.run("buf", b"after", limits=LIMITS) == b"after"


def test_buffer_fuel_budget(bhost: TransformHost) -> None:
    bhost.register("bloop", wasmtime.wat2wasm(BUF_LOOP))
    with pytest.raises(TransformOutOfFuel) as info:
        bhost.run("bloop", b"x", limits=Limits(fuel=10_000, timeout_s=30.0))
    assert info.value.fuel == 10_000
    assert bhost.run("buf", b"after", limits=LIMITS) == b"after"


def test_buffer_output_over_the_cap_is_refused_before_copying(bhost: TransformHost) -> None:
    bhost.register("huge", wasmtime.wat2wasm(BUF_HUGE_OUTPUT))
    with pytest.raises(TransformError) as info:
        bhost.run("huge", b"", limits=Limits(max_output_bytes=100))
    assert type(info.value) is TransformError and "100-byte output cap" in str(info.value)
    with pytest.raises(TransformError, match="100-byte output cap"):
        bhost.run("buf", b"x" * 101, limits=Limits(max_output_bytes=100))
    assert bhost.run("buf", b"x" * 100, limits=Limits(max_output_bytes=100)) == b"x" * 100


@pytest.mark.parametrize("wat", [BUF_OOB_OUTPUT, BUF_BAD_ALLOC])
def test_buffer_pointers_outside_memory_are_trapped(bhost: TransformHost, wat: str) -> None:
    bhost.register("oob", wasmtime.wat2wasm(wat))
    with pytest.raises(TransformTrapped, match="outside its memory"):
        bhost.run("oob", b"data", limits=LIMITS)
    assert bhost.run("buf", b"after", limits=LIMITS) == b"after"


def test_buffer_alloc_failure(bhost: TransformHost) -> None:
    bhost.register("noalloc", wasmtime.wat2wasm(BUF_NO_ALLOC))
    with pytest.raises(TransformError, match=r"agentrt_alloc\(4\) returned 0") as info:
        bhost.run("noalloc", b"data", limits=LIMITS)
    assert type(info.value) is TransformError
    assert bhost.run("buf", b"after", limits=LIMITS) == b"after"


def test_buffer_reactor_is_initialized_once_per_fresh_instance(bhost: TransformHost) -> None:
    bhost.register("reactor", wasmtime.wat2wasm(BUF_REACTOR))
    assert bhost.run("reactor", b"", limits=LIMITS) == b"1"
    assert bhost.run("reactor", b"", limits=LIMITS) == b"1"


def test_buffer_abi_with_wrong_exports_is_refused(bhost: TransformHost) -> None:
    no_len = BUF_ECHO.replace('(export "agentrt_output_len")', "")
    with pytest.raises(TransformError, match="agentrt_output_len"):
        bhost.register("partial", wasmtime.wat2wasm(no_len))
    wrong = BUF_ECHO.replace(
        "(param $p i32) (param $n i32) (result i32)", "(param $p i32) (param $n i64) (result i32)"
    ).replace("(global.set $ol (local.get $n))", "(global.set $ol (i32.wrap_i64 (local.get $n)))")
    with pytest.raises(TransformError, match="agentrt_run"):
        bhost.register("wrong", wasmtime.wat2wasm(wrong))
    with pytest.raises(TransformError, match="no `memory`"):
        bhost.register(
            "nomem",
            wasmtime.wat2wasm(
                '(module (func (export "agentrt_run") (param i32 i32) (result i32) (i32.const 0)))'
            ),
        )
    assert bhost.run("buf", b"after", limits=LIMITS) == b"after"
