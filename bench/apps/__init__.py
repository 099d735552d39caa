"""No-op task apps for the benchmarks; database paths come from the environment."""
