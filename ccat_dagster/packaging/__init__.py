"""Packaging: RawDataPackage and DataTransferPackage tars, written in one read pass with a
manifest, and verified, safe streaming unpacking. No Dagster and no ops-DB queries here: callers
pass the sizes and checksums the ops DB holds."""

from ccat_dagster.packaging.errors import (
    InvalidPackageMemberError,
    PackageSourceChangedError,
    PackageVerificationError,
    PackagingError,
)
from ccat_dagster.packaging.manifest import (
    DATA_TRANSFER_PACKAGE,
    MANIFEST_NAME,
    RAW_DATA_PACKAGE,
    ExpectedMember,
    Manifest,
    ManifestEntry,
)
from ccat_dagster.packaging.unpack import read_manifest, unpack_package, verify_package
from ccat_dagster.packaging.writer import PackageMember, PackageResult, write_package

__all__ = [
    "DATA_TRANSFER_PACKAGE",
    "MANIFEST_NAME",
    "RAW_DATA_PACKAGE",
    "ExpectedMember",
    "InvalidPackageMemberError",
    "Manifest",
    "ManifestEntry",
    "PackageMember",
    "PackageResult",
    "PackageSourceChangedError",
    "PackageVerificationError",
    "PackagingError",
    "read_manifest",
    "unpack_package",
    "verify_package",
    "write_package",
]
