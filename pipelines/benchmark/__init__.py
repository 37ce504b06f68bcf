"""Benchmarks that train every method on the same data and score it on held-out subjects."""
