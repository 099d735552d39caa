"""What every ``bench/apps/*_amqp`` app shares: the RabbitMQ URL (a vhost of its own).

``BENCH_AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/celeriac-bench``;
the benchmark creates the vhost and deletes it afterwards). Results and the
done counter live in Redis (:mod:`bench.apps.redis_common`, ``BENCH_REDIS_URL``).
"""

from __future__ import annotations

import os

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/celeriac-bench")
