"""S3Storage against a real HTTP S3 endpoint (moto server): multipart atomicity, verified
parallel uploads, checksum metadata, idempotent deletes, listing and error classification."""

from __future__ import annotations

import io
import os
import socket
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ccat_dagster.storage.errors import (
    ChecksumMismatchError,
    LocationUnavailableError,
    NotImplementedStorageError,
    PermanentStorageError,
    TransientStorageError,
)
from ccat_dagster.storage.s3 import MIB, S3Storage, boto3_session, make_s3_client, map_s3_error
from ccat_ops_db.checksum import checksum_chunks

NAME = "cologne/lta"


@pytest.fixture
def lta(s3_endpoint: str, s3_bucket: str) -> S3Storage:
    # 5 MiB parts (S3's minimum) so a 12 MiB object is a three-part multipart upload.
    return S3Storage(
        NAME, s3_bucket, "raw", endpoint_url=s3_endpoint, region="us-east-1", part_size=5 * MIB
    )


def pending_uploads(client: Any, bucket: str) -> list[dict]:
    return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def all_object_keys(client: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_multipart_write_stream_roundtrip_with_checksum_metadata(lta, s3_client, s3_bucket):
    data = os.urandom(12 * MIB + 123)
    digest, size = checksum_chunks([data])
    result = lta.write_stream("pkg/a.tar", io.BytesIO(data), expected_checksum=digest)
    assert (result.size, result.checksum, result.checksum_algorithm) == (size, digest, "sha256")

    body = s3_client.get_object(Bucket=s3_bucket, Key="raw/pkg/a.tar")["Body"].read()
    assert body == data
    head = s3_client.head_object(Bucket=s3_bucket, Key="raw/pkg/a.tar")
    assert head["Metadata"] == {"checksum": digest, "checksum-algorithm": "sha256"}
    assert "-" in head["ETag"]  # a multipart ETag: the parallel upload path was taken
    assert lta.stored_checksum("pkg/a.tar") == ("sha256", digest)
    assert lta.stat("pkg/a.tar").size == size
    assert lta.checksum("pkg/a.tar") == (digest, size)
    with lta.open_read("pkg/a.tar") as stream:
        assert stream.read(1000) == data[:1000]
        assert stream.read() == data[1000:]
    assert pending_uploads(s3_client, s3_bucket) == []


def test_small_object_is_single_put_with_checksum_metadata(lta, s3_client, s3_bucket):
    with lta.open_write("small.txt") as out:
        out.write(b"hello ")
        out.write(b"world")
    digest, _ = checksum_chunks([b"hello world"])
    assert lta.stored_checksum("small.txt") == ("sha256", digest)
    assert s3_client.get_object(Bucket=s3_bucket, Key="raw/small.txt")["Body"].read() == (
        b"hello world"
    )


def test_exception_inside_open_write_aborts_multipart_and_leaves_nothing(lta, s3_client, s3_bucket):
    with pytest.raises(RuntimeError, match="source died"), lta.open_write("pkg/b.tar") as out:
        for _ in range(3):
            out.write(os.urandom(4 * MIB))  # 12 MiB: two parts already uploaded
        raise RuntimeError("source died")
    assert not lta.stat("pkg/b.tar").exists
    assert all_object_keys(s3_client, s3_bucket) == []
    assert pending_uploads(s3_client, s3_bucket) == []


def test_failed_overwrite_keeps_previous_object(lta, s3_client, s3_bucket):
    lta.write_stream("a.bin", io.BytesIO(b"original"))
    with pytest.raises(RuntimeError), lta.open_write("a.bin") as out:
        out.write(os.urandom(11 * MIB))
        raise RuntimeError("cut")
    with lta.open_read("a.bin") as stream:
        assert stream.read() == b"original"
    assert pending_uploads(s3_client, s3_bucket) == []


@pytest.mark.parametrize("size", [1000, 12 * MIB])
def test_checksum_mismatch_aborts_upload_and_leaves_nothing(lta, s3_client, s3_bucket, size):
    data = os.urandom(size)
    with pytest.raises(ChecksumMismatchError) as info:
        lta.write_stream("pkg/c.tar", io.BytesIO(data), expected_checksum="0" * 64)
    assert NAME in str(info.value)
    assert "pkg/c.tar" in str(info.value)
    assert all_object_keys(s3_client, s3_bucket) == []
    assert pending_uploads(s3_client, s3_bucket) == []


def test_multipart_without_known_checksum_has_no_checksum_metadata(lta):
    # The metadata is written when the upload starts; with nothing to promise it stays empty
    # and callers fall back to computing the checksum.
    result = lta.write_stream("big.bin", io.BytesIO(os.urandom(11 * MIB)))
    assert lta.stored_checksum("big.bin") is None
    assert lta.checksum("big.bin") == (result.checksum, result.size)


def test_delete_is_idempotent_and_says_whether_object_existed(lta, s3_client, s3_bucket):
    lta.write_stream("pkg/d.tar", io.BytesIO(b"abc"))
    assert lta.delete("pkg/d.tar").existed is True
    assert lta.delete("pkg/d.tar").existed is False
    assert all_object_keys(s3_client, s3_bucket) == []


def test_list_is_relative_to_prefix_and_paginates(lta, s3_client, s3_bucket):
    s3_client.put_object(Bucket=s3_bucket, Key="elsewhere/x", Body=b"not ours")
    lta.list_page_size = 7  # 25 objects: four pages
    expected = {f"pkg/f{i:04d}": i for i in range(25)}
    for key, size in expected.items():
        s3_client.put_object(Bucket=s3_bucket, Key=f"raw/{key}", Body=b"z" * size)
    assert dict(lta.list()) == expected
    assert dict(lta.list("pkg/f000")) == {f"pkg/f000{i}": i for i in range(10)}
    assert list(lta.list("nothing/")) == []


@pytest.mark.parametrize("key", ["", "/abs/key", "../x", "a/../b", "a//b"])
def test_invalid_keys_are_refused_naming_location_and_key(lta, key):
    for call in (
        lambda: lta.stat(key),
        lambda: lta.delete(key),
        lambda: lta.write_stream(key, io.BytesIO(b"x")),
        lambda: lta.open_read(key).__enter__(),
    ):
        with pytest.raises(PermanentStorageError) as info:
            call()
        assert NAME in str(info.value)
        assert repr(key) in str(info.value)


def test_reading_missing_object_is_permanent_missing_source(lta):
    with pytest.raises(PermanentStorageError, match="missing source") as info:
        lta.open_read("pkg/nope.tar").__enter__()
    assert NAME in str(info.value)
    assert "pkg/nope.tar" in str(info.value)
    assert not lta.stat("pkg/nope.tar").exists


def test_missing_bucket_is_a_location_condition_for_every_operation(s3_endpoint):
    bucket = f"ccat-missing-{uuid.uuid4().hex[:8]}"
    lta = S3Storage(NAME, bucket, endpoint_url=s3_endpoint, region="us-east-1")
    calls = {
        "stat": lambda: lta.stat("k"),
        "delete": lambda: lta.delete("k"),
        "read": lambda: lta.open_read("k").__enter__(),
        "write": lambda: lta.write_stream("k", io.BytesIO(b"x")),
        "write multipart": lambda: lta.write_stream("k", io.BytesIO(os.urandom(9 * MIB))),
        "list": lambda: list(lta.list()),
    }
    for what, call in calls.items():
        with pytest.raises(LocationUnavailableError) as info:
            call()
        assert info.value.location == NAME, what
        assert bucket in str(info.value), what
        assert NAME in str(info.value), what


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_is_a_location_condition(s3_endpoint):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    client = make_s3_client(endpoint_url=endpoint, region="us-east-1", max_attempts=1)
    lta = S3Storage(NAME, "ccat-lta", endpoint_url=endpoint, client=client)
    calls = [
        lambda: lta.stat("pkg/a.tar"),
        lambda: lta.open_read("pkg/a.tar").__enter__(),
        lambda: lta.write_stream("pkg/a.tar", io.BytesIO(b"x" * 100)),
        lambda: list(lta.list()),
        lambda: lta.delete("pkg/a.tar"),
    ]
    for call in calls:
        with pytest.raises(LocationUnavailableError) as info:
            call()
        assert NAME in str(info.value)
        assert info.value.location == NAME
    with pytest.raises(LocationUnavailableError, match=r"pkg/a\.tar"):
        lta.stat("pkg/a.tar")


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("SlowDown", 503, LocationUnavailableError),
        ("Throttling", 400, TransientStorageError),
        ("RequestTimeout", 400, TransientStorageError),
        ("InternalError", 500, LocationUnavailableError),
        ("Anything", 502, LocationUnavailableError),
        ("AccessDenied", 403, PermanentStorageError),
        ("NoSuchBucket", 404, LocationUnavailableError),
        ("NoSuchKey", 404, PermanentStorageError),
        ("InvalidArgument", 400, PermanentStorageError),
    ],
)
def test_s3_error_codes_are_classified(code: str, status: int, kind: type):
    err = map_s3_error(client_error(code, status), location=NAME, bucket="b", key="k")
    assert type(err) is kind
    assert NAME in str(err)
    assert "object=k" in str(err)


