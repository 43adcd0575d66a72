"""Helpers for packaging tests: source trees, members, and hand-crafted (malicious) tars."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from ccat_dagster.packaging import ExpectedMember, Manifest, ManifestEntry, PackageMember
from ccat_ops_db.checksum import checksum_chunks, checksum_file

# Relative path -> content of a small RawDataPackage: subdirectories, an empty file, spaces and
# non-ASCII characters, and a name longer than ustar's 100 characters.
SOURCE_FILES = {
    "obs_0001/primecam/scan_000.dat": os.urandom(300_000),
    "obs_0001/primecam/scan_001.dat": b"x" * 5000,
    "obs_0001/primecam/empty.dat": b"",
    "obs_0001/hk/house keeping ü ñ.csv": b"t,temp\n0,4.2\n",
    "obs_0001/" + "long_" * 30 + ".fits": b"long name",
    "README": b"top level file",
}


def make_source(root: Path, files: dict[str, bytes] = SOURCE_FILES) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def opener(path: Path):
    return lambda: open(path, "rb")


def members_for(root: Path) -> list[PackageMember]:
    """PackageMembers of every file under ``root`` with their filed size and checksum."""
    members = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        checksum, size = checksum_file(path)
        members.append(
            PackageMember(path.relative_to(root).as_posix(), size, checksum, opener(path))
        )
    return members


def expected_for(members: list[PackageMember]) -> dict[str, ExpectedMember]:
    return {m.arcname: ExpectedMember(m.size, m.checksum) for m in members}


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) -> content; directories as ``name/``."""
    out: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel + "/" if path.is_dir() and not path.is_symlink() else rel] = (
            b"" if path.is_dir() or path.is_symlink() else path.read_bytes()
        )
    return out


def entry(path: str, data: bytes) -> ManifestEntry:
    checksum, size = checksum_chunks([data])
    return ManifestEntry(path, size, checksum)


def manifest_bytes(entries: list[ManifestEntry], name: str = "pkg") -> bytes:
    return Manifest(
        kind="raw_data_package", name=name, algorithm="sha256", entries=tuple(entries)
    ).to_json_bytes()


def raw_manifest(doc: object) -> bytes:
    return json.dumps(doc).encode()


def craft_tar(
    members: list[tuple[tarfile.TarInfo, bytes | None]], *, manifest: bytes | None
) -> bytes:
    """A tar written with tarfile directly, with ``manifest`` (if given) as first member."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        if manifest is not None:
            info = tarfile.TarInfo("CCAT_MANIFEST.json")
            info.size = len(manifest)
            tf.addfile(info, io.BytesIO(manifest))
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, type_: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    return info, None
