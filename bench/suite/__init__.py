"""The performance suite: ``python -m bench.suite`` (docs/performance.md).

One run measures, on the machine it runs on: the practical compute limits (best conv and matmul
throughput, fp32 and bf16); for each benchmarked model and precision/compile mode the median training
step time, images/s, model FLOPs per step, achieved FLOP/s as a fraction of those limits and peak
memory; the data pipeline against the step's demand; evaluation throughput; step time against batch
size and resolution (a PNG plot); the RevNet memory benchmark; and the anchor comparison with a public
BigBiGAN reimplementation. It writes one JSON file and prints a short table.

Every measurement runs in a child process of its own (:mod:`.isolation`), so the peak memory of a
configuration is its own and one failing configuration is recorded, not fatal.
"""
