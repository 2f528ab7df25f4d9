"""Benchmarks: ``python -m benchmarks`` (the agent-serving suite) and single-purpose scripts."""
