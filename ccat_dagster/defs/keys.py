"""Asset keys: ``<site>/<location>/<kind>``, the same in every code location."""

from __future__ import annotations

from dagster import AssetKey

RAW_DATA_FILES = "raw_data_files"
RAW_DATA_PACKAGE = "raw_data_package"
DATA_TRANSFER_PACKAGE = "data_transfer_package"
STAGED_RAW_DATA_PACKAGE = "staged_raw_data_package"
LTA_PRESENCE = "lta_presence"


def asset_key(site: str, location: str, kind: str) -> AssetKey:
    return AssetKey([site, location, kind])
