"""Integrations with frameworks celeriac's users build on; each imports its framework lazily.

* :mod:`.django`: Celery's Django integration (``delay_on_commit``, the worker's
  ``django.setup()`` and connection handling) and ``app.transaction`` on Django's
  connection.
"""
