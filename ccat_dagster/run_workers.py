"""Run workers forked from a process that has already imported Dagster and the site's code.

Dagster's code server (``dagster api grpc``, the process ``dagster code-server start`` runs)
starts each run in a new interpreter: multiprocessing's ``spawn``. That interpreter imports
Dagster and the site's code again, about 3 s of CPU on the site hosts' cores. The launch waits
for it: the daemon's launch call returns only once the worker has started, so every run of the
pipeline's chain of stages pays it on its critical path. With ``forkserver`` the code server
starts one helper process. That helper imports those modules once, and each run worker is a
fork of it: the same code and the same run, without the imports.

Dagster 1.13 has no option for this. The code server keeps its multiprocessing context in the
private attribute ``DagsterApiServer._mp_ctx``, and `fork_run_workers_from_preloaded_server`
replaces it with a property on the class. It acts only in a process that runs a Dagster code
server (``dagster._grpc.server`` imported). If a Dagster release renamed the attribute, the
property would be unused and runs would start as Dagster starts them: slower, never wrong.
``test_defs/test_run_workers.py`` reads the server's source for the attribute, and
``test_deployment_dead_runs.py`` checks the parent of a real code server's run worker, so an
upgrade that silently drops the gain fails there.

What a forked worker shares with the helper is imported code only (``run_worker_preload.py``
says what the helper imports, and why a worker dies with it). The helper is a fresh
interpreter started by the code server: it opens no database connection, starts no thread and
builds no definitions when it imports the site module (they are lazy), so each run connects and
builds its own. The helper exits with the code server; a reload of the code location
(``dagster code-server start`` restarts its server) starts a new one with the new code.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Sequence

#: what the helper imports once: the site module (and through it Dagster and all of ccat_dagster)
#: and the hook that kills a run worker with the helper (run_worker_preload.py)
PRELOADED_MODULES: tuple[str, ...] = ("ccat_dagster.run_worker_preload",)

_SERVER_MODULE = "dagster._grpc.server"
_SERVER_CLASS = "DagsterApiServer"
_CONTEXT_ATTRIBUTE = "_mp_ctx"


def fork_run_workers_from_preloaded_server(
    preload: Sequence[str] = PRELOADED_MODULES,
) -> bool:
    """In a Dagster code server: start its run workers from a ``forkserver`` helper that has
    imported ``preload``. Elsewhere, and when called again, nothing changes. True when the code
    server's run workers are now forked."""
    server_module = sys.modules.get(_SERVER_MODULE)
    server_class = getattr(server_module, _SERVER_CLASS, None)
    if server_class is None:
        return False
    if isinstance(server_class.__dict__.get(_CONTEXT_ATTRIBUTE), property):
        return True
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    # A property, so that it wins over the attribute the running server's __init__ already set
    # (a data descriptor of the class comes before the instance's own attributes); its setter
    # ignores the `spawn` context of servers made later.
    setattr(
        server_class,
        _CONTEXT_ATTRIBUTE,
        property(lambda _server: context, lambda _server, _value: None),
    )
    return True


def restore_spawned_run_workers() -> None:
    """Undo `fork_run_workers_from_preloaded_server`: the code server starts its run workers as
    Dagster does (``spawn``), each importing everything anew. The baseline of
    ``bench/bench_run_launch.py``; nothing in the product calls it."""
    server_class = getattr(sys.modules.get(_SERVER_MODULE), _SERVER_CLASS, None)
    if server_class is not None and isinstance(
        server_class.__dict__.get(_CONTEXT_ATTRIBUTE), property
    ):
        # the running server's own attribute, set by its __init__, shows again
        delattr(server_class, _CONTEXT_ATTRIBUTE)
