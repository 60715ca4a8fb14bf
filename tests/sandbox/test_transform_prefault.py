"""Page-fault avoidance in the buffer ABI (huge pages, MADV_POPULATE_WRITE) keeps every limit,
isolation and the fallback intact, and advises only the memory it was meant for.

Large inputs (>= 64 KiB) take the prefault path, so each test here sends one: a module that
loops, burns fuel, grows past its cap or traps is stopped with our error exactly as with small
inputs, a fresh call still sees zeroed memory, and with every advice switched off (an old
kernel, no THP, not Linux) the same calls give the same results.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime
from agentrt import TransformMemoryExceeded, TransformOutOfFuel, TransformTimeout, TransformTrapped
from agentrt.sandbox import Limits, TransformHost
from agentrt.sandbox import _transform as tr

from .test_transform import BUF_COPY, BUF_LOOP, buffer_module

MIB = 1 << 20
BIG = os.urandom(MIB)
LIMITS = Limits(fuel=10**9, timeout_s=10.0, memory_bytes=8 * MIB, max_output_bytes=4 * MIB)

# Grows one page at a time until refused, then traps: the memory cap must stop it.
BUF_GROW = buffer_module(
    "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable"
)
BUF_UNREACHABLE = buffer_module("unreachable")
# Returns the n bytes after its input without writing them: all zero in a fresh memory.
BUF_PEEK = buffer_module(
    "(global.set $op (i32.add (local.get $p) (local.get $n))) (global.set $ol (local.get $n)) "
    "(i32.const 0)",
    alloc_factor=2,
)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[TransformHost]:
    with TransformHost(None, "n1", tmp_path / "cache") as h:
        for name, wat in [
            ("copy", BUF_COPY),
            ("loop", BUF_LOOP),
            ("grow", BUF_GROW),
            ("unreachable", BUF_UNREACHABLE),
            ("peek", BUF_PEEK),
        ]:
            h.register(name, wasmtime.wat2wasm(wat))
        yield h


@pytest.fixture(params=["advised", "fallback"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with the advice this kernel accepts, and with none (the fallback)."""
    if request.param == "fallback":
        monkeypatch.setattr(tr, "_ADVICE", set())
    return str(request.param)


def assert_serves(host: TransformHost) -> None:
    assert host.run("copy", BIG, limits=LIMITS) == BIG


def test_large_round_trips(host: TransformHost, mode: str) -> None:
    assert host.run("copy", BIG, limits=LIMITS) == BIG
    big = os.urandom(16 * MIB)
    assert (
        host.run("copy", big, limits=Limits(memory_bytes=40 * MIB, max_output_bytes=16 * MIB))
        == big
    )
    # Just under and at the threshold, and a length that ends mid-page (inputs sit at 1024).
    for size in (tr._PREFAULT_MIN - 1, tr._PREFAULT_MIN, 3 * MIB + 5):
        data = os.urandom(size)
        assert host.run("copy", data, limits=LIMITS) == data


def test_fresh_memory_is_zero_after_a_large_call(host: TransformHost, mode: str) -> None:
    host.run("copy", b"\xff" * MIB, limits=LIMITS)
    assert host.run("peek", b"\xff" * MIB, limits=LIMITS) == bytes(MIB)


def test_epoch_stops_a_loop_on_large_input(host: TransformHost, mode: str) -> None:
    with pytest.raises(TransformTimeout) as info:
        host.run("loop", BIG, limits=Limits(fuel=10**15, timeout_s=0.1, memory_bytes=8 * MIB))
    assert re.fullmatch(
        r"transform 'loop': interrupted after [0-9.]+s, over its 0.1s time limit; .+",
        str(info.value),
    )
    assert_serves(host)


def test_fuel_stops_a_loop_on_large_input(host: TransformHost, mode: str) -> None:
    with pytest.raises(TransformOutOfFuel) as info:
        host.run("loop", BIG, limits=Limits(fuel=100_000, timeout_s=30.0, memory_bytes=8 * MIB))
    assert str(info.value) == (
        "transform 'loop': used all of its 100000 units of fuel; raise Limits.fuel if the "
        "input really needs that much work, or fix a loop that never ends"
    )
    assert_serves(host)


def test_memory_cap_stops_growth_on_large_input(host: TransformHost, mode: str) -> None:
    with pytest.raises(TransformMemoryExceeded) as info:
        host.run("grow", BIG, limits=LIMITS)
    assert str(info.value) == (
        f"transform 'grow': needed more than its {8 * MIB}-byte memory cap; raise "
        "Limits.memory_bytes or send it smaller input"
    )
    # A cap that is not a multiple of 2 MiB: the huge-page advice is rounded, the cap is not.
    with pytest.raises(TransformMemoryExceeded):
        host.run("grow", BIG, limits=Limits(memory_bytes=3 * MIB))
    assert_serves(host)


def test_trap_on_large_input(host: TransformHost, mode: str) -> None:
    with pytest.raises(TransformTrapped) as info:
        host.run("unreachable", BIG, limits=LIMITS)
    assert str(info.value) == (
        "transform 'unreachable': failed: wasm `unreachable` instruction executed; this is a "
        "bug in the transform or input it does not accept, fix one of them"
    )
    assert_serves(host)


# -- the advice itself --------------------------------------------------------------------------


