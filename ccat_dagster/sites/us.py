"""Code location of site `us`: `dagster code-server start -m ccat_dagster.sites.us`.

``defs`` is loaded lazily (Dagster's ``@definitions``): the topology and the settings are read
when Dagster loads the code location, not when the module is imported; tests call ``defs()``.
While the ops DB holds no topology it loads a placeholder saying what to do (``defs.setup``).
"""

from dagster import Definitions, definitions

from ccat_dagster.defs.setup import site_definitions


@definitions
def defs() -> Definitions:
    return site_definitions("us")
