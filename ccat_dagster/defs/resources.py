"""Dagster resources: the ops database and the storages of one site's code location."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3.session
from botocore.handlers import disable_signing
from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from sqlalchemy.orm import Session

from ccat_dagster.storage.factory import StorageRegistry
from ccat_dagster.storage.s3 import s3_client_config
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


class TunedS3Resource(S3Resource):
    """dagster-aws's ``S3Resource`` (the same fields: endpoint, region, retries, profile,
    credentials, SSL, unsigned) whose clients carry the benchmarked botocore settings of
    ``s3_client_config`` (connection pool, no SigV4 payload hash), like ``make_s3_client``.

    dagster-aws's ``get_client`` accepts no botocore ``Config``; this builds the client as it
    does (``construct_s3_client``), from the resource's fields, with that config instead of its
    retries-only one."""

    def get_client(self) -> Any:
        client = boto3.session.Session(profile_name=self.profile_name).client(
            "s3",
            region_name=self.region_name,
            use_ssl=self.use_ssl,
            verify=self.verify,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=s3_client_config(max_attempts=self.max_attempts),
        )
        if self.use_unsigned_session:
            client.meta.events.register("choose-signer.s3.*", disable_signing)
        return client


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
        return TunedS3Resource(
            endpoint_url=location.endpoint_url,
            region_name=location.region,
            max_attempts=self.s3_max_attempts,
        ).get_client()

    @contextmanager
    def registry(self) -> Iterator[StorageRegistry]:
        with StorageRegistry(local_site=self.site, s3_client_factory=self.s3_client) as storages:
            yield storages
