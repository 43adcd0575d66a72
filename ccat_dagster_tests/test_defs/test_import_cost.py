"""Every code server, run worker and CLI command is a fresh Python process that imports the
site's code: what it imports at module level it pays on every run launch. pandas and numpy (a
quarter of a second) are only for the disk forecast, dagster-aws (a fifth, and more through
what it imports) only for the runs that reach S3, so loading the code location, the
definitions module or the CLI must not import them."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY_AND_RARE = ("pandas", "numpy", "dagster_aws")


@pytest.mark.parametrize(
    "module", ["ccat_dagster.sites.site", "ccat_dagster.defs.definitions", "ccat_dagster.cli"]
)
def test_loading_the_code_imports_no_library_only_some_runs_need(module):
    probe = (
        f"import sys, {module}\nprint(','.join(m for m in {HEAVY_AND_RARE!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"{module} imports {done.stdout.strip()} at module level"
