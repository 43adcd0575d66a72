"""storage_for_location and StorageRegistry: which backend a DataLocation row becomes, seen from
which site; tape refused clearly; one cached Storage per location within a run."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import select

from ccat_dagster.storage.errors import NotImplementedStorageError
from ccat_dagster.storage.factory import StorageRegistry, storage_for_location
from ccat_dagster.storage.local import LocalDiskStorage
from ccat_dagster.storage.s3 import S3Storage, make_s3_client
from ccat_ops_db.models import (
    DataLocation,
    DiskDataLocation,
    LocationType,
    S3DataLocation,
    Site,
    TapeDataLocation,
)


def buffer_with_host(site: Site, host: str = "archive.example", **kw) -> DiskDataLocation:
    return DiskDataLocation(
        site=site,
        name="buffer",
        location_type=LocationType.BUFFER,
        path=kw.pop("path", "/srv/buffer"),
        host=host,
        **kw,
    )


def test_tape_location_is_refused_with_a_clear_error():
    tape = TapeDataLocation(
        site=Site(short_name="cologne", name="Cologne"),
        name="tape_lta",
        location_type=LocationType.LONG_TERM_ARCHIVE,
    )
    with pytest.raises(NotImplementedStorageError) as info:
        storage_for_location(tape, local_site="cologne")
    assert "tape storage is declared but not implemented; use disk or s3 for location" in str(
        info.value
    )
    assert "cologne/tape_lta" in str(info.value)
    assert isinstance(info.value, NotImplementedError)


def test_disk_location_of_own_site_is_local_disk_even_with_host(tmp_path):
    cologne = Site(short_name="cologne", name="Cologne")
    location = buffer_with_host(cologne, path=str(tmp_path))
    storage = storage_for_location(location, local_site="cologne")
    assert isinstance(storage, LocalDiskStorage)
    assert storage.root == tmp_path
    assert storage.name == "cologne/buffer"


def test_disk_location_of_own_site_on_another_host_is_reached_over_ssh(tmp_path, monkeypatch):
    """$CCAT_HOST names this host: a location of its own site on another host (an instrument
    computer) is SSH; one on a host of that name is local; with $CCAT_HOST unset, the site
    decides (a single-host deployment, the demo)."""
    from ccat_dagster.storage.ssh import SSHStorage

    ccat = Site(short_name="ccat", name="CCAT")
    instrument = buffer_with_host(ccat, host="primecam-daq", path=str(tmp_path))
    buffer = buffer_with_host(ccat, host="buffer.telescope", path=str(tmp_path))
    monkeypatch.setenv("CCAT_HOST", "ops.telescope, buffer.telescope")
    assert isinstance(storage_for_location(instrument, local_site="ccat"), SSHStorage)
    assert isinstance(storage_for_location(buffer, local_site="ccat"), LocalDiskStorage)
    monkeypatch.delenv("CCAT_HOST")
    assert isinstance(storage_for_location(instrument, local_site="ccat"), LocalDiskStorage)
    other = storage_for_location(instrument, local_site="cologne", local_hosts=frozenset())
    assert isinstance(other, SSHStorage)


def test_disk_location_without_host_is_local_from_anywhere(tmp_path):
    ccat = Site(short_name="ccat", name="CCAT")
    location = DiskDataLocation(
        site=ccat, name="telescope_buffer", location_type=LocationType.BUFFER, path=str(tmp_path)
    )
    for local_site in (None, "ccat", "cologne"):
        assert isinstance(storage_for_location(location, local_site=local_site), LocalDiskStorage)


def test_disk_location_with_host_from_another_site_goes_over_ssh(
    sshd_server, tmp_path, monkeypatch
):
    from ccat_dagster.storage.ssh import SSHStorage

    root = sshd_server.root / "factory_buffer"
    root.mkdir()
    monkeypatch.setenv("CCAT_SSH_KEY_FILE", sshd_server.key_file)
    location = buffer_with_host(
        Site(short_name="cologne", name="Cologne"),
        host=sshd_server.host,
        port=sshd_server.port,
        user=sshd_server.user,
        path=str(root),
        known_hosts=sshd_server.known_hosts,
    )
    for local_site in ("ccat", None):
        storage = storage_for_location(location, local_site=local_site)
        try:
            assert isinstance(storage, SSHStorage)
            assert storage.name == "cologne/buffer"
            # The key file from the environment and known_hosts from the row really connect.
            storage.write_stream(f"from_{local_site}.bin", io.BytesIO(b"over ssh"))
        finally:
            storage.close()
    assert (root / "from_ccat.bin").read_bytes() == b"over ssh"
    assert (root / "from_None.bin").read_bytes() == b"over ssh"


def test_s3_location_builds_s3_storage_from_its_fields(s3_endpoint, s3_bucket, s3_client):
    location = S3DataLocation(
        site=Site(short_name="cologne", name="Cologne"),
        name="lta",
        location_type=LocationType.LONG_TERM_ARCHIVE,
        bucket=s3_bucket,
        prefix="raw/",
        endpoint_url=s3_endpoint,
        region="us-east-1",
    )
    storage = storage_for_location(location, local_site="ccat")
    assert isinstance(storage, S3Storage)
    assert (storage.name, storage.bucket, storage.prefix) == ("cologne/lta", s3_bucket, "raw")
    storage.write_stream("a.bin", io.BytesIO(b"abc"))
    assert s3_client.get_object(Bucket=s3_bucket, Key="raw/a.bin")["Body"].read() == b"abc"


def test_s3_client_factory_supplies_the_client(s3_endpoint, s3_bucket):
    from dagster_aws.s3 import S3Resource

    location = S3DataLocation(
        site=Site(short_name="us", name="US"),
        name="lta",
        location_type=LocationType.LONG_TERM_ARCHIVE,
        bucket=s3_bucket,
        endpoint_url=s3_endpoint,
        region="us-east-1",
    )
    made = []

    def from_resource(loc: S3DataLocation):
        client = S3Resource(endpoint_url=loc.endpoint_url, region_name=loc.region).get_client()
        made.append(client)
        return client

    storage = storage_for_location(location, s3_client_factory=from_resource)
    assert made
    assert storage.client is made[0]
    storage.write_stream("x", io.BytesIO(b"1"))
    assert storage.stat("x").size == 1


def test_registry_builds_each_storage_once_from_db_rows_and_closes_them(
    session, tmp_path, s3_endpoint, s3_bucket
):
    site = Site(short_name="cologne", name="University of Cologne")
    session.add_all(
        [
            DiskDataLocation(
                site=site, name="buffer", location_type=LocationType.BUFFER, path=str(tmp_path)
            ),
            S3DataLocation(
                site=site,
                name="lta",
                location_type=LocationType.LONG_TERM_ARCHIVE,
                bucket=s3_bucket,
                endpoint_url=s3_endpoint,
                region="us-east-1",
            ),
        ]
    )
    session.commit()
    session.expunge_all()
    locations = {loc.name: loc for loc in session.scalars(select(DataLocation))}

    closed = []

    def client_recording_close(loc: S3DataLocation):
        client = make_s3_client(endpoint_url=loc.endpoint_url, region=loc.region)
        real_close = client.close
        client.close = lambda: (closed.append(loc.name), real_close())
        return client

    with StorageRegistry(
        local_site="cologne", s3_client_factory=client_recording_close
    ) as storages:
        buffer, lta = storages.get(locations["buffer"]), storages.get(locations["lta"])
        assert storages.get(locations["buffer"]) is buffer
        assert storages.get(locations["lta"]) is lta
        assert isinstance(buffer, LocalDiskStorage)
        assert isinstance(lta, S3Storage)
        lta.write_stream("k", io.BytesIO(b"v"))
    assert closed == ["lta"]
    assert storages.get(locations["lta"]) is not lta  # a new run builds new storages
    storages.close()
