# The two commands of the README; each does its own set-up.
.PHONY: setup demo test bench peers

setup:
	@bash scripts/setup.sh

# The main job: a CNN on MNIST, data parallel over 2 processes; prints test accuracy and throughput.
demo: setup
	.venv/bin/shoal train examples/mnist_cnn.toml --nproc 2 --out runs/mnist-cnn --overwrite

# Lint (ruff, configured in pyproject.toml), then every test.
test: setup
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/python -m pytest -q --durations=25

# Every benchmark of BENCHMARKS.md (about 1.5 hours on 2 cores); bench_node_restart.py and bench_compression_link.py need root.
bench: setup
	.venv/bin/python -m pip install -q -c constraints.txt -e ".[bench]"
	.venv/bin/python benchmarks/bench_overhead.py
	.venv/bin/python benchmarks/bench_mnist.py
	.venv/bin/python benchmarks/bench_checkpoint.py
	.venv/bin/python benchmarks/bench_startup.py
	.venv/bin/python benchmarks/bench_layouts.py all
	.venv/bin/python benchmarks/bench_balance.py
	.venv/bin/python benchmarks/bench_param_server.py
	.venv/bin/python benchmarks/bench_steptime.py
	.venv/bin/python benchmarks/bench_data.py
	.venv/bin/python benchmarks/bench_prep.py
	.venv/bin/python benchmarks/bench_infer.py
	.venv/bin/python benchmarks/bench_serve.py
	.venv/bin/python benchmarks/bench_serve.py --hidden 4096,4096,4096 --prepack both --json benchmarks/results/serve-4096-prepack.json
	.venv/bin/python benchmarks/bench_batch_cost.py
	.venv/bin/python benchmarks/bench_node_restart.py
	.venv/bin/python benchmarks/bench_compression_link.py
	.venv/bin/python benchmarks/bench_compression_link.py --model gpt --methods none,fp16,int8,powersgd,auto,powersgd8w20,powersgd16w20,powersgd32w20 --steps 160 --target 0.35
	.venv/bin/python benchmarks/bench_plan_scale.py
	.venv/bin/python benchmarks/bench_plan_here.py

# Shoal against a hand-written DDP loop, Accelerate, Lightning, DeepSpeed and Ray Train on equal work (BENCHMARKS.md, "peers").
# Each peer gets its own venv in benchmarks/peers/.venvs (a few GB, first time ~5 min); the runs take ~15 min on 2 cores.
peers: setup
	bash benchmarks/peers/setup.sh
	.venv/bin/python benchmarks/peers/run.py
