"""SSH transfer throughput over loopback against a temporary sshd: SSHStorage pull (open_read to a
local file) and push (write_stream from a local file, fsync and rename included) versus OpenSSH
``scp -c aes128-gcm@openssh.com`` (SFTP mode, and legacy ``-O`` mode) in the same run, interleaved.
Prints MB/s (best of the repetitions) and ``ratio = ours / baseline`` against the faster scp mode.

    .venv/bin/python bench/bench_ssh.py [--size-mib 1024] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccat_dagster_tests.fixtures.sshd import SshdServer, running_sshd  # noqa: E402
from ccat_ops_db.checksum import checksum_file  # noqa: E402

SCRATCH = Path("/tmp/ccat-bench-ssh")
CIPHER = "aes128-gcm@openssh.com"
CHUNK = 4 * 1024 * 1024


def make_source(size: int) -> Path:
    path = SCRATCH / f"source-{size}.bin"
    if not path.exists() or path.stat().st_size != size:
        with open(path, "wb") as out:
            left = size
            while left:
                n = min(left, 16 * 1024 * 1024)
                out.write(os.urandom(n))
                left -= n
    return path


def scp(server: SshdServer, legacy: bool, src: str, dst: str) -> None:
    command = ["scp", "-q", "-c", CIPHER, "-P", str(server.port), "-i", server.key_file]
    command += ["-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "BatchMode=yes"]
    command += ["-o", "StrictHostKeyChecking=yes"] + (["-O"] if legacy else []) + [src, dst]
    subprocess.run(command, check=True)


def timed(fn) -> tuple[float, float]:  # noqa: ANN001
    """Wall seconds and client CPU seconds (this process plus scp/ssh children)."""

    def cpu() -> float:
        me, kids = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    start, cpu_start = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - start, cpu() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    SCRATCH.mkdir(parents=True, exist_ok=True)
    source = make_source(size)
    pulled = SCRATCH / "pulled.bin"

    with running_sshd() as server:
        remote = server.root / "bench"
        remote.mkdir(parents=True, exist_ok=True)
        storage = server.storage(remote, name="bench/ssh")
        storage.stat("warm-up")  # connect outside the timings, as a pooled connection would be
        remote_url = f"{server.user}@{server.host}:{remote}"

        def ours_push() -> None:
            with open(source, "rb") as stream:
                storage.write_stream("pushed.bin", stream, size_hint=size)

        def ours_pull() -> None:
            with storage.open_read("pushed.bin") as stream, open(pulled, "wb") as out:
                while chunk := stream.read(CHUNK):
                    out.write(chunk)

        tests = {
            "push scp": lambda: scp(server, False, str(source), f"{remote_url}/scp.bin"),
            "push scp -O": lambda: scp(server, True, str(source), f"{remote_url}/scp.bin"),
            "push ours": ours_push,
            "pull scp": lambda: scp(server, False, f"{remote_url}/scp.bin", str(pulled)),
            "pull scp -O": lambda: scp(server, True, f"{remote_url}/scp.bin", str(pulled)),
            "pull ours": ours_pull,
        }
        best: dict[str, float] = {}
        cpu_per_gib: dict[str, float] = {}
        for rep in range(args.reps):
            for name, fn in tests.items():
                wall, cpu = timed(fn)
                mbps = size / wall / 1e6
                best[name] = max(best.get(name, 0.0), mbps)
                cpu_per_gib[name] = min(cpu_per_gib.get(name, 1e9), cpu * 2**30 / size)
                print(
                    f"rep {rep}  {name:<12} {mbps:7.0f} MB/s  client CPU "
                    f"{cpu * 2**30 / size:5.2f} s/GiB",
                    flush=True,
                )

        # correctness of our transfers, outside the timings
        expected = checksum_file(source)
        assert storage.checksum("pushed.bin") == expected, "pushed bytes differ"
        assert checksum_file(pulled) == expected, "pulled bytes differ"
        cipher = storage.connection.transport().remote_cipher
        storage.close()

    print(f"\n{args.size_mib} MiB over loopback, best of {args.reps}; paramiko cipher {cipher}")
    for direction in ("pull", "push"):
        baseline = max(best[f"{direction} scp"], best[f"{direction} scp -O"])
        ours = best[f"{direction} ours"]
        print(
            f"{direction}: ours {ours:.0f} MB/s, scp {best[f'{direction} scp']:.0f} MB/s, "
            f"scp -O {best[f'{direction} scp -O']:.0f} MB/s; ratio = ours / baseline = "
            f"{ours / baseline:.2f}; client CPU s/GiB ours {cpu_per_gib[f'{direction} ours']:.2f}"
            f", scp {cpu_per_gib[f'{direction} scp']:.2f}"
        )
    pulled.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
