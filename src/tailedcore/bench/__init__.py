"""Benchmark tooling: the noisy long-tail builder, dataset converters, synthetic data, the benchmark
runner and the demo."""
