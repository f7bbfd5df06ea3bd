"""Ray Train: `TorchTrainer` with two CPU workers on a local Ray instance; the model wrapped by `prepare_model` (DDP over gloo).

RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 python ray_loop.py WORK.pt OUT_DIR
(without that variable Ray moves 127.0.0.1 traffic onto the machine's eth0 address). Batches are
Shoal's index slices: `prepare_data_loader` over a per-sample data set fetches samples one at a time.
"""

import os
import sys
from pathlib import Path

import ray
import ray.train
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, prepare_model

HERE = str(Path(__file__).resolve().parent)


def loop(cfg: dict) -> None:
    sys.path.insert(0, cfg["here"])
    from common import Work, plain_step, record, timed_loop

    ctx = ray.train.get_context()
    work = Work(cfg["work"], ctx.get_world_rank(), ctx.get_world_size())
    model = prepare_model(work.model())
    opt = work.optimizer(model.parameters())
    work.tune()
    losses, train_s, cpu_s = timed_loop(work, plain_step(model, opt))
    import torch.distributed as dist

    dist.barrier()
    record(cfg["out"], work, losses, train_s, getattr(model, "module", model), cpu_s=cpu_s)


def main() -> None:
    work_file, out = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": HERE}})
    trainer = TorchTrainer(loop, train_loop_config={"work": work_file, "out": out, "here": HERE},
                           scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(storage_path=os.path.join(out, "ray"), name="peers"))
    trainer.fit()
    ray.shutdown()


if __name__ == "__main__":
    main()
