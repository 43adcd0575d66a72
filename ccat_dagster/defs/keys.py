"""Asset keys: ``<site>/<location>/<kind>``, the same in every code location."""

from __future__ import annotations

from dagster import AssetKey

from ccat_ops_db.models import LocationType

RAW_DATA_FILES = "raw_data_files"
RAW_DATA_PACKAGE = "raw_data_package"
DATA_TRANSFER_PACKAGE = "data_transfer_package"
STAGED_RAW_DATA_PACKAGE = "staged_raw_data_package"
LTA_PRESENCE = "lta_presence"
#: the consistency audit of a location (dark and lost objects), on the location's asset
CONSISTENCY = "consistency"


#: the kind of asset that stands for a location's data, by location type
KIND_AT = {
    LocationType.SOURCE: RAW_DATA_FILES,
    LocationType.BUFFER: RAW_DATA_PACKAGE,
    LocationType.LONG_TERM_ARCHIVE: RAW_DATA_PACKAGE,
    LocationType.PROCESSING: STAGED_RAW_DATA_PACKAGE,
}


def asset_key(site: str, location: str, kind: str) -> AssetKey:
    return AssetKey([site, location, kind])


def location_asset_key(site: str, location: str, location_type: LocationType) -> AssetKey:
    """The asset that stands for a location in the UI (its data at that location)."""
    return asset_key(site, location, KIND_AT[location_type])
