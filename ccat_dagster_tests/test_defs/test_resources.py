"""The S3 clients of Dagster runs are the benchmarked ones: ``SiteStorageResource`` builds them
through dagster-aws (endpoint, region, retries, credentials from the resource's fields) with the
botocore settings of ``make_s3_client``, the client docs/performance.md measures. Building a
client sends no request, so no server is needed."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.config import Config
from dagster_aws.s3 import S3Resource

from ccat_dagster.defs.resources import SiteStorageResource
from ccat_dagster.defs.s3_resource import TunedS3Resource
from ccat_dagster.storage.s3 import make_s3_client, s3_client_config
from ccat_dagster_tests.fixtures.s3server import FAKE_ENV
from ccat_ops_db.models import LocationType, S3DataLocation, Site

ENDPOINT = "http://127.0.0.1:9"  # nothing listens; no request is made
#: who built the client, not how it talks to S3 (dagster-aws's resource adds "Resource")
CALLER_OPTIONS = {"user_agent", "user_agent_extra"}


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch):
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)


def location(region: str = "eu-central-1") -> S3DataLocation:
    return S3DataLocation(
        site=Site(short_name="cologne", name="Cologne"),
        name="lta",
        location_type=LocationType.LONG_TERM_ARCHIVE,
        bucket="ccat-lta",
        endpoint_url=ENDPOINT,
        region=region,
    )


def settings(client: Any) -> dict[str, Any]:
    """Every botocore setting of ``client`` that affects its requests, and where they go."""
    config = client.meta.config
    values = {
        name: getattr(config, name)
        for name in sorted(Config.OPTION_DEFAULTS)
        if name not in CALLER_OPTIONS
    }
    values["endpoint_url"] = client.meta.endpoint_url
    values["client region"] = client.meta.region_name
    values["signing"] = client._request_signer.signature_version
    return values


@pytest.mark.parametrize("max_attempts", [5, 2])
def test_run_clients_carry_exactly_the_benchmarked_settings(max_attempts):
    benchmarked = make_s3_client(
        endpoint_url=ENDPOINT, region="eu-central-1", max_attempts=max_attempts
    )
    resource = SiteStorageResource(site="cologne", s3_max_attempts=max_attempts)
    in_runs = resource.s3_client(location())
    assert settings(in_runs) == settings(benchmarked)
    tuned = settings(in_runs)
    assert tuned["max_pool_connections"] == 12
    assert tuned["s3"] == {"payload_signing_enabled": False}
    assert tuned["retries"] == {"mode": "standard", "total_max_attempts": max_attempts + 1}
    assert (tuned["endpoint_url"], tuned["client region"]) == (ENDPOINT, "eu-central-1")


def test_run_clients_differ_from_dagster_aws_only_in_the_tuned_settings():
    fields = {"endpoint_url": ENDPOINT, "region_name": "us-west-2", "max_attempts": 3}
    plain = settings(S3Resource(**fields).get_client())
    tuned = settings(TunedS3Resource(**fields).get_client())
    tuned_options = set(s3_client_config()._user_provided_options)
    assert tuned_options == {"retries", "max_pool_connections", "s3"}
    differing = {name for name in plain if plain[name] != tuned[name]}
    assert differing == {"max_pool_connections", "s3"}
    assert plain["retries"] == tuned["retries"]  # dagster-aws's own retry settings


def presigned_as(client: Any) -> tuple[str | None, bool]:
    """Whose key signs a presigned URL of ``client``, and whether it is signed at all."""
    url = client.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    query = parse_qs(urlsplit(url).query)
    return query.get("AWSAccessKeyId", [None])[0], "Signature" in query


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, ("testing", True)),  # the environment's
        (
            {"aws_access_key_id": "AKIDRESOURCE", "aws_secret_access_key": "s"},
            ("AKIDRESOURCE", True),
        ),
        ({"use_unsigned_session": True}, (None, False)),
    ],
)
def test_tuned_resource_honours_dagster_aws_credential_fields(fields, expected):
    common = {"endpoint_url": ENDPOINT, "region_name": "us-east-1"}
    assert presigned_as(S3Resource(**common, **fields).get_client()) == expected
    assert presigned_as(TunedS3Resource(**common, **fields).get_client()) == expected
