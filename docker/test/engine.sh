#!/bin/bash
# Test tooling for docker/compose.yaml on a machine without systemd and without a reachable
# container registry (ccat_dagster_tests/test_compose.py, docker/README.md "Testing the compose
# file"). Idempotent; each step skips what exists, so a second run takes seconds.
#
#   docker/test/engine.sh install   Debian's docker.io, containerd, runc, docker-compose (v1.29)
#                                   and debootstrap, when missing
#   docker/test/engine.sh start     dockerd in the background (no bridge, no iptables: every test
#                                   container uses host networking), unless an engine answers
#   docker/test/engine.sh images    the base images the project's files name, built locally when
#                                   missing (cached by tag): python:3.11-slim-bookworm, postgres:16
#   docker/test/engine.sh up        install + start + images
#   docker/test/engine.sh stop      stop the dockerd this script started (by its pid file)
#
# Env: CCAT_DOCKER_WORK (default /var/tmp/ccat-dagster-docker: dockerd's data root, so the images
# survive a stop), PYTHON (the CPython >= 3.11.4 copied into the python stand-in; default python3).
set -euo pipefail
W=${CCAT_DOCKER_WORK:-/var/tmp/ccat-dagster-docker}
# Debian's CLI 20.10 (it has BuildKit built in; a newer CLI elsewhere on PATH may lack buildx).
DOCKER=/usr/bin/docker
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
log() { echo "engine.sh: $*" >&2; }
timed() { local s=$SECONDS; "$@"; log "$1: $((SECONDS - s)) s"; }
mkdir -p "$W"

engine_answers() { [ -x $DOCKER ] && $DOCKER info >/dev/null 2>&1; }

install() {
  local missing=""
  for p in docker.io containerd runc docker-compose debootstrap; do
    dpkg -s $p >/dev/null 2>&1 || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  log "installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
}

_dockerd() {
  nohup $SUDO /usr/sbin/dockerd --data-root "$W/data" --exec-root "$W/exec" \
    --pidfile "$W/dockerd.pid" -H unix:///var/run/docker.sock --storage-driver "$1" \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
    >>"$W/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 60); do engine_answers && return 0; sleep 1; done
  return 1
}

start() {
  engine_answers && return 0
  [ -x /usr/sbin/dockerd ] || { log "dockerd is not installed (run: $0 install)"; return 1; }
  mkdir -p "$W/data"
  # overlay2 where the kernel allows it; vfs (slower, more disk) otherwise
  if ! _dockerd overlay2; then
    stop
    _dockerd vfs || { log "dockerd did not start; its log:"; tail -30 "$W/dockerd.log" >&2; return 1; }
  fi
  # this script started it: `stop` ends it
  touch "$W/started-by-engine-sh"
  $DOCKER info --format 'engine.sh: dockerd {{.ServerVersion}} storage={{.Driver}}' >&2
}

stop() {
  if [ -f "$W/dockerd.pid" ]; then
    local pid; pid=$(cat "$W/dockerd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then log "dockerd $pid did not stop in 30 s"; return 1; fi
    rm -f "$W/dockerd.pid"
  fi
  umount "$W/exec/netns/default" 2>/dev/null || true
  rm -f "$W/started-by-engine-sh"
}

have_image() { $DOCKER image inspect "$1" >/dev/null 2>&1; }

debian_mirror() {
  local m=""
  [ -f /etc/apt/sources.list.d/debian.sources ] \
    && m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  [ -z "$m" ] && [ -f /etc/apt/sources.list ] \
    && m=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)
  echo "${m:-http://deb.debian.org/debian}"
}

