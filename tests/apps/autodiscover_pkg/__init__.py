"""A package whose ``tasks`` module ``app.autodiscover_tasks`` finds (a Django app layout)."""
