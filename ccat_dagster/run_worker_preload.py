"""What the forkserver helper of a code server imports before it forks run workers
(``run_workers.py``). It imports nothing else, and no other process imports it.

- The site module, and through it Dagster and all of ``ccat_dagster``: each run worker forked
  from the helper has them already.
- A fork hook that ties each run worker's life to the helper's (Linux ``PR_SET_PDEATHSIG``).
  The code server learns how its run workers end through the helper. If the helper died first
  (out of memory, a stray ``kill``), the code server would take every run in flight for dead
  (exit status 255) and mark it FAILED, and the sensors would start the same items again while
  the old worker still worked on them. With the hook those workers are killed with the helper,
  as ``kill -9`` kills one (docs/operations.md, "Dead runs and interrupted work"), so a run
  marked FAILED has really stopped. The next launch starts a new helper.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import ccat_dagster.sites.site  # noqa: F401 - imported here once, for every run worker

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: the helper: this module is imported in it, before it forks anything
_HELPER_PID = os.getpid()


def _die_with_the_helper() -> None:
    """In a process the helper has just forked: be killed when the helper dies."""
    if os.getppid() != _HELPER_PID:
        return  # a process a run worker forked in turn: its own parent watches it
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != _HELPER_PID:
        os._exit(255)  # the helper died between the fork and the prctl


if sys.platform == "linux":
    os.register_at_fork(after_in_child=_die_with_the_helper)
