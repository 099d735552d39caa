"""Benchmarks: celeriac measured against other task queues in the same run."""
