"""recforge: user-item interaction logs in, ranked recommendation tables in SQL out.

The ``recforge`` package holds the pipeline's pure logic (data contract, sources, validation, cleaning,
features, splitting, metrics, storage). It knows nothing of Prefect: ``tasks/`` wraps it in Prefect tasks and
``flows/`` composes them. Algorithms live in ``recmodels/``.
"""

__version__ = "0.1.0"
