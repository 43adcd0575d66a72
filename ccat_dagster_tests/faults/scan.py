"""Bytes of raw data lost, judged from the storage alone (not from the catalogue).

Every file and object of every location is read: a raw file counts as present when a file, or a
member of a tar (package tars inside bundle tars included), anywhere has exactly its original
bytes (the harness recorded their sha256 when the instrument wrote them). Partial temporaries and
unreadable tars are skipped: only complete, matching bytes count.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from ccat_dagster_tests.faults.world import Original, World


def _digests(data: bytes, depth: int = 0) -> Iterator[str]:
    yield hashlib.sha256(data).hexdigest()
    if depth > 2 or len(data) < 512:
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for member in tar:
                if member.isfile():
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        yield from _digests(extracted.read(), depth + 1)
    except (tarfile.TarError, EOFError, OSError, ValueError):
        return


def _stored_blobs(world: World) -> Iterator[tuple[str, bytes]]:
    for location, directory in world.disk_dirs().items():
        if not directory.is_dir():
            continue
        for path in directory.rglob("*"):
            if path.is_file():
                try:
                    yield location, path.read_bytes()
                except OSError:
                    continue
    admin = world.infra.s3.admin
    for page in admin.get_paginator("list_objects_v2").paginate(Bucket=world.bucket):
        for obj in page.get("Contents", []):
            body = admin.get_object(Bucket=world.bucket, Key=obj["Key"])["Body"].read()
            yield "cologne/lta", body


@dataclass
class LossReport:
    present: dict[str, set[str]] = field(default_factory=dict)  # sha -> locations holding it
    lost: list[Original] = field(default_factory=list)

    @property
    def bytes_lost(self) -> int:
        return sum(o.size for o in self.lost)


def scan_for_loss(world: World, *, excused: set[str] = frozenset()) -> LossReport:
    """Which original raw files exist nowhere with their original bytes; ``excused`` (sha256s of
    files no system could keep) are left out of ``lost``."""
    wanted = set(world.originals)
    report = LossReport()
    for location, blob in _stored_blobs(world):
        for digest in _digests(blob):
            if digest in wanted:
                report.present.setdefault(digest, set()).add(location)
    report.lost = [world.originals[d] for d in sorted(wanted - set(report.present) - set(excused))]
    return report
