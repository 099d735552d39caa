"""PostgreSQL: the broker and the result store in one database, and what they share.

``url`` parses ``postgresql://`` URLs (and celeriac's ``?schema=``);
``connection`` opens psycopg 3's async connection pools and turns the driver's
errors into celeriac's. Nothing is imported here, so ``celeriac.postgres.url``
costs no psycopg import (about 120 ms); the driver comes with
``pip install 'celeriac[postgres]'``.
"""
