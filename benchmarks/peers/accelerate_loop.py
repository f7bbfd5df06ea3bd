"""Hugging Face Accelerate, launched by torchrun (`accelerate launch --cpu --num_processes 2` runs one process here).

torchrun --standalone --nproc-per-node 2 accelerate_loop.py WORK.pt OUT_DIR
Batches are Shoal's index slices, not Accelerate's prepared DataLoader, which fetches samples one at a time.
"""

import sys

from accelerate import Accelerator
from common import Work, plain_step, record, timed_loop


def main() -> None:
    work_file, out = sys.argv[1], sys.argv[2]
    acc = Accelerator(cpu=True)
    work = Work(work_file, acc.process_index, acc.num_processes)
    model = work.model()
    opt = work.optimizer(model.parameters())
    model, opt = acc.prepare(model, opt)
    work.tune()
    losses, train_s, cpu_s = timed_loop(work, plain_step(model, opt, backward=acc.backward))
    acc.wait_for_everyone()
    record(out, work, losses, train_s, acc.unwrap_model(model), cpu_s=cpu_s)


if __name__ == "__main__":
    main()
