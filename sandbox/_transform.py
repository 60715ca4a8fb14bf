"""The wasmtime host for transforms: untrusted bytes-in, bytes-out code under hard limits.

Two ABIs, chosen per module at ``register`` by its exports (``TransformHost.abi(name)``):

- **Buffer ABI** (exports ``agentrt_run``; use it for anything new or performance-sensitive):
  the module exports ``memory``, ``agentrt_alloc(size: i32) -> i32`` (a pointer to ``size``
  writable bytes, 0 on failure), ``agentrt_run(ptr: i32, len: i32) -> i32`` (0 = success,
  else a failure code → ``TransformTrapped(exit_code=code)``), ``agentrt_output_ptr() -> i32``
  and ``agentrt_output_len() -> i32``, and optionally ``_initialize`` (a reactor; called once
  per fresh instance before ``agentrt_alloc``). The host copies the input into linear memory
  with one ``memmove`` (bounds-checked against the memory's size), calls ``agentrt_run``, refuses
  an output length over ``max_output_bytes`` before copying anything, bounds-checks the output
  and copies it out once. WASI imports are still linked when the module has any imports (C with
  wasi-libc), with no stdin and stderr kept for ``TransformTrapped``. About half the per-call
  cost of the WASI ABI and ~30x its throughput (docs/benchmarks.md): no WASI stdio call, each of
  which costs 75-150 us in wasmtime-py, on the path. For inputs of 64 KiB or more the host also
  asks the kernel to make the fresh memory's page faults cheap (see "Page faults" below).
- **WASI command ABI** (exports ``_start``; for existing programs with ``main``): it reads its
  input from stdin and writes its result to stdout.

Either way a transform gets nothing else: no preopened directories, no environment, no
arguments beyond ``argv[0]`` (its name), no sockets. Each call runs in a fresh ``Store`` and
instance, so nothing a call leaves in memory or globals reaches the next one, and a failed call
leaves nothing behind to clean up.

Limits (``Limits``), each turned into one of our errors at this seam; no wasmtime exception
escapes ``run``:

- ``fuel``: wasmtime's instruction budget (about one unit per wasm instruction; host calls
  such as ``fd_read`` cost nothing) → ``TransformOutOfFuel``. Deterministic, so a test or a
  policy can rely on it; it costs roughly 2x in tight loops.
- ``timeout_s``: wall clock, via epoch interruption. One daemon thread per host increments
  the engine's epoch every ``TICK_S`` (10 ms); a call's deadline is ``ceil(timeout_s / TICK_S)
  + 1`` ticks, so it is stopped between ``timeout_s`` and ``timeout_s + 10 ms`` (plus thread
  scheduling delay) → ``TransformTimeout``. A thread rather than a timer per call because a
  timer costs a thread start per call; the ticker wakes 100 times a second only while the
  host is open.
- ``memory_bytes``: ``Store.set_limits(memory_size=...)``; past it ``memory.grow`` returns -1
  and the module normally traps → ``TransformMemoryExceeded``. wasmtime-py has no callback
  telling us the limiter refused, so the host decides after the trap: if the module's memory
  is within one 64 KiB page of the cap, the cap is what stopped it. A module that traps for
  another reason while its memory happens to be full is reported as out of memory too.
- ``max_output_bytes``: the stdout callback stops accepting bytes past the cap (the module's
  ``fd_write`` gets EIO), or the buffer ABI's ``agentrt_output_len`` is over it →
  ``TransformError``. A buffer-ABI ``agentrt_alloc`` returning 0 is ``TransformMemoryExceeded``
  if the input cannot fit under the cap, else ``TransformError``.

WASI command ABI I/O: input goes in through a ``memfd`` (Linux; no file system involved)
opened as the module's stdin, or a file in a private temporary directory elsewhere:
wasmtime-py can only give stdin as a path. Output comes back through ``stdout_custom``, one
Python callback per ``fd_write``.

Compiled modules are kept in memory by sha256 of the wasm bytes and serialized to
``cache_dir`` keyed by sha256 and the wasmtime version, so a new process loads native code
instead of compiling again. Loading a serialized module runs its machine code unchecked, so
``cache_dir`` must be writable only by this user (it is created ``0700``); a file that does
not load (another wasmtime build, a truncated write) is recompiled and replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from importlib.metadata import version as _dist_version
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple, NoReturn

import msgspec
import trio
import wasmtime
from agentrt import (
    TransformError,
    TransformMemoryExceeded,
    TransformOutOfFuel,
    TransformTimeout,
    TransformTrapped,
)

from ._policy import Policy

__all__ = ["Limits", "TransformHost"]


TICK_S = 0.01
_PAGE = 65536
_STDERR_KEEP = 4096
_WASMTIME_VERSION = _dist_version("wasmtime")
_HAS_MEMFD = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")
_U32 = 0xFFFFFFFF

Abi = Literal["wasi", "buffer"]

_I32 = wasmtime.ValType.i32()
# The buffer ABI: export name -> (params, results), all i32.
_BUFFER_EXPORTS: dict[str, tuple[int, int]] = {
    "agentrt_alloc": (1, 1),
    "agentrt_run": (2, 1),
    "agentrt_output_ptr": (0, 1),
    "agentrt_output_len": (0, 1),
}


class _Registered(NamedTuple):
    """A compiled, linked module and how to call it."""

    pre: wasmtime.InstancePre
    abi: Abi
    imports_wasi: bool  # buffer ABI only: give the store a WASI context (stderr captured)
    initialize: bool  # buffer ABI only: call the `_initialize` export first (reactors)
    memory32: bool  # buffer ABI only: `memory` is a 32-bit, unshared memory (huge pages apply)


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """What one transform call may use; every field is enforced, none is advisory.

    Attributes:
        fuel: instruction budget (about one unit per wasm instruction).
        timeout_s: wall-clock limit, enforced to within ``TICK_S``.
        memory_bytes: cap on the module's linear memory.
        max_output_bytes: cap on what it may write to stdout.
    """

    fuel: int = 100_000_000
    timeout_s: float = 1.0
    memory_bytes: int = 64 * 1024 * 1024
    max_output_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for field in ("fuel", "timeout_s", "memory_bytes", "max_output_bytes"):
            if getattr(self, field) <= 0:
                raise ValueError(f"Limits.{field} must be positive, got {getattr(self, field)}")


class _Output:
    """Collects stdout chunks up to a cap; past it, refuses bytes so the module stops early."""

    __slots__ = ("cap", "chunks", "over", "size")

    def __init__(self, cap: int) -> None:
        self.cap, self.size, self.over = cap, 0, False
        self.chunks: list[bytes] = []

    def write(self, chunk: bytes) -> int:
        if self.size + len(chunk) > self.cap:
            self.over = True
            return -5  # -EIO: the module's fd_write fails and it should stop writing
        self.size += len(chunk)
        self.chunks.append(chunk)
        return len(chunk)


class _Stderr:
    """Keeps the first few KiB of stderr for error messages; the rest is dropped."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def write(self, chunk: bytes) -> int:
        if len(self.data) < _STDERR_KEEP:
            self.data += chunk[: _STDERR_KEEP - len(self.data)]
        return len(chunk)


