"""Prefect flows and the ``recforge`` command line."""
