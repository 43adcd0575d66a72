"""Peak memory of moving one 5 GiB package with ``copy_object``: disk->disk, disk->s3 (a moto
server process) and disk->ssh (a real sshd), each in its own child process so ``ru_maxrss`` is
the peak of that copy alone. Baselines in the same run, also in child processes: ``shutil.copyfile``
(disk), boto3 ``upload_file`` (s3) and paramiko ``SFTPClient.put`` (ssh). Prints peak RSS and
``ratio = ours / baseline`` (peak RSS); the target is an absolute peak < 300 MiB for ours.

    .venv/bin/python bench/bench_memory.py [--size-mib 5120] [--only disk,s3,ssh]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIB = 1024 * 1024
TARGET_MIB = 300


def make_file(path: Path, size: int) -> None:
    block = os.urandom(16 * MIB)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            fh.write(block[: min(left, len(block))])
            left -= len(block)


# --------------------------------------------------------------------------- child side


def child(spec: dict) -> None:
    """Run one copy; print its peak RSS and throughput as JSON."""
    mode, src = spec["mode"], Path(spec["src"])
    size = src.stat().st_size
    started = time.perf_counter()
    if mode == "ours":
        from ccat_dagster.storage.copy import copy_object
        from ccat_dagster.storage.local import LocalDiskStorage

        source = LocalDiskStorage("bench/source", src.parent)
        dst = _our_destination(spec)
        copy_object(source, src.name, dst, "arrived/package.tar", expected_checksum=spec["sha256"])
        dst.close()
    else:
        _baseline_copy(spec, src)
    seconds = time.perf_counter() - started
    print(json.dumps({"peak_mib": peak_rss_mib(), "mib_s": size / MIB / seconds}))


def peak_rss_mib() -> float:
    """VmHWM: the peak RSS of this process image (``ru_maxrss`` would also count the parent's
    memory at fork, which Linux carries over the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _our_destination(spec: dict):
    kind = spec["kind"]
    if kind == "disk":
        from ccat_dagster.storage.local import LocalDiskStorage

        return LocalDiskStorage("bench/dest", spec["dst"])
    if kind == "s3":
        from ccat_dagster.storage.s3 import S3Storage

        return S3Storage("bench/lta", "bench", "ours", endpoint_url=spec["endpoint"])
    from ccat_dagster.storage.ssh import SSHStorage

    return SSHStorage(
        "bench/remote_buffer",
        spec["host"],
        spec["port"],
        spec["user"],
        spec["dst"],
        key_filename=spec["key_file"],
        known_hosts=spec["known_hosts"],
    )


def _baseline_copy(spec: dict, src: Path) -> None:
    kind = spec["kind"]
    if kind == "disk":
        import shutil

        Path(spec["dst"]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, Path(spec["dst"]) / "baseline.tar")
    elif kind == "s3":
        import boto3

        boto3.client("s3", endpoint_url=spec["endpoint"]).upload_file(
            str(src), "bench", "baseline/package.tar"
        )
    else:
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(spec["known_hosts"])
        client.connect(
            spec["host"],
            port=spec["port"],
            username=spec["user"],
            key_filename=spec["key_file"],
            allow_agent=False,
            look_for_keys=False,
        )
        sftp = client.open_sftp()
        sftp.put(str(src), f"{spec['dst']}/baseline.tar")
        client.close()


# --------------------------------------------------------------------------- parent side


def run_child(spec: dict) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{spec['kind']}/{spec['mode']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=5120)
    parser.add_argument("--only", default="disk,s3,ssh")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    from bench_s3 import FAKE_ENV, moto_server_process

    from ccat_ops_db.checksum import checksum_file

    os.environ.update(FAKE_ENV)
    kinds = args.only.split(",")
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-", dir="/tmp") as tmp:
        src = Path(tmp) / "source" / "package.tar"
        src.parent.mkdir()
        make_file(src, args.size_mib * MIB)
        sha256, _ = checksum_file(src)
        base = {"src": str(src), "sha256": sha256}
        for kind in kinds:
            results[kind] = {}
            for mode in ("baseline", "ours"):
                spec = {**base, "kind": kind, "mode": mode}
                if kind == "disk":
                    spec["dst"] = str(Path(tmp) / f"dest-{mode}")
                    results[kind][mode] = run_child(spec)
                    _remove_tree(Path(spec["dst"]))
                elif kind == "s3":
                    with moto_server_process() as endpoint:  # fresh: the server keeps 5 GiB
                        import boto3

                        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
                        results[kind][mode] = run_child({**spec, "endpoint": endpoint})
                else:
                    results[kind][mode] = _run_ssh(spec, Path(tmp))
                r = results[kind][mode]
                print(
                    f"  disk->{kind:4s} {mode:8s} peak RSS {r['peak_mib']:6.1f} MiB  "
                    f"{r['mib_s']:6.1f} MiB/s",
                    flush=True,
                )

    print(f"copy one {args.size_mib} MiB package, peak RSS of the copying process:")
    worst = 0.0
    for kind, r in results.items():
        ours, baseline = r["ours"]["peak_mib"], r["baseline"]["peak_mib"]
        worst = max(worst, ours)
        print(
            f"  disk->{kind:4s} ours {ours:6.1f} MiB  baseline {baseline:6.1f} MiB  "
            f"ratio = ours / baseline = {ours / baseline:.2f}"
        )
    verdict = "OK" if worst < TARGET_MIB else "OVER TARGET"
    print(f"worst peak RSS (ours) = {worst:.1f} MiB (target < {TARGET_MIB} MiB): {verdict}")


def _run_ssh(spec: dict, tmp: Path) -> dict:
    from ccat_dagster_tests.fixtures.sshd import running_sshd

    with running_sshd(tmp / f"sshd-{spec['mode']}") as server:
        dst = server.root / "dest"
        dst.mkdir()
        result = run_child(
            {
                **spec,
                "dst": str(dst),
                "host": server.host,
                "port": server.port,
                "user": server.user,
                "key_file": server.key_file,
                "known_hosts": server.known_hosts,
            }
        )
        _remove_tree(dst)
        return result


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
