"""S3 storage: objects under ``bucket``/``prefix``, written as multipart uploads that become
visible only on CompleteMultipartUpload (aborted on any error, so a failed write never leaves a
partial object under its final key). ``write_stream`` uploads parts in parallel with bounded
memory, hashes the stream on the way and completes only if the checksum matches; the checksum and
its algorithm are stored as object metadata for later live checks. Unfinished multipart uploads
(of a killed process) are the location's temporaries. Credentials come from the environment
(boto3's default chain), never from the topology.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, BinaryIO

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from ccat_dagster.storage.base import (
    DeleteResult,
    DiskUsage,
    ObjectStat,
    Storage,
    TemporaryObject,
    WriteResult,
    check_key,
    check_prefix,
)
from ccat_dagster.storage.errors import (
    ChecksumMismatchError,
    LocationUnavailableError,
    NotImplementedStorageError,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from ccat_ops_db.checksum import DEFAULT_ALGORITHM, checksum_stream, new_hasher

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 * MIB  # boto3's TransferConfig default
DEFAULT_CONCURRENCY = 10  # boto3 TransferConfig default; 11 parts of memory at most
#: user-metadata names (sent as x-amz-meta-checksum / x-amz-meta-checksum-algorithm)
META_CHECKSUM = "checksum"
META_CHECKSUM_ALGORITHM = "checksum-algorithm"

# Error codes after which the same request may succeed later.
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "BandwidthLimitExceeded",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
}
_DENIED_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
}
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
# Codes that say the endpoint itself is failing (after botocore's own retries): the location
# does not answer, whatever the object.
_ENDPOINT_DOWN_CODES = {"InternalError", "ServiceUnavailable", "SlowDown"}


def s3_client_config(
    *, max_attempts: int = 5, max_pool_connections: int = DEFAULT_CONCURRENCY + 2
) -> Config:
    """The botocore settings of every S3 client of the platform, the ones docs/performance.md
    measures: dagster-aws ``S3Resource``'s retries (standard mode, ``max_attempts``), plus a
    connection pool large enough for parallel part uploads and no SigV4 payload hash.

    Used by ``make_s3_client`` and by the clients of Dagster runs (``TunedS3Resource``), so both
    carry the same settings; change them here only."""
    return Config(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        # Each part carries a CRC32 request checksum and the whole object is verified against
        # its sha256; a further SHA-256 of every part for SigV4 (which botocore does only on
        # plain-http endpoints; over https it already skips it) would cost CPU, not safety.
        s3={"payload_signing_enabled": False},
    )


_loader_lock = threading.Lock()
_loader: botocore.loaders.Loader | None = None


def boto3_session(profile_name: str | None = None) -> boto3.Session:
    """A new boto3 session (credentials of its own, from boto3's default chain or the
    ``profile_name``) that shares this process's botocore data loader.

    Every run builds its S3 clients anew, and a new session reads botocore's service model
    and endpoint rules (megabytes of JSON) again for its first client: 170 ms of CPU a client
    where 45 ms remain with the loader, and its cache of what it read, shared. The loader holds
    only botocore's own data files, no credentials or settings."""
    global _loader
    core = botocore.session.get_session()
    with _loader_lock:
        if _loader is None:  # where the first session looks (AWS_DATA_PATH)
            _loader = botocore.loaders.create_loader(core.get_config_variable("data_path"))
        core.register_component("data_loader", _loader)
        session = boto3.Session(botocore_session=core, profile_name=profile_name)
        # each boto3 session appends boto3's data directory to its loader's search paths: once
        paths = _loader.search_paths
        paths[:] = dict.fromkeys(paths)
    return session


def make_s3_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    max_attempts: int = 5,
    max_pool_connections: int = DEFAULT_CONCURRENCY + 2,
) -> Any:
    """A boto3 S3 client with the settings of ``s3_client_config``, configured like dagster-aws
    ``S3Resource(endpoint_url=..., region_name=...)``. Credentials: boto3's default chain
    (environment)."""
    return boto3_session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=s3_client_config(
            max_attempts=max_attempts, max_pool_connections=max_pool_connections
        ),
    )


