"""Benchmarks behind `keisei-ray bench ...`: each prints its figures beside a baseline."""
