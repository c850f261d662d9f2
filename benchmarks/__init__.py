"""Benchmark scripts: each prints a table and writes its section of docs/PERFORMANCE.md."""
