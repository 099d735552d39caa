"""RabbitMQ (``amqp://``, ``amqps://``, ``rpc://``): the broker, the rpc result store, and
what they share.

* ``wire.py``: URLs, connections, and messages as AMQP properties (shared by all).
* ``broker.py``: the broker (URL, options, mechanism).
* ``consumer.py``: fetching and settling; it knows the broker only through the
  small ``Rabbit`` protocol it declares, so it imports no broker.
* ``rpc.py``: the ``rpc://`` result store (replies to each caller's own queue).
* ``beat.py`` (+ ``beat_state.py``, its state message): beat's lease and last runs (a
  single-active-consumer queue).

Importing this package imports no driver: aio-pika is imported when a
connection is opened, with ``pip install 'celeriac[amqp]'`` said when missing.

Names (``P`` = the prefix, empty by default; ``N`` = ``broker.DELAY_LEVELS``):

``P<queue>``, queue, durable: the task queue, bound to exchange ``P<queue>``
    (direct, durable) with routing key ``<queue>``, as Celery's autoexchange
    declares it (for ``celery``: exchange ``celery``, routing key ``celery``);
    a queue of ``bindings`` is bound to ``P<exchange>`` (direct, topic or
    fanout, durable) with its routing key instead, and one with
    ``auto_delete`` (a ``Broadcast`` queue, one per worker) goes when its last
    consumer does, and has no delay queues.
    Arguments: none for the *plain* queues (``celery`` unless configured), so
    Celery peers declare the same queue without PRECONDITION_FAILED; otherwise
    ``x-max-priority: 10`` (classic) or ``x-queue-type: quorum`` with
    ``x-delivery-limit`` (quorum). A queue that already exists is used as it
    is, whoever declared it (a passive declare comes first). Messages are
    published to the default exchange with the queue's name as routing key.
    Lifetime: as long as RabbitMQ keeps it (durable). A message whose
    ``delivery_info`` property names an exchange (a route through a topic or
    fanout exchange, or an explicit exchange and routing key) is published to
    ``P<exchange>`` with that routing key instead, after its queue is declared
    (not for fanout: each bound queue gets a copy), and ``delivery_info`` is
    not sent (kombu does not send it either). A delayed message climbs the
    delay ladder (below) to its route's queue by name, whatever exchange the
    route names; a delayed broadcast is refused.
``Pceleriac.delay.<i>``, exchange (topic, durable), ``i`` in ``0..N-1``: the
    delay ladder. A message due in ``d`` ms is published to level ``N-1`` with
    the routing key ``b(N-1). ... .b(0).<queue>`` (``d`` in binary, highest
    bit first). Level ``i`` routes ``...1...`` (bit ``i`` set) to the queue
    ``Pceleriac.delay.<queue>.<i>`` and ``...0...`` on to level ``i-1``.
``Pceleriac.delay.<queue>.<i>``, queue, durable, ``x-message-ttl: 2**i`` ms,
    dead-lettering into level ``i-1`` (level 0: into
    ``Pceleriac.delay.deliver``). Every message in it has the same TTL, so it
    expires in order and never waits behind a longer one. Lifetime: durable;
    a message stays at most ``2**i`` ms.
``Pceleriac.delay.deliver``, exchange (topic, durable): routes a message that
    climbed down the ladder to ``P<queue>`` by the routing key's last word.
``Pceleriac.dead``, queue, durable, no TTL: dead letters of every queue; each
    carries ``x-celeriac-dead`` (queue, reason, count, time, id). Lifetime:
    until requeued or purged.
``Pceleriac.beat``, queue, classic, durable, ``x-single-active-consumer:
    true``: beat's lease and last runs, one JSON state message held unacked by
    the active consumer; ``Pceleriac.beat.latest``, queue, classic, durable,
    ``x-max-length: 1``: a copy of the latest state for the other processes
    (details in ``beat.py``).

Headers celeriac adds (and removes again before a message is handed out):
``x-celeriac-deliveries`` (the delivery count the next delivery reports;
absent: 1), ``x-celeriac-not-before`` (UNIX time in ms; a message that arrives
earlier, e.g. beyond the ladder's range, goes round again),
``x-celeriac-properties`` (JSON of properties AMQP has no field for),
``x-celeriac-headers`` (JSON of the headers when a float in them would lose
precision: pamqp encodes floats as 32-bit). RabbitMQ's
``x-death``, ``x-first-death-*``, ``x-last-death-*`` and ``x-delivery-count``
are removed too.
"""
