"""Tests of the benchmarks under bench/ (importable through pytest's pythonpath, the repository root)."""
