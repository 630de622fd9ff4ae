"""Strong simple baselines."""
