#!/usr/bin/env bash
# One virtual environment per peer under benchmarks/peers/.venvs (gitignored), none of them Shoal's:
# the peers stay out of Shoal's dependencies. torch is pinned by the project's constraints.txt (the CPU
# wheel; a newer torch would pull GBs of CUDA packages). Idempotent: a finished venv has a stamp.
# Usage: setup.sh [ddp accelerate lightning deepspeed ray]
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
export PIP_CONSTRAINT="$PWD/../../constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
declare -A packages=(
  [ddp]=""                      # the hand-written loop: torch alone
  [accelerate]="accelerate"
  [lightning]="lightning"
  [deepspeed]="deepspeed"       # with DS_BUILD_OPS=0 (no ops compiled at install; no CUDA here)
  [ray]="ray[train]"
)
for peer in "${@:-ddp accelerate lightning deepspeed ray}"; do
  for p in $peer; do
    venv=.venvs/$p
    [ -f "$venv/.done" ] && continue
    echo "peers: $p"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q torch==2.13.0
    if [ -n "${packages[$p]}" ]; then
      DS_BUILD_OPS=0 DS_ACCELERATOR=cpu "$venv/bin/python" -m pip install -q "${packages[$p]}"
    fi
    touch "$venv/.done"
  done
done
