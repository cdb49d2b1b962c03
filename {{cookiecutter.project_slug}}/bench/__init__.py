"""Benchmarks of the test isolation: ``python -m bench.isolation_bench``."""