def map_s3_error(
    exc: BaseException, *, location: str, bucket: str, key: str | None, reading: bool = False
) -> StorageError:
    """The storage error an operator can act on for a boto3/botocore exception."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        detail = f"S3 {code or status}: {error.get('Message') or exc}"
        if code in _ENDPOINT_DOWN_CODES or status >= 500:
            return LocationUnavailableError(
                f"{detail}; the endpoint is failing (botocore already retried), work waits and "
                "resumes when it answers again",
                location=location,
                key=key,
            )
        if code in _TRANSIENT_CODES or status == 429:
            return TransientStorageError(
                f"{detail}; the endpoint is busy or failing, retry later",
                location=location,
                key=key,
            )
        if code in _DENIED_CODES or status == 403:
            return PermanentStorageError(
                f"permission denied ({detail}); check the S3 credentials in the environment "
                f"(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and the policy of bucket {bucket!r}",
                location=location,
                key=key,
            )
        if code == "NoSuchBucket":
            return missing_bucket_error(location=location, bucket=bucket, key=key)
        if code in _MISSING_CODES or status == 404:
            what = "missing source: the object does not exist" if reading else "not found"
            return PermanentStorageError(f"{what} ({detail})", location=location, key=key)
        return PermanentStorageError(detail, location=location, key=key)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return PermanentStorageError(
            f"no usable S3 credentials ({exc}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) in the environment of the code server",
            location=location,
            key=key,
        )
    if isinstance(exc, BotoConnectionError | ConnectionRefusedError):
        # No connection could be made at all (refused, unreachable, connect timeout, TLS).
        return LocationUnavailableError(
            f"S3 endpoint unreachable ({exc}); work waits and resumes when it answers again",
            location=location,
            key=key,
        )
    if isinstance(exc, HTTPClientError | OSError):
        return TransientStorageError(
            f"S3 connection dropped ({exc}); retry later",
            location=location,
            key=key,
        )
    if isinstance(exc, BotoCoreError):
        return PermanentStorageError(f"S3 client error: {exc}", location=location, key=key)
    return PermanentStorageError(f"unexpected S3 error: {exc!r}", location=location, key=key)


def missing_bucket_error(*, location: str, bucket: str, key: str | None) -> StorageError:
    """A bucket that does not exist: the location as configured does not answer."""
    return LocationUnavailableError(
        f"bucket {bucket!r} does not exist; create it or fix the location's bucket (work waits "
        "and resumes when it exists)",
        location=location,
        key=key,
    )


def part_size_for(size_hint: int | None, base: int = DEFAULT_PART_SIZE) -> int:
    """Part size that keeps an object of ``size_hint`` bytes within S3's 10,000 parts."""
    if not size_hint:
        return base
    needed = math.ceil(size_hint / (MAX_PARTS - 100))
    return min(MAX_PART_SIZE, max(base, math.ceil(needed / MIB) * MIB))


