"""The training loop. It knows nothing of which parallel strategy wrapped the model.

The loss of every micro-batch is its sample sum divided by the size of the whole global
batch and multiplied by the world size; the all-reduce averages over ranks, so the update is
exactly the global-batch mean, however the batch was dealt (uneven and empty shares too).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from shoal import parallel
from shoal.checkpoint import Checkpointer, latest_checkpoint, read_marker
from shoal.config import JobConfig
from shoal.data import fetch, microbatches, stream
from shoal.data.batches import to_device
from shoal.data.parquet_rows import EpochShare, read_stats
from shoal.data.prefetch import Prefetcher
from shoal.data.prefetch import wanted as prefetch_wanted
from shoal.distributed import DistEnv, fault_injection
from shoal.distributed.collectives import TrainingGroup
from shoal.distributed.health import Health
from shoal.distributed.mesh import ParallelDims
from shoal.errors import ShoalError
from shoal.monitor import MONITORS, MonitorContext
from shoal.monitor.tensorboard import Scalars
from shoal.run_dir import RunDir
from shoal.sync import SyncStrategy
from shoal.train.balance import Balance
from shoal.train.losses import as_loss
from shoal.train.metrics import ReplicaScore, evaluate_layout
from shoal.train.optim import build_optimizer, build_scheduler
from shoal.train.progress import ProgressView
from shoal.train.steptime import GradClock, PhaseTotals, StepPhases

LossFn = Callable[..., torch.Tensor]  # loss_fn(output, target, reduction="sum")


@dataclass
class FitResult:
    model: nn.Module
    steps: int
    world_size: int
    wall_s: float  # from the first step to the end: evaluations and checkpoints included
    samples_per_s: float  # training throughput: samples over training time alone
    train_loss: float
    eval: dict[str, float] = field(default_factory=dict)
    run_dir: str | None = None
    train_s: float = 0.0  # the steps' own time (evaluation and checkpoint writing excluded)


class Window:
    """The steps since the last training record: their loss shares, samples, step phases and training time."""

    def __init__(self):
        self.loss = self.samples = 0.0
        self.steps = 0
        self.phases = PhaseTotals()
        self.before = 0.0  # training seconds of this window before its last pause
        self.restart()

    def pause(self) -> None:
        """Stop the clock: what comes next (evaluation, a checkpoint) is not training."""
        self.before += time.perf_counter() - self.start

    def restart(self) -> None:
        """Count time again from now."""
        self.start = time.perf_counter()

    def add(self, loss_share: float, samples: int, phases: dict[str, float]) -> None:
        self.loss += loss_share
        self.samples += samples
        self.phases.add(phases)
        self.steps += 1

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.start


class Trainer:
    """The loop. `dims` (the checked layout) and `sync` (how replicas agree) are made once per worker by the
    caller; the trainer calls the strategy's hooks in order and never asks which strategy or layout it has."""

    def __init__(self, cfg: JobConfig, env: DistEnv, dims: ParallelDims, sync: SyncStrategy, model: nn.Module,
                 train_set: Dataset, eval_set: Dataset | None, num_classes: int, run_dir: RunDir | None = None,
                 loss_fn: LossFn = F.cross_entropy, show_progress: bool = True, checkpoints: Checkpointer | None = None,
                 resume_from: Path | None = None, group: TrainingGroup | None = None):
        self.cfg, self.env, self.dims, self.sync, self.run_dir = cfg, env, dims, sync, run_dir
        self.loss_fn = as_loss(loss_fn, cfg.train.output_key)  # sums over samples, or tokens (shoal.train.losses)
        self.group = group or TrainingGroup.world()
        self.checkpoints, self.resume_from = checkpoints, resume_from
        self.train_set, self.eval_set, self.num_classes = train_set, eval_set, num_classes
        self.plan = sync.batch_plan(len(train_set), train_set)
        self.steps = sync.total_steps(self.plan)
        sample = self._sample_microbatch()
        self.layout = parallel.build(model, env, cfg, dims, sample[0], sync.wrap)
        self.model = self.layout.model
        if resume_from is not None and sync.trainer_checkpoints:
            self._prepare_resume(sample)
        self.optimizer = build_optimizer(self.layout.parameters(), cfg.optimizer)
        self.scheduler = build_scheduler(self.optimizer, self.steps, cfg.schedule)
        score = ReplicaScore(self.layout, eval_set, self.loss_fn, num_classes) if eval_set is not None and self.loss_fn.classes else None
        sync.attach(self.layout, self.optimizer, score)  # score: a replica's accuracy, for strategies that weigh replicas
        context = MonitorContext(self.layout, self.optimizer, self.group)
        self.monitors = [MONITORS.get(name)(context) for name in cfg.log.monitors]
        self.scalars = Scalars(run_dir.path) if cfg.log.tensorboard and run_dir is not None and env.is_main else None
        self.progress = ProgressView(self.steps, show_progress and env.is_main)
        if cfg.schedule.warmup_steps > self.steps:
            self.progress.note(f"warning: schedule.warmup_steps = {cfg.schedule.warmup_steps} exceeds the run's {self.steps} steps: "
                               f"the learning rate never reaches optimizer.lr = {cfg.optimizer.lr}")
        self.health = Health(cfg, env, self._log, self.group)  # heartbeats, stragglers, hangs named by rank
        self._say_where_rank0_runs()
        self.kill_test_hook = fault_injection.kill_after_step(env.rank)  # None outside the fault tests
        self.slow_test_hook = fault_injection.slow_samples(env.rank)
        self.balance = Balance(cfg, dims, self.group, self.layout.dp_rank, lambda: self.health.busy_s, self._log, env.is_main)
        self.grad_clock = GradClock(self.layout.parameters())
        self.prefetch = Prefetcher(prefetch_wanted(cfg.data.prefetch, train_set))
        self.share = EpochShare(train_set, self.plan, self.layout.dp_rank)  # data.read = rank: hold this rank's rows only
        self.data_parts = stream.parts(train_set, self.plan)  # data.read = stream: its position

    def _say_where_rank0_runs(self) -> None:
        """On a node without global rank 0, which ranks train here and where progress prints (else: silence)."""
        env = self.env
        if env.local_rank != 0 or env.rank == 0 or not self.health.active:
            return
        here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        ranks = f"rank {env.rank}" if here == 1 else f"ranks {env.rank}-{env.rank + here - 1}"
        print(f"{self.health.host}: {ranks} of {env.world_size} train here; global rank 0 runs on {self.health.hosts[0]}, "
              f"which prints progress and the summary (records: the run directory there)", flush=True)

    def _prepare_resume(self, sample: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Before monitors and clocks exist and before the checkpoint is loaded: the layout's throw-away step (if it
        needs one) leaves nothing behind that the load does not overwrite; its bytes are not the run's."""
        if self.layout.prepare_resume(*sample, self.loss_fn):
            self.sync.stats()

    def _step_batch(self) -> int:
        """Samples of one replica in one accumulation step."""
        return self.plan.local_batch // self.cfg.train.grad_accum

    def _sample_microbatch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of one pipeline micro-batch: what stage costs are measured on (inputs: a dict for
        transformers-style batches)."""
        size = max(self._step_batch() // self.dims.microbatches, 1)
        x, y = fetch(self.train_set, np.arange(min(size, len(self.train_set))))
        return to_device(x, self.env.device), to_device(y, self.env.device)

    def parts(self) -> dict:
        """The named stateful parts checkpoints carry besides model, optimizer, schedule and RNG."""
        return {**self.sync.parts(), **({"balance": self.balance} if self.balance.measure else {}), **self.data_parts}

    def _log(self, record: dict) -> None:
        if self.run_dir is not None and self.env.is_main:
            self.run_dir.log(record)
            if self.scalars is not None:
                self.scalars.write(record)

    def _batches(self, index: int) -> tuple[bytes, Callable[[], list]]:
        """Step `index` (0-based)'s micro-batches on this rank: a key naming their samples, and how to load them."""
        epoch, in_epoch = divmod(index, self.plan.steps_per_epoch())
        per_rank = self.balance.deal(self.plan, epoch, in_epoch)  # batch shares: equal, fixed or by measured speed
        mine, total = per_rank[self.layout.dp_rank], sum(len(p) for p in per_rank)
        units = None if self.loss_fn.per_sample else self.loss_fn.units  # a token-level loss counts the global batch's tokens
        shares = self.balance.shares if self.balance.active else None

        def load() -> list:
            self.share.ready(epoch, shares)  # a new epoch: its rows replace the last one's (in the prefetch thread, if on)
            return list(microbatches(self.train_set, per_rank, self.layout.dp_rank, self.cfg.train.grad_accum, self.env.device, units))
        return Prefetcher.key(mine, total), load

    def train_step(self, step: int) -> tuple[float, int, dict[str, float]] | None:
        """Optimizer step number `step` (1-based); returns this rank's share of the global mean loss, global samples,
        and where the step's time went, or None when the gradient was not finite (then nothing was updated)."""
        phases = StepPhases(self.grad_clock)
        batches = self.prefetch.take(*self._batches(step - 1))
        if step < self.steps:
            self.prefetch.ahead(*self._batches(step))  # read while this step computes
        phases.mark("data_wait_s")
        mine = self.balance.count(batches)
        if self.slow_test_hook is not None:
            self.slow_test_hook(mine)  # test-only: a slower device's compute per sample
        scale = self.sync.loss_scale(sum(mb.units for mb in batches), batches[0].global_units)  # units: samples unless tokens
        loss_share = 0.0
        for i, mb in enumerate(batches):
            last = i == len(batches) - 1
            if last:
                phases.last_microbatch()
            loss_share += self.layout.forward_backward(mb.inputs, mb.targets, self.loss_fn, scale, sync=last)
        phases.end_backward()
        self.sync.after_backward(self.layout)
        norm = self.sync.grad_norm(self.layout, self.cfg.train.clip_grad_norm or math.inf)  # inf: measure, scale by 1
        if not math.isfinite(norm):  # the same value on every rank: all take this branch together
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.sync.step(self.optimizer)
        self.sync.after_step(step, self.layout)
        for monitor in self.monitors:
            monitor.after_step(step)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        phases.mark("update_s")
        return loss_share, batches[0].global_count, phases.times

    def evaluate(self) -> dict[str, float]:
        if self.eval_set is None:
            return {}
        batch = self.layout.eval_batch(max(self.cfg.train.global_batch_size // self.group.size, 256), self._step_batch())
        return evaluate_layout(self.layout, self.eval_set, batch, self.loss_fn, self.num_classes, self.group)

    def save_checkpoint(self, step: int) -> None:
        t0 = time.perf_counter()
        meta = {"layout": self.dims.describe(), "job": self.cfg.name, **self.sync.checkpoint_meta()}
        for part in self.data_parts.values():
            part.at(step)
        path = self.checkpoints.save(step, self.layout.modules, self.optimizer, self.scheduler, meta,
                                     fault=fault_injection.kill_before_commit(self.env.rank), parts=self.parts())
        self._log({"kind": "checkpoint", "step": step, "path": str(path), "save_s": time.perf_counter() - t0})

    def resume(self) -> int:
        """Load the checkpoint given at construction (resharding onto this layout); returns its step."""
        state = self.checkpoints.load(self.resume_from, self.layout.modules, self.optimizer, self.scheduler, self.parts())
        step = state.step
        if self.run_dir is not None:
            self.run_dir.trim_after(step)
        self._log({"kind": "resume", "step": step, "path": str(self.resume_from), "world_size": self.env.world_size,
                   "parts": state.parts})
        self.progress.note(f"resumed from {self.resume_from} at step {step}")
        return step

    def _continue_from_server(self, first: int, incarnation: int) -> None:
        """ps.rejoin: the server restored (or not) its own checkpoint, and this worker goes on from its clock there, `first`.
        Its records after that step are about to be redone (every incarnation: a no-op unless this attempt restarted).
        The first incarnation checks that the server continued from the checkpoint this rank sees, and says so."""
        if self.run_dir is None:
            return
        self.run_dir.trim_after(first)
        if incarnation:
            return
        marker = read_marker(self.resume_from) if self.resume_from is not None else {}
        seen = int(marker.get("step", 0))
        if seen != first:
            there = self.run_dir.path / "checkpoints"
            raise ShoalError(f"ps.rejoin: the parameter server continues from worker 0's step {first}, but rank 0 sees "
                             f"{'the checkpoint of step ' + str(seen) if seen else 'no checkpoint'} in '{there}'; "
                             "put --out on a file system every rank's node shares, or train into another directory")
        if self.resume_from is not None:
            self._log({"kind": "resume", "step": first, "path": str(self.resume_from), "world_size": marker.get("world_size"),
                       "parts": ["ps_server"], "by": "parameter server"})
            self.progress.note(f"resumed from {self.resume_from} at step {first} (the parameter server's checkpoint)")

    def after_nonfinite(self, step: int) -> int:
        """Apply train.on_nonfinite to a step whose gradient was NaN/inf; returns the step to go on after."""
        t = self.cfg.train
        self.nonfinite += 1
        self._log({"kind": "nonfinite", "step": step, "action": t.on_nonfinite, "count": self.nonfinite})
        where = f"non-finite gradient (NaN or inf) at step {step}"
        if t.on_nonfinite == "fail":
            raise ShoalError(f"train: {where}; lower optimizer.lr, set train.clip_grad_norm, check the data, "
                             "or set train.on_nonfinite = 'skip' / 'rollback'")
        if self.nonfinite > t.max_nonfinite:
            raise ShoalError(f"train: {where}, the {self.nonfinite}th such step; stopped after train.max_nonfinite = {t.max_nonfinite}")
        self.progress.note(f"{where}: {t.on_nonfinite}")
        if t.on_nonfinite == "skip":
            return step
        latest = latest_checkpoint(self.checkpoints.root, self.checkpoints.run_id) if self.checkpoints is not None else None
        if latest is None:
            raise ShoalError(f"train: {where} and no checkpoint to roll back to; set checkpoint.every")
        self.resume_from = latest
        return self.resume()

    def log_window(self, window: Window, step: int, epoch: int, start: float) -> float:
        """One training record for the steps since the previous one; returns their global mean loss."""
        loss_sum, = self.group.sum([window.loss])
        loss, rate = loss_sum / window.steps, window.samples / window.elapsed()
        self.trained_s += window.elapsed()
        self.log_events(step)
        signals = {k: v for monitor in self.monitors for k, v in monitor.record().items()}  # collectives: every rank
        self._log({"kind": "train", "step": step, "epoch": epoch, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                   "samples_per_s": rate, **window.phases.means(window.steps), "time_s": time.perf_counter() - start,
                   **self.sync.stats(), **signals})
        self.progress.update(step, f"loss {loss:.4f}  {rate:,.0f} samples/s")
        return loss

    def log_reads(self) -> None:
        """Parquet read per rank or streamed: what every rank read (collective), as one "data" record."""
        stats = read_stats(self.train_set)
        if stats is None:
            return
        keys = list(stats)
        every = self.group.gather([float(stats[k]) for k in keys])
        self._log({"kind": "data", "step": self.steps, "ranks": [{k: int(v) for k, v in zip(keys, row)} for row in every]})

    def log_events(self, step: int) -> None:
        """Records the sync strategy made of its own (a choice, a change of shares): in metrics.jsonl and on the console."""
        for event in self.sync.events():
            message = event.pop("message", None)
            self._log({"step": step, **event})
            if message:
                self.progress.note(message)

    def evaluate_and_log(self, step: int, epoch: int) -> dict[str, float]:
        result = self.evaluate()
        if result:
            self._log({"kind": "eval", "step": step, "epoch": epoch, **result})
            shown = "".join(f"  {k} {result[k]:.4f}" for k in ("accuracy", "perplexity") if k in result)
            self.progress.note(f"eval @ step {step}: loss {result['loss']:.4f}{shown}")
        return result

    def fit(self) -> FitResult:
        """The loop, run as the sync strategy says (a parameter server's rejoinable workers: in a child process)."""
        if self.run_dir is not None and not self.sync.trainer_checkpoints:
            # ps.rejoin: opened before the fork. A child's opening is lost on this process, which would open the directory
            # again to save model.pt: redo a restart's trim over the child's records, and remove, as a leftover, the
            # checkpoint the server is writing then (its .tmp-step)
            self.run_dir.open()
        return self.sync.run_training(self._fit)

    def _fit(self, incarnation: int = 0) -> FitResult:
        cfg, spe = self.cfg.train, self.plan.steps_per_epoch()
        if incarnation:
            self.kill_test_hook = None  # test faults fire in the first incarnation only
        own = self.sync.trainer_checkpoints  # False: the strategy's servers checkpoint alone (ps.rejoin)
        resuming = self.resume_from is not None and own
        first = self.resume() if resuming else self.sync.first_step()
        if first and not resuming:  # a worker that (re)joined: its schedule stands where its steps stand
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
                for _ in range(first):
                    self.scheduler.step()
        if not own:
            self._continue_from_server(first, incarnation)
        self.log_events(first)  # choices made while building (comm.compression = auto)
        every = self.cfg.checkpoint.every if self.checkpoints is not None and own else 0
        self.layout.train()
        if self.dims.model_parallel:
            self._log({"kind": "layout", **self.layout.info})
        self.balance.begin(first, self.layout, self.train_set, self.env.device, self.slow_test_hook)
        start = time.perf_counter()
        window = Window()
        seen, last_loss, last_eval = 0, float("nan"), {}
        step, self.nonfinite = first, 0
        self.trained_s = 0.0
        while step < self.steps:
            epoch = step // spe
            with self.health.step(step + 1):
                outcome = self.train_step(step + 1)
            if outcome is None:
                step = self.after_nonfinite(step + 1)
                continue
            window.add(*outcome)
            seen += outcome[1]
            done = step + 1
            if done % cfg.log_every == 0 or done == self.steps:
                with self.health.guard(f"in the training record after step {done}"):
                    last_loss = self.log_window(window, done, epoch, start)
                self.balance.after_log(done)
                window = Window()
            if (cfg.eval_every and done % cfg.eval_every == 0) or (not cfg.eval_every and done % spe == 0) or done == self.steps:
                window.pause()  # throughput counts training, not evaluation
                with self.health.guard(f"in the evaluation after step {done}"):
                    last_eval = self.evaluate_and_log(done, epoch)
                window.restart()
            if self.kill_test_hook is not None:
                self.kill_test_hook(done)
            if every and done % every == 0 and done < self.steps:
                window.pause()
                with self.health.guard(f"in the checkpoint of step {done}"):
                    self.save_checkpoint(done)
                window.restart()
            step = done
        with self.health.guard(f"in the last checkpoint and records (step {self.steps})"):
            if self.checkpoints is not None and own:
                if self.cfg.checkpoint.at_end and first < self.steps:
                    self.save_checkpoint(self.steps)
                self.checkpoints.wait()
            self.log_reads()
        wall = time.perf_counter() - start
        self.progress.close()
        self.prefetch.close()
        self.health.close()
        if self.scalars is not None:
            self.scalars.close()
        return FitResult(self.layout.unwrap(), self.steps, self.env.world_size, wall, seen / self.trained_s if self.trained_s else 0.0,
                         last_loss, last_eval, str(self.run_dir.path) if self.run_dir else None, self.trained_s)
