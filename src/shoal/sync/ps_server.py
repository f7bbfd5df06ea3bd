"""One parameter server: it owns a range of the flat parameters, its optimizer and schedule, and answers pushes.

The server does not run the training loop; it knows the run's length (the same batch plan as
the workers) and loops until every worker pushed its last step:

- sync: receive every worker's gradient of step t (in worker order), average, clip by the global
  norm (the squared norms of all servers' ranges are summed over the servers' group), one
  optimizer step, reply the fresh range to everyone. Equals data parallel.
- async: apply each push on arrival as one optimizer step; reply at once.
- ssp: the gradients of clock k are applied together (their mean, one optimizer step) once every
  worker pushed clock k; a worker's reply (its pull) is withheld while it is more than
  `staleness` clocks ahead of the completed clocks. With staleness 0 that is sync.

Agreement points (every checkpoint step and the last step): no reply goes out until every
worker pushed that step, so every worker holds the same parameters there; checkpoints are taken
then, the servers' ranges and optimizer states as shards of the same DCP checkpoint. In sync mode a
non-finite mean gradient reaches every worker, so with train.on_nonfinite = rollback the servers
and the workers load the newest checkpoint together.
Staleness of an applied gradient is the server's version when applying it minus the version it
was computed on (async: in pushes applied; ssp and sync: in clocks).

ps.rejoin (async, ssp): every worker on a link of its own (ps_link.py), watched by a thread; a lost
link is that worker leaving (ssp clocks then complete without it), a new incarnation its return. The only
agreement point is the last step; the servers checkpoint alone (no worker takes part), every checkpoint.every of
worker 0's steps: server 0 decides, the others join it (ps_peers.py).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from shoal.checkpoint import latest_checkpoint
from shoal.distributed import fault_injection
from shoal.errors import ShoalError
from shoal.sync import ps_link
from shoal.sync.ps_members import Members
from shoal.sync.ps_wire import TAG, Shards, body, flat_values, header, message, trainable, write_values


class ShardModule(nn.Module):
    """The server's range as a module of one parameter, named after the server: its checkpoint keys are its own."""

    def __init__(self, name: str, values: torch.Tensor):
        super().__init__()
        self.name = name
        self.register_parameter(name, nn.Parameter(values))

    @property
    def flat(self) -> nn.Parameter:
        return getattr(self, self.name)


