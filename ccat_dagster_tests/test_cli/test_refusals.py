"""Every refusal of ``ccat`` is one line on stderr saying what to do, with a non-zero exit and
no traceback: bad input, a missing or unreachable ops DB, unknown names, a demo home that is not
one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ccat_dagster.cli import app

runner = CliRunner()


def _refused(args: list[str], *, exit_code: int = 1, env: dict | None = None) -> str:
    """Run ``ccat args``; assert a one-line refusal and return that line."""
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def applied(ops_db_url, topology_file):
    assert runner.invoke(app, ["topology", "apply", str(topology_file)]).exit_code == 0
    return ops_db_url


def test_demo_refuses_a_home_that_is_not_a_demo_home(tmp_path, monkeypatch):
    """Bug: `ccat demo` with CCAT_HOME at an existing other directory printed a traceback."""
    home = tmp_path / "not-a-demo"
    home.mkdir()
    (home / "precious.dat").write_text("keep me")
    monkeypatch.setenv("CCAT_HOME", str(home))
    for args in (["demo"], ["demo", "--prepare"]):
        line = _refused(args)
        assert "is not a demo home" in line
        assert "point CCAT_HOME" in line
    assert (home / "precious.dat").read_text() == "keep me"
    assert sorted(p.name for p in home.iterdir()) == ["precious.dat"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not-a-url", "CCAT_OPS_DB_URL is not a usable database URL"),
        ("nosuchdialect://u@127.0.0.1/db", "CCAT_OPS_DB_URL is not a usable database URL"),
        ("mysql://u@127.0.0.1/db", "needs the Python driver"),
        ("sqlite:////nonexistent-dir/for/ops.db", "cannot use the ops database"),
        (None, "cannot use the ops database at postgresql+psycopg2://nobody@127.0.0.1:"),
    ],
    ids=["unparsable", "unknown-dialect", "missing-driver", "missing-sqlite-dir", "unreachable"],
)
@pytest.mark.parametrize("command", [["status"], ["db", "current"], ["retry"]], ids=" ".join)
def test_unusable_ops_db_url(url, expected, command, monkeypatch):
    url = url or f"postgresql+psycopg2://nobody@127.0.0.1:{_free_port()}/ops"
    monkeypatch.setenv("CCAT_OPS_DB_URL", url)
    assert expected in _refused(command)


def test_ops_db_without_schema(empty_sqlite):
    for command in (["status"], ["deletion-plan"], ["run-until-idle"], ["retry"]):
        assert "run `ccat db upgrade`" in _refused(command)


def test_ops_db_without_topology(ops_db_url, monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    line = _refused(["run-until-idle", "--max-passes", "1"])
    assert "no active sites yet: run `ccat topology apply FILE`" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["deletion-plan", "-l", "nosuch"], "unknown location 'nosuch'"),
        (["staging", "list", "-l", "nosuch"], "unknown location 'nosuch'"),
        (["disk-monitor", "--location-name", "nosuch"], "unknown location 'nosuch'"),
        (["disk-monitor", "--site", "nosuch"], "no active disk location at site 'nosuch'"),
        (["disk-monitor"], "give exactly one of --all"),
        (["retry", "-p", "nosuch"], "unknown raw data package(s): nosuch"),
        (["retry", "-l", "nosuch"], "unknown location 'nosuch'"),
        (["retry"], "nothing to retry"),
        (["staging", "complete", "999"], "no staging job 999"),
        (["staging", "create", "-l", "nosuch", "-p", "x"], "nosuch"),
        (["run-until-idle", "--site", "nosuch"], "site 'nosuch' is not in the topology"),
        (["quarantine", "release", "999"], "not in quarantine: 999"),
        (["quarantine", "purge", "999", "--yes"], "not in quarantine: 999"),
        (["quarantine", "list", "-l", "nosuch"], "unknown location 'nosuch'"),
        (
            [
                "files",
                "register",
                "-l",
                "nosuch",
                "--obs-unit",
                "o",
                "--instrument-module",
                "m",
                ".",
            ],
            "unknown location 'nosuch'",
        ),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else None,
)
def test_unknown_names(applied, args, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    assert expected in _refused(args)


def test_bad_topology_paths(ops_db_url, tmp_path):
    assert "cannot read" in _refused(["topology", "apply", str(tmp_path / "missing.yaml")])
    assert "cannot read" in _refused(["topology", "apply", str(tmp_path)])


def test_a_path_that_cannot_be_written(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = _refused(["instance", "init", "--home", str(blocker / "dagster_home")])
    assert str(blocker) in line


@pytest.mark.parametrize(
    "args",
    [
        ["files", "register", "-l", "x"],
        ["no-such-command"],
        ["verify", "--sample", "lots"],
        ["staging", "list", "--bogus"],
    ],
    ids=" ".join,
)
def test_usage_errors_are_one_line_with_exit_2(args):
    assert "--help`" in _refused(args, exit_code=2)


def test_installed_ccat_refuses_without_traceback(tmp_path):
    """The same through the installed command (its own process, as an operator runs it)."""
    home = tmp_path / "not-a-demo"
    home.mkdir()
    (home / "precious.dat").write_text("keep me")
    env = {**os.environ, "CCAT_HOME": str(home)}
    env.pop("CCAT_DEBUG", None)
    env.pop("CCAT_OPS_DB_URL", None)
    ccat = Path(sys.executable).parent / "ccat"
    command = [str(ccat)] if ccat.exists() else [sys.executable, "-m", "ccat_dagster.cli"]
    for args, env_extra in ((["demo"], {}), (["status"], {"CCAT_OPS_DB_URL": "not-a-url"})):
        proc = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            env={**env, **env_extra},
            timeout=120,
        )
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.splitlines()) == 1
        assert proc.stderr.startswith("Error: ")
