"""The hand-written baseline: torch DDP under torchrun, the loop a careful user writes without any framework.

torchrun --standalone --nproc-per-node 2 ddp_loop.py WORK.pt OUT_DIR
"""

import sys
import time

import torch.distributed as dist
from common import Work, loss_of, record
from torch.nn.parallel import DistributedDataParallel as DDP


def main() -> None:
    work_file, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    work = Work(work_file, dist.get_rank(), dist.get_world_size())
    model = DDP(work.model())
    opt = work.optimizer(model.parameters())
    work.tune()
    losses = []
    start, cpu0 = time.perf_counter(), time.process_time()  # cpu: this process's CPU seconds, every thread
    for step in range(work.steps):
        x, y = work.batch(step)
        loss = loss_of(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    dist.barrier()
    record(out, work, losses, time.perf_counter() - start, model.module, cpu_s=time.process_time() - cpu0)
    # no destroy_process_group(): on gloo it can wait for a peer that already exited


if __name__ == "__main__":
    main()
