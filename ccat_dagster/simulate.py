"""A simulated CCAT world for the demo and the tests: the default topology on local disks, and an
instrument that writes observation files.

:func:`demo_topology` keeps the three sites and locations of the default topology but puts every
storage on a local directory under one home (no SSH host, no S3 endpoint), so the whole chain
runs on one machine. :func:`simulate_instrument` writes instrument-like files (kilobytes to tens
of megabytes) whose content is cheap to produce but unique per file, so checksums differ.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccat_ops_db.topology import load_topology

DEFAULT_TOPOLOGY_PATH = Path(__file__).parent / "topologies" / "default.yaml"
# Content is this block repeated behind a per-file header: fast to write, distinct checksums.
_BLOCK_SIZE = 64 * 1024


def default_topology() -> dict[str, Any]:
    """The packaged default topology (ccat, cologne, us) as a raw mapping."""
    return load_topology(DEFAULT_TOPOLOGY_PATH)


def demo_topology(home: Path) -> dict[str, Any]:
    """The default topology with every storage a local disk ``home/<site>/<location>``.

    The directories are created, so the result can be applied and used at once.
    """
    topology = copy.deepcopy(default_topology())
    for site in topology["sites"]:
        for location in site["locations"]:
            path = Path(home).resolve() / site["short_name"] / location["name"]
            path.mkdir(parents=True, exist_ok=True)
            location["storage"] = {"kind": "disk", "path": str(path)}
    return topology


@dataclass(frozen=True)
class SimulatedFile:
    path: Path
    obs_unit: str
    instrument_module: str
    size: int


def simulate_instrument(
    root: Path,
    *,
    n_obs_units: int = 2,
    modules: tuple[str, ...] | list[str] = ("pcam_280ghz", "pcam_350ghz"),
    files_per_unit: int = 3,
    min_size: int = 4 * 1024,
    max_size: int = 16 * 1024 * 1024,
    seed: int = 0,
    obs_unit_prefix: str = "obs",
    marker: str | None = None,
) -> list[SimulatedFile]:
    """Write ``files_per_unit`` files per obs unit and module under ``root/<obs_unit>/<module>/``.

    Sizes are log-uniform in [min_size, max_size] (seeded, reproducible). Existing files of the
    same name are overwritten, so call it with a fresh ``obs_unit_prefix`` for new observations.
    With ``marker``, an empty file of that name is written into each directory after its files,
    as an instrument marks a finished observation (the topology's ``ingest.marker``).
    """
    if not 0 < min_size <= max_size:
        raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
    rng = random.Random(seed)
    block = rng.randbytes(_BLOCK_SIZE)
    files = []
    for u in range(n_obs_units):
        obs_unit = f"{obs_unit_prefix}_{seed:04d}_{u:04d}"
        for module in modules:
            directory = Path(root) / obs_unit / module
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(files_per_unit):
                size = int(math.exp(rng.uniform(math.log(min_size), math.log(max_size))))
                path = directory / f"{module}_{obs_unit}_{i:05d}.dat"
                _write_file(path, size, f"{obs_unit}/{module}/{i}/{rng.random()}".encode(), block)
                files.append(SimulatedFile(path, obs_unit, module, size))
            if marker is not None:
                (directory / marker).write_bytes(b"")
    return files


def _write_file(path: Path, size: int, header: bytes, block: bytes) -> None:
    with open(path, "wb") as fh:
        head = header[:size]
        fh.write(head)
        remaining = size - len(head)
        while remaining > 0:
            n = min(remaining, len(block))
            fh.write(block[:n])
            remaining -= n
