"""docker/ stays consistent with the code: the compose file parses and has a code server per site
of the default topology running a site module that exists, the environment covers every
variable the code reads, each site's storage is mounted in its own container, the workspace
points at services that exist, and the Dockerfile installs the project and copies files that
exist. No Docker engine is needed; ``docker compose config`` (or Debian's docker-compose, installed
when missing) checks the file too. The PostgreSQL init script is run against the local server;
test_compose.py starts the whole file for real.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from packaging.specifiers import SpecifierSet
from sqlalchemy.engine import make_url

from ccat_dagster.defs.settings import PREFIX as SETTINGS_PREFIX
from ccat_dagster.defs.settings import Settings
from ccat_dagster_tests.fixtures.ci import unavailable
from ccat_dagster_tests.fixtures.compose import DOCKER_COMPOSE_V1, compose_cli, v1_compatible
from ccat_dagster_tests.fixtures.databases import postgres_admin_url, require_postgres
from ccat_ops_db.models import LocationType, StorageType
from ccat_ops_db.topology import load_topology, parse_topology

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
WORKSPACE = DOCKER / "workspace.grpc.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DEFAULT_TOPOLOGY = ROOT / "ccat_dagster" / "topologies" / "default.yaml"
COMPOSE_TOPOLOGY = DOCKER / "topology.compose.yaml"
CONFIG_DOC = ROOT / "docs" / "configuration.md"

# Read by the code but deliberately not set in the compose file (each is documented in
# docs/configuration.md): CCAT_HOME only matters without CCAT_OPS_DB_URL; DAGSTER_PG_HOST & co.
# are the alternative to DAGSTER_PG_URL; the others are for debugging and in-process runs.
OPTIONAL_ENV = {
    "CCAT_HOME",
    "CCAT_DEBUG",
    "CCAT_RUN_LOG_LEVEL",
    # only a code server selects a site; only the operator's `ccat topology apply` reloads
    "CCAT_SITE",
    "CCAT_DAGSTER_WEBSERVER_URL",
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_USER",
    "DAGSTER_PG_PASSWORD",
    "DAGSTER_PG_DB",
}
# Read by boto3 (the default credential chain), not by our code: required where S3 is used.
S3_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}

_ENV_READ = re.compile(
    r"""(?:os\.environ\.get|os\.getenv|os\.environ\.setdefault|os\.environ\.pop|EnvVar)"""
    r"""\(\s*["']([A-Z][A-Z0-9_]+)["']"""
    r"""|os\.environ\[\s*["']([A-Z][A-Z0-9_]+)["']\s*\]"""
    r"""|^[A-Z_]*ENV\s*=\s*["']([A-Z][A-Z0-9_]+)["']""",
    re.MULTILINE,
)
# ${VAR}, ${VAR:-default}, ${VAR:?error}; "$${...}" is an escaped dollar for the container's shell.
_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)(?::?[-?][^}]*)?\}")


def env_vars_read_by_code() -> set[str]:
    """Every environment variable the project's code or instance config reads."""
    names: set[str] = set()
    for package in ("ccat_dagster", "ccat_ops_db"):
        for path in (ROOT / package).rglob("*.py"):
            for match in _ENV_READ.finditer(path.read_text()):
                names.update(g for g in match.groups() if g)
    for path in (ROOT / "ccat_dagster" / "instance_templates").glob("*.yaml"):
        names.update(re.findall(r"\benv:\s*([A-Z][A-Z0-9_]+)", path.read_text()))
    # the Dagster side reads its settings through one object: CCAT_<FIELD>
    names.update(f"{SETTINGS_PREFIX}{field.upper()}" for field in Settings.model_fields)
    return names


def env_example() -> dict[str, str]:
    """docker/.env.example as compose reads it (KEY=value, optional double quotes)."""
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().removeprefix('"').removesuffix('"')
    return out


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    assert "services" in data
    return data


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:
    return compose["services"]


def default_sites() -> list[str]:
    return [s["short_name"] for s in load_topology(DEFAULT_TOPOLOGY)["sites"]]


