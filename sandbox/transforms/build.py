"""Build the C transforms in ``src/`` into WASI modules in ``wasm/``.

Each module is a WASI command (``_start``) that also exports the buffer ABI
(``agentrt_alloc``, ``agentrt_free``, ``agentrt_run``, ``agentrt_output_ptr``,
``agentrt_output_len``; see README.md). The exports come from ``export_name`` attributes in
``src/transform.h``, so no extra linker flags are needed.

Usage::

    python sandbox/transforms/build.py           # rebuild wasm/*.wasm and wasm/SHA256SUMS
    python sandbox/transforms/build.py --check   # rebuild into a temp dir, compare bytes

The compiler is the ``ziglang`` Python package (``python -m ziglang cc``), so the only build
requirement is ``pip install ziglang``. The output is byte-for-byte reproducible for a given
ziglang version; ``--check`` exits 1 if a rebuild differs from the committed files.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
WASM = HERE / "wasm"
SUMS = "SHA256SUMS"

CFLAGS = [
    "--target=wasm32-wasi",
    "-O2",
    "-s",
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-fno-ident",
    # Sources are passed as relative paths from HERE; map anything absolute to "." as well.
    f"-ffile-prefix-map={HERE}=.",
    f"-fdebug-prefix-map={HERE}=.",
]


def zig_version() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "ziglang", "version"], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def sources() -> list[Path]:
    return sorted(SRC.glob("*.c"))


def build(out_dir: Path) -> dict[str, str]:
    """Compile every src/*.c into out_dir/<name>.wasm; return {file name: sha256}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    digests: dict[str, str] = {}
    for src in sources():
        target = out_dir / f"{src.stem}.wasm"
        cmd = [sys.executable, "-m", "ziglang", "cc", *CFLAGS]
        cmd += [str(src.relative_to(HERE)), "-o", str(target)]
        subprocess.run(cmd, check=True, cwd=HERE)
        digests[target.name] = hashlib.sha256(target.read_bytes()).hexdigest()
    return digests


def sums_text(digests: dict[str, str]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(digests.items()))


def report(out_dir: Path, digests: dict[str, str]) -> None:
    for name, digest in sorted(digests.items()):
        size = (out_dir / name).stat().st_size
        print(f"{digest}  {name}  ({size} bytes)")


def check() -> int:
    with tempfile.TemporaryDirectory(prefix="agentrt-transforms-") as tmp:
        fresh = build(Path(tmp))
        report(Path(tmp), fresh)
        failed = False
        for name, digest in sorted(fresh.items()):
            committed = WASM / name
            if not committed.is_file():
                print(f"MISSING  {committed.relative_to(HERE)}", file=sys.stderr)
                failed = True
            elif committed.read_bytes() != (Path(tmp) / name).read_bytes():
                print(f"DIFFERS  {committed.relative_to(HERE)} (rebuilt {digest})", file=sys.stderr)
                failed = True
        stale = {p.name for p in WASM.glob("*.wasm")} - set(fresh)
        for name in sorted(stale):
            print(f"STALE    wasm/{name} has no source in src/", file=sys.stderr)
            failed = True
        sums = WASM / SUMS
        if not sums.is_file() or sums.read_text() != sums_text(fresh):
            print(f"DIFFERS  wasm/{SUMS}", file=sys.stderr)
            failed = True
    if failed:
        print("check failed: rebuild with build.py and commit wasm/", file=sys.stderr)
        return 1
    print("check ok: committed wasm matches a fresh build")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="rebuild into a temp dir and compare with wasm/"
    )
    args = parser.parse_args(argv)
    print(f"zig {zig_version()}")
    if args.check:
        return check()
    digests = build(WASM)
    (WASM / SUMS).write_text(sums_text(digests))
    report(WASM, digests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
