"""Fine-tuning experiments of issue 6 (in-process simulation with the real runtime objects).

Run with ``python -m benchmarks.experiments.<name>``; results land in
``benchmarks/results/experiments/``. See ``benchmarks/experiments/README.md``.
"""
