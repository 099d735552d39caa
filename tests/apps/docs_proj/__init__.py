"""Celery's "Next Steps" project (``proj``), as its documentation writes it.

Only the import changed, and the broker and result store, which come from
``CELERIAC_BROKER_URL`` / ``CELERIAC_RESULT_BACKEND`` instead of
``broker='amqp://'``, ``backend='rpc://'``, and the guide's closing
``if __name__ == '__main__': app.start()`` is left out (celeriac has no
``app.start``: run ``celeriac -A proj worker``). ``tests/test_celery_docs.py`` runs
the guides' examples against a worker started on it.
"""
