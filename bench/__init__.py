"""Benchmarks for vaopd_kernels: pytest-benchmark microbenchmarks (``bench/test_*.py``) and the
side-by-side runner against the peers (``python -m bench.compare``). See docs/benchmarks.md.

Modules, one job each:

- ``problem``  the tasks and their GEMM floor FLOPs (shapes, inputs, ``rel_err``: ``vaopd_kernels.testing``)
- ``presets``  the named shape sets (cpu-small, qwen3vl-2b-8b, sweep-n, sweep-v)
- ``peers``    every implementation of each task (naive, authors, liger, cce, our backends)
- ``measure``  wall time / CUDA events and peak memory of one job
- ``check``    the row-slice reference check of an implementation's outputs
- ``machine``  machine description, versions, result folder tag, measured matmul rate
- ``worker``   the subprocess that runs jobs for one implementation
- ``report``   JSON, markdown table and PNG plots
- ``compare``  the command line that ties them together
- ``floors``   each design's expected floor (GEMM work, HBM bytes, time bounds)
- ``gpu_run``  the one GPU script: stages in their own processes (``gpu_stages``), compact table last
"""