class Server(Members):
    def __init__(self, cfg, index: int, workers: list[int], shards: Shards, model: nn.Module, steps: int,
                 make_optimizer: Callable, make_scheduler: Callable, server_group, wire=None, meta: dict | None = None):
        self.cfg, self.index, self.workers, self.steps = cfg, index, workers, steps
        self.meta = meta or {}  # what this server's own checkpoints' markers record (ps.rejoin)
        self.mode, self.bound = cfg.ps.mode, cfg.ps.staleness
        lo, hi = shards.range(index)
        self.size, self.shards = hi - lo, shards
        self.model = model  # a whole copy: what this rank writes into the checkpoint's model and optimizer entries
        self.module = ShardModule(f"ps_server{index}", flat_values(trainable(model))[lo:hi].clone())
        self.standin = make_optimizer(trainable(model), cfg.optimizer)  # never steps: mirrors the workers' idle optimizer
        self.optimizer = make_optimizer([self.module.flat], cfg.optimizer)
        self.scheduler = make_scheduler(self.optimizer, steps, cfg.schedule)
        self.server_group, self.wire = server_group, wire  # wire: the group messages use (None: the default group)
        self.max_norm = cfg.train.clip_grad_norm or math.inf
        self.version = 0  # updates applied (sync, ssp: clocks completed; async: pushes applied)
        self.clocks = [0] * len(workers)  # steps each worker pushed
        self.completed = 0  # ssp: clocks whose gradients are applied
        self.pending: dict[int, dict[int, tuple[torch.Tensor | None, int]]] = {}  # ssp: clock -> worker -> (gradient, version)
        self.waiting: dict[int, int] = {}  # worker index -> the step whose reply is withheld
        self.applied = self.stale_sum = self.stale_max = 0
        self.nonfinite = 0  # sync, on_nonfinite = rollback: steps rolled back so far (the trainers count the same)
        self.rejoin = cfg.ps.rejoin
        self.links: dict[int, dist.ProcessGroup] = {}  # ps.rejoin: worker index -> its current link (ps_link.py)
        self.away: set[int] = set()  # ps.rejoin: workers that left and have not rejoined (ssp clocks complete without them)
        self.met: set[int] = set()  # ps.rejoin: workers that joined at least once (the run starts when all did)
        self.started = False
        self.incarnations: dict[int, int] = {}  # ps.rejoin: worker index -> the incarnation on its current link
        self.repeats: dict[int, tuple[int, int | None]] = {}  # ps.rejoin: steps a joined worker may re-push (ps_members.py)
        self.requested: tuple[int, int] | None = None  # ps.rejoin: server 0's save request not joined yet (ps_peers.py)
        self.peers = None  # ps.rejoin with several servers: the others (ps_peers.py)
        self.timeout_s = cfg.dist.timeout_s
        self.every = 0
        self.checkpoints = None
        self.trace = Trace.wanted(index)
        self.kill_test_hook = fault_injection.kill_after_step(len(workers) + index)  # ps.rejoin: after worker 0's push of a step

    # --- the part checkpoints carry: this server's range, its optimizer and schedule, its clocks ---
    def state_dict(self) -> dict[str, Any]:
        return {"shard": self.module.flat.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "version": self.version, "clocks": list(self.clocks),
                "completed": self.completed, "applied": self.applied, "stale_sum": self.stale_sum, "stale_max": self.stale_max,
                "pending": {k: dict(v) for k, v in self.pending.items()}}  # ssp pushes of clocks not complete (ps.rejoin)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["shard"].numel() != self.size or len(state["clocks"]) != len(self.workers):
            raise ShoalError(f"parameter server {self.index}: the checkpoint holds a range of {state['shard'].numel()} values and "
                             f"{len(state['clocks'])} workers' clocks, this job {self.size} and {len(self.workers)}; resume it with "
                             "the model and processes that wrote it, or train into another directory")
        with torch.no_grad():
            self.module.flat.copy_(state["shard"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.version, self.clocks, self.completed = state["version"], list(state["clocks"]), state["completed"]
        self.applied, self.stale_sum, self.stale_max = state["applied"], state["stale_sum"], state["stale_max"]
        self.pending = {k: dict(v) for k, v in state.get("pending", {}).items()}

    def serve(self, checkpoints, resume_from) -> int:
        """Send the initial range to every worker, continue from a checkpoint if given, answer pushes to the end."""
        if not self.rejoin:  # (with ps.rejoin each worker gets them when its link is made)
            self._send_all(list(range(len(self.workers))), norm=0.0)  # the workers start from the servers' parameters
        self.checkpoints = checkpoints
        self.every = self.cfg.checkpoint.every if checkpoints is not None else 0
        first = 0
        if resume_from is not None and self.rejoin:  # its own checkpoint: no collective (the workers join as if rejoining)
            first = checkpoints.load_alone(resume_from, {"ps_server": self}).step
        elif resume_from is not None:
            first = checkpoints.load(resume_from, [self.model], self.standin, self.scheduler, {"ps_server": self}).step
        if self.rejoin:
            self._run_rejoin()
        elif self.mode == "sync":
            self._run_sync(first)
        else:
            self._run_stale()
        if checkpoints is not None:
            if self.cfg.checkpoint.at_end and first < self.steps:
                if self.rejoin:
                    self._save_alone(self.steps)
                else:
                    self._save(self.steps)
            checkpoints.wait()
        if self.trace is not None:
            self.trace.save()
        return first

    def _save(self, step: int) -> None:
        """Collective with the workers (and, with several servers, among the servers first). The model and optimizer
        entries every rank writes under the same keys must agree: this rank writes the whole current parameters
        (every worker holds them at a checkpoint step) and an idle optimizer like the workers'; its own state
        travels in its part."""
        write_values(trainable(self.model), self._whole())
        self.checkpoints.save(step, [self.model], self.standin, self.scheduler, {}, parts={"ps_server": self})

    def _save_alone(self, step: int) -> None:
        """ps.rejoin: the servers alone write the run's state (several: together, one checkpoint, ps_peers.py), named
        after worker 0's step (whose records a restart keeps up to there: with several servers the fewest steps of
        worker 0 any of them holds); every worker's clock is in it, so each goes on from its own next step."""
        if self.server_group is not None:
            least = torch.tensor([step], dtype=torch.int64)
            dist.all_reduce(least, op=dist.ReduceOp.MIN, group=self.server_group)
            step = int(least.item())
        write_values(trainable(self.model), self._whole())
        self.checkpoints.save_alone(step, [self.model], self.meta, {"ps_server": self}, group=self.server_group)

    def after_worker0(self, step: int) -> None:
        """ps.rejoin, once worker 0's push of `step` is taken in: server 0 checkpoints every checkpoint.every of its
        steps (asking the others to join it first)."""
        if self.index == 0 and self._every_step(step):
            if self.peers is not None:
                self.peers.ask_save(step, self.incarnations[0])
            self._save_alone(step)
        if self.kill_test_hook is not None:
            self.kill_test_hook(step)

    def _whole(self) -> torch.Tensor:
        mine = self.module.flat.detach()
        if self.server_group is None:
            return mine
        widest = max(self.shards.size(j) for j in range(len(self.shards.bounds) - 1))
        padded = torch.zeros(widest)
        padded[: mine.numel()] = mine
        every = [torch.zeros(widest) for _ in range(len(self.shards.bounds) - 1)]
        dist.all_gather(every, padded, group=self.server_group)
        return torch.cat([t[: self.shards.size(j)] for j, t in enumerate(every)])

    def _every_step(self, step: int) -> bool:
        """A checkpoint.every step before the last (the last has its own, with checkpoint.at_end)."""
        return bool(self.every) and step % self.every == 0 and step < self.steps

    def _due(self, step: int) -> bool:
        """A checkpoint all ranks take together (ps.rejoin: none; the server checkpoints alone, `after_worker0`)."""
        return self._every_step(step) and not self.rejoin

    def _agreed(self, step: int) -> bool:
        """Steps at which every worker must hold the same parameters: checkpoints and the last step."""
        return step == self.steps or self._due(step)

    # --- sync ---
    def _run_sync(self, first: int) -> None:
        step = first
        while step < self.steps:
            step += 1
            buffers = [message(self.size) for _ in self.workers]
            for work in [dist.irecv(b, src=w, group=self.wire, tag=TAG) for w, b in zip(self.workers, buffers)]:
                work.wait()
            grad = body(buffers[0]).clone()
            for b in buffers[1:]:
                grad.add_(body(b))  # in worker order: the same sum on every run
            grad.div_(len(self.workers))
            square = torch.tensor([float(grad.double().pow(2).sum())], dtype=torch.float64)
            if self.server_group is not None:
                dist.all_reduce(square, group=self.server_group)  # the norm of the whole gradient, on every server
            norm = math.sqrt(square.item())
            if math.isfinite(norm):  # non-finite: nobody steps (the workers' trainers skip the step together)
                coef = min(1.0, self.max_norm / (norm + 1e-6))
                if coef < 1.0:
                    grad.mul_(coef)
                for b in buffers:
                    self._stale(self.version - int(header(b)[1]))
                self._apply(grad)
                self.scheduler.step()
            self.clocks = [step] * len(self.workers)
            self._send_all(list(range(len(self.workers))), norm)
            if not math.isfinite(norm) and self.cfg.train.on_nonfinite == "rollback":
                back = self._rollback()
                if back is None:
                    return  # the workers stop with the reason (no checkpoint, or too many non-finite steps)
                step = back
                continue
            if self._due(step):
                self._save(step)

    def _rollback(self) -> int | None:
        """train.on_nonfinite = rollback, as the workers' trainers do it at the same step (every one of them got this
        non-finite norm): count it, load the newest checkpoint with them (a collective), go on from its step."""
        self.nonfinite += 1
        latest = latest_checkpoint(self.checkpoints.root, self.checkpoints.run_id) if self.checkpoints is not None else None
        if self.nonfinite > self.cfg.train.max_nonfinite or latest is None:
            return None
        return self.checkpoints.load(latest, [self.model], self.standin, self.scheduler, {"ps_server": self}).step

    # --- async and ssp ---
    def _run_stale(self) -> None:
        buffer = message(self.size)
        while min(self.clocks) < self.steps or self.waiting:
            src = dist.recv(buffer, src=None, group=self.wire, tag=TAG)  # any worker (servers never send to each other)
            self._push(self.workers.index(src), buffer)
            self._release()

    def _push(self, w: int, buffer: torch.Tensor) -> None:
        """Worker w's push (async: applied on arrival; ssp: to its clock, or, under ps.rejoin, for a clock completed
        while w was away, applied on its own at once); its reply waits in `waiting` for _release."""
        h = header(buffer)
        step, computed_on, norm = int(h[0]), int(h[1]), float(h[2])
        self.clocks[w] = step
        grad = body(buffer).clone() if math.isfinite(norm) else None  # a non-finite push is dropped
        if self.mode == "async":
            self._stale(self.version - computed_on)
            if grad is not None:
                self._apply(grad)
            while self.scheduler.last_epoch < min(self.clocks):  # the schedule follows the slowest worker
                self.scheduler.step()
        elif step <= self.completed:  # ssp, a worker catching up after it rejoined
            self._stale(self.completed - computed_on)
            if grad is not None:
                self._apply(grad, new_version=False)  # versions count completed clocks
        else:
            self.pending.setdefault(step, {})[w] = (grad, computed_on)
            self._complete_clocks()
        self.waiting[w] = step

    def _complete_clocks(self) -> None:
        """ssp: apply every clock all workers pushed (with ps.rejoin: all but those away; a clock nobody pushed waits)."""
        needed = set(range(len(self.workers))) - self.away
        while (pushes := self.pending.get(self.completed + 1, {})) and needed <= pushes.keys():
            del self.pending[self.completed + 1]
            order = sorted(pushes)  # worker order: the same sum on every run
            grads = [pushes[w][0] for w in order if pushes[w][0] is not None]
            for w in order:
                self._stale(self.completed - pushes[w][1])
            if grads:
                total = grads[0]
                for g in grads[1:]:
                    total.add_(g)
                self._apply(total.div_(len(order)))
            else:
                self.version += 1
            self.scheduler.step()
            self.completed += 1

    def _may_reply(self, step: int) -> bool:
        if self._agreed(step):
            return min(self.clocks) >= step and (self.mode == "async" or self.completed >= step)
        return self.mode == "async" or step - self.completed <= self.bound

    def _release(self) -> None:
        ready = [w for w, step in self.waiting.items() if self._may_reply(step)]
        if not ready:
            return
        steps = {self.waiting.pop(w) for w in ready}
        self._send_all(ready, math.nan)
        for step in steps:
            if self._due(step) and min(self.clocks) >= step and not self.waiting:
                self._save(step)

    # --- both ---
    def _apply(self, grad: torch.Tensor, new_version: bool = True) -> None:
        self.module.flat.grad = grad
        self.optimizer.step()
        self.module.flat.grad = None
        self.version += new_version
        if self.trace is not None:
            self.trace.add(self.version, self.module.flat)

    def _stale(self, staleness: int) -> None:
        self.applied += 1
        self.stale_sum += staleness
        self.stale_max = max(self.stale_max, staleness)

    def _send_all(self, indices: list[int], norm: float) -> None:
        reply = message(self.size)
        h = header(reply)
        h[0], h[1], h[2] = self.version, self.completed if self.mode == "ssp" else self.version, norm
        h[3], h[4], h[5] = self.applied, self.stale_sum, self.stale_max
        body(reply).copy_(self.module.flat.detach())
        if self.rejoin:
            h[7] = len(self.links)
            for w in indices:
                h[6] = self.clocks[w]
                try:
                    self.links[w].send([reply], ps_link.WORKER, TAG).wait()
                except (KeyError, RuntimeError):  # it left meanwhile: its watcher says so
                    pass
            return
        for work in [dist.isend(reply, dst=self.workers[w], group=self.wire, tag=TAG) for w in indices]:
            work.wait()


class Trace:
    """Benchmark-only: SHOAL_TEST_PS_TRACE=DIR keeps (seconds since start, version, range) every
    SHOAL_TEST_PS_TRACE_EVERY (10) updates and writes DIR/server-J.pt at the end, so accuracy over wall time
    can be scored afterwards without the evaluations (collectives among the workers) a run would need."""

    def __init__(self, path: str, every: int):
        self.path, self.every, self.start, self.points = path, every, time.perf_counter(), []

    @classmethod
    def wanted(cls, index: int) -> Trace | None:
        root = os.environ.get("SHOAL_TEST_PS_TRACE")
        return cls(os.path.join(root, f"server-{index}.pt"), int(os.environ.get("SHOAL_TEST_PS_TRACE_EVERY", "10"))) if root else None

    def add(self, version: int, values: torch.Tensor) -> None:
        if version % self.every == 0:
            self.points.append((time.perf_counter() - self.start, version, values.detach().clone()))

    def save(self) -> None:
        torch.save(self.points, self.path)


def run(ctx, index: int, workers: list[int], shards: Shards, model: nn.Module, steps: int, make_optimizer, make_scheduler,
        server_group, wire, checkpoints, resume_from, meta: dict | None = None) -> float:
    """The whole life of a server rank; returns its wall time."""
    start = time.perf_counter()
    server = Server(ctx.cfg, index, workers, shards, model, steps, make_optimizer, make_scheduler, server_group, wire, meta)
    server.serve(checkpoints, resume_from)
    return time.perf_counter() - start