def read_exact(stream: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes; fewer only at end of stream (network streams return short reads)."""
    data = stream.read(n)
    if not data or len(data) == n:
        return data or b""
    chunks = [data]
    got = len(data)
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class _PartBody:
    """A part's bytes as the seekable stream botocore wants, handing out memoryview slices: the
    HTTP layer reads the body in small blocks, and bytes blocks would copy every part once more
    (measurable CPU at 100+ MiB/s on a 2-core host)."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, n: int | None = -1) -> memoryview:
        end = len(self._view) if n is None or n < 0 else min(len(self._view), self._pos + n)
        chunk = self._view[self._pos : end]
        self._pos = end
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        self._pos = max(0, min(len(self._view), base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._view)


class _S3Reader:
    """Readable stream over a GetObject body; errors while reading become storage errors."""

    def __init__(self, body: Any, storage: S3Storage, key: str) -> None:
        self._body = body
        self._storage = storage
        self._key = key

    def read(self, n: int = -1) -> bytes:
        try:
            return self._body.read(None if n is None or n < 0 else n)
        except Exception as exc:
            raise self._storage._map(exc, self._key, reading=True) from exc

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._body.close()


class _S3ObjectWriter:
    """Bytes written here become one S3 object on ``commit``: a single PutObject when they fit in
    one part, else a multipart upload whose parts are sent by a thread pool while the caller keeps
    writing; at most ``concurrency`` parts are in flight, which bounds memory."""

    def __init__(
        self,
        storage: S3Storage,
        key: str,
        *,
        algorithm: str = DEFAULT_ALGORITHM,
        declared_checksum: str | None = None,
        size_hint: int | None = None,
    ) -> None:
        self._s = storage
        self.key = key
        self._obj = storage.object_key(key)
        self.algorithm = algorithm
        self._hasher = new_hasher(algorithm)
        self._declared = declared_checksum
        self._size_hint = size_hint
        self.part_size = part_size_for(size_hint, storage.part_size)
        self.size = 0
        self._sent = 0
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: deque[Future[dict[str, Any]]] = deque()
        self._parts: list[dict[str, Any]] = []
        self._next_part = 1

    # --- the BinaryIO surface callers use
    def write(self, data: bytes) -> int:
        n = len(data)
        self._hasher.update(data)
        self.size += n
        if not self._buf and n == self.part_size:
            self._send(bytes(data))  # whole part: no copy into the buffer
            return n
        self._buf += data
        while len(self._buf) >= self.part_size:
            size = self.part_size
            part = bytes(self._buf[:size])
            del self._buf[:size]
            self._send(part)
        return n

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    # --- multipart machinery
    def _metadata(self, checksum: str | None) -> dict[str, str]:
        if checksum is None:
            return {}
        return {META_CHECKSUM: checksum, META_CHECKSUM_ALGORITHM: self.algorithm}

    def _send(self, part: bytes) -> None:
        if self._upload_id is None:
            self._start()
        assert self._pool is not None
        while len(self._inflight) >= self._s.concurrency:
            self._collect(self._inflight.popleft())
        number = self._next_part
        self._next_part += 1
        self._inflight.append(self._pool.submit(self._upload_part, number, part))
        self._sent += len(part)
        # Unknown (or under-announced) size: double the part size every 1,000 parts so that
        # even a very large stream stays within S3's 10,000-part limit.
        unknown = self._size_hint is None or self._sent >= self._size_hint
        if unknown and number % 1000 == 0:
            self.part_size = min(MAX_PART_SIZE, self.part_size * 2)
        if number >= MAX_PARTS:
            raise PermanentStorageError(
                "object too large for one multipart upload (10,000 parts)",
                location=self._s.name,
                key=self.key,
            )

    def _start(self) -> None:
        try:
            response = self._s.client.create_multipart_upload(
                Bucket=self._s.bucket,
                Key=self._obj,
                Metadata=self._metadata(self._declared),
                ChecksumAlgorithm="CRC32",
            )
        except Exception as exc:
            raise self._s._map(exc, self.key) from exc
        self._upload_id = response["UploadId"]
        self._pool = ThreadPoolExecutor(self._s.concurrency, thread_name_prefix="s3-part")

    def _upload_part(self, number: int, data: bytes) -> dict[str, Any]:
        response = self._s.client.upload_part(
            Bucket=self._s.bucket,
            Key=self._obj,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=_PartBody(data),
            ChecksumAlgorithm="CRC32",
        )
        part = {"PartNumber": number, "ETag": response["ETag"]}
        if "ChecksumCRC32" in response:
            part["ChecksumCRC32"] = response["ChecksumCRC32"]
        return part

    def _collect(self, future: Future[dict[str, Any]]) -> None:
        try:
            self._parts.append(future.result())
        except Exception as exc:
            raise self._s._map(exc, self.key) from exc

    def commit(self) -> None:
        """Make the object visible under its key (the only place that does)."""
        try:
            if self._upload_id is None:
                self._s.client.put_object(
                    Bucket=self._s.bucket,
                    Key=self._obj,
                    Body=bytes(self._buf),
                    Metadata=self._metadata(self.hexdigest()),
                )
                return
            if self._buf:
                self._send(bytes(self._buf))
                self._buf.clear()
            while self._inflight:
                self._collect(self._inflight.popleft())
            self._s.client.complete_multipart_upload(
                Bucket=self._s.bucket,
                Key=self._obj,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": sorted(self._parts, key=lambda p: p["PartNumber"])},
            )
            self._upload_id = None
        except StorageError:
            raise
        except Exception as exc:
            raise self._s._map(exc, self.key) from exc
        finally:
            self._shutdown()

    def abort(self) -> None:
        """Drop everything sent so far; nothing appears under the key."""
        self._shutdown()
        if self._upload_id is None:
            return
        try:
            self._s.client.abort_multipart_upload(
                Bucket=self._s.bucket, Key=self._obj, UploadId=self._upload_id
            )
        except Exception as exc:  # noqa: BLE001 - keep the original error; the upload is invisible
            log.warning(
                "could not abort multipart upload %s of %s at %s (no object is visible; the "
                "bucket's lifecycle rule for incomplete uploads will remove its parts): %s",
                self._upload_id,
                self.key,
                self._s.name,
                exc,
            )
        self._upload_id = None

    def _shutdown(self) -> None:
        if self._pool is not None:
            # Wait for running part uploads so none lands after an abort.
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._inflight.clear()


class S3Storage(Storage):
    """Objects under ``bucket``/``prefix`` on an S3 endpoint."""

    def __init__(
        self,
        name: str,
        bucket: str,
        prefix: str | None = None,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"{name}: part_size must be at least 5 MiB (S3 minimum)")
        self.name = name
        self.bucket = bucket
        self.prefix = (prefix or "").strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.part_size = part_size
        self.concurrency = concurrency
        self.client = client or make_s3_client(
            endpoint_url=endpoint_url, region=region, max_pool_connections=concurrency + 2
        )
        self._bucket_checked = False
        self.list_page_size = 1000  # S3's maximum; smaller only to exercise paging

    def __repr__(self) -> str:
        return f"S3Storage({self.name!r}, s3://{self.bucket}/{self.prefix})"

    def object_key(self, key: str) -> str:
        """The S3 object key of ``key`` (validated) under this location's prefix."""
        check_key(key, location=self.name)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, object_key: str) -> str:
        return object_key[len(self.prefix) + 1 :] if self.prefix else object_key

    def _map(self, exc: BaseException, key: str | None, *, reading: bool = False) -> StorageError:
        return map_s3_error(exc, location=self.name, bucket=self.bucket, key=key, reading=reading)

    def _head(self, key: str) -> dict[str, Any] | None:
        """HeadObject, or None when the object is missing (after making sure the bucket exists:
        a HEAD on a missing bucket is a bare 404 too, and must not read as 'object missing')."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                self._check_bucket(key)
                return None
            raise self._map(exc, key) from exc
        except Exception as exc:
            raise self._map(exc, key) from exc

    def _check_bucket(self, key: str | None) -> None:
        if self._bucket_checked:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES or code == "NoSuchBucket":
                raise missing_bucket_error(location=self.name, bucket=self.bucket, key=key) from exc
            raise self._map(exc, key) from exc
        except Exception as exc:
            raise self._map(exc, key) from exc
        self._bucket_checked = True

    def stat(self, key: str) -> ObjectStat:
        head = self._head(key)
        if head is None:
            return ObjectStat(exists=False)
        return ObjectStat(
            exists=True, size=int(head["ContentLength"]), modified_at=head.get("LastModified")
        )

    def head_metadata(self, key: str) -> dict[str, str] | None:
        """The object's user metadata (``x-amz-meta-*``, keys lower-case), None if missing."""
        head = self._head(key)
        return None if head is None else dict(head.get("Metadata", {}))

    def stored_checksum(self, key: str) -> tuple[str, str] | None:
        metadata = self.head_metadata(key) or {}
        if META_CHECKSUM in metadata and META_CHECKSUM_ALGORITHM in metadata:
            return metadata[META_CHECKSUM_ALGORITHM], metadata[META_CHECKSUM]
        return None

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except StorageError:
            raise
        except Exception as exc:
            raise self._map(exc, key, reading=True) from exc
        reader = _S3Reader(response["Body"], self, key)
        try:
            yield reader  # type: ignore[misc]
        finally:
            reader.close()

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        writer = _S3ObjectWriter(self, key)
        try:
            yield writer  # type: ignore[misc]
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def write_stream(
        self,
        key: str,
        stream: BinaryIO,
        *,
        expected_checksum: str | None = None,
        algorithm: str = DEFAULT_ALGORITHM,
        size_hint: int | None = None,
    ) -> WriteResult:
        # The expected checksum goes into the metadata at CreateMultipartUpload; the upload is
        # completed only if the bytes hash to it, so the metadata never lies.
        writer = _S3ObjectWriter(
            self, key, algorithm=algorithm, declared_checksum=expected_checksum, size_hint=size_hint
        )
        try:
            while part := read_exact(stream, writer.part_size):
                writer.write(part)
            actual = writer.hexdigest()
            if expected_checksum is not None and actual != expected_checksum:
                raise ChecksumMismatchError(
                    expected=expected_checksum,
                    actual=actual,
                    algorithm=algorithm,
                    location=self.name,
                    key=key,
                    detail="upload aborted, nothing was stored",
                )
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        return WriteResult(key=key, size=writer.size, checksum=actual, checksum_algorithm=algorithm)

    def delete(self, key: str) -> DeleteResult:
        if self._head(key) is None:
            return DeleteResult(key=key, existed=False)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            raise self._map(exc, key) from exc
        return DeleteResult(key=key, existed=True)

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[tuple[str, int]]:
        check_prefix(prefix, location=self.name)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        paginator = self.client.get_paginator("list_objects_v2")
        # a start key need not be an object's (the audit resumes after any key)
        after = f"{self.prefix}/{start_after}" if self.prefix else start_after
        extra = {"StartAfter": after} if start_after else {}
        try:
            for page in paginator.paginate(
                Bucket=self.bucket,
                Prefix=full,
                PaginationConfig={"PageSize": self.list_page_size},
                **extra,
            ):
                for obj in page.get("Contents", []):
                    yield self._relative(obj["Key"]), int(obj["Size"])
        except StorageError:
            raise
        except Exception as exc:
            raise self._map(exc, prefix or None) from exc

    def move(self, key: str, new_key: str) -> None:
        """A managed copy (multipart above 5 GB; the object metadata, with the stored checksum,
        goes with the bytes), then the delete of the old key."""
        if self._head(key) is None:
            raise PermanentStorageError("no object to move", location=self.name, key=key)
        if self._head(new_key) is not None:
            raise PermanentStorageError(
                f"refusing to move onto an existing object {new_key}", location=self.name, key=key
            )
        try:
            self.client.copy(
                {"Bucket": self.bucket, "Key": self.object_key(key)},
                self.bucket,
                self.object_key(new_key),
            )
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            raise self._map(exc, key) from exc

    def list_temporaries(self) -> Iterator[TemporaryObject]:
        """Unfinished multipart uploads under the prefix (size: the parts uploaded so far)."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    size = sum(
                        int(part["Size"])
                        for parts in self.client.get_paginator("list_parts").paginate(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        for part in parts.get("Parts", [])
                    )
                    yield TemporaryObject(
                        name=self._relative(upload["Key"]),
                        size=size,
                        modified_at=upload["Initiated"],
                        upload_id=upload["UploadId"],
                    )
        except StorageError:
            raise
        except Exception as exc:
            raise self._map(exc, None) from exc

    def remove_temporary(self, temporary: TemporaryObject) -> bool:
        if not temporary.upload_id:
            raise PermanentStorageError(
                "not an unfinished multipart upload; refusing to remove anything",
                location=self.name,
                key=temporary.name,
            )
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket,
                Key=self.object_key(temporary.name),
                UploadId=temporary.upload_id,
            )
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) == "NoSuchUpload":
                return False
            raise self._map(exc, temporary.name) from exc
        except Exception as exc:
            raise self._map(exc, temporary.name) from exc
        return True

    def checksum(self, key: str, algorithm: str = DEFAULT_ALGORITHM) -> tuple[str, int]:
        with self.open_read(key) as stream:
            return checksum_stream(stream, algorithm)

    def disk_usage(self) -> DiskUsage:
        raise NotImplementedStorageError(
            "disk usage is not defined for an S3 location (no capacity to fill); buffer "
            "thresholds apply to disk locations only",
            location=self.name,
        )

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()
