"""Packaging throughput: write_package (per-file + whole-tar sha256) against `tar cf - | sha256sum`.

Generates ~2 GB of instrument-like files (1 MB to 200 MB) under /tmp (reused when present),
warms the page cache, then times the baseline pipe and our writer (to a sink that discards bytes,
like the pipe) in alternating repetitions and prints the best of each and ratio = ours/baseline.
Also reports verify_package on the written tar against `sha256sum` of the same tar (info only).
Run: .venv/bin/python bench/bench_packaging.py [--gb 2] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import time
from pathlib import Path
from typing import BinaryIO, cast

from ccat_dagster.packaging import RAW_DATA_PACKAGE, PackageMember, verify_package, write_package
from ccat_ops_db.checksum import checksum_file

DATA_DIR = Path("/tmp/ccat_bench_packaging/data")
TAR_PATH = Path("/tmp/ccat_bench_packaging/package.tar")
MB = 1_000_000


class DiscardSink:
    """A writable binary stream that drops its bytes, as the pipe to sha256sum consumes them."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def file_sizes(total_bytes: int) -> list[int]:
    rng = random.Random(42)
    sizes: list[int] = []
    while sum(sizes) < total_bytes:
        # Log-uniform between 1 MB and 200 MB: many small files, a few large ones.
        sizes.append(int(MB * 200 ** rng.random()))
    return sizes


def generate(total_bytes: int) -> list[Path]:
    sizes = file_sizes(total_bytes)
    marker = DATA_DIR / ".complete"
    wanted = ",".join(map(str, sizes))
    paths = [DATA_DIR / f"obs_{i // 10:03d}" / f"module_{i:04d}.dat" for i in range(len(sizes))]
    if marker.exists() and marker.read_text() == wanted:
        return paths
    print(f"generating {sum(sizes) / 1e9:.2f} GB in {len(sizes)} files under {DATA_DIR} ...")
    block = os.urandom(4 * 1024 * 1024)
    for i, (path, size) in enumerate(zip(paths, sizes, strict=True)):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(i.to_bytes(8, "big"))  # every file distinct
            left = size - 8
            while left > 0:
                fh.write(block[: min(left, len(block))])
                left -= len(block)
    marker.write_text(wanted)
    return paths


def opener(path: Path):
    # write_package enters the returned file object in a ``with`` block.
    return lambda: open(path, "rb")


def warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while fh.read(16 * 1024 * 1024):
                pass


def run_baseline(hasher: str = "sha256sum") -> float:
    t0 = time.perf_counter()
    subprocess.run(
        f"tar cf - -C {DATA_DIR} . | {hasher} > /dev/null",
        shell=True,
        check=True,
        executable="/bin/bash",
    )
    return time.perf_counter() - t0


def run_ours(members: list[PackageMember], out: BinaryIO | None = None) -> float:
    t0 = time.perf_counter()
    write_package(
        out or cast(BinaryIO, DiscardSink()), members, kind=RAW_DATA_PACKAGE, name="bench"
    )
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    paths = generate(int(args.gb * 1e9))
    total = sum(p.stat().st_size for p in paths)
    # The "filed" checksums the ops DB would hold (computed once, not timed).
    members = []
    for p in paths:
        checksum, size = checksum_file(p)
        members.append(PackageMember(str(p.relative_to(DATA_DIR)), size, checksum, opener(p)))
    warm(paths)
    print(f"{len(paths)} files, {total / 1e9:.2f} GB, {os.cpu_count()} cores")

    base, ours, ossl = [], [], []
    for _ in range(args.reps):
        base.append(run_baseline())
        ours.append(run_ours(members))
        # coreutils sha256sum has no SHA-NI; openssl does: a stricter reference (info only).
        ossl.append(run_baseline("openssl dgst -sha256"))
    b, o, s = min(base), min(ours), min(ossl)
    print(f"baseline tar cf - | sha256sum : {total / b / 1e9:.2f} GB/s (best of {args.reps})")
    print(f"tar cf - | openssl dgst       : {total / s / 1e9:.2f} GB/s (best of {args.reps})")
    print(f"ours write_package (2x sha256): {total / o / 1e9:.2f} GB/s (best of {args.reps})")
    print(f"ratio = ours / baseline = {b / o:.2f} (throughput; target >= 0.9)")
    print(f"ours / (tar | openssl dgst)   = {s / o:.2f} (info)")

    # Verification speed at the receiving side (info only): stream-verify the written tar.
    with open(TAR_PATH, "wb") as fh:
        write_package(fh, members, kind=RAW_DATA_PACKAGE, name="bench")
    warm([TAR_PATH])
    tar_size = TAR_PATH.stat().st_size
    t0 = time.perf_counter()
    subprocess.run(["sha256sum", str(TAR_PATH)], check=True, stdout=subprocess.DEVNULL)
    t_sum = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(TAR_PATH, "rb") as fh:
        verify_package(fh, name="bench")
    t_verify = time.perf_counter() - t0
    print(f"sha256sum package.tar         : {tar_size / t_sum / 1e9:.2f} GB/s")
    print(f"verify_package package.tar    : {tar_size / t_verify / 1e9:.2f} GB/s")
    TAR_PATH.unlink()


if __name__ == "__main__":
    main()
