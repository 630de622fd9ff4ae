-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d): the Prefect server
-- uses the database "prefect" (POSTGRES_DB); recforge publishes its tables to a database of its own.
CREATE DATABASE recforge;
