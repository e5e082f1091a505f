"""Benchmarks: :mod:`dgp.bench.quality` (restoration quality against baselines, ``dgp bench quality``) and
:mod:`dgp.bench.datasets` (the shared CIFAR-10 test split)."""
