"""RabbitMQ (``amqp://``, ``amqps://``, ``rpc://``): the broker, the rpc result store, and
what they share.

* ``wire.py``: URLs, connections, and messages as AMQP properties (shared by all).
* ``broker.py``: the broker; its docstring lists every queue, exchange and header.
* ``consumer.py``: fetching and settling; it knows the broker only through the
  small ``Rabbit`` protocol it declares, so it imports no broker.
* ``rpc.py``: the ``rpc://`` result store (replies to each caller's own queue).

Importing this package imports no driver: aio-pika is imported when a
connection is opened, with ``pip install 'celeriac[amqp]'`` said when missing.
"""
