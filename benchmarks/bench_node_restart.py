"""Time from killing a whole node (agent and worker, SIGKILL) to training again, across two
network-namespace "machines" of an elastic --nnodes 1:2 job. Reuses the fault test, which
prints the time; needs root (namespaces). Usage: python benchmarks/bench_node_restart.py [RUNS]"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
from pathlib import Path

TEST = Path(__file__).parents[1] / "tests" / "distributed" / "multinode" / "test_node_faults.py"


def one_run() -> float:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(TEST)],
                          capture_output=True, text=True, timeout=300)
    found = re.search(r"kill -> training again: ([\d.]+) s", proc.stdout)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"the fault test failed:\n{proc.stdout[-3000:]}")
    return float(found.group(1))


if __name__ == "__main__":
    times = [one_run() for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3)]
    print("kill -> training again (s):", ", ".join(f"{t:.1f}" for t in times), f"| median {statistics.median(times):.1f}")