class TransformHost:
    """Runs registered wasm transforms for one node, each call in a fresh sandbox.

    Thread-safe: the engine, compiled modules and linker are shared, stores are per call, so
    ``run`` may be called from several threads (``arun`` does exactly that). Close it (or use
    it as a context manager) to stop the epoch ticker thread.

    Attributes:
        compiled: modules compiled from wasm by this host (a cache miss).
        loaded: modules loaded from the serialized cache instead.
    """

    def __init__(self, policy: Policy | None, node: str, cache_dir: Path) -> None:
        self.policy = policy
        self.node = node
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.compiled = 0
        self.loaded = 0
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        # wasmtime's 64-bit default, stated because _advise_huge relies on it: a 32-bit memory
        # never moves and owns [base, base + 4 GiB) of address space.
        config.memory_reservation = _RESERVATION
        self._engine = wasmtime.Engine(config)
        self._linker = wasmtime.Linker(self._engine)
        self._linker.define_wasi()
        self._lock = threading.Lock()
        self._by_hash: dict[str, _Registered] = {}
        self._by_name: dict[str, _Registered] = {}
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._tmp: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the ticker and remove the private temp dir; calls after this start them again."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> TransformHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            self._engine.increment_epoch()

    def _ensure_ticker(self) -> None:
        if self._ticker is None:
            with self._lock:
                if self._ticker is None:
                    self._stop.clear()
                    t = threading.Thread(target=self._tick, name="wasm-epoch", daemon=True)
                    t.start()
                    self._ticker = t

    # -- modules ------------------------------------------------------------------------------

    def register(self, name: str, wasm: bytes | Path) -> None:
        """Compile (or load from the cache) a transform and make it runnable as ``name``.

        The ABI is chosen by the module's exports: ``agentrt_run`` → buffer ABI, else
        ``_start`` → WASI command ABI (see the module docstring); ``abi(name)`` tells which.

        Raises:
            TransformError: the bytes are not a valid wasm module, it exports neither
                ``agentrt_run`` nor ``_start``, its buffer-ABI exports have the wrong types, or
                it imports something other than WASI preview 1.
        """
        raw = Path(wasm).read_bytes() if isinstance(wasm, Path) else bytes(wasm)
        digest = hashlib.sha256(raw).hexdigest()
        with self._lock:
            reg = self._by_hash.get(digest)
        if reg is None:
            module = self._module(name, raw, digest)
            exports = {e.name: e.type for e in module.exports}
            if "agentrt_run" in exports:
                abi: Abi = "buffer"
                _check_buffer_exports(name, exports)
            elif isinstance(exports.get("_start"), wasmtime.FuncType):
                abi = "wasi"
            else:
                raise TransformError(
                    name,
                    "the module exports no `_start` function (WASI command ABI) and no "
                    "`agentrt_run` (buffer ABI); build it as a WASI command (a program with "
                    "main) or export the buffer ABI",
                )
            try:
                pre = self._linker.instantiate_pre(module)
            except wasmtime.WasmtimeError as exc:
                raise TransformError(
                    name,
                    f"cannot be linked: {_cause(exc)}; a transform may import only "
                    "wasi_snapshot_preview1",
                ) from None
            initialize = isinstance(exports.get("_initialize"), wasmtime.FuncType)
            mem = exports.get("memory")
            memory32 = isinstance(mem, wasmtime.MemoryType) and not (mem.is_64 or mem.is_shared)
            reg = _Registered(pre, abi, bool(module.imports), initialize, memory32)
            with self._lock:
                self._by_hash[digest] = reg
        with self._lock:
            self._by_name[name] = reg

    def abi(self, name: str) -> Abi:
        """The ABI transform ``name`` was registered with: ``"buffer"`` or ``"wasi"``.

        Raises:
            TransformError: no transform is registered under this name.
        """
        return self._registered(name).abi

    def _registered(self, name: str) -> _Registered:
        with self._lock:
            reg = self._by_name.get(name)
        if reg is None:
            raise TransformError(name, "no transform is registered under this name; "
                                 "call TransformHost.register first")  # fmt: skip
        return reg

    def _module(self, name: str, raw: bytes, digest: str) -> wasmtime.Module:
        path = self.cache_dir / f"{digest}.wasmtime-{_WASMTIME_VERSION}.cwasm"
        if path.is_file():
            with contextlib.suppress(wasmtime.WasmtimeError):
                module = wasmtime.Module.deserialize_file(self._engine, str(path))
                self.loaded += 1
                return module
        try:
            module = wasmtime.Module(self._engine, raw)
        except wasmtime.WasmtimeError as exc:
            raise TransformError(name, f"is not a valid wasm module: {_cause(exc)}") from None
        self.compiled += 1
        # Write then rename: a concurrent process never loads half a file.
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(module.serialize())
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return module

    # -- running ------------------------------------------------------------------------------

    def _store(self, limits: Limits, wasi: wasmtime.WasiConfig | None) -> wasmtime.Store:
        """A fresh store with every limit of ``limits`` applied (both ABIs use it)."""
        store = wasmtime.Store(self._engine)
        if wasi is not None:
            store.set_wasi(wasi)
        store.set_fuel(limits.fuel)
        store.set_limits(memory_size=limits.memory_bytes)
        store.set_epoch_deadline(math.ceil(limits.timeout_s / TICK_S) + 1)
        return store

    def _check_policy(self, name: str) -> None:
        if self.policy is not None:
            self.policy.check_transform(name, node=self.node)

    @contextlib.contextmanager
    def _stdin(self, data: bytes) -> Iterator[str]:
        """A path the module's stdin can be opened from, holding ``data``, gone afterwards."""
        if _HAS_MEMFD:
            fd = os.memfd_create("agentrt-transform-stdin", os.MFD_CLOEXEC)
            try:
                with memoryview(data) as view:
                    written = 0
                    while written < len(view):
                        written += os.write(fd, view[written:])
                yield f"/proc/self/fd/{fd}"
            finally:
                os.close(fd)
            return
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="agentrt-transform-")
        fd, path = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def run(self, name: str, data: bytes, *, limits: Limits) -> bytes:
        """Run transform ``name`` on ``data`` and return its output (stdout for a WASI
        command, the ``agentrt_output_ptr/len`` bytes for a buffer-ABI module).

        Raises:
            PolicyDenied: the node's policy does not allow this transform (audited).
            TransformTimeout | TransformOutOfFuel | TransformMemoryExceeded: a limit stopped it.
            TransformTrapped: it trapped, exited with a non-zero status, ``agentrt_run``
                returned non-zero (``exit_code`` is that code) or pointed its output outside
                its memory.
            TransformError: unknown name, output over ``limits.max_output_bytes``, or
                ``agentrt_alloc`` returned 0 without the memory cap being the reason.
        """
        self._check_policy(name)
        reg = self._registered(name)
        self._ensure_ticker()
        if reg.abi == "buffer":
            return self._run_buffer(name, reg, data, limits)
        pre = reg.pre
        out, err = _Output(limits.max_output_bytes), _Stderr()
        with self._stdin(data) as stdin_path:
            wasi = wasmtime.WasiConfig()
            wasi.argv = [name]
            wasi.stdin_file = stdin_path
            wasi.stdout_custom = out.write
            wasi.stderr_custom = err.write
            store = self._store(limits, wasi)
            instance: wasmtime.Instance | None = None
            start = time.monotonic()
            try:
                instance = pre.instantiate(store)
                start_fn = instance.exports(store)["_start"]
                assert isinstance(start_fn, wasmtime.Func)
                start_fn(store)
            except wasmtime.ExitTrap as exc:
                if exc.code != 0:
                    self._raise_failure(name, exc, limits, store, instance, err, out, start)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                self._raise_failure(name, exc, limits, store, instance, err, out, start)
        if out.over:
            raise _output_too_large(name, limits)
        return b"".join(out.chunks)

    def _run_buffer(self, name: str, reg: _Registered, data: bytes, limits: Limits) -> bytes:
        """One buffer-ABI call: input copied into linear memory, output copied out of it."""
        if not isinstance(data, bytes):
            data = bytes(data)
        err = _Stderr()
        wasi = None
        if reg.imports_wasi:
            wasi = wasmtime.WasiConfig()
            wasi.argv = [name]
            wasi.stderr_custom = err.write
        store = self._store(limits, wasi)
        instance: wasmtime.Instance | None = None
        start = time.monotonic()
        try:
            instance = reg.pre.instantiate(store)
            exports = instance.exports(store)
            memory = exports["memory"]
            assert isinstance(memory, wasmtime.Memory)  # checked at register
            size = len(data)
            prefault = size >= _PREFAULT_MIN
            if prefault and reg.memory32:
                _advise_huge(_base(memory, store), limits.memory_bytes)
            if reg.initialize:
                exports["_initialize"](store)  # type: ignore[operator]
            ptr = _call_i32(store, exports["agentrt_alloc"], size) & _U32
            if ptr == 0:
                # Refused growth: the module is near the cap, or the input alone cannot fit.
                used = memory.data_len(store)
                if size > limits.memory_bytes - used or used + _PAGE > limits.memory_bytes:
                    raise TransformMemoryExceeded(name, limits.memory_bytes)
                raise TransformError(name, f"agentrt_alloc({size}) returned 0; the module "
                                     "could not allocate its input buffer")  # fmt: skip
            if ptr + size > memory.data_len(store):
                raise TransformTrapped(
                    name, f"agentrt_alloc({size}) returned {ptr}, outside its memory",
                    stderr=err.data,
                )  # fmt: skip
            if prefault:
                _populate(_base(memory, store) + ptr, size)
            ctypes.memmove(_base(memory, store) + ptr, data, size)
            rc = _call_i32(store, exports["agentrt_run"], ptr, size)
            if rc != 0:
                raise TransformTrapped(
                    name, f"agentrt_run returned {rc}", exit_code=rc, stderr=err.data
                )
            out_len = _call_i32(store, exports["agentrt_output_len"]) & _U32
            if out_len > limits.max_output_bytes:
                raise _output_too_large(name, limits)
            out_ptr = _call_i32(store, exports["agentrt_output_ptr"]) & _U32
            if out_ptr + out_len > memory.data_len(store):
                raise TransformTrapped(
                    name,
                    f"its output ({out_len} bytes at {out_ptr}) lies outside its memory",
                    stderr=err.data,
                )
            return ctypes.string_at(_base(memory, store) + out_ptr, out_len)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:  # ExitTrap included
            self._raise_failure(name, exc, limits, store, instance, err, None, start)

    def _raise_failure(
        self,
        name: str,
        exc: Exception,
        limits: Limits,
        store: wasmtime.Store,
        instance: wasmtime.Instance | None,
        err: _Stderr,
        out: _Output | None,
        start: float,
    ) -> NoReturn:
        """Turn a wasmtime failure into the most specific TransformError (raised, no chain:
        the wasmtime exception holds the store alive and says nothing the message does not)."""
        elapsed = time.monotonic() - start
        code = exc.trap_code if isinstance(exc, wasmtime.Trap) else None
        if code is wasmtime.TrapCode.OUT_OF_FUEL:
            raise TransformOutOfFuel(name, limits.fuel) from None
        if code is wasmtime.TrapCode.INTERRUPT:
            raise TransformTimeout(name, limits.timeout_s, elapsed) from None
        if instance is None and "exceeds memory limits" in str(exc):
            raise TransformMemoryExceeded(name, limits.memory_bytes) from None
        if instance is not None and _memory_full(store, instance, limits.memory_bytes):
            raise TransformMemoryExceeded(name, limits.memory_bytes) from None
        if out is not None and out.over:
            raise _output_too_large(name, limits) from None
        if isinstance(exc, wasmtime.ExitTrap):
            raise TransformTrapped(
                name, f"exit status {exc.code}", exit_code=exc.code, stderr=err.data
            ) from None
        raise TransformTrapped(name, _cause(exc), stderr=err.data) from None

    async def arun(self, name: str, data: bytes, *, limits: Limits) -> bytes:
        """``run`` in a worker thread, so the event loop keeps going while wasm runs.

        Cancellation waits for the call to finish; it is bounded by ``limits.timeout_s``.
        """
        return await trio.to_thread.run_sync(functools.partial(self.run, name, data, limits=limits))


