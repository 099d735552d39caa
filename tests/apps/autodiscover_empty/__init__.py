"""A package with no ``tasks`` module: ``autodiscover_tasks`` passes over it."""
