"""Deletion: the matrix of docs/lifecycle.md, and the cycle that applies it.

- :mod:`.rules`: the deletion matrix as set-based SQL (what may go now, and what is blocked);
- :mod:`.plan`: what a cleanup would do now and why, changing nothing (``ccat deletion-plan``);
- :mod:`.claims`: claiming copies so two cleanups never delete the same copy;
- :mod:`.last_copy`: the gate: archive copies re-verified live before the last copy outside goes;
- :mod:`.executor`: claim, re-check, gate, delete through the Storage interface, record;
- :mod:`.cycle`: one cleanup cycle, every rule in order;
- :mod:`.retry`: permanently failed deletions given their retries back (``ccat retry``).

The live check of an archive copy itself is :mod:`ccat_dagster.lifecycle.archive.verification`.
"""
