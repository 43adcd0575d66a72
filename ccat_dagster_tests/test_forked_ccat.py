"""The preload of the processes that fork ``ccat`` commands (the fault harness's zygote, the
documentation test's command server) refuses to leave them forking with a thread running."""

from __future__ import annotations

import subprocess
import sys

STRAY_THREAD = """
import threading
stop = threading.Event()
threading.Thread(target=stop.wait, name="stray-thread", daemon=True).start()
from ccat_dagster_tests.forked_ccat import preload
try:
    preload()
except RuntimeError as exc:
    print(exc)
    raise SystemExit(3)
print("preloaded")
"""


def test_preload_refuses_a_process_with_a_thread_running():
    done = subprocess.run(
        [sys.executable, "-c", STRAY_THREAD], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "stray-thread" in done.stdout
    assert "forking is unsafe" in done.stdout


def test_preload_passes_in_a_single_threaded_process():
    script = STRAY_THREAD.replace(
        'threading.Thread(target=stop.wait, name="stray-thread", daemon=True).start()', ""
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "preloaded"
