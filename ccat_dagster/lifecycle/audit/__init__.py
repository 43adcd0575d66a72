"""The consistency audit: a location's storage compared with the catalogue, slice by slice;
lost copies repaired, dark objects quarantined, each only when a second scan confirms it."""
