"""The package manifest: the first member of every RawDataPackage and DataTransferPackage tar.

It lists each member's relative path, size, checksum algorithm and checksum (the values the ops
DB recorded at filing), plus format version, kind, package name and the package's checksum
algorithm, so an unpacker can verify every member while streaming. This module also holds the
one rule for which member paths are acceptable (``check_member_path``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ccat_dagster.packaging.errors import PackageVerificationError
from ccat_ops_db.checksum import DEFAULT_ALGORITHM, new_hasher

MANIFEST_NAME = "CCAT_MANIFEST.json"
FORMAT_VERSION = 1
RAW_DATA_PACKAGE = "raw_data_package"
DATA_TRANSFER_PACKAGE = "data_transfer_package"
KINDS = (RAW_DATA_PACKAGE, DATA_TRANSFER_PACKAGE)
# A manifest is JSON held in memory; this bounds what a crafted tar can make us allocate
# (100k members with long paths stay far below it).
MAX_MANIFEST_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ManifestEntry:
    """One member of a package: its path inside the tar and its filed size and checksum."""

    path: str
    size: int
    checksum: str
    algorithm: str = DEFAULT_ALGORITHM


@dataclass(frozen=True)
class ExpectedMember:
    """What the ops DB holds for one member (RawDataFile or RawDataPackage)."""

    size: int
    checksum: str
    algorithm: str = DEFAULT_ALGORITHM


@dataclass(frozen=True)
class Manifest:
    kind: str
    name: str
    algorithm: str
    entries: tuple[ManifestEntry, ...]
    format_version: int = FORMAT_VERSION

    def to_json_bytes(self) -> bytes:
        doc = {
            "format_version": self.format_version,
            "kind": self.kind,
            "name": self.name,
            "algorithm": self.algorithm,
            "members": [
                {"path": e.path, "size": e.size, "algorithm": e.algorithm, "checksum": e.checksum}
                for e in self.entries
            ],
        }
        return json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"


def check_member_path(path: object, *, package: str | None = None) -> str:
    """Return ``path`` if it is a safe relative member path, else raise.

    Safe: a non-empty '/'-separated relative path with no empty, '.' or '..' component, no NUL,
    valid UTF-8, and not the manifest's own name.
    """

    def reject(why: str) -> PackageVerificationError:
        return PackageVerificationError(
            f"unsafe member path: {why}; package members must be relative paths inside the "
            "package (rename the file or fix its relative_path in the ops DB)",
            package=package,
            member=str(path),
        )

    if not isinstance(path, str) or not path:
        raise reject("empty or not a string")
    if "\0" in path:
        raise reject("contains a NUL byte")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise reject("not valid UTF-8") from None
    if path.startswith("/"):
        raise reject("absolute path")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise reject("empty, '.' or '..' component")
    if path == MANIFEST_NAME:
        raise reject(f"{MANIFEST_NAME} is reserved for the package manifest")
    return path


def check_entries(entries: Iterable[ManifestEntry], *, package: str | None = None) -> None:
    """Every path safe and unique, and no path is both a file and a parent directory."""
    paths: set[str] = set()
    parents: set[str] = set()
    for e in entries:
        check_member_path(e.path, package=package)
        if e.path in paths:
            raise PackageVerificationError(
                "listed twice; each member may appear once", package=package, member=e.path
            )
        paths.add(e.path)
        parts = e.path.split("/")
        parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if not isinstance(e.size, int) or isinstance(e.size, bool) or e.size < 0:
            raise PackageVerificationError(
                f"invalid size {e.size!r}", package=package, member=e.path
            )
        _check_checksum(e.checksum, e.algorithm, package=package, member=e.path)
    clash = paths & parents
    if clash:
        member = sorted(clash)[0]
        raise PackageVerificationError(
            "is both a file and the parent directory of other members",
            package=package,
            member=member,
        )


def _check_checksum(checksum: object, algorithm: object, *, package: str | None, member: str):
    if not isinstance(algorithm, str):
        raise PackageVerificationError(
            f"invalid algorithm {algorithm!r}", package=package, member=member
        )
    try:
        digest_size = new_hasher(algorithm).digest_size
    except ValueError as exc:
        raise PackageVerificationError(str(exc), package=package, member=member) from None
    if (
        not isinstance(checksum, str)
        or not all(c in "0123456789abcdef" for c in checksum)
        or len(checksum) != 2 * digest_size
    ):
        raise PackageVerificationError(
            f"invalid {algorithm} checksum {checksum!r} (expected {2 * digest_size} lowercase "
            "hex digits)",
            package=package,
            member=member,
        )


def parse_manifest(data: bytes, *, package: str | None = None) -> Manifest:
    """Decode and validate the manifest JSON; a PackageVerificationError names what is wrong."""

    def invalid(why: str) -> PackageVerificationError:
        return PackageVerificationError(
            f"invalid {MANIFEST_NAME}: {why}; the package was not written by ccat-dagster or is "
            "corrupt: re-create it from its source copy",
            package=package,
        )

    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"not UTF-8 JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise invalid("not a JSON object")
    if doc.get("format_version") != FORMAT_VERSION:
        raise invalid(f"unsupported format_version {doc.get('format_version')!r}")
    kind, name, algorithm = doc.get("kind"), doc.get("name"), doc.get("algorithm")
    if kind not in KINDS:
        raise invalid(f"unknown kind {kind!r}")
    if not isinstance(name, str) or not name:
        raise invalid("missing package name")
    package = package or name
    if not isinstance(algorithm, str):
        raise invalid("missing algorithm")
    members = doc.get("members")
    if not isinstance(members, list):
        raise invalid("'members' is not a list")
    entries = []
    for m in members:
        if not isinstance(m, dict) or set(m) != {"path", "size", "algorithm", "checksum"}:
            raise invalid(f"malformed member record {m!r}")
        entries.append(ManifestEntry(m["path"], m["size"], m["checksum"], m["algorithm"]))
    check_entries(entries, package=package)
    return Manifest(kind=kind, name=name, algorithm=algorithm, entries=tuple(entries))


def check_against_expected(
    manifest: Manifest,
    expected: Mapping[str, ExpectedMember],
    *,
    package: str,
) -> None:
    """The manifest must list exactly the members the ops DB expects, with the same sizes,
    algorithms and checksums."""
    by_path = {e.path: e for e in manifest.entries}
    missing = sorted(set(expected) - set(by_path))
    extra = sorted(set(by_path) - set(expected))
    if missing or extra:
        raise PackageVerificationError(
            f"manifest and ops DB disagree on the member list: in the ops DB but not in the "
            f"package: {missing[:5]}{'...' if len(missing) > 5 else ''}; in the package but not "
            f"in the ops DB: {extra[:5]}{'...' if len(extra) > 5 else ''}; do not use this "
            "package: re-create it from its source copy",
            package=package,
        )
    for path, want in expected.items():
        got = by_path[path]
        if (got.size, got.algorithm, got.checksum.lower()) != (
            want.size,
            want.algorithm,
            want.checksum.lower(),
        ):
            raise PackageVerificationError(
                f"manifest says size {got.size}, {got.algorithm} {got.checksum}; ops DB says "
                f"size {want.size}, {want.algorithm} {want.checksum}; do not use this package: "
                "re-create it from a verified source copy",
                package=package,
                member=path,
            )