def command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of every short-syntax volume of a service."""
    out = []
    for volume in service.get("volumes") or []:
        # split on the colons outside ${...}: "${FILE:-./x.yaml}:/etc/x.yaml:ro"
        parts = re.findall(r"(?:\$\{[^}]*\}|[^:])+", volume)
        out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def code_server_services(services) -> dict[str, dict[str, Any]]:
    """site short_name -> its code-server service (found by the site its CCAT_SITE selects)."""
    out = {}
    for service in services.values():
        cmd = service.get("command")
        if cmd and command(service)[:3] == ["dagster", "code-server", "start"]:
            out[environment(service).get("CCAT_SITE", "<no CCAT_SITE>")] = service
    return out


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def dockerfile_env() -> dict[str, str]:
    env = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


# --------------------------------------------------------------------------- services


def test_compose_has_postgres_webserver_daemon_and_a_code_server_per_site(services):
    for name in ("postgres", "webserver", "daemon", "ops-db-init"):
        assert name in services, f"compose.yaml has no service {name!r}"
    servers = code_server_services(services)
    assert sorted(servers) == sorted(default_sites())
    for site in default_sites():
        assert f"{site}-code-server" in services
        assert services[f"{site}-code-server"] is servers[site]


def test_each_code_server_serves_the_site_module_for_the_site_ccat_site_names(services):
    module = "ccat_dagster.sites.site"
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} does not exist"
    assert spec.origin, f"{module} does not exist"
    assert "CCAT_SITE" in Path(spec.origin).read_text()
    for site, service in code_server_services(services).items():
        cmd = command(service)
        assert cmd[:5] == ["dagster", "code-server", "start", "-m", module]
        assert cmd[cmd.index("-h") + 1] == "0.0.0.0"
        assert cmd[cmd.index("--location-name") + 1] == site
        assert cmd[cmd.index("-p") + 1].isdigit()


def test_daemon_and_webserver_load_the_grpc_workspace_the_image_holds(services):
    daemon, webserver = command(services["daemon"]), command(services["webserver"])
    assert daemon[:2] == ["dagster-daemon", "run"]
    assert webserver[0] == "dagster-webserver"
    for cmd in (daemon, webserver):
        assert cmd[cmd.index("-w") + 1] == "/opt/dagster/workspace.yaml"
    copies = [rest for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    assert "docker/workspace.grpc.yaml /opt/dagster/workspace.yaml" in copies
    assert webserver[webserver.index("-p") + 1] == "3000"
    assert any(p.endswith(":3000") for p in services["webserver"]["ports"])


def test_workspace_points_at_code_server_services_with_their_ports(services):
    workspace = yaml.safe_load(WORKSPACE.read_text())
    servers = code_server_services(services)
    entries = [entry["grpc_server"] for entry in workspace["load_from"]]
    assert sorted(e["location_name"] for e in entries) == sorted(default_sites())
    local = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"]
    assert {e["location_name"] for e in entries} == {
        e["python_module"]["location_name"] for e in local
    }
    for entry in entries:
        assert entry["host"] in services, f"workspace host {entry['host']} is not a service"
        service = services[entry["host"]]
        assert service is servers[entry["location_name"]]
        cmd = command(service)
        assert str(entry["port"]) == cmd[cmd.index("-p") + 1]


def test_startup_order_migration_then_code_servers_then_daemon_and_ui(services):
    init = services["ops-db-init"]
    text = " ".join(command(init))
    assert "ccat db upgrade" in text
    assert "ccat topology apply /etc/ccat/topology.yaml" in text
    assert any(target == "/etc/ccat/topology.yaml" for _, target, _ in mounts(init))
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in (f"{s}-code-server" for s in default_sites()):
        assert services[name]["depends_on"]["ops-db-init"]["condition"] == (
            "service_completed_successfully"
        )
        assert "grpc-health-check" in services[name]["healthcheck"]["test"]
    for name in ("daemon", "webserver"):
        needs = services[name]["depends_on"]
        for site in default_sites():
            assert needs[f"{site}-code-server"]["condition"] == "service_healthy"


def test_ops_db_init_creates_the_dagster_instance_schema_before_the_code_servers(services):
    """Three code servers creating the instance schema on their first start race
    (DuplicateTable "instance_info"): the loser serves a load error while its health check
    passes. The one-shot that every code server waits for migrates it first."""
    init = services["ops-db-init"]
    steps = [step.strip() for step in command(init)[-1].split("&&")]
    assert "dagster instance migrate" in steps, steps
    env = environment(init)
    server_env = environment(services["ccat-code-server"])
    for var in ("DAGSTER_HOME", "DAGSTER_PG_URL"):
        assert env[var] == server_env[var], var
    for site in default_sites():
        depends = services[f"{site}-code-server"]["depends_on"]
        assert depends["ops-db-init"]["condition"] == "service_completed_successfully"


# --------------------------------------------------------------------------- environment


def test_code_reads_the_environment_variables_we_think_it_does():
    found = env_vars_read_by_code()
    for name in ("CCAT_OPS_DB_URL", "CCAT_SSH_KEY_FILE", "CCAT_SSH_KNOWN_HOSTS", "DAGSTER_PG_URL"):
        assert name in found
    stale = OPTIONAL_ENV - found
    assert not stale, f"no longer read by the code, drop from OPTIONAL_ENV: {sorted(stale)}"


def test_code_servers_get_every_variable_the_code_needs(services):
    required = (env_vars_read_by_code() - OPTIONAL_ENV) | S3_ENV | {"DAGSTER_HOME"}
    for site, service in code_server_services(services).items():
        missing = required - set(environment(service))
        assert not missing, f"{site}-code-server lacks {sorted(missing)}"
    missing = required - set(environment(services["ops-db-init"]))
    assert not missing, f"ops-db-init lacks {sorted(missing)}"


def test_every_dagster_process_opens_the_same_postgres_instance(services):
    image_home = dockerfile_env()["DAGSTER_HOME"]
    copies = [rest for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    assert (
        f"ccat_dagster/instance_templates/dagster.postgres.yaml {image_home}/dagster.yaml" in copies
    )
    template = ROOT / "ccat_dagster" / "instance_templates" / "dagster.postgres.yaml"
    instance_env = set(re.findall(r"\benv:\s*([A-Z_]+)", template.read_text()))
    assert instance_env == {"DAGSTER_PG_URL"}
    urls = set()
    for name in ["daemon", "webserver", *(f"{s}-code-server" for s in default_sites())]:
        env = environment(services[name])
        assert env["DAGSTER_HOME"] == image_home, name
        urls.add(env["DAGSTER_PG_URL"])
    assert len(urls) == 1
    url = urls.pop()
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed
    assert url.startswith("postgresql+psycopg2://")
    assert url.endswith("@postgres:5432/${DAGSTER_PG_DB:-dagster}")


def test_ops_db_and_instance_are_two_databases_on_the_postgres_service(services):
    env = environment(services["ccat-code-server"])
    ops = env["CCAT_OPS_DB_URL"]
    assert ops.startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in ops
    assert ops.rsplit("/", 1)[1] != env["DAGSTER_PG_URL"].rsplit("/", 1)[1]
    postgres = environment(services["postgres"])
    assert postgres["POSTGRES_DB"] == ops.rsplit("/", 1)[1]
    assert postgres["DAGSTER_PG_DB"] == env["DAGSTER_PG_URL"].rsplit("/", 1)[1]
    assert any(
        target.startswith("/docker-entrypoint-initdb.d/")
        for _, target, _ in mounts(services["postgres"])
    )


def test_ssh_credentials_are_files_from_compose_secrets(compose, services):
    for site, service in code_server_services(services).items():
        env = environment(service)
        for var in ("CCAT_SSH_KEY_FILE", "CCAT_SSH_KNOWN_HOSTS"):
            assert env[var].startswith("/run/secrets/"), (site, var)
            assert env[var].rsplit("/", 1)[1] in service["secrets"]
            assert env[var].rsplit("/", 1)[1] in compose["secrets"]


def test_env_example_defines_exactly_the_interpolated_variables():
    used = set(_INTERPOLATION.findall(COMPOSE.read_text()))
    defined = set(env_example())
    assert used == defined, (
        f"only in compose.yaml: {sorted(used - defined)}; only in .env: {sorted(defined - used)}"
    )
    assert "POSTGRES_PASSWORD" in used
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


def test_env_example_shows_the_compose_defaults():
    defaults = dict(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*):-([^}]*)\}", COMPOSE.read_text()))
    example = env_example()
    for name, default in defaults.items():
        assert example[name] == default, f"{name}: .env.example {example[name]!r} vs {default!r}"


def test_deployment_test_sets_no_variable_the_compose_file_lacks(services):
    """The process-level deployment test and compose.yaml run the same configuration."""
    test_file = ROOT / "ccat_dagster_tests" / "test_deployment.py"
    names = set(re.findall(r'"((?:CCAT|DAGSTER)_[A-Z0-9_]+)":', test_file.read_text()))
    assert "CCAT_OPS_DB_URL" in names
    missing = names - set(environment(services["ccat-code-server"]))
    assert not missing, f"set by the deployment test but not in compose.yaml: {sorted(missing)}"


def test_configuration_doc_names_every_variable():
    documented = CONFIG_DOC.read_text()
    names = env_vars_read_by_code() | S3_ENV | {"DAGSTER_HOME"}
    names |= set(_INTERPOLATION.findall(COMPOSE.read_text()))
    missing = sorted(n for n in names if f"`{n}`" not in documented)
    assert not missing, f"docs/configuration.md does not describe {missing}"


# --------------------------------------------------------------------------- storage


def test_compose_topology_is_valid_and_names_the_default_sites_and_locations():
    compose_topology = parse_topology(load_topology(COMPOSE_TOPOLOGY))
    default = parse_topology(load_topology(DEFAULT_TOPOLOGY))

    def names(t):
        return {(s.short_name, loc.name, loc.location_type) for s in t.sites for loc in s.locations}

    assert names(compose_topology) == names(default)


def test_every_disk_location_is_a_volume_of_its_own_sites_code_server(compose, services):
    topology = parse_topology(load_topology(COMPOSE_TOPOLOGY))
    servers = code_server_services(services)
    declared = set(compose["volumes"])
    buffers = 0
    for site in topology.sites:
        own = {target: (source, ro) for source, target, ro in mounts(servers[site.short_name])}
        for loc in site.locations:
            if loc.storage.kind is not StorageType.DISK:
                continue
            path = loc.storage.settings["path"]
            assert path in own, f"{site.short_name}/{loc.name} ({path}) is not mounted"
            source, read_only = own[path]
            assert source in declared, f"{site.short_name}/{loc.name}"
            assert not read_only, f"{site.short_name}/{loc.name}"
            buffers += loc.location_type is LocationType.BUFFER
    assert buffers == sum(
        1 for s in topology.sites for loc in s.locations if loc.location_type is LocationType.BUFFER
    )
    # Read-only mounts of other sites' locations sit at the path the topology gives them.
    paths = {
        loc.storage.settings["path"]: loc
        for s in topology.sites
        for loc in s.locations
        if loc.storage.kind is StorageType.DISK
    }
    for service in servers.values():
        for source, target, read_only in mounts(service):
            if read_only:
                assert target in paths, target
                assert source in declared, target


def test_dagster_processes_share_the_compute_log_volume(services):
    for name in ["daemon", "webserver", *(f"{s}-code-server" for s in default_sites())]:
        assert ("dagster_compute_logs", "/opt/dagster/dagster_home/storage", False) in mounts(
            services[name]
        ), name


# --------------------------------------------------------------------------- image


def test_dockerfile_installs_the_project_and_copies_files_that_exist():
    rows = dockerfile_instructions()
    assert rows[0][0] == "FROM"
    assert "python:3.11" in rows[0][1]
    runs = " ".join(rest for keyword, rest in rows if keyword == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), "the image must `pip install .` the project"
    for keyword, rest in rows:
        if keyword == "COPY":
            *sources, _target = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY source {source} is not in the repository"
    packages = {
        p.split("*")[0] for p in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {rest.split()[0] for keyword, rest in rows if keyword == "COPY"}
    assert packages <= copied, f"packages not copied into the image: {packages - copied}"
    assert "pyproject.toml" in " ".join(copied)
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore
    assert ".git" in ignore


def test_every_service_of_the_project_image_can_build_it(services):
    """`docker compose up --build` (docker/README.md) builds the image from docker/Dockerfile;
    a service without `build:` would try to pull ccat-dagster, which is in no registry."""
    for name, service in services.items():
        if name == "postgres":
            continue
        assert "ccat-dagster" in service["image"], name
        build = service.get("build")
        assert isinstance(build, dict), f"{name} has no build: section"
        assert (DOCKER / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE, name


def test_image_creates_every_volume_mount_point_owned_by_ccat(compose, services):
    """A new named volume takes the owner of the image's directory it is mounted on; where the
    image has none, the volume is root's and the ccat user cannot write it."""
    rows = dockerfile_instructions()
    created: set[str] = set()
    owned: set[str] = set()
    for keyword, rest in rows:
        if keyword != "RUN":
            continue
        for step in rest.split("&&"):
            words = shlex.split(step)
            if words[:2] == ["mkdir", "-p"]:
                created.update(words[2:])
            if words[:3] == ["chown", "-R", "ccat:ccat"]:
                owned.update(w.rstrip("/") for w in words[3:])
    assert [rest for keyword, rest in rows if keyword == "USER"][-1] == "ccat"
    declared = set(compose["volumes"])
    targets = set()
    for name, service in services.items():
        if name == "postgres":
            continue
        for source, target, _ in mounts(service):
            if source in declared:
                targets.add(target)
    assert targets
    missing = sorted(targets - created)
    assert not missing, f"mount points the Dockerfile does not create: {missing}"
    for target in targets:
        assert any(target == o or target.startswith(o + "/") for o in owned), target


