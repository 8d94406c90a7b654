"""Benchmarks: they measure and print, never assert. See bench/README.md."""
