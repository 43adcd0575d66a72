"""What every part of the lifecycle shares.

- :mod:`.policy`: the lifecycle policy in force (defaults overridden by ``policy_setting`` rows);
- :mod:`.locations`: sites and data locations, primary buffers with failover;
- :mod:`.operations`: the operations and the location types where each may run;
- :mod:`.names`: the names of jobs, sensors and concurrency pools;
- :mod:`.copies`: PhysicalCopy rows, one per object and location;
- :mod:`.progress`: audited status transitions of an operation row;
- :mod:`.retries`: retry bookkeeping, then FAILED;
- :mod:`.outcomes`: what one stage did to one package, for the UI;
- :mod:`.locks`: planner locks, so two planners of one scope take turns.
"""
