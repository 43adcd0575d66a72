"""Applying faults: corruption at rest (files and objects), and what runs live in a step."""

from __future__ import annotations

import random
import re
import sqlite3
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


def flip_file(paths: list[Path], rng: random.Random) -> str | None:
    """Flip one byte of one of ``paths`` (chosen by ``rng``); its name, or None without one."""
    if not paths:
        return None
    target = rng.choice(paths)
    try:
        target.write_bytes(flip_byte(target.read_bytes(), rng))
    except OSError:
        return None
    return str(target)


def flip_buffer(world: World, rng: random.Random) -> str | None:
    dirs = world.disk_dirs()
    paths = [
        p
        for name in ("ccat/telescope_buffer", "cologne/buffer", "us/buffer")
        for p in _files(dirs[name])
    ]
    return flip_file(paths, rng)


def flip_lta_disk(world: World, rng: random.Random) -> str | None:
    return flip_file(_files(world.disk_dirs()["us/lta"]), rng)


def flip_lta_s3(world: World, rng: random.Random) -> str | None:
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
    body = admin.get_object(Bucket=world.bucket, Key=key)["Body"].read()
    admin.put_object(Bucket=world.bucket, Key=key, Body=flip_byte(body, rng))
    return f"s3://{world.bucket}/{key}"


def flip_lta(world: World, rng: random.Random) -> str | None:
    """One archive copy, on disk or in S3, whichever has one (seeded choice)."""
    order = [flip_lta_disk, flip_lta_s3]
    rng.shuffle(order)
    for flip in order:
        if done := flip(world, rng):
            return done
    return None


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
