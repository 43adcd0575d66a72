#!/bin/sh
# Runs once, on the first start of an empty PostgreSQL volume (docker-entrypoint-initdb.d):
# the image creates POSTGRES_DB (the ops database); this adds the Dagster instance database.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE \"${DAGSTER_PG_DB:-dagster}\" OWNER \"$POSTGRES_USER\""
