"""The schedules the fault harness draws: reproducible, every kind in the fixed set, and never
more than one archive copy spoiled at rest (the promise covers one bad archive copy, not two)."""

from __future__ import annotations

from collections import Counter

from ccat_dagster_tests.faults.schedule import (
    KINDS,
    LTA_DAMAGE,
    UNSURVIVABLE,
    WAIT_FOR_TARGET,
    fixed_schedules,
    make_schedule,
)


def test_a_seed_always_gives_the_same_schedule():
    assert make_schedule(137).as_dict() == make_schedule(137).as_dict()
    assert make_schedule(137).as_dict() != make_schedule(138).as_dict()


def test_the_fixed_set_forces_every_kind_in_a_step_of_its_own():
    schedules = fixed_schedules()
    assert len(schedules) >= 25
    kinds = list(KINDS)
    for i, schedule in enumerate(schedules):
        assert kinds[i % len(kinds)] in [fault.kind for fault in schedule.steps[0].faults]
    assert all(len(schedule.steps) == 1 for schedule in schedules)


def test_removals_at_rest_are_drawn_and_at_most_one_archive_copy_is_spoiled():
    drawn: Counter[str] = Counter()
    for seed in range(1, 2001):
        kinds = make_schedule(seed).kinds
        drawn.update(kinds)
        assert sum(kind in LTA_DAMAGE for kind in kinds) <= 1, make_schedule(seed).describe()
    for kind in ("remove_buffer", "remove_lta_disk", "remove_lta_s3"):
        assert drawn[kind] > 20, drawn
    assert {"remove_lta_disk", "remove_lta_s3"} <= LTA_DAMAGE
    assert not UNSURVIVABLE & {"remove_buffer", "remove_lta_disk", "remove_lta_s3"}


def test_kills_of_a_stage_and_flips_in_transit_are_armed_from_the_start_of_their_step():
    assert {"kill_package", "kill_delete", "flip_in_transit"} <= WAIT_FOR_TARGET
    for seed in range(1, 301):
        for step in make_schedule(seed).steps:
            for fault in step.faults:
                if fault.kind in WAIT_FOR_TARGET:
                    assert fault.at == 0.0, make_schedule(seed).describe()
