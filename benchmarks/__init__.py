"""Reproducible latency and throughput measurements: ``python -m benchmarks`` from the repository
root (``salstream bench`` starts the same in a checkout). Nothing in the installed package imports this.
"""
