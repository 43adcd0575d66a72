"""Applying faults: corruption and removal at rest (files and objects), and what runs live in a
step."""

from __future__ import annotations

import random
import re
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from ccat_dagster_tests.faults.world import World

#: directories of the pipeline's own temporaries (partial writes): never a corruption target
TEMPORARY_PARTS = (".ccat-partial",)


def flip_byte(data: bytes, rng: random.Random) -> bytes:
    changed = bytearray(data)
    changed[rng.randrange(len(changed))] ^= 0xFF
    return bytes(changed)


def _files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.stat().st_size and not set(p.parts) & set(TEMPORARY_PARTS)
    )


def _flip_file(path: Path, rng: random.Random) -> None:
    path.write_bytes(flip_byte(path.read_bytes(), rng))


def _remove_file(path: Path, _rng: random.Random) -> None:
    path.unlink()


def _flip_object(admin, bucket: str, key: str, rng: random.Random) -> None:
    body = admin.get_object(Bucket=bucket, Key=key)["Body"].read()
    admin.put_object(Bucket=bucket, Key=key, Body=flip_byte(body, rng))


def _remove_object(admin, bucket: str, key: str, _rng: random.Random) -> None:
    admin.delete_object(Bucket=bucket, Key=key)


def _spoil_file(
    paths: list[Path], rng: random.Random, spoil: Callable[[Path, random.Random], None]
) -> str | None:
    """``spoil`` one of ``paths`` (chosen by ``rng``); its name, or None without one."""
    if not paths:
        return None
    target = rng.choice(paths)
    try:
        spoil(target, rng)
    except OSError:
        return None
    return str(target)


def _spoil_object(world: World, rng: random.Random, spoil) -> str | None:
    """``spoil`` one object of the S3 archive (chosen by ``rng``); its URL, or None without one."""
    admin = world.infra.s3.admin
    keys = sorted(
        o["Key"]
        for page in admin.get_paginator("list_objects_v2").paginate(Bucket=world.bucket)
        for o in page.get("Contents", [])
        if o["Size"]
    )
    if not keys:
        return None
    key = rng.choice(keys)
    spoil(admin, world.bucket, key, rng)
    return f"s3://{world.bucket}/{key}"


def _buffer_files(world: World, rng: random.Random) -> list[Path]:
    """The files of one of the three buffers that has any (a seeded choice): the telescope's
    holds most files, and the archive sites' buffers would otherwise hardly ever be hit."""
    dirs = world.disk_dirs()
    filled = [
        files
        for name in ("ccat/telescope_buffer", "cologne/buffer", "us/buffer")
        if (files := _files(dirs[name]))
    ]
    return rng.choice(filled) if filled else []


def _lta_disk_files(world: World) -> list[Path]:
    return _files(world.disk_dirs()["us/lta"])


def flip_buffer(world: World, rng: random.Random) -> str | None:
    return _spoil_file(_buffer_files(world, rng), rng, _flip_file)


def flip_lta_disk(world: World, rng: random.Random) -> str | None:
    return _spoil_file(_lta_disk_files(world), rng, _flip_file)


def flip_lta_s3(world: World, rng: random.Random) -> str | None:
    return _spoil_object(world, rng, _flip_object)


def flip_lta(world: World, rng: random.Random) -> str | None:
    """One archive copy, on disk or in S3, whichever has one (seeded choice)."""
    order = [flip_lta_disk, flip_lta_s3]
    rng.shuffle(order)
    for flip in order:
        if done := flip(world, rng):
            return done
    return None


def remove_buffer(world: World, rng: random.Random) -> str | None:
    return _spoil_file(_buffer_files(world, rng), rng, _remove_file)


def remove_lta_disk(world: World, rng: random.Random) -> str | None:
    return _spoil_file(_lta_disk_files(world), rng, _remove_file)


def remove_lta_s3(world: World, rng: random.Random) -> str | None:
    return _spoil_object(world, rng, _remove_object)


#: faults at rest, applied once their target exists: kind -> what applies it (the target's name,
#: or None while there is none)
AT_REST: dict[str, Callable[[World, random.Random], str | None]] = {
    "flip_buffer": flip_buffer,
    "flip_lta_disk": flip_lta_disk,
    "flip_lta_s3": flip_lta_s3,
    "remove_buffer": remove_buffer,
    "remove_lta_disk": remove_lta_disk,
    "remove_lta_s3": remove_lta_s3,
}


def corrupt_source(world: World, rng: random.Random) -> tuple[str, str] | None:
    """Flip a byte of a SOURCE file before anything was packaged: (path, original sha256)."""
    import hashlib

    paths = _files(world.source_dir())
    if not paths:
        return None
    target = rng.choice(paths)
    data = target.read_bytes()
    target.write_bytes(flip_byte(data, rng))
    return str(target), hashlib.sha256(data).hexdigest()


def started_jobs(dagster_home: Path) -> list[str]:
    """Job names of the runs STARTED in the instance's run storage (SQLite), read-only."""
    path = dagster_home / "history" / "runs.db"
    if not path.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.2)) as conn:
            rows = conn.execute("SELECT pipeline_name FROM runs WHERE status = 'STARTED'")
            return [r[0] for r in rows]
    except sqlite3.Error:
        return []


def matching_job(dagster_home: Path, pattern: str) -> str | None:
    return next((j for j in started_jobs(dagster_home) if re.search(pattern, j)), None)
