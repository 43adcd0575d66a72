"""Stage items travel in typed run configs: composite items are models, not ``a:b:c`` strings,
and the sensors read other runs' items through the same models."""

from __future__ import annotations

from ccat_dagster.defs.stages import ARCHIVE, PACKAGE, ArchiveItem
from ccat_dagster.defs.staging import STAGE, StagingItem


def test_archive_items_round_trip_through_the_run_config():
    items = [ArchiveItem(package=1, source=2, lta=3), ArchiveItem(package=4, source=2, lta=3)]
    run_config = ARCHIVE.run_config("us_long_term_archive_transfer_batch", items)
    op_config = run_config["ops"]["us_long_term_archive_transfer_batch"]["config"]
    assert op_config == {
        "items": [{"package": 1, "source": 2, "lta": 3}, {"package": 4, "source": 2, "lta": 3}]
    }
    assert ARCHIVE.items_of(op_config) == items
    assert ArchiveItem(package=1, source=2, lta=3) in set(items), "items are hashable values"


def test_staging_and_plain_items():
    item = StagingItem(package=7, location=9)
    assert STAGE.items_of(STAGE.run_config("op", [item])["ops"]["op"]["config"]) == [item]
    plain = PACKAGE.run_config("op", ["5", "6"])
    assert plain == {"ops": {"op": {"config": {"items": ["5", "6"]}}}}
    assert PACKAGE.items_of({"items": ["5"]}) == ["5"]


def test_a_run_config_of_another_shape_has_no_items_of_the_stage():
    assert ARCHIVE.items_of({"items": ["1:2:3"]}) == []  # the old string ids
    assert ARCHIVE.items_of({}) == []
    assert STAGE.items_of({"items": [{"package": 1}]}) == []
