"""Benchmarks of opscenter on PostgreSQL: fires per second, lateness, fail-over (see README.md)."""