def test_requires_python_excludes_releases_whose_tarfile_lacks_data_filter():
    """Unpacking relies on tarfile.data_filter, which 3.11.0-3.11.3 lack."""
    assert "tarfile.data_filter" in (ROOT / "ccat_dagster" / "packaging" / "unpack.py").read_text()
    spec = SpecifierSet(_pyproject()["project"]["requires-python"])
    for version in ("3.11.0", "3.11.3"):
        assert version not in spec, version
    for version in ("3.11.4", "3.11.7", "3.12.0"):
        assert version in spec, version


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_command_is_installed_by_the_project(services):
    """CMD and each service's command run executables the project's install provides."""
    scripts = set(_pyproject()["project"]["scripts"])
    venv_bin = ROOT / ".venv" / "bin"
    cmd_line = next(rest for keyword, rest in dockerfile_instructions() if keyword == "CMD")
    executables = {yaml.safe_load(cmd_line)[0]}
    for name, service in services.items():
        if name != "postgres":
            executables.add(command(service)[0])
    for exe in executables - {"sh"}:
        assert exe in scripts or (venv_bin / exe).exists(), f"{exe} is not installed by pip"
    assert dockerfile_env()["DAGSTER_HOME"] == "/opt/dagster/dagster_home"


# --------------------------------------------------------------------------- real tools


