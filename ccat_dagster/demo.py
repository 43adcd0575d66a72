"""The demo: the whole chain on the embedded default (SQLite, local disks, no services).

A simulated instrument writes a few hundred files at the telescope's SOURCE and marks each
finished observation; nobody files them: the SOURCE's ingest sensor does, and the real sensors
and jobs of every site drive them to ARCHIVED in both long-term archives (``run-until-idle``),
then the cleanup removes the telescope's temporary copies by the rules.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ccat_dagster.simulate import demo_topology, simulate_instrument
from ccat_ops_db.topology import apply_topology

MARKER = ".ccat-demo-home"
#: a demo home with the topology and no data yet (`ccat demo --prepare`, which `make ui` runs):
#: `ccat demo` fills it instead of starting afresh, so a UI already open on it keeps working
PREPARED = ".ccat-demo-prepared"
# Small bundles and no waiting so a few hundred MB show every stage; retention 0 so the
# two-stage deletion of the telescope's raw files completes within the demo.
DEMO_POLICY = {
    "data_transfer_package_max_bytes": 64_000_000,
    "data_transfer_package_max_wait_minutes": 0,
    "retention_period_minutes": 0,
}
SOURCE = ("ccat", "primecam_raw_data")
#: the marker the simulated instrument writes when an observation's module directory is done
DEMO_MARKER = ".complete"
DEMO_INGEST = {
    "pattern": "{obs_unit}/{instrument_module}/*",
    "ready": "marker",
    "marker": "{obs_unit}/{instrument_module}/" + DEMO_MARKER,
}


@dataclass(frozen=True)
class DemoData:
    files: int
    bytes: int
    obs_units: int
    modules: int


class DemoHomeError(RuntimeError):
    """CCAT_HOME points at a directory the demo must not touch."""


def is_demo_home(home: Path) -> bool:
    """``home`` is ours to use: missing, empty, or made by the demo."""
    return not home.exists() or (home / MARKER).exists() or not any(home.iterdir())


def _refuse(home: Path) -> DemoHomeError:
    return DemoHomeError(
        f"{home} exists and is not a demo home (no {MARKER} file); refusing to touch it: point "
        "CCAT_HOME (`make demo DEMO_HOME=...`) at an empty or demo directory"
    )


def reset_demo_home(home: Path) -> None:
    """Empty ``home`` if it is a demo home made by us (never anything else). A home only
    prepared (no data yet) is kept: a UI may already be open on its Dagster instance."""
    if not is_demo_home(home):
        raise _refuse(home)
    if (home / PREPARED).exists():
        return
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / MARKER).write_text("made by `ccat demo`; deleted and re-created by it\n")


def prepare_demo_home(home: Path) -> bool:
    """Make ``home`` a demo home (the marker files) unless it is one; True if it was new. The
    caller applies the topology (``initialise_demo``); a demo home with data is left as it is."""
    if not is_demo_home(home):
        raise _refuse(home)
    if (home / MARKER).exists():
        return False
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text("made by `ccat demo`; deleted and re-created by it\n")
    (home / PREPARED).write_text("topology applied, no data yet; `ccat demo` fills it\n")
    return True


def mark_filled(home: Path) -> None:
    """The demo wrote its data: the next `ccat demo` starts afresh again."""
    (home / PREPARED).unlink(missing_ok=True)


def initialise_demo(session, home: Path) -> None:
    """Apply the demo topology (every storage a local directory under ``home/data``; the
    telescope's SOURCE with an ingest sensor)."""
    topology = demo_topology(home / "data")
    topology["policy"] = {**topology.get("policy", {}), **DEMO_POLICY}
    for entry in topology["sites"]:
        for location in entry["locations"]:
            if (entry["short_name"], location["name"]) == SOURCE:
                location["ingest"] = DEMO_INGEST
    apply_topology(session, topology)


def simulate_observations(
    home: Path,
    *,
    n_obs_units: int = 4,
    modules: tuple[str, ...] = ("pcam_280ghz", "pcam_350ghz", "pcam_850ghz"),
    files_per_unit: int = 18,
    max_size: int = 20_000_000,
    seed: int = 7,
) -> DemoData:
    """A simulated instrument writes files at ccat/primecam_raw_data and marks each directory
    done; the ingest sensor files them (no ``ccat files register``)."""
    root = home / "data" / SOURCE[0] / SOURCE[1]
    files = simulate_instrument(
        root,
        n_obs_units=n_obs_units,
        modules=modules,
        files_per_unit=files_per_unit,
        min_size=2_000,
        max_size=max_size,
        seed=seed,
        marker=DEMO_MARKER,
    )
    return DemoData(
        files=len(files),
        bytes=sum(f.size for f in files),
        obs_units=n_obs_units,
        modules=len(modules),
    )


def verify_demo(session, data: DemoData) -> list[str]:
    """What is wrong at the end of the demo: a simulated file the ingest sensor did not file, a
    package missing from an LTA, or a temporary copy the rules should have removed from the
    telescope buffer."""
    from sqlalchemy import func, select

    from ccat_dagster.lifecycle.summary import packages_missing_from_ltas
    from ccat_ops_db.models import (
        DataLocation,
        LocationType,
        PackageState,
        PhysicalCopy,
        PhysicalCopyStatus,
        RawDataFile,
        RawDataPackage,
        Site,
    )

    problems = [
        f"{p} has no verified copy in {lta}" for p, lta in packages_missing_from_ltas(session)
    ]
    filed = session.scalar(select(func.count()).select_from(RawDataFile))
    if filed != data.files:
        problems.append(f"the ingest sensor filed {filed} of the {data.files} simulated files")
    not_archived = session.scalar(
        select(func.count()).where(RawDataPackage.state != PackageState.ARCHIVED)
    )
    if not_archived:
        problems.append(f"{not_archived} raw data package(s) not ARCHIVED")
    left = session.scalar(
        select(func.count())
        .select_from(PhysicalCopy)
        .join(DataLocation, DataLocation.id == PhysicalCopy.data_location_id)
        .join(Site, Site.id == DataLocation.site_id)
        .where(
            Site.short_name == "ccat",
            DataLocation.location_type == LocationType.BUFFER,
            PhysicalCopy.status != PhysicalCopyStatus.DELETED,
        )
    )
    if left:
        problems.append(f"{left} temporary copies left in the telescope buffer")
    return problems
