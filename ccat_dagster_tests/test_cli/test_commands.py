"""The ``ccat`` command: every command's --help, the first-start path, and clean operator errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.simulate import simulate_instrument
from ccat_ops_db.migrate import current
from ccat_ops_db.models import RawDataFile
from ccat_ops_db.session import make_engine

runner = CliRunner()

COMMANDS = [
    [],
    ["db"],
    ["db", "upgrade"],
    ["db", "current"],
    ["instance"],
    ["instance", "init"],
    ["topology"],
    ["topology", "apply"],
    ["topology", "show"],
    ["list-locations"],
    ["files"],
    ["files", "register"],
    ["files", "declare-lost"],
    ["status"],
    ["run-until-idle"],
    ["retry"],
    ["demo"],
    ["deletion-plan"],
    ["disk-monitor"],
    ["staging"],
    ["staging", "create"],
    ["staging", "list"],
    ["staging", "complete"],
    ["verify"],
    ["quarantine"],
    ["quarantine", "list"],
    ["quarantine", "release"],
    ["quarantine", "purge"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "ccat")
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_db_upgrade_and_current(empty_sqlite):
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 0
    assert "no schema" in result.output
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert current(empty_sqlite) is not None
    result = runner.invoke(app, ["db", "current"])
    assert "(head)" in result.output


def test_first_topology_apply_creates_the_schema(empty_sqlite, topology_file):
    result = runner.invoke(app, ["topology", "apply", str(topology_file)])
    assert result.exit_code == 0, result.output
    assert "no schema yet; creating it" in result.stderr
    assert "created site ccat" in result.stdout
    assert current(empty_sqlite) is not None


def test_show_and_list_locations_without_schema_say_to_upgrade(empty_sqlite):
    for command in (["topology", "show"], ["list-locations"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1
        assert "run `ccat db upgrade`" in result.stderr


def test_topology_apply_show_and_list_locations(ops_db_url, topology_file):
    first = runner.invoke(app, ["topology", "apply", str(topology_file)])
    assert first.exit_code == 0, first.output
    assert "created cologne/lta (LONG_TERM_ARCHIVE, disk)" in first.stdout
    again = runner.invoke(app, ["topology", "apply", str(topology_file)])
    assert "no changes" in again.stdout

    shown = runner.invoke(app, ["topology", "show"])
    assert shown.exit_code == 0

    def paths(topology: dict) -> dict:
        return {
            f"{site['short_name']}/{loc['name']}": loc["storage"]["path"]
            for site in topology["sites"]
            for loc in site["locations"]
        }

    assert paths(yaml.safe_load(shown.stdout)) == paths(yaml.safe_load(topology_file.read_text()))

    listed = runner.invoke(app, ["list-locations"])
    assert listed.exit_code == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["SITE", "LOCATION", "TYPE", "STORAGE", "PRIORITY", "ACTIVE"]
    assert any(line.split()[:3] == ["cologne", "lta", "LONG_TERM_ARCHIVE"] for line in lines)
    rows = [line.split() for line in lines]
    assert [
        "cologne/lta",
        "long_term_archive_transfer",
        "cologne_lta_long_term_archive_transfer",
    ] in rows
    assert [
        "ccat/primecam_raw_data",
        "raw_data_package_creation",
        "ccat_primecam_raw_data_raw_data_package_creation",
    ] in rows


def test_topology_apply_dry_run_writes_nothing(ops_db_url, topology_file):
    result = runner.invoke(app, ["topology", "apply", "--dry-run", str(topology_file)])
    assert result.exit_code == 0
    assert "dry run" in result.stdout
    assert "created site ccat" in result.stdout
    listed = runner.invoke(app, ["list-locations"])
    assert "no locations yet" in listed.stdout


def test_invalid_topology_exits_1_with_message_and_no_traceback(ops_db_url, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites:\n  - {short_name: ccat, name: CCAT, locations: []}\n")
    result = runner.invoke(app, ["topology", "apply", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: invalid topology")
    assert "sites[0] (ccat): locations must be a non-empty list" in result.stderr
    assert "Traceback" not in result.output


def test_files_register_then_again(ops_db_url, topology_file, tmp_path, monkeypatch):
    runner.invoke(app, ["topology", "apply", str(topology_file)])
    files = simulate_instrument(
        tmp_path / "home" / "ccat" / "primecam_raw_data",
        n_obs_units=1,
        modules=["pcam_280"],
        files_per_unit=3,
        min_size=100,
        max_size=1000,
    )
    args = ["files", "register", "--location", "primecam_raw_data"]
    args += ["--obs-unit", files[0].obs_unit, "--instrument-module", "pcam_280"]
    args += [str(files[0].path.parent)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "registered 3 new file(s) at ccat/primecam_raw_data" in first.stdout
    # A relative path on the command line is taken from the current directory, as in a shell.
    monkeypatch.chdir(files[0].path.parent.parent)
    second = runner.invoke(app, [*args[:-1], "pcam_280"])
    assert "registered 0 new file(s)" in second.stdout
    assert "3 already registered" in second.stdout
    engine = make_engine(ops_db_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(RawDataFile)) == 3
    engine.dispose()


def test_files_register_bad_location_exits_1(ops_db_url, topology_file, tmp_path):
    runner.invoke(app, ["topology", "apply", str(topology_file)])
    args = ["files", "register", "-l", "buffer", "--obs-unit", "o", "--instrument-module", "m"]
    result = runner.invoke(app, [*args, str(tmp_path)])
    assert result.exit_code == 1
    assert "Error: location name 'buffer' is ambiguous" in result.stderr
    assert "Traceback" not in result.output


def _bytes_named_files(root: Path) -> tuple[Path, str]:
    """obs_0001/good.dat and obs_0001/bad<0xff>.dat (a name that is not valid UTF-8) under
    ``root``; returns the directory and the bad file's path as the shell would hand it over."""
    directory = root / "obs_0001"
    directory.mkdir(parents=True)
    (directory / "good.dat").write_bytes(b"good data")
    bad = os.path.join(os.fsencode(directory), b"bad\xff.dat")
    with open(bad, "wb") as fh:
        fh.write(b"data under a latin-1 name")
    return directory, os.fsdecode(bad)


