"""``make bench``: throughput, latency and memory of the pipeline against a raw-client ceiling.

``benchmarks/bench.py`` is the entry point (``make bench``, ``make bench-year``); the results
and what limits them are in benchmarks/README.md.
"""
