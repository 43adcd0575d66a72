"""Build the Storage of a DataLocation row: S3 locations become S3Storage, disk locations are
local to their own site and reached over SSH from every other site, tape is declared but refused
with a clear error. A StorageRegistry caches one Storage per location for a run and closes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ccat_dagster.storage.base import Storage
from ccat_dagster.storage.errors import NotImplementedStorageError, PermanentStorageError
from ccat_dagster.storage.local import LocalDiskStorage
from ccat_dagster.storage.s3 import S3Storage
from ccat_ops_db.models import DataLocation, DiskDataLocation, S3DataLocation, TapeDataLocation

#: environment variables that carry SSH credentials (never the topology)
SSH_KEY_FILE_ENV = "CCAT_SSH_KEY_FILE"
SSH_KNOWN_HOSTS_ENV = "CCAT_SSH_KNOWN_HOSTS"
#: the name(s) of the host this process runs on, as the topology's ``host`` keys write them
#: (comma-separated); unset: every disk location of the process's own site counts as local
LOCAL_HOST_ENV = "CCAT_HOST"


def local_host_names() -> frozenset[str]:
    """The names in ``$CCAT_HOST`` (empty when unset)."""
    raw = os.environ.get(LOCAL_HOST_ENV, "")
    return frozenset(name.strip() for name in raw.split(",") if name.strip())


def is_local(
    location: DiskDataLocation, local_site: str | None, local_hosts: frozenset[str]
) -> bool:
    """Whether code of ``local_site`` on a host called ``local_hosts`` reads ``location``'s
    root as a local directory. A location without a host is local everywhere (a shared mount,
    or a single-host deployment). A location with a host is reached over SSH from every other
    site, and within its own site too when this host's names are known (``$CCAT_HOST``) and
    its host is not one of them: an instrument computer beside the telescope's buffer host."""
    if not location.host:
        return True
    if local_site is None or local_site != location.site.short_name:
        return False
    return not local_hosts or location.host in local_hosts


#: builds the boto3 client of an S3 location, e.g. from a dagster-aws S3Resource
S3ClientFactory = Callable[[S3DataLocation], Any]


def storage_for_location(
    location: DataLocation,
    *,
    local_site: str | None = None,
    s3_client_factory: S3ClientFactory | None = None,
    local_hosts: frozenset[str] | None = None,
) -> Storage:
    """The Storage through which code running at ``local_site`` reaches ``location``.

    A disk location is read as a local directory where :func:`is_local` says so (``local_hosts``
    defaults to ``$CCAT_HOST``); otherwise it is reached over SSH with the key file in
    ``$CCAT_SSH_KEY_FILE`` and the location's ``known_hosts`` (else ``$CCAT_SSH_KNOWN_HOSTS``).
    ``s3_client_factory`` lets the Dagster layer supply clients built by a dagster-aws
    ``S3Resource``; by default an equivalently configured boto3 client is made.
    """
    name = location.qualified_name
    if isinstance(location, S3DataLocation):
        client = s3_client_factory(location) if s3_client_factory else None
        return S3Storage(
            name,
            bucket=location.bucket,
            prefix=location.prefix,
            endpoint_url=location.endpoint_url,
            region=location.region,
            client=client,
        )
    if isinstance(location, TapeDataLocation):
        raise NotImplementedStorageError(
            f"tape storage is declared but not implemented; use disk or s3 for location {name}",
            location=name,
        )
    if isinstance(location, DiskDataLocation):
        host = location.host
        hosts = local_host_names() if local_hosts is None else local_hosts
        if host and not is_local(location, local_site, hosts):
            from ccat_dagster.storage.ssh import SSHStorage  # paramiko only where SSH is used

            return SSHStorage(
                name,
                host,
                location.port or 22,
                location.user,
                location.path,
                key_filename=os.environ.get(SSH_KEY_FILE_ENV),
                known_hosts=location.known_hosts or os.environ.get(SSH_KNOWN_HOSTS_ENV),
            )
        return LocalDiskStorage(name, root=location.path)
    raise PermanentStorageError(
        f"unknown storage type {type(location).__name__}; expected disk, s3 or tape",
        location=name,
    )


class StorageRegistry:
    """One Storage per location id for the length of a run (connections are reused), all
    closed on exit::

        with StorageRegistry(local_site="cologne") as storages:
            copy_object(storages.get(src_location), key, storages.get(dst_location), key, ...)
    """

    def __init__(
        self,
        *,
        local_site: str | None = None,
        s3_client_factory: S3ClientFactory | None = None,
    ) -> None:
        self.local_site = local_site
        self.s3_client_factory = s3_client_factory
        self._storages: dict[int, Storage] = {}

    def get(self, location: DataLocation) -> Storage:
        storage = self._storages.get(location.id)
        if storage is None:
            storage = storage_for_location(
                location, local_site=self.local_site, s3_client_factory=self.s3_client_factory
            )
            self._storages[location.id] = storage
        return storage

    def close(self) -> None:
        storages, self._storages = list(self._storages.values()), {}
        errors: list[BaseException] = []
        for storage in storages:
            try:
                storage.close()
            except Exception as exc:  # noqa: BLE001 - close the others first
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> StorageRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