def test_files_register_refuses_a_name_that_is_not_utf8(ops_db_url, topology_file, tmp_path):
    """Bug: a SOURCE file whose name is not valid UTF-8 made `ccat files register` die with a
    traceback. It is refused with one line naming the file (undecodable bytes escaped), exit 1,
    and nothing of the call is registered."""
    runner.invoke(app, ["topology", "apply", str(topology_file)])
    directory, bad = _bytes_named_files(tmp_path / "home" / "ccat" / "primecam_raw_data")
    args = ["files", "register", "-l", "primecam_raw_data", "--obs-unit", "obs_0001"]
    args += ["--instrument-module", "pcam_280"]
    for given in (str(directory), bad):
        result = runner.invoke(app, [*args, given])
        assert result.exit_code == 1, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "Traceback" not in result.output
        problem = [line for line in result.stderr.splitlines() if "not valid UTF-8" in line]
        assert len(problem) == 1, result.stderr
        assert "obs_0001/bad\\xff.dat" in problem[0], result.stderr
        assert "nothing was registered" in result.stderr
    engine = make_engine(ops_db_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(RawDataFile)) == 0
    engine.dispose()


def test_installed_ccat_refuses_a_name_that_is_not_utf8(tmp_path, topology_file):
    """The same through the installed command, the bytes name passed as a shell passes it."""
    env = {**os.environ, "CCAT_OPS_DB_URL": f"sqlite:///{tmp_path / 'ops.db'}"}
    env.pop("CCAT_DEBUG", None)
    ccat = Path(sys.executable).parent / "ccat"
    command = [str(ccat)] if ccat.exists() else [sys.executable, "-m", "ccat_dagster.cli"]
    apply = subprocess.run(
        [*command, "topology", "apply", str(topology_file)], env=env, timeout=120
    )
    assert apply.returncode == 0
    directory, bad = _bytes_named_files(tmp_path / "home" / "ccat" / "primecam_raw_data")
    proc = subprocess.run(
        [
            *command,
            "files",
            "register",
            "-l",
            "primecam_raw_data",
            "--obs-unit",
            "o",
            "--instrument-module",
            "m",
            os.fsencode(bad),
            os.fsencode(directory / "good.dat"),
        ],
        capture_output=True,
        env=env,
        timeout=120,
    )
    stderr = proc.stderr.decode("utf-8")  # the message itself is valid UTF-8
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert "bad\\xff.dat" in stderr
    assert "not valid UTF-8" in stderr


