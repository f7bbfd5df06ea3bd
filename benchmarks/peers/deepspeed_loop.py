"""DeepSpeed's engine on CPU (DS_ACCELERATOR=cpu), launched by torchrun; gradient clipping off (DeepSpeed clips at 1.0 by default).

DS_ACCELERATOR=cpu torchrun --standalone --nproc-per-node 2 deepspeed_loop.py WORK.pt OUT_DIR
The first start JIT-builds a shared-memory op (about 4 minutes, then cached in ~/.cache/torch_extensions).
"""

import sys

import deepspeed
import torch.distributed as dist
from common import Work, loss_of, record, timed_loop


def main() -> None:
    work_file, out = sys.argv[1], sys.argv[2]
    deepspeed.init_distributed(dist_backend="gloo")
    work = Work(work_file, dist.get_rank(), dist.get_world_size())
    model = work.model()
    config = {"train_batch_size": work.batches.shape[1], "train_micro_batch_size_per_gpu": work.local, "gradient_accumulation_steps": 1,
              "gradient_clipping": 0.0, "steps_per_print": 1 << 30, "wall_clock_breakdown": False}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=work.optimizer(model.parameters()), config=config)
    work.tune()

    def step(x, y):
        loss = loss_of(engine, x, y)
        engine.backward(loss)
        engine.step()
        return loss

    losses, train_s, cpu_s = timed_loop(work, step)
    dist.barrier()
    record(out, work, losses, train_s, engine.module, cpu_s=cpu_s)


if __name__ == "__main__":
    main()