# A call through wasmtime-py's ``Func.__call__`` costs ~25 µs (it rebuilds the function type and
# converts every value); the same call through the C API it wraps costs ~4 µs, and a buffer-ABI
# transform makes four calls. So i32 calls go straight to ``wasmtime_func_call``, with the same
# trap handling (``enter_wasm``). These are wasmtime-py internals: if a release moves them, the
# import fails and calls fall back to ``Func.__call__`` (slower, same behaviour); the transform
# tests exercise whichever path is active.
try:
    from wasmtime import _ffi as _wffi
    from wasmtime._func import enter_wasm as _enter_wasm

    _I32_KIND = int(_wffi.WASMTIME_I32.value)
    _FAST_CALLS = True
except (ImportError, AttributeError):  # pragma: no cover - depends on the wasmtime release
    _FAST_CALLS = False


def _call_i32(store: wasmtime.Store, func: object, *args: int) -> int:
    """Call an exported ``(i32...) -> i32`` function; traps raise as with ``Func.__call__``."""
    assert isinstance(func, wasmtime.Func)  # export kinds and signatures checked at register
    if not _FAST_CALLS:
        return int(func(store, *args))
    n = len(args)
    params = (_wffi.wasmtime_val_t * n)()
    for i, value in enumerate(args):
        params[i].kind = _I32_KIND  # type: ignore[assignment]
        params[i].of.i32 = value
    results = (_wffi.wasmtime_val_t * 1)()
    with _enter_wasm(store) as trap:
        error = _wffi.wasmtime_func_call(
            store._context(), ctypes.byref(func._func), params, n, results, 1, trap
        )
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
    return int(results[0].of.i32)