def _kernel() -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", os.uname().release).groups()  # type: ignore[union-attr]
    return int(major), int(minor)


def _address(region: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(region))


def _resident_pages(addr: int, length: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    pages = (length + tr._OS_PAGE - 1) // tr._OS_PAGE
    vec = (ctypes.c_ubyte * pages)()
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    assert libc.mincore(ctypes.c_void_p(addr), length, vec) == 0, ctypes.get_errno()
    return sum(b & 1 for b in vec)


def _vm_flags(addr: int) -> tuple[int, int, list[str]]:
    """(start, end, VmFlags) of the mapping holding ``addr``, from /proc/self/smaps."""
    current: tuple[int, int] | None = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if head:
            current = (int(head[1], 16), int(head[2], 16))
        elif line.startswith("VmFlags:") and current and current[0] <= addr < current[1]:
            return current[0], current[1], line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


def test_populate_faults_in_exactly_the_pages_of_the_range() -> None:
    with mmap.mmap(-1, 64 * tr._OS_PAGE) as region:
        base = _address(region)
        assert _resident_pages(base, len(region)) == 0
        tr._populate(base + 10 * tr._OS_PAGE + 100, 5 * tr._OS_PAGE)  # touches 6 pages
        if _kernel() >= (5, 14):
            assert tr._MADV_POPULATE_WRITE in tr._ADVICE
            assert _resident_pages(base, len(region)) == 6
            assert _resident_pages(base + 10 * tr._OS_PAGE, 6 * tr._OS_PAGE) == 6
        else:  # refused with EINVAL: switched off, nothing faulted in
            assert tr._MADV_POPULATE_WRITE not in tr._ADVICE
            assert _resident_pages(base, len(region)) == 0


def test_huge_page_advice_covers_the_cap_rounded_to_2_mib_and_no_more() -> None:
    with mmap.mmap(-1, 16 * MIB) as region:
        start = _address(region)
        base = -(-start // tr._HUGE_PAGE) * tr._HUGE_PAGE  # wasmtime aligns memories like this
        tr._advise_huge(base, 3 * MIB)
        lo, hi, flags = _vm_flags(base)
        if tr._MADV_HUGEPAGE in tr._ADVICE:
            assert (lo, hi) == (base, base + 4 * MIB) and "hg" in flags
            assert "hg" not in _vm_flags(base + 4 * MIB)[2]
        else:  # a kernel without THP refused it: switched off, nothing flagged
            assert "hg" not in flags


def test_an_advice_the_kernel_refuses_is_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    bogus = 0x7FFF  # no such madvise advice: EINVAL
    monkeypatch.setattr(tr, "_ADVICE", {*tr._ADVICE, bogus})
    with mmap.mmap(-1, tr._OS_PAGE) as region:
        addr = _address(region)
        assert tr._advise(addr, tr._OS_PAGE, bogus) is False
        assert bogus not in tr._ADVICE
        assert tr._advise(addr, tr._OS_PAGE, bogus) is False  # not tried again


def test_the_memory_reservation_covers_what_is_advised(host: TransformHost) -> None:
    """_advise_huge flags [base, base + cap) of the memory's reservation: wasmtime must keep
    that whole range mapped for this memory (PROT_NONE beyond its current size)."""
    store = wasmtime.Store(host._engine)
    store.set_limits(memory_size=LIMITS.memory_bytes)
    module = wasmtime.Module(host._engine, wasmtime.wat2wasm(BUF_COPY))
    memory = wasmtime.Instance(store, module, []).exports(store)["memory"]
    assert isinstance(memory, wasmtime.Memory)
    base = tr._base(memory, store)
    assert base % tr._HUGE_PAGE == 0
    end, addr = base + tr._RESERVATION, base
    for line in Path("/proc/self/maps").read_text().splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= addr < hi:
            assert line.split()[4] == "0", f"a file mapping inside the reservation: {line}"
            addr = hi
            if addr >= end:
                break
    assert addr >= end, f"[{base:#x}, {end:#x}) is not mapped up to {addr:#x}"


def test_host_advises_the_memory_of_a_large_call_only(
    host: TransformHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large call asks for huge pages on [base, base + cap) before the module runs and
    populates exactly its input's pages; a small call makes no syscall at all. The real
    madvise still runs (this records the calls, it does not replace them)."""
    assert tr._madvise is not None
    real, calls = tr._madvise, []

    def record(addr: int, length: int, advice: int) -> int:
        calls.append((addr, length, advice))
        return int(real(addr, length, advice))

    monkeypatch.setattr(tr, "_madvise", record)
    assert host.run("copy", BIG, limits=LIMITS) == BIG
    (huge_at, huge_len, huge), (pop_at, pop_len, pop) = calls
    assert (huge, huge_len, huge_at % tr._HUGE_PAGE) == (tr._MADV_HUGEPAGE, 8 * MIB, 0)
    # The module's input buffer is at 1024: the pages [base, base + 1024 + 1 MiB) rounded up.
    assert (pop, pop_at, pop_len) == (tr._MADV_POPULATE_WRITE, huge_at, MIB + tr._OS_PAGE)
    calls.clear()
    small = os.urandom(tr._PREFAULT_MIN - 1)
    assert host.run("copy", small, limits=LIMITS) == small
    assert calls == []
