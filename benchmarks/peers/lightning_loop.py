"""PyTorch Lightning: a LightningModule and `Trainer(strategy="ddp", devices=2)` on CPU (Lightning starts the second process).

python lightning_loop.py WORK.pt OUT_DIR
Each step's batch is one item of a data set of whole batches (Shoal's index slices): Lightning's
distributed sampler over a per-sample data set would fetch samples one at a time.
"""

import sys
import time

import lightning as L
import torch
from common import Work, loss_of, record
from torch.utils.data import DataLoader, Dataset


class Steps(Dataset):
    """Item k: this rank's batch of step k."""

    def __init__(self, work: Work):
        self.work = work

    def __len__(self) -> int:
        return self.work.steps

    def __getitem__(self, k: int):
        return self.work.batch(k)


class Net(L.LightningModule):
    def __init__(self, work_file: str, out: str, world: int):
        super().__init__()
        self.work, self.out = Work(work_file, 0, world), out  # the rank is known once Lightning has started the processes
        self.net = self.work.model()
        self.losses: list[torch.Tensor] = []

    def setup(self, stage: str) -> None:
        self.work.rank = self.global_rank

    def train_dataloader(self):
        return DataLoader(Steps(self.work), batch_size=None, shuffle=False)

    def configure_optimizers(self):
        return self.work.optimizer(self.net.parameters())

    def on_train_start(self) -> None:
        self.work.tune()
        self.start, self.cpu0 = time.perf_counter(), time.process_time()  # cpu: this process's CPU seconds, every thread

    def training_step(self, batch, index):
        x, y = batch
        loss = loss_of(self.net, x, y)
        self.losses.append(loss.detach())
        return loss

    def on_train_end(self) -> None:
        self.trainer.strategy.barrier()
        record(self.out, self.work, self.losses, time.perf_counter() - self.start, self.net, cpu_s=time.process_time() - self.cpu0)


def main() -> None:
    work_file, out = sys.argv[1], sys.argv[2]
    module = Net(work_file, out, 2)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, max_steps=module.work.steps, precision="32-true",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(module)


if __name__ == "__main__":
    main()
