"""Packaging errors: a package that cannot be built from its sources, or cannot be trusted.

Both are permanent (retrying with the same bytes gives the same answer); each message names the
package and member and says what an operator should do.
"""

from __future__ import annotations

from ccat_dagster.storage.errors import PermanentStorageError


class PackagingError(PermanentStorageError):
    """Base class; ``package`` and ``member`` name where it happened."""

    def __init__(self, message: str, *, package: str | None = None, member: str | None = None):
        where = ", ".join(
            p
            for p in (
                f"package {package!r}" if package else "",
                f"member {member!r}" if member else "",
            )
            if p
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.package = package
        self.member = member


class PackageSourceChangedError(PackagingError):
    """A source file's bytes differ from what was filed (size or checksum): the package
    being written is invalid and must be discarded."""


class InvalidPackageMemberError(PackagingError, ValueError):
    """The member list handed to the writer is unusable (unsafe or duplicate path, bad size or
    checksum): fix the ops DB record; retrying will not help."""


class PackageVerificationError(PackagingError):
    """A package (tar) is malformed, unsafe, or does not match its manifest or the ops DB."""
