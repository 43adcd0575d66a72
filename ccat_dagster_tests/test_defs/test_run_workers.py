"""Run workers forked from a preloaded helper (``ccat_dagster/run_workers.py``): each case in a
Python process of its own, so the class patched is never the one of this test process. The
deployment test ``test_deployment_dead_runs.py`` checks the parent of a real code server's run
worker; these check the mechanism, and that Dagster still keeps its context where the patch
puts the helper's."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_outside_a_code_server_nothing_is_patched():
    out = _python(
        """
        import sys
        import ccat_dagster.sites.site  # calls the hook at import
        from ccat_dagster.run_workers import fork_run_workers_from_preloaded_server
        print(fork_run_workers_from_preloaded_server(), "dagster._grpc.server" in sys.modules)
        """
    )
    assert out == "False False"


def test_in_a_code_server_runs_start_from_the_forkserver_with_the_site_module_preloaded():
    out = _python(
        """
        import multiprocessing
        from multiprocessing import forkserver
        from dagster._grpc.server import DagsterApiServer
        from ccat_dagster.run_workers import (
            fork_run_workers_from_preloaded_server,
            restore_spawned_run_workers,
        )

        server = object.__new__(DagsterApiServer)
        server._mp_ctx = multiprocessing.get_context("spawn")  # made before the site loaded
        first = fork_run_workers_from_preloaded_server()
        later = object.__new__(DagsterApiServer)
        later._mp_ctx = multiprocessing.get_context("spawn")  # made after
        again = fork_run_workers_from_preloaded_server()
        print(first, again, server._mp_ctx.get_start_method(), later._mp_ctx.get_start_method())
        print(forkserver._forkserver._preload_modules)
        restore_spawned_run_workers()  # the baseline of bench/bench_run_launch.py
        after = object.__new__(DagsterApiServer)
        after._mp_ctx = multiprocessing.get_context("spawn")
        print(server._mp_ctx.get_start_method(), after._mp_ctx.get_start_method())
        """
    )
    assert out.splitlines() == [
        "True True forkserver forkserver",
        "['ccat_dagster.run_worker_preload']",
        "spawn spawn",
    ]


def test_dagster_still_starts_runs_from_the_attribute_the_patch_replaces():
    """If a Dagster release stops starting run workers with ``self._mp_ctx``, the patch does
    nothing and runs start cold again: this fails first, naming what moved."""
    out = _python(
        """
        import inspect
        from dagster._grpc.server import DagsterApiServer
        init = inspect.getsource(DagsterApiServer.__init__)
        start = inspect.getsource(DagsterApiServer.StartRun)
        print("self._mp_ctx = multiprocessing.get_context" in init)
        print("self._mp_ctx.Process(" in start, "target=start_run_in_subprocess" in start)
        """
    )
    assert out.splitlines() == ["True", "True True"], (
        "DagsterApiServer no longer starts run workers from self._mp_ctx: "
        "update ccat_dagster/run_workers.py"
    )


def report_and_wait(ready) -> None:
    """A run worker's stand-in: says who its parent is and what it has imported, then waits."""
    import os
    import time

    ready.put((os.getppid(), "ccat_dagster.sites.site" in sys.modules))
    time.sleep(45)  # an orphan outliving the test process ends by itself


def test_a_forked_worker_has_the_code_already_and_dies_with_its_helper():
    """The helper's fork hook (run_worker_preload.py): a run worker forked from it starts with
    Dagster and the site module imported, and is killed when the helper is, so a code server
    never takes a worker for dead (helper gone, exit status 255) while it still works."""
    out = _python(
        """
        import multiprocessing, os, signal, time
        from multiprocessing import forkserver
        from ccat_dagster.run_health import process_running
        from ccat_dagster.run_workers import PRELOADED_MODULES
        from ccat_dagster_tests.test_defs.test_run_workers import report_and_wait as worker

        if __name__ == "__main__":
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(list(PRELOADED_MODULES))
            ready = context.Queue()
            process = context.Process(target=worker, args=(ready,))
            process.start()
            helper, preloaded = ready.get(timeout=60)
            assert helper == forkserver._forkserver._forkserver_pid, helper
            os.kill(helper, signal.SIGKILL)
            deadline = time.monotonic() + 30
            # it may linger as a zombie of the (dead) helper's reaper, init: ended all the same
            while time.monotonic() < deadline and process_running(process.pid):
                time.sleep(0.1)
            if process_running(process.pid):
                raise SystemExit("the worker outlived its helper")
            print(preloaded, process.exitcode)
        """
    )
    assert out == "True 255"
