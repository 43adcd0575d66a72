"""Deletion: the matrix of docs/lifecycle.md, and the cycle that applies it.

- :mod:`.rules`: the deletion matrix as set-based SQL (what may go now, and what is blocked);
- :mod:`.claims`: claiming copies so two cleanups never delete the same copy;
- :mod:`.last_copy`: the gate: archive copies re-verified live before the last copy outside goes;
- :mod:`.cycle`: plan, claim, gate, delete through the Storage interface, record.
"""
