"""Thin, typed Prefect tasks around the pure stages in ``recforge``."""
