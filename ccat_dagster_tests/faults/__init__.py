"""Fault-injection suite: seeded, reproducible random schedules of faults against the real
components (a private PostgreSQL cluster, an OpenSSH sshd, a moto S3 server behind a fault proxy,
disk and S3 long-term archives, a small tmpfs buffer), each followed by healing the
infrastructure (not the data), running the pipeline to idle and ``ccat verify``.

``make faults`` (``python -m ccat_dagster_tests.faults``) runs a nightly-size set; ``make test``
runs the fixed set of ``test_faults.py``, which covers every fault kind. See docs/reliability.md.
"""

from pathlib import Path

#: the checkout: the harness's own processes (workers, zygote, proxy) start here
REPO_ROOT = Path(__file__).resolve().parents[2]