def test_disk_usage_is_a_clear_not_implemented_error(lta):
    with pytest.raises(NotImplementedStorageError, match="not defined for an S3 location"):
        lta.disk_usage()


@pytest.mark.parametrize("tuned", [False, True], ids=["S3Resource", "TunedS3Resource"])
def test_client_built_by_dagster_aws_s3_resource_works(s3_endpoint, s3_bucket, s3_client, tuned):
    from dagster_aws.s3 import S3Resource

    from ccat_dagster.defs.s3_resource import TunedS3Resource  # the client of Dagster runs

    resource_class = TunedS3Resource if tuned else S3Resource
    client = resource_class(endpoint_url=s3_endpoint, region_name="us-east-1").get_client()
    lta = S3Storage(NAME, s3_bucket, "via-resource", client=client, part_size=5 * MIB)
    data = os.urandom(11 * MIB)
    digest, _ = checksum_chunks([data])
    lta.write_stream("x.bin", io.BytesIO(data), expected_checksum=digest)
    assert s3_client.get_object(Bucket=s3_bucket, Key="via-resource/x.bin")["Body"].read() == data


def test_clients_share_botocores_data_but_not_credentials(s3_endpoint, monkeypatch):
    """Each client's session reads its credentials itself (a changed key is used by the next
    client); only botocore's service data is read once per process."""
    from ccat_dagster.defs.s3_resource import TunedS3Resource

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first-key")
    first = make_s3_client(endpoint_url=s3_endpoint, region="us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "second-key")
    second = TunedS3Resource(endpoint_url=s3_endpoint, region_name="us-east-1").get_client()
    assert first._request_signer._credentials.access_key == "first-key"
    assert second._request_signer._credentials.access_key == "second-key"
    loaders = [boto3_session()._session.get_component("data_loader") for _ in range(3)]
    assert loaders[0] is loaders[1] is loaders[2]
    paths = loaders[0].search_paths
    assert len(paths) == len(set(paths)), "a long-lived process's search paths do not grow"
    assert first.meta.service_model.service_name == second.meta.service_model.service_name


def test_unfinished_multipart_upload_of_a_killed_writer_is_listed_and_aborted(
    lta, s3_client, s3_bucket
):
    lta.write_stream("pkg/kept.tar", io.BytesIO(b"object"))
    upload = s3_client.create_multipart_upload(Bucket=s3_bucket, Key="raw/pkg/killed.tar")
    s3_client.upload_part(
        Bucket=s3_bucket,
        Key="raw/pkg/killed.tar",
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=b"x" * (5 * MIB),
    )
    other_prefix = s3_client.create_multipart_upload(Bucket=s3_bucket, Key="elsewhere/x.tar")
    [temporary] = lta.list_temporaries()
    assert (temporary.name, temporary.upload_id) == ("pkg/killed.tar", upload["UploadId"])
    assert temporary.size == 5 * MIB
    assert temporary.modified_at.tzinfo is not None
    assert lta.remove_temporary(temporary) is True
    assert lta.remove_temporary(temporary) is False
    assert list(lta.list_temporaries()) == []
    assert [u["Key"] for u in pending_uploads(s3_client, s3_bucket)] == ["elsewhere/x.tar"]
    assert lta.stat("pkg/kept.tar").exists
    s3_client.abort_multipart_upload(
        Bucket=s3_bucket, Key="elsewhere/x.tar", UploadId=other_prefix["UploadId"]
    )
