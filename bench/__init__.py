"""Benchmarks of rudder_sync, run on demand (never as timed tests). See bench/README.md."""
