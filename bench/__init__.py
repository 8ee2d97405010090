"""Benchmarks: figures for bench/RESULTS.md (`make bench`)."""