# the machine's apt sources, CA certificates and pip config, so apt and pip work in the builds
copy_machine_config() {
  local b=$1
  printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$(debian_mirror)" >"$b/debian.sources"
  mkdir -p "$b/certs"; rm -f "$b/certs"/*
  cp /usr/local/share/ca-certificates/*.crt "$b/certs/" 2>/dev/null || true
  touch "$b/certs/.keep"
  if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$b/pip.conf"; else : >"$b/pip.conf"; fi
}

debian_base() {
  have_image local/debian:bookworm && return 0
  local root="$W/rootfs"
  [ -x "$root/bin/bash" ] || { rm -rf "$root"; debootstrap --variant=minbase bookworm "$root" "$(debian_mirror)" >"$W/debootstrap.log"; }
  rm -f "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | $DOCKER import -c 'CMD ["bash"]' -c 'ENV LANG=C.UTF-8' - local/debian:bookworm >/dev/null
  rm -rf "$root"
}

# python:3.11-slim-bookworm (the FROM of docker/Dockerfile): this machine's CPython >= 3.11.4,
# relocated to /usr/local like the official image (Debian bookworm's own python3 is 3.11.2, whose
# tarfile lacks data_filter), on the Debian base.
python_image() {
  have_image python:3.11-slim-bookworm && return 0
  local b="$W/images/python" py=${PYTHON:-python3} prefix
  prefix=$($py -c 'import sys, tarfile; assert sys.version_info[:2] == (3, 11) and sys.version_info >= (3, 11, 4) and hasattr(tarfile, "data_filter"), sys.version; print(sys.base_prefix)') \
    || { log "$py is not a CPython 3.11.4+ to copy into the python stand-in (set PYTHON)"; return 1; }
  mkdir -p "$b"; copy_machine_config "$b"
  tar -C "$prefix" --exclude='./lib/python3.11/site-packages/*' \
    --exclude=./lib/python3.11/test --exclude=./lib/python3.11/idlelib \
    --exclude=./lib/python3.11/tkinter --exclude='./lib/python3.11/lib-dynload/_tkinter*' \
    --exclude='*/__pycache__' --exclude='./lib/python3.11/config-3.11-*/*.a' \
    -cf "$b/python.tar" ./bin ./lib ./include
  cat >"$b/Dockerfile" <<'DOCKERFILE'
FROM local/debian:bookworm
COPY debian.sources /etc/apt/sources.list.d/debian.sources
COPY certs/ /usr/local/share/ca-certificates/
COPY pip.conf /etc/pip.conf
RUN rm -f /etc/apt/sources.list /usr/local/share/ca-certificates/.keep \
 && apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates netbase tzdata libssl3 libffi8 \
      libsqlite3-0 libbz2-1.0 liblzma5 zlib1g libreadline8 libncursesw6 libuuid1 libexpat1 \
      libnsl2 libtirpc3 \
 && update-ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
ADD python.tar /usr/local/
RUN ldconfig \
 && python3 -m ensurepip --default-pip \
 && python3 -m pip install --no-cache-dir -U pip setuptools wheel \
 && ln -sf python3 /usr/local/bin/python && ln -sf pip3 /usr/local/bin/pip \
 && python -c 'import ssl, sqlite3, tarfile; assert hasattr(tarfile, "data_filter")'
ENV LANG=C.UTF-8
CMD ["python3"]
DOCKERFILE
  DOCKER_BUILDKIT=0 $DOCKER build -q --network host -t python:3.11-slim-bookworm "$b" >/dev/null
  rm -f "$b/python.tar"
}

# postgres:16 (compose.yaml's postgres service): Debian bookworm's PostgreSQL 15 behind an
# entrypoint with the official image's contract (POSTGRES_USER/PASSWORD/DB,
# /docker-entrypoint-initdb.d, PGDATA), plus POSTGRES_LISTEN_ADDRESSES for host networking.
postgres_image() {
  have_image postgres:16 && return 0
  local b="$W/images/postgres"
  mkdir -p "$b"; copy_machine_config "$b"
  cat >"$b/Dockerfile" <<'DOCKERFILE'
FROM local/debian:bookworm
COPY debian.sources /etc/apt/sources.list.d/debian.sources
RUN rm -f /etc/apt/sources.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && mkdir -p /docker-entrypoint-initdb.d /var/run/postgresql /var/lib/postgresql/data \
 && chown -R postgres:postgres /var/run/postgresql /var/lib/postgresql \
 && chmod 2777 /var/run/postgresql && chmod 1777 /var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
STOPSIGNAL SIGINT
CMD ["postgres"]
DOCKERFILE
  cat >"$b/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/bash
set -Eeo pipefail
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" && chown -R postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
export POSTGRES_USER POSTGRES_DB
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "$POSTGRES_PASSWORD" ] || { echo "POSTGRES_PASSWORD is required" >&2; exit 1; }
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
         --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA"
  printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
  if [ "$POSTGRES_DB" != postgres ]; then
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) if [ -x "$f" ]; then echo "running $f"; "$f"; else echo "sourcing $f"; . "$f"; fi ;;
      *.sql) psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -f "$f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
fi
if [ "$1" = postgres ]; then shift; exec postgres -c listen_addresses="${POSTGRES_LISTEN_ADDRESSES:-*}" "$@"; fi
exec "$@"
ENTRYPOINT
  chmod +x "$b/docker-entrypoint.sh"
  DOCKER_BUILDKIT=0 $DOCKER build -q --network host -t postgres:16 "$b" >/dev/null
}

images() {
  engine_answers || { log "no Docker engine answers (run: $0 start)"; return 1; }
  if have_image python:3.11-slim-bookworm && have_image postgres:16; then return 0; fi
  timed debian_base; timed python_image; timed postgres_image
}

case "${1:-up}" in
  install) timed install ;;
  start) timed start ;;
  images) images ;;
  up) timed install; timed start; images ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|images|up|stop" >&2; exit 2 ;;
esac
