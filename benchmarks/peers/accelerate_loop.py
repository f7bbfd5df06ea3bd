"""Hugging Face Accelerate, launched by torchrun (`accelerate launch --cpu --num_processes 2` runs one process here).

torchrun --standalone --nproc-per-node 2 accelerate_loop.py WORK.pt OUT_DIR
Batches are Shoal's index slices, not Accelerate's prepared DataLoader, which fetches samples one at a time.
"""

import sys
import time

from accelerate import Accelerator
from common import Work, loss_of, record


def main() -> None:
    work_file, out = sys.argv[1], sys.argv[2]
    acc = Accelerator(cpu=True)
    work = Work(work_file, acc.process_index, acc.num_processes)
    model = work.model()
    opt = work.optimizer(model.parameters())
    model, opt = acc.prepare(model, opt)
    work.tune()
    losses = []
    start, cpu0 = time.perf_counter(), time.process_time()  # cpu: this process's CPU seconds, every thread
    for step in range(work.steps):
        x, y = work.batch(step)
        loss = loss_of(model, x, y)
        acc.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    acc.wait_for_everyone()
    record(out, work, losses, time.perf_counter() - start, acc.unwrap_model(model), cpu_s=time.process_time() - cpu0)


if __name__ == "__main__":
    main()