def _check_buffer_exports(name: str, exports: Mapping[str, object]) -> None:
    """Raise TransformError unless the module has every buffer-ABI export, all-i32 typed."""
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        raise TransformError(name, "exports `agentrt_run` (buffer ABI) but no `memory`")
    for export, (n_params, n_results) in _BUFFER_EXPORTS.items():
        ty = exports.get(export)
        if (
            not isinstance(ty, wasmtime.FuncType)
            or list(ty.params) != [_I32] * n_params
            or list(ty.results) != [_I32] * n_results
        ):
            sig = ", ".join(["i32"] * n_params)
            raise TransformError(
                name,
                f"exports `agentrt_run` (buffer ABI) but no `{export}({sig}) -> i32` function; "
                "the buffer ABI needs agentrt_alloc, agentrt_run, agentrt_output_ptr, "
                "agentrt_output_len and memory",
            )


def _base(memory: wasmtime.Memory, store: wasmtime.Store) -> int:
    """Address of linear memory's first byte, valid until the memory next grows."""
    return ctypes.addressof(memory.data_ptr(store).contents)


# Page faults. A fresh store's linear memory is fresh anonymous memory, and touching it costs a
# 4 KiB page fault per page: ~1 ms per MiB touched, most of a 1 MiB call (docs/benchmarks.md).
# wasmtime-py has no pooling allocator to keep pages resident across calls, and isolation wants
# a fresh memory anyway, so the host makes the faults cheaper instead, for inputs of at least
# _PREFAULT_MIN bytes (below it the two syscalls cost more than the faults they save):
# - MADV_HUGEPAGE on the memory's own reservation right after instantiation, so the input, the
#   module's working memory and its output, including what it grows later, are faulted in 2 MiB
#   at a time wherever an aligned 2 MiB fits (wasmtime aligns the base; ~4.5x on 1 MiB);
# - MADV_POPULATE_WRITE (Linux >= 5.14) on the input's pages before the memmove: one syscall
#   instead of a fault per page, for the input pages huge pages do not cover.
# Both are hints: the limits do not depend on them, and an advice the kernel refuses (EINVAL on
# older kernels or without THP) is switched off for the process, silently.
_RESERVATION = 1 << 32
_PREFAULT_MIN = 64 << 10
_OS_PAGE = 4096
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_MADV_POPULATE_WRITE = 23


