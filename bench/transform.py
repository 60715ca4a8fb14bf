"""Transform host cost: per-call overhead and echo throughput for both ABIs, against a native
Python copy.

Run: ``.venv/bin/python bench/transform.py``. Uses the echo modules from the tests, registered
once so every call hits the compiled-module cache; fuel and epoch limits are on for every call
(the host's engine always has both), with the same ``Limits`` for both ABIs:

- **wasi**: the echo WASI command (a 64 KiB read/write loop). Each call pays a fresh Store, WASI
  context and instance, stdin through a memfd and stdout through a Python callback.
- **buffer**: the buffer-ABI echo that copies its input into a second region with
  ``memory.copy`` (so it does real work on the bytes). Each call pays a fresh Store and
  instance, four export calls, one memmove in and one copy out.

For inputs >= 64 KiB the buffer ABI asks the kernel for huge pages on the module's memory and
populates the input's pages in one syscall (``sandbox/_transform.py``, "Page faults"); the
``no advice`` column is the same buffer-ABI call with that switched off (the fallback an old
kernel or one without THP gets), measured in the same run.

Targets: <= 100 us overhead per call; >= 1 GB/s on 1 MiB with limits on. The native baseline
(``bytes(memoryview(data))``, one memcpy) is the floor any bytes-in/bytes-out path is compared
to; the ratio says how much the sandbox costs on top of the copy it cannot avoid. Always exits
0: figures are printed, targets are reported, nothing is asserted.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import wasmtime
from agentrt.sandbox import Limits, TransformHost, _transform

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.sandbox.test_transform import BUF_COPY, ECHO

LIMITS = Limits(fuel=10**9, timeout_s=10.0, memory_bytes=48 << 20, max_output_bytes=32 << 20)
ABIS = ("wasi", "buffer")


def best_of(fn: Callable[[], object], repeat: int, number: int) -> tuple[float, float]:
    """(min, median) seconds per call over ``repeat`` rounds of ``number`` calls."""
    rounds = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - t) / number)
    return min(rounds), statistics.median(rounds)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, TransformHost(None, "bench", Path(tmp)) as host:
        host.register("wasi", wasmtime.wat2wasm(ECHO))
        host.register("buffer", wasmtime.wat2wasm(BUF_COPY))
        assert (host.abi("wasi"), host.abi("buffer")) == ABIS
        for abi in ABIS:
            host.run(abi, b"warm", limits=LIMITS)
        print(f"wasmtime {version('wasmtime')}, python {sys.version.split()[0]}")

        print("per-call overhead (empty input), target <= 100 us:")
        overhead = {}
        for abi in ABIS:
            lo, med = best_of(lambda a=abi: host.run(a, b"", limits=LIMITS), 7, 2000)  # type: ignore[misc]
            overhead[abi] = lo
            print(f"  {abi:>6}: min {lo * 1e6:6.1f} us, median {med * 1e6:6.1f} us  "
                  f"[{verdict(lo * 1e6 <= 100)}]")  # fmt: skip
        print(f"  wasi/buffer: {overhead['wasi'] / overhead['buffer']:.1f}x")

        print(f"{'size':>8} {'wasi MB/s':>10} {'buffer MB/s':>12} {'no advice':>10} "
              f"{'native MB/s':>12} {'native/buffer':>14} {'buffer/wasi':>12} "
              f"{'advice gain':>12}")  # fmt: skip
        for size, number in ((1 << 10, 2000), (1 << 20, 50), (16 << 20, 4)):
            data = os.urandom(size)
            mbs = {}
            for abi in ABIS:
                assert host.run(abi, data, limits=LIMITS) == data
                lo, _ = best_of(lambda a=abi, d=data: host.run(a, d, limits=LIMITS), 5, number)  # type: ignore[misc]
                mbs[abi] = size / lo / 1e6
            advice, _transform._ADVICE = _transform._ADVICE, set()
            try:
                lo, _ = best_of(lambda d=data: host.run("buffer", d, limits=LIMITS), 5, number)  # type: ignore[misc]
            finally:
                _transform._ADVICE = advice
            mbs["plain"] = size / lo / 1e6
            n_lo, _ = best_of(lambda d=data: bytes(memoryview(d)), 5, number)  # type: ignore[misc]
            native = size / n_lo / 1e6
            label = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
            note = ""
            if size == 1 << 20:
                note = (f"  [>= 1000 MB/s: wasi {verdict(mbs['wasi'] >= 1000)}, "
                        f"buffer {verdict(mbs['buffer'] >= 1000)}]")  # fmt: skip
            wasi, buf, plain = mbs["wasi"], mbs["buffer"], mbs["plain"]
            print(f"{label:>8} {wasi:>10.0f} {buf:>12.0f} {plain:>10.0f} {native:>12.0f} "
                  f"{native / buf:>13.1f}x {buf / wasi:>11.1f}x {buf / plain:>11.1f}x"
                  f"{note}")  # fmt: skip


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a benchmark reports, it does not fail the build
        print(f"benchmark failed: {type(exc).__name__}: {exc}")
    sys.exit(0)
