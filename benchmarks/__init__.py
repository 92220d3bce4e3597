"""carotid's benchmark: one module per comparison, each running its pair interleaved and reporting the median
ratio with its range, all written to one table (docs/PERFORMANCE.md).

    python -m benchmarks                      # every comparison → docs/benchmark-results.md and .csv
    python -m benchmarks first_step whole_run # some of them
    python -m benchmarks --quick --out /tmp/q # tiny sizes (tests/test_benchmark.py)
    python -m benchmarks.gpu                  # the GPU rows, on whatever GPUs nvidia-smi shows

benchmarks/common.py holds what they share; a comparison imports it and never another comparison."""
