"""Moving bytes: one Storage interface with local-disk, SSH and S3 backends, built from
DataLocation rows by ``storage_for_location``, and a verified streaming ``copy_object``."""

from ccat_dagster.storage.base import (
    DeleteResult,
    DiskUsage,
    ObjectStat,
    Storage,
    WriteResult,
    check_key,
)
from ccat_dagster.storage.copy import CopyResult, copy_object
from ccat_dagster.storage.errors import (
    ChecksumMismatchError,
    NotImplementedStorageError,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from ccat_dagster.storage.factory import StorageRegistry, storage_for_location
from ccat_dagster.storage.local import LocalDiskStorage
from ccat_dagster.storage.s3 import S3Storage

__all__ = [
    "ChecksumMismatchError",
    "CopyResult",
    "DeleteResult",
    "DiskUsage",
    "LocalDiskStorage",
    "NotImplementedStorageError",
    "ObjectStat",
    "PermanentStorageError",
    "S3Storage",
    "Storage",
    "StorageError",
    "StorageRegistry",
    "TransientStorageError",
    "WriteResult",
    "check_key",
    "copy_object",
    "storage_for_location",
]
