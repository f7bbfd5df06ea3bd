"""The hand-written baseline: torch DDP under torchrun, the loop a careful user writes without any framework.

torchrun --standalone --nproc-per-node 2 ddp_loop.py WORK.pt OUT_DIR
"""

import sys

import torch.distributed as dist
from common import Work, plain_step, record, timed_loop
from torch.nn.parallel import DistributedDataParallel as DDP


def main() -> None:
    work_file, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    work = Work(work_file, dist.get_rank(), dist.get_world_size())
    model = DDP(work.model())
    opt = work.optimizer(model.parameters())
    work.tune()
    losses, train_s, cpu_s = timed_loop(work, plain_step(model, opt))
    dist.barrier()
    record(out, work, losses, train_s, model.module, cpu_s=cpu_s)
    # no destroy_process_group(): on gloo it can wait for a peer that already exited


if __name__ == "__main__":
    main()
