"""Reproducible latency and throughput measurements (``salstream bench``).

Run from a source checkout: ``salstream bench`` (editable install) or
``python -m benchmarks.cli``. Nothing in the installed packages imports this package.
"""
