"""The S3 client of Dagster runs: dagster-aws's ``S3Resource`` with the benchmarked botocore
settings. A module of its own so that dagster-aws (a fifth of a second to import) is loaded by
the runs that reach an S3 location, not by every code server, run worker and CLI process that
loads a site's code (``SiteStorageResource.s3_client`` imports it when it builds a client)."""

from __future__ import annotations

from typing import Any

from botocore.handlers import disable_signing
from dagster_aws.s3 import S3Resource

from ccat_dagster.storage.s3 import boto3_session, s3_client_config


class TunedS3Resource(S3Resource):
    """dagster-aws's ``S3Resource`` (the same fields: endpoint, region, retries, profile,
    credentials, SSL, unsigned) whose clients carry the benchmarked botocore settings of
    ``s3_client_config`` (connection pool, no SigV4 payload hash), like ``make_s3_client``.

    dagster-aws's ``get_client`` accepts no botocore ``Config``; this builds the client as it
    does (``construct_s3_client``), from the resource's fields, with that config instead of its
    retries-only one."""

    def get_client(self) -> Any:
        client = boto3_session(self.profile_name).client(
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
