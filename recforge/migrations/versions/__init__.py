"""Alembic revision scripts of recforge's schema, one per file (``NNNN_<what>.py``), oldest first."""
