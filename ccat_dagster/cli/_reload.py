"""Reload the Dagster code locations through the webserver, so a topology change reaches a
running deployment without restarting the code servers.

The code locations build their assets and sensors from the ops DB when they load
(``ccat_dagster.defs.topology``). The webserver's GraphQL mutation ``reloadRepositoryLocation``
asks each code server to load again: a ``dagster code-server start`` server starts a fresh
process that reads the topology anew (the ReloadCode call), and the daemon notices the new server
and uses the new sensors. Only the standard library talks to the webserver: no client package.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

#: where ``ccat topology apply`` and ``ccat topology reload`` find the webserver
WEBSERVER_URL_ENV = "CCAT_DAGSTER_WEBSERVER_URL"
RELOAD_COMMAND = "ccat topology reload --webserver-url http://<webserver host>:3000"
TIMEOUT_SECONDS = 300.0  # a reload waits for the code server to load the new definitions

LOCATIONS_QUERY = """
query CodeLocations {
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name } }
    ... on PythonError { message }
  }
}
"""

RELOAD_MUTATION = """
mutation Reload($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename
    ... on WorkspaceLocationEntry {
      name
      loadStatus
      locationOrLoadError {
        __typename
        ... on RepositoryLocation { repositories { name sensors { name } assetNodes { id } } }
        ... on PythonError { message }
      }
    }
    ... on ReloadNotSupported { message }
    ... on RepositoryLocationNotFound { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""


class ReloadError(RuntimeError):
    """The webserver could not be asked to reload (unreachable, or it answered with an error)."""


@dataclass(frozen=True)
class LocationReload:
    """The outcome of reloading one code location."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return (
            f"reloaded {self.name}: {self.detail}"
            if self.ok
            else f"FAILED {self.name}: {self.detail}"
        )


def _post(url: str, query: str, variables: dict[str, Any], timeout: float) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(
        f"{url.rstrip('/')}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ReloadError(
            f"cannot reach the Dagster webserver at {url} ({exc}); check {WEBSERVER_URL_ENV} "
            "or --webserver-url, or reload in the UI (Deployment > Code locations > Reload all)"
        ) from exc
    if payload.get("errors"):
        raise ReloadError(f"the webserver at {url} refused the request: {payload['errors']}")
    return payload["data"]


def code_location_names(url: str, *, timeout: float = 60.0) -> list[str]:
    """The names of the code locations of the webserver's workspace."""
    data = _post(url, LOCATIONS_QUERY, {}, timeout)["workspaceOrError"]
    if data["__typename"] != "Workspace":
        raise ReloadError(f"the webserver at {url} has no workspace: {data.get('message')}")
    return [entry["name"] for entry in data["locationEntries"]]


def _outcome(name: str, result: dict[str, Any]) -> LocationReload:
    if result["__typename"] != "WorkspaceLocationEntry":
        return LocationReload(name, False, result.get("message") or result["__typename"])
    loaded = result.get("locationOrLoadError") or {}
    if loaded.get("__typename") != "RepositoryLocation":
        # e.g. the site was deactivated: the code location's load error says what to do
        message = (loaded.get("message") or f"load status {result['loadStatus']}").strip()
        return LocationReload(name, False, message.splitlines()[0] if message else message)
    sensors = sum(len(repo["sensors"]) for repo in loaded["repositories"])
    assets = sum(len(repo["assetNodes"]) for repo in loaded["repositories"])
    return LocationReload(name, True, f"{assets} assets, {sensors} sensors")


def reload_code_locations(
    url: str, names: list[str] | None = None, *, timeout: float = TIMEOUT_SECONDS
) -> list[LocationReload]:
    """Reload ``names`` (default: every code location of the workspace), one after the other,
    and say for each whether it loaded and what it holds now."""
    outcomes = []
    for name in names if names is not None else code_location_names(url):
        result = _post(url, RELOAD_MUTATION, {"name": name}, timeout)["reloadRepositoryLocation"]
        outcomes.append(_outcome(name, result))
    return outcomes
