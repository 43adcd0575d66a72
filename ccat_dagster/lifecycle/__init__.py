"""The data lifecycle as plain Python over the ops database and the Storage interface (no Dagster).

- :mod:`.common`: what every part shares (policy, locations, copies, status transitions, retries);
- :mod:`.capacity`: whether a location can take work (availability, buffer levels, admission);
- :mod:`.ingest`: filing raw files at a SOURCE and packaging them (stage 1);
- :mod:`.transfer`: bundling, routing, transfers and unpacking (stages 2 to 4);
- :mod:`.archive`: the long-term archives (stage 5), their live checks and repair;
- :mod:`.deletion`: the deletion matrix and the cleanup cycle;
- :mod:`.staging`: StagingJobs for processing;
- :mod:`.integrity`: ``ccat verify``;
- :mod:`.recovery`, :mod:`.summary`, :mod:`.temporaries`: operator tools across every stage
  (retry FAILED work, the per-stage summary, leftovers of killed runs).
"""
