"""Dagster resources: the ops database and the storages of one site's code location."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import ConfigurableResource
from sqlalchemy.orm import Session

from ccat_dagster.storage.factory import StorageRegistry
from ccat_ops_db.config import ops_db_url
from ccat_ops_db.models import S3DataLocation
from ccat_ops_db.session import session_factory


class OpsDbResource(ConfigurableResource):
    """The operations database; ``url`` defaults to ``CCAT_OPS_DB_URL`` / ``$CCAT_HOME/ops.db``."""

    url: str | None = None

    def resolved_url(self) -> str:
        return self.url or ops_db_url()

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = session_factory(self.resolved_url())()
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


class SiteStorageResource(ConfigurableResource):
    """Storages as seen from ``site``: its own disks are local, other sites' hosts over SSH.

    SSH keys (``CCAT_SSH_KEY_FILE``, ``CCAT_SSH_KNOWN_HOSTS``) and S3 credentials (``AWS_*``)
    come from the environment only.
    """

    site: str
    s3_max_attempts: int = 5

    def s3_client(self, location: S3DataLocation):
        """The boto3 client of an S3 location, built by dagster-aws's ``S3Resource`` (as
        ``TunedS3Resource``: the benchmarked settings of ``make_s3_client``) with the location's
        endpoint and region; credentials from the environment only."""
        # dagster-aws is imported here, by the runs that reach S3, not by every process that
        # loads the site's code (defs/s3_resource.py)
        from ccat_dagster.defs.s3_resource import TunedS3Resource

        return TunedS3Resource(
            endpoint_url=location.endpoint_url,
            region_name=location.region,
            max_attempts=self.s3_max_attempts,
        ).get_client()

    @contextmanager
    def registry(self) -> Iterator[StorageRegistry]:
        with StorageRegistry(local_site=self.site, s3_client_factory=self.s3_client) as storages:
            yield storages
