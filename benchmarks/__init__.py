"""Benchmark suite: every figure is measured side by side with its reference in one run."""
