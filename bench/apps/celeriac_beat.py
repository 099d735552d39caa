"""celeriac's side of ``bench/beat_timing.py``: one entry every second, broker from the env."""

from __future__ import annotations

import os

from celeriac import Celeriac

app = Celeriac("bench_beat", broker=os.environ["BENCH_BROKER"], backend=os.environ["BENCH_BROKER"])
app.conf.beat_schedule = {"tick": {"task": "bench.tick", "schedule": 1.0}}
