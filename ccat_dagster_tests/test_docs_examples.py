"""The documentation stays true: the ```bash blocks of README.md and docs/*.md run here, in a
fresh directory with the project's venv on PATH, in order, in one shell per document (as a
reader would paste them); a block that cannot run here is marked with
``<!-- not-run: reason -->`` on the line before its fence and is skipped. Also: the names of
jobs, sensors and schedules in the operator's guide are the ones the code defines, the
configuration reference lists every topology key and policy default, and relative links land.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ccat_dagster_tests.ccat_server import ccat_server
from ccat_ops_db.topology import (
    INGEST_KEYS,
    LOCATION_KEYS,
    POLICY_DEFAULTS,
    ROUTE_KEYS,
    SITE_KEYS,
    STORAGE_KEYS,
    THRESHOLD_KEYS,
    TOP_LEVEL_KEYS,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent
OPERATIONS = ROOT / "docs" / "operations.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->")
# Environment a reader's shell would not have: the docs run on the embedded default.
_SCRUBBED = ("CCAT_OPS_DB_URL", "DAGSTER_HOME", "DAGSTER_PG_URL", "DAGSTER_PG_HOST", "CCAT_HOME")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    code: str
    not_run: str | None  # the reason, when marked

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def bash_blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group(1) != "bash":
            continue
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip().splitlines()
        marker = _NOT_RUN.fullmatch(before[-1].strip()) if before else None
        blocks.append(Block(doc, line, match.group(2), marker.group(1) if marker else None))
    return blocks


def _sandbox(tmp_path: Path) -> Path:
    """A working directory that looks like the checkout (symlinks) but writes elsewhere."""
    work = tmp_path / "checkout"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name == ".git" or entry.name.startswith((".ccat", ".tmp", ".pytest")):
            continue
        (work / entry.name).symlink_to(entry)
    return work


def run_doc(doc: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[Block]]:
    runnable = [b for b in bash_blocks(doc) if b.not_run is None]
    script = ["set -eo pipefail"]
    for i, block in enumerate(runnable):
        script += [f"echo '::block {i}' >&2", block.code]
    script.append("echo '::all blocks ran' >&2")
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    work = _sandbox(tmp_path)
    # `ccat` from a command server that has the CLI imported (ccat_server.py): the guides run
    # some sixty commands, each a second or two of imports before it does anything
    with ccat_server(tmp_path / "bin") as ccat_bin:
        env.update(
            PATH=os.pathsep.join((str(ccat_bin), str(VENV_BIN), env.get("PATH", ""))),
            CCAT_HOME=str(work / ".ccat"),
            HOME=str(tmp_path),
            COLUMNS="120",
        )
        result = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    return result, runnable


# Documents whose every block is marked not-run (each with its reason, checked below) have
# nothing to execute here.
RUNNABLE_DOCS = [d for d in DOCS if any(b.not_run is None for b in bash_blocks(d))]


@pytest.mark.slow  # runs the guides' commands: whole pipelines, minutes
@pytest.mark.parametrize("doc", RUNNABLE_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_examples_run(doc: Path, tmp_path: Path):
    result, runnable = run_doc(doc, tmp_path)
    if result.returncode != 0 or "::all blocks ran" not in result.stderr:
        started = re.findall(r"::block (\d+)", result.stderr)
        block = runnable[int(started[-1])] if started else runnable[0]
        pytest.fail(
            f"the example at {block.where} failed (exit {result.returncode}):\n{block.code}\n"
            f"--- stdout (tail):\n{result.stdout[-3000:]}\n--- stderr (tail):\n"
            f"{result.stderr[-3000:]}"
        )


def test_operators_guide_examples_mostly_run():
    """Marking everything not-run would make the test above vacuous."""
    blocks = bash_blocks(OPERATIONS)
    runnable = [b for b in blocks if b.not_run is None]
    assert len(runnable) >= 10
    assert len(runnable) > len(blocks) / 2


def test_every_not_run_marker_has_a_reason_and_a_block():
    for doc in DOCS:
        text = doc.read_text()
        markers = [m for m in _NOT_RUN.finditer(text)]
        marked = [b for b in bash_blocks(doc) if b.not_run is not None]
        assert len(markers) == len(marked), f"{doc}: a not-run marker is not right before a fence"
        for block in marked:
            assert len(block.not_run) >= 10, f"{block.where}: say why it cannot run here"


def test_make_demo_and_make_test_are_never_rerun_by_this_test():
    for doc in DOCS:
        for block in bash_blocks(doc):
            if re.search(r"\bmake (demo|test|install|ui)\b", block.code):
                assert block.not_run, f"{block.where} runs make; mark it not-run"


# --------------------------------------------------------------------------- names and keys


def _definition_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[set[str], set[str]]:
    """Jobs, sensors, schedules and checks of every site of the default topology (Cologne has a
    PROCESSING location, so staging is included), with the site as ``<site>``; and the names of
    their ops."""
    from ccat_dagster.defs.definitions import build_site_definitions
    from ccat_dagster.simulate import default_topology
    from ccat_ops_db.migrate import upgrade
    from ccat_ops_db.session import session_scope
    from ccat_ops_db.topology import apply_topology

    url = f"sqlite:///{tmp_path / 'ops.db'}"
    monkeypatch.setenv("CCAT_OPS_DB_URL", url)
    upgrade(url)
    topology = default_topology()
    with session_scope(url) as session:
        apply_topology(session, topology)
    names: set[str] = set()
    ops: set[str] = set()
    for site in (s["short_name"] for s in topology["sites"]):
        repo = build_site_definitions(site, ops_db_url=url).get_repository_def()
        jobs = [j for j in repo.get_all_jobs() if not j.name.startswith("__")]
        found = [j.name for j in jobs]
        found += [s.name for s in repo.sensor_defs] + [s.name for s in repo.schedule_defs]
        names |= {n.replace(f"{site}_", "<site>_", 1) for n in found}
        names |= {key.name for key in repo.asset_graph.asset_check_keys}
        ops |= {n.name.replace(f"{site}_", "<site>_", 1) for j in jobs for n in j.graph.nodes}
    return names, ops


def test_operators_guide_names_every_job_sensor_schedule_and_check(tmp_path, monkeypatch):
    guide = OPERATIONS.read_text()
    names, ops = _definition_names(tmp_path, monkeypatch)
    assert "<site>_staging_sensor" in names
    assert "<site>_cleanup_schedule" in names
    missing = sorted(n for n in names if f"`{n}`" not in guide)
    assert not missing, f"docs/operations.md does not describe {missing}"
    described = set(re.findall(r"`(<site>_[a-z_]+)`", guide))
    unknown = sorted(described - names - ops)
    assert not unknown, f"docs/operations.md names jobs/sensors that do not exist: {unknown}"


def test_configuration_reference_lists_every_topology_key():
    doc = CONFIGURATION.read_text()
    keys = {*TOP_LEVEL_KEYS, *SITE_KEYS, *LOCATION_KEYS, *INGEST_KEYS, *THRESHOLD_KEYS}
    keys |= set(ROUTE_KEYS)
    keys |= set(POLICY_DEFAULTS)
    keys |= {k for kind_keys in STORAGE_KEYS.values() for k in kind_keys}
    missing = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not missing, f"docs/configuration.md does not describe {missing}"


def test_configuration_reference_gives_the_policy_defaults():
    doc = CONFIGURATION.read_text()
    for key, default in POLICY_DEFAULTS.items():
        row = re.search(rf"^\| `{key}` \| `([^`]*)` \|", doc, re.MULTILINE)
        assert row, f"no row for policy key {key} in docs/configuration.md"
        if isinstance(default, dict):
            expected = "{" + ", ".join(f"{k}: {v}" for k, v in default.items()) + "}"
        else:
            expected = str(default)
        assert row.group(1) == expected, f"{key}: documented {row.group(1)}, code {expected}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_relative_links_and_anchors_exist():
    for doc in [*DOCS, ROOT / "docker" / "README.md"]:
        if not doc.exists():
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            assert linked.exists(), f"{doc.name}: link to missing {target}"
            if anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.MULTILINE)
                slugs = {_slug(h) for h in headings}
                assert anchor in slugs, f"{doc.name}: no heading for #{anchor} in {linked.name}"
