"""Metrics used by the benchmarks and the reference model's adherence check."""
