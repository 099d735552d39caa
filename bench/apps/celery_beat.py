"""Celery's side of ``bench/beat_timing.py``: the same entry, Celery 5.7's beat on Redis."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bench_beat", broker=os.environ["BENCH_BROKER"])
app.conf.beat_schedule = {"tick": {"task": "bench.tick", "schedule": 1.0}}