def _load_madvise() -> ctypes._NamedFuncPointer | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # pragma: no cover - a libc without madvise
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _load_madvise()
# Advice values this process still tries; one the kernel refused is removed.
_ADVICE = {_MADV_HUGEPAGE, _MADV_POPULATE_WRITE} if _madvise is not None else set()


def _advise(addr: int, length: int, advice: int) -> bool:
    """madvise(2) on page-aligned ``[addr, addr + length)``; False (and that advice is not
    tried again in this process) if the kernel refuses it, False if it is already off."""
    if advice not in _ADVICE or _madvise is None or length <= 0:
        return False
    if _madvise(addr, length, advice) == 0:
        return True
    if ctypes.get_errno() == errno.EINVAL:  # unknown advice or no THP in this kernel
        _ADVICE.discard(advice)
    return False


def _advise_huge(base: int, cap: int) -> None:
    """Ask for transparent huge pages on the part of the memory's reservation it may use."""
    _advise(base, -(-min(cap, _RESERVATION) // _HUGE_PAGE) * _HUGE_PAGE, _MADV_HUGEPAGE)


def _populate(addr: int, length: int) -> None:
    """Fault in the pages of ``[addr, addr + length)`` in one syscall."""
    start = addr & ~(_OS_PAGE - 1)
    _advise(start, -(-(addr + length - start) // _OS_PAGE) * _OS_PAGE, _MADV_POPULATE_WRITE)


def _memory_full(store: wasmtime.Store, instance: wasmtime.Instance, cap: int) -> bool:
    """True if any exported memory is within one page of the cap (memory.grow was refused)."""
    for ext in instance.exports(store).values():
        if isinstance(ext, wasmtime.Memory) and ext.data_len(store) + _PAGE > cap:
            return True
    return False


def _cause(exc: Exception) -> str:
    """The reason in a wasmtime error, without the wasm backtrace: the root cause first, then
    the context wasmtime added (``out of bounds memory access (memory fault at ...)``)."""
    text = str(exc)
    if "Caused by:" in text:
        text = text.split("Caused by:", 1)[1]
    causes = [
        re.sub(r"^(\d+: )?(wasm trap: )?", "", line.strip())
        for line in text.strip().splitlines()
        if line.strip()
    ]
    if not causes:
        return type(exc).__name__
    return causes[-1] + (f" ({'; '.join(causes[:-1])})" if len(causes) > 1 else "")


def _output_too_large(name: str, limits: Limits) -> TransformError:
    return TransformError(
        name,
        f"wrote more than its {limits.max_output_bytes}-byte output cap; raise "
        "Limits.max_output_bytes or send it smaller input",
    )
