#!/bin/bash
# Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d), as its superuser, whose
# password no other service knows. Two roles, each owning the database of its name and unable to connect to the
# other's: `prefect` for the Prefect server, `recforge` for the published tables (PREFECT_DB_USER and
# RECFORGE_DB_USER rename them). The passwords come from the environment and reach SQL as psql variables
# (:'name' quotes a value, :"name" an identifier), never spliced into the statements.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v prefect_role="${PREFECT_DB_USER:-prefect}" -v prefect_password="$PREFECT_DB_PASSWORD" \
    -v recforge_role="${RECFORGE_DB_USER:-recforge}" -v recforge_password="$RECFORGE_DB_PASSWORD" <<'SQL'
CREATE ROLE :"prefect_role" LOGIN PASSWORD :'prefect_password';
CREATE DATABASE :"prefect_role" OWNER :"prefect_role";
REVOKE CONNECT, TEMPORARY ON DATABASE :"prefect_role" FROM PUBLIC;
CREATE ROLE :"recforge_role" LOGIN PASSWORD :'recforge_password';
CREATE DATABASE :"recforge_role" OWNER :"recforge_role";
REVOKE CONNECT, TEMPORARY ON DATABASE :"recforge_role" FROM PUBLIC;
SQL