def test_postgres_init_script_creates_the_dagster_database():
    require_postgres()
    if shutil.which("psql") is None:
        message = "psql (PostgreSQL's client) is not installed"
        unavailable(message)
    url = make_url(postgres_admin_url())
    name = f"ccat_test_dagster_{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_DB": url.database or "postgres",
        "DAGSTER_PG_DB": name,
        "PGHOST": url.host or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
    }
    if url.password:
        env["PGPASSWORD"] = url.password
    engine = sa.create_engine(
        url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
    )
    try:
        subprocess.run(["sh", str(DOCKER / "postgres-init.sh")], env=env, check=True, timeout=60)
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        engine.dispose()


def test_docker_compose_config_accepts_the_file(tmp_path):
    """`docker compose config` (v2) on the file itself; with Debian's docker-compose (v1.29, what
    this kind of machine has) on the copy the compose test runs (fixtures/compose.py). Installs
    docker-compose when neither is there (docker/test/engine.sh); fails when it cannot."""
    cli = compose_cli()
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    compose_file = COMPOSE
    if cli == [DOCKER_COMPOSE_V1]:
        compose_file = tmp_path / "compose.yaml"
        compose_file.write_text(yaml.safe_dump(v1_compatible(yaml.safe_load(COMPOSE.read_text()))))
    args = ["-f", str(compose_file), "--project-directory", str(DOCKER)]
    result = subprocess.run(
        [*cli, *args, "--env-file", str(env_file), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
