"""The project's benchmarks, one module each, run from the repository root as ``python -m bench.<module>``
(``python -m bench.suite`` for the performance suite); their committed results are under ``bench/results/``."""
