"""Shared set-up of pipeline tests: a three-site topology on real components, filing, driving.

ccat: SOURCE primecam_raw_data (local) and BUFFER telescope_buffer, which the other sites reach
over a real sshd; cologne: BUFFER + LONG_TERM_ARCHIVE on the moto S3 server; us: BUFFER +
LONG_TERM_ARCHIVE on disk.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from dagster import DagsterInstance
from sqlalchemy.orm import Session

from ccat_dagster.lifecycle.filing import register_raw_data_files
from ccat_dagster.runner import RunnerReport, load_site_definitions, run_until_idle
from ccat_dagster.simulate import SimulatedFile, simulate_instrument
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology


def real_topology(
    root: Path,
    *,
    sshd=None,
    s3_endpoint: str | None = None,
    bucket: str | None = None,
    policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The e2e topology; without sshd/S3 every storage is a local disk under ``root``."""

    def disk(*parts: str, remote: bool = False) -> dict[str, Any]:
        path = root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        spec: dict[str, Any] = {"kind": "disk", "path": str(path)}
        if remote and sshd is not None:
            spec.update(
                host=sshd.host, port=sshd.port, user=sshd.user, known_hosts=sshd.known_hosts
            )
        return spec

    cologne_lta = (
        {
            "kind": "s3",
            "bucket": bucket,
            "endpoint_url": s3_endpoint,
            "prefix": "raw",
            "region": "us-east-1",
        }
        if s3_endpoint
        else disk("cologne", "lta")
    )
    return {
        "sites": [
            {
                "short_name": "ccat",
                "name": "CCAT Observatory",
                "locations": [
                    {"name": "primecam_raw_data", "type": "SOURCE", "storage": disk("ccat", "src")},
                    {
                        "name": "telescope_buffer",
                        "type": "BUFFER",
                        "priority": 1,
                        "storage": disk("ccat", "buffer", remote=True),
                    },
                ],
            },
            {
                "short_name": "cologne",
                "name": "University of Cologne",
                "locations": [
                    {"name": "buffer", "type": "BUFFER", "storage": disk("cologne", "buffer")},
                    {"name": "lta", "type": "LONG_TERM_ARCHIVE", "storage": cologne_lta},
                ],
            },
            {
                "short_name": "us",
                "name": "US archive",
                "locations": [
                    {"name": "buffer", "type": "BUFFER", "storage": disk("us", "buffer")},
                    {"name": "lta", "type": "LONG_TERM_ARCHIVE", "storage": disk("us", "lta")},
                ],
            },
        ],
        "policy": {
            "data_transfer_package_max_bytes": 3_000_000,
            "data_transfer_package_max_wait_minutes": 0,
            **(policy or {}),
        },
    }


def file_simulated_data(
    session: Session,
    root: Path,
    *,
    n_obs_units: int = 2,
    files_per_unit: int = 3,
    max_size: int = 900_000,
    seed: int = 1,
) -> list[SimulatedFile]:
    files = simulate_instrument(
        root / "ccat" / "src",
        n_obs_units=n_obs_units,
        modules=("pcam_280ghz", "pcam_350ghz"),
        files_per_unit=files_per_unit,
        min_size=1_000,
        max_size=max_size,
        seed=seed,
    )
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for f in files:
        groups[(f.obs_unit, f.instrument_module)].append(f.path)
    for (obs_unit, module), paths in sorted(groups.items()):
        register_raw_data_files(session, "ccat/primecam_raw_data", obs_unit, module, paths)
    session.commit()
    return files


def setup_pipeline(url: str, topology: dict[str, Any], root: Path, **filing) -> list[SimulatedFile]:
    with session_scope(url) as session:
        apply_topology(session, topology)
    with session_scope(url) as session:
        return file_simulated_data(session, root, **filing)


def drive(
    url: str,
    instance: DagsterInstance,
    *,
    sites=None,
    max_passes: int = 100,
    include_schedules: bool = True,
) -> RunnerReport:
    return run_until_idle(
        load_site_definitions(sites, ops_db_url=url),
        instance=instance,
        max_passes=max_passes,
        include_schedules=include_schedules,
        log=lambda m: None,
    )


def tar_members(data: bytes) -> dict[str, bytes]:
    """name -> bytes of every regular member of a tar held in memory (small test packages)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar.getmembers():
            if member.isfile():
                out[member.name] = tar.extractfile(member).read()
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
