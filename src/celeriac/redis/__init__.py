"""Redis (``redis://``, ``rediss://``): the broker, the result store and what they share.

* ``url.py``: the URL and celeriac's options in it (``?prefix=``), the start hint.
* ``connection.py``: the connection pool, with hiredis packing the commands.
* ``errors.py``: redis-py's exceptions as celeriac's, at the boundary.
* ``writes.py``: a result store's writes as the Lua scripts make them (shared storage).
* ``broker.py`` (+ ``broker.lua``): the broker on Streams (the default layout).
* ``kombu_broker.py`` (+ ``kombu.lua``, ``kombu_layout.py``: keys and options,
  ``kombu_codec.py``: envelopes): the broker on kombu's layout (``?layout=kombu``),
  to share one Redis with Celery peers.
* ``store.py``: the result store, in Celery's layout; ``chords.py``: Celery 5.7's
  chord keys and scripts, which it uses.
* ``operations.py``: the operations plane (events, the mailbox, revokes) of the
  default layout; ``kombu_operations.py``: the same as kombu's transport carries it,
  for Celery's tools (``celery inspect``, ``celery events``, Flower).

Importing this package imports no driver: ``broker`` and ``store`` import redis-py,
and say ``pip install 'celeriac[redis]'`` when it is missing.
"""