def test_installed_ccat_command_reports_errors_on_stderr(tmp_path):
    env = {**os.environ, "CCAT_OPS_DB_URL": f"sqlite:///{tmp_path / 'ops.db'}"}
    env.pop("CCAT_DEBUG", None)
    ccat = Path(sys.executable).parent / "ccat"
    command = [str(ccat)] if ccat.exists() else [sys.executable, "-m", "ccat_dagster.cli"]
    proc = subprocess.run(
        [*command, "topology", "apply", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Error: invalid topology" in proc.stderr
    assert "cannot read" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_instance_init_writes_the_packaged_template_once(tmp_path, monkeypatch):
    from ccat_dagster.instance import POSTGRES_TEMPLATE, SQLITE_TEMPLATE, template_path

    for name in ("DAGSTER_PG_URL", "DAGSTER_PG_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    result = runner.invoke(app, ["instance", "init"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "dh" / "dagster.yaml"
    assert written.read_text() == template_path(SQLITE_TEMPLATE).read_text()

    again = runner.invoke(app, ["instance", "init"])
    assert again.exit_code == 1
    assert "exists" in again.output
    assert "--force" in again.output

    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql+psycopg2://u@h:5432/dagster")
    forced = runner.invoke(app, ["instance", "init", "--force"])
    assert forced.exit_code == 0, forced.output
    assert written.read_text() == template_path(POSTGRES_TEMPLATE).read_text()


def test_instance_init_needs_a_home(monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    result = runner.invoke(app, ["instance", "init"])
    assert result.exit_code == 2
    assert "DAGSTER_HOME" in result.output


def test_progress_bars_only_on_a_terminal(monkeypatch):
    import io

    from ccat_dagster.cli._tables import progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress() as update:
        assert update is None, "piped or in a test: no progress bar"
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress() as update:
        update("checking and checksumming files", 1, 2)
        update("checking and checksumming files", 2, 2)
    assert "checking and checksumming files" in terminal.getvalue()


def test_tables_are_not_wrapped_when_piped():
    from ccat_dagster.cli._tables import render, table

    wide = table("LOCATION", "REASON")
    wide.add_row("cologne/lta", "x" * 500)
    lines = render(wide).splitlines()
    assert lines[0].split() == ["LOCATION", "REASON"]
    assert lines[-1].split() == ["cologne/lta", "x" * 500]


def test_tables_show_data_as_it_is_never_as_markup(monkeypatch):
    """Bug: a failure reason naming a path like "[/data/x]" is a closing tag to rich's markup:
    the table raised MarkupError (and "[bold]" vanished). Cells and lines are plain text, piped
    or on a terminal."""
    import io

    from ccat_dagster.cli._tables import render, show, table

    reason = "cannot delete [/data/x]: [bold]denied"
    cells = table("LOCATION", "REASON")
    cells.add_row("cologne/buffer", reason)
    assert reason in render(cells, f"line {reason}")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    show(cells, f"line {reason}")
    assert reason in terminal.getvalue()
