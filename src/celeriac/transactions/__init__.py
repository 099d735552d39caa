"""Transactional enqueue: a task sent inside the application's database transaction runs
if and only if that transaction commits (``app.transaction(conn)``; docs/transactions.md).

* :mod:`.current`: the context variable the sending layer reads on every publish.
* :mod:`.callers`: the application's connection (psycopg, sqlite3, SQLAlchemy, Django).
* :mod:`.direct`: with the PostgreSQL broker, rows of its own table.
* :mod:`.outbox`: with any other broker, rows of an outbox table, published by
  :mod:`.relay`, which reads them through :mod:`.outbox_readers`.
* :mod:`.enlist`: which of the two an ``app.transaction`` block uses.

This package's ``__init__`` imports nothing: the sending layer imports
:mod:`.current` on every import of celeriac.
"""
