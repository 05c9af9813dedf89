"""Benchmarks of the streaming pipeline: `python -m bench` (results in bench/results.md)."""
