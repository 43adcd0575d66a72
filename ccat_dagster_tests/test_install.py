"""A non-editable install works: the wheel built from the tracked files carries everything the
``ccat`` command needs at run time (migrations, topologies, Dagster instance templates).

The wheel is built from a copy of the repository's tracked files (so an untracked file in a
checkout cannot hide a missing one) and installed with ``--no-deps`` into a fresh venv whose
dependencies come from the project's venv (a ``.pth`` line, not the editable install). Then
``ccat db upgrade``, ``ccat topology apply`` of the packaged default topology, ``ccat instance
init`` and the whole ``ccat demo`` run from that venv, outside the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
        f"--- stdout:\n{result.stdout[-4000:]}\n--- stderr:\n{result.stderr[-4000:]}"
    )
    return result.stdout


def _copy_tracked_files(target: Path) -> None:
    try:
        names = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    for name in filter(None, names):
        source = ROOT / name
        if not source.exists():  # deleted in the working tree, not yet committed
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name, follow_symlinks=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A venv with the project's wheel installed (not editable), and an env to run it in."""
    base = tmp_path_factory.mktemp("install")
    source, wheels, venv = base / "source", base / "wheels", base / "venv"
    source.mkdir()
    _copy_tracked_files(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCAT_", "DAGSTER_"))}
    env.pop("PYTHONPATH", None)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        cwd=base,
        env=env,
    )
    (wheel,) = wheels.glob("ccat_dagster-*.whl")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base, env=env)
    python = venv / "bin" / "python"
    _run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], cwd=base, env=env)
    # Dependencies from the project's venv, appended after the new venv's own site-packages.
    # A .pth *line* adds the directory without processing its .pth files, so the project's
    # editable install there is not active in the new venv.
    new_site = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=base,
        env=env,
    ).strip()
    (Path(new_site) / "project_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv, env


def test_the_wheel_is_what_runs(installed, tmp_path):
    venv, env = installed
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import ccat_dagster; print(ccat_dagster.__file__)"],
        cwd=tmp_path,
        env=env,
    ).strip()
    assert Path(where).is_relative_to(venv), f"ccat_dagster imported from {where}, not the wheel"


def test_cli_works_from_a_non_editable_install(installed, tmp_path):
    venv, env = installed
    ccat = str(venv / "bin" / "ccat")
    env = {**env, "CCAT_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dh")}
    _run([ccat, "db", "upgrade"], cwd=tmp_path, env=env)
    site_packages = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import ccat_dagster, os; print(os.path.dirname(ccat_dagster.__file__))",
        ],
        cwd=tmp_path,
        env=env,
    ).strip()
    out = _run(
        [ccat, "topology", "apply", f"{site_packages}/topologies/default.yaml"],
        cwd=tmp_path,
        env=env,
    )
    assert "created site ccat" in out
    out = _run([ccat, "instance", "init"], cwd=tmp_path, env=env)
    assert (tmp_path / "dh" / "dagster.yaml").read_text().startswith("# Dagster instance")
    assert "dagster.yaml" in out


def test_demo_runs_from_a_non_editable_install(installed, tmp_path):
    venv, env = installed
    env = {**env, "CCAT_HOME": str(tmp_path / "demo")}
    out = _run([str(venv / "bin" / "ccat"), "demo"], cwd=tmp_path, env=env, timeout=1800)
    assert "pipeline idle" in out
    assert "the ingest sensor files them" in out
