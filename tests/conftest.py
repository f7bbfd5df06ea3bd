import os

# Tests share 2 cores; one intra-op thread per process keeps multi-process tests from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
