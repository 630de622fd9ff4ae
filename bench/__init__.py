"""Benchmarks and tuning scripts run against the shared data sets (not part of the installed package)."""
