"""Upload 1 GiB to S3 on a moto server (a fresh server process per upload: it does not share the
client's GIL and starts empty): our sha256-verified, parallel ``S3Storage.write_stream`` from a
local file versus boto3 ``upload_file`` with its default TransferConfig, alternating in one run.
Prints throughput, client and server CPU per GiB, and ``ratio = ours / baseline`` (throughput;
target >= 1.0).

    .venv/bin/python bench/bench_s3.py [--size-mib 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3

from ccat_dagster.storage.s3 import S3Storage
from ccat_ops_db.checksum import checksum_file

MIB = 1024 * 1024
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server_process() -> Iterator[str]:
    """A moto S3 server in a child process; yields its endpoint URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def make_file(path: Path, size: int) -> None:
    block = os.urandom(16 * MIB)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            fh.write(block[: min(left, len(block))])
            left -= len(block)


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def upload_once(kind: str, path: Path, digest: str, size: int) -> dict[str, float]:
    """One upload on a fresh moto server (a server that already holds data slows down)."""
    children_before = cpu_seconds(resource.RUSAGE_CHILDREN)
    with moto_server_process() as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket="bench")
        storage = S3Storage("bench/lta", "bench", "ours", endpoint_url=url, region="us-east-1")
        cpu_before, started = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
        if kind == "baseline":
            client.upload_file(str(path), "bench", "baseline/package.tar")
        else:
            with open(path, "rb") as fh:
                storage.write_stream("package.tar", fh, expected_checksum=digest, size_hint=size)
        seconds = time.perf_counter() - started
        client_cpu = cpu_seconds(resource.RUSAGE_SELF) - cpu_before
        storage.close()
    server_cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - children_before
    return {"mib_s": size / MIB / seconds, "client_cpu": client_cpu, "server_cpu": server_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(FAKE_ENV)
    size = args.size_mib * MIB
    gib = size / (1024 * MIB)

    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        path = Path(tmp) / "package.tar"
        make_file(path, size)
        digest, _ = checksum_file(path)  # recorded in the ops DB before any transfer
        runs: dict[str, list[dict[str, float]]] = {"baseline": [], "ours": []}
        for _ in range(args.rounds):
            for kind in runs:
                runs[kind].append(upload_once(kind, path, digest, size))
                r = runs[kind][-1]
                print(
                    f"  {kind:8s} {r['mib_s']:7.1f} MiB/s  client CPU {r['client_cpu'] / gib:5.2f} "
                    f"s/GiB  server CPU {r['server_cpu'] / gib:5.2f} s/GiB",
                    flush=True,
                )

    med = {
        kind: {m: statistics.median(r[m] for r in rs) for m in rs[0]} for kind, rs in runs.items()
    }
    print(f"upload {args.size_mib} MiB to a moto S3 server process (median of {args.rounds}):")
    for kind, label in (
        ("baseline", "boto3 upload_file, default TransferConfig"),
        ("ours", "S3Storage.write_stream, sha256-verified"),
    ):
        m = med[kind]
        print(
            f"  {label:44s} {m['mib_s']:7.1f} MiB/s  client CPU {m['client_cpu'] / gib:.2f} s/GiB"
            f"  server CPU {m['server_cpu'] / gib:.2f} s/GiB"
        )
    ratio = med["ours"]["mib_s"] / med["baseline"]["mib_s"]
    print(f"ratio = ours / baseline = {ratio:.2f} (throughput; target >= 1.0)")
    # With other work on the same 2 cores wall-clock swings by +-30 %; the CPU each upload costs
    # (client + server) does not, and bounds the throughput of a CPU-saturated host.
    cpu = {k: m["client_cpu"] + m["server_cpu"] for k, m in med.items()}
    print(
        f"cpu ratio = baseline CPU / ours CPU = {cpu['baseline'] / cpu['ours']:.2f} "
        f"({cpu['baseline'] / gib:.2f} vs {cpu['ours'] / gib:.2f} s/GiB, client + server)"
    )


if __name__ == "__main__":
    main()
