"""sync = "param_server": the last `ps.servers` ranks hold the parameters and run the optimizer; the others train.

Workers compute gradients on their share of each global batch, push them to the servers
(each server gets its contiguous range of the flat gradient, ps_wire.py) and pull the fresh
ranges back into their model; a worker's own optimizer never changes anything. Servers do not
run the training loop: `fit` hands them to `serve` (ps_server.py). The training group (records,
evaluation, health) is the workers only, so the layout and batch plan count workers.

Modes (ps.mode): sync (equals data parallel: the mean of every worker's gradient of a step, one
update, global-norm clipping on the servers), async (each push applied on arrival as its own
optimizer step), ssp (bounded staleness: at most ps.staleness clocks ahead of the slowest;
gradients of a clock applied together, so staleness 0 is sync). In async and ssp each push is
clipped by its own norm on its worker. Every worker holds the same parameters at each
checkpoint step and at the last step (the servers withhold replies until all pushed it).
With ps.rejoin (async, ssp) a worker's training runs in a child that rejoins when it dies
(ps_rejoin.py), over a link of its own to each server (ps_link.py); no worker waits for another. Its checkpoints are
the servers' alone (the run's whole state is there, ps_peers.py): after a whole-job restart every worker joins as if
rejoining, and goes on after the fewest steps any server holds of it (a server that holds more applies none twice).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from shoal.checkpoint import has_part
from shoal.data import plan_for
from shoal.distributed import fault_injection
from shoal.distributed.collectives import TrainingGroup
from shoal.errors import ShoalError
from shoal.sync import ps_link, ps_server
from shoal.sync.base import SYNC, SyncContext, SyncStrategy
from shoal.sync.ps_rejoin import WorkerShare, portable, supervise
from shoal.sync.ps_wire import TAG, Shards, body, flat_grad, header, message, trainable, write_values


def _world() -> tuple[int, int]:
    return (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)


@SYNC.register("param_server")
class ParamServer(SyncStrategy):
    grads_synced = False

    @classmethod
    def training_group(cls, cfg) -> TrainingGroup:
        """The workers: every rank but the last ps.servers. Collective: every rank calls it (dist.new_group)."""
        world, rank = _world()
        servers = cfg.ps.servers
        if world <= servers:
            raise ShoalError(f"sync = 'param_server' with ps.servers = {servers} needs more than {servers} processes "
                             f"(here {world}): the ranks after the workers are servers, and at least one must train")
        workers = tuple(range(world - servers))
        if cfg.ps.rejoin:  # no worker ever waits for another: each one's records and evaluation are its own
            return TrainingGroup(None, 0 if rank in workers else -1, 1, (rank,) if rank in workers else ())
        group = dist.new_group(list(workers))
        return TrainingGroup(group, rank if rank < len(workers) else -1, len(workers), workers)

    def __init__(self, ctx: SyncContext):
        super().__init__(ctx)
        cfg = ctx.cfg
        if cfg.train.on_nonfinite == "rollback" and cfg.ps.mode != "sync":
            raise ShoalError(f"train.on_nonfinite = 'rollback' needs ps.mode = 'sync' (in '{cfg.ps.mode}' a non-finite push "
                             "reaches only its own worker, and the servers' state cannot roll back for one worker); "
                             "use 'skip' or 'fail', or ps.mode = 'sync'")
        self.rejoin = cfg.ps.rejoin
        if self.rejoin:
            _check_rejoin(cfg)
        self.trainer_checkpoints = not self.rejoin  # ps.rejoin: the server writes and loads them alone (ps_server.py)
        self.mode, self.bound = cfg.ps.mode, cfg.ps.staleness
        self.workers = list(range(ctx.env.world_size - cfg.ps.servers))
        self.servers = list(range(len(self.workers), ctx.env.world_size))
        self.trains = ctx.env.rank in self.workers
        gloo = dist.get_backend() == "gloo"  # messages travel from CPU memory: over gloo, whatever the job's backend
        self.wire = None if gloo else dist.new_group(backend="gloo")  # every rank calls new_group, in this order
        self.server_group = dist.new_group(self.servers, backend="gloo") if len(self.servers) > 1 else None
        self.params: list[nn.Parameter] = []
        self.shards: Shards | None = None
        self.versions = [0] * len(self.servers)  # per server: the version this worker's parameters come from
        self.seen = [(0, 0, 0)] * len(self.servers)  # per server: (updates applied, staleness sum, max) at the last reply
        self.logged = (0, 0)  # (applied, staleness sum) at the previous training record
        self.clock = 0  # steps this worker pushed
        self.rounds = self.bytes_total = self.window_bytes = self.window_steps = 0
        self.pending: list[dict] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.model: nn.Module | None = None
        self.links: list = []  # ps.rejoin: this incarnation's link to each server (ps_link.py)
        self.start = 0  # ps.rejoin: steps this worker had pushed (to every server) when this incarnation joined
        self.present = len(self.workers)  # ps.rejoin: workers connected at the last reply
        self.incarnation = 0  # ps.rejoin: of this training child
        self.between_test_hook = fault_injection.kill_between_pushes(ctx.env.rank) if len(self.servers) > 1 else None

    def batch_plan(self, n_samples: int, dataset):
        plan = super().batch_plan(n_samples, dataset)
        if not self.rejoin:
            return plan
        whole = plan_for(self.ctx.cfg, n_samples, len(self.workers), dataset)  # dealt over the workers, as without rejoin
        return WorkerShare(whole, self.ctx.env.rank if self.trains else 0)

    # --- servers ---
    def serve(self, model: nn.Module, train_set, checkpoints, resume_from, make_optimizer, make_scheduler) -> tuple[int, float]:
        """A server rank's whole run (instead of the trainer); returns (steps, wall seconds)."""
        steps = self.total_steps(self.batch_plan(len(train_set), train_set))
        index = self.servers.index(self.ctx.env.rank)
        meta = {"layout": self.ctx.dims.describe(), "job": self.ctx.cfg.name, **self.checkpoint_meta()}
        wall = ps_server.run(self.ctx, index, self.workers, Shards.of(model, len(self.servers)), model, steps,
                             make_optimizer, make_scheduler, self.server_group, self.wire, checkpoints, resume_from, meta)
        return steps, wall

    # --- workers ---
    def wrap(self, model: nn.Module, sample: torch.Tensor | None = None) -> nn.Module:
        model = model.to(self.ctx.env.device)
        self.model = model
        self.params = trainable(model)
        self.shards = Shards.of(model, len(self.servers))
        if self.shards.total < len(self.servers):
            raise ShoalError(f"ps.servers = {len(self.servers)} is more than the model's {self.shards.total} trainable values")
        if not self.rejoin:  # (with ps.rejoin the training child pulls them over its own link: `_join`)
            self._pull()  # every worker starts from the servers' parameters
        self.pending.append({"kind": "ps", "mode": self.mode, **({"staleness": self.bound} if self.mode == "ssp" else {}),
                             "workers": self.workers, "servers": self.servers, "shards": self.shards.describe(self.servers),
                             "message": f"parameter server ({self.mode}): workers {self.workers}, servers {self.servers}, "
                                        f"{self.shards.total:,} values sharded by size"})
        return model

    def attach(self, layout, optimizer: torch.optim.Optimizer, score=None) -> None:
        self.optimizer = optimizer

    def run_training(self, fit):
        """ps.rejoin: the training loop in a child process that rejoins when it dies (ps_rejoin.py)."""
        if not self.rejoin:
            return fit(0)
        result = supervise(self.ctx.env.rank, self.ctx.cfg.checkpoint.max_restarts, self._join, fit, portable)
        self.model.load_state_dict(result.model)  # what the child trained, into this process's model (saved as model.pt)
        return dataclasses.replace(result, model=self.model)

    def _join(self, incarnation: int) -> None:
        """In the training child: announce this incarnation, make its links, pull the current parameters. It goes on
        after the fewest steps a server holds of it; its counters as if it had made only those rounds."""
        store, timeout = ps_link.job_store(self.ctx.cfg.dist.timeout_s), self.ctx.cfg.dist.timeout_s
        ps_link.announce(store, self.ctx.env.rank, incarnation)
        self.links = [ps_link.connect(store, j, self.ctx.env.rank, incarnation, ps_link.WORKER, timeout)
                      for j in range(len(self.servers))]
        self._pull()
        self.clock = self.rounds = self.start
        self.incarnation = incarnation
        self.bytes_total = self.start * 2 * sum(message(self.shards.size(j)).nbytes for j in range(len(self.servers)))  # (as _count)
        if incarnation:
            self.pending.clear()  # the first incarnation logged who is who already

    def first_step(self) -> int:
        return self.start

    def grad_norm(self, layout, max_norm: float) -> float:
        """One round: push this worker's gradient, pull the fresh parameters. sync: the norm of the mean gradient
        (the servers clip by it); async/ssp: this push's own norm, clipped here."""
        own = layout.clip_grad_norm_(math.inf if self.mode == "sync" else max_norm)
        self.clock += 1
        grad = flat_grad(self.params)
        sends = []
        for j, dst in enumerate(self.servers):
            lo, hi = self.shards.range(j)
            push = message(hi - lo)
            header(push)[:3] = torch.tensor([self.clock, self.versions[j], own], dtype=torch.float64)
            body(push).copy_(grad[lo:hi])
            if self.links:
                sends.append(self.links[j].send([push], ps_link.SERVER, TAG))
                if not j and self.between_test_hook is not None and not self.incarnation:
                    self.between_test_hook(self.clock)  # (test only: server 0 gets it, the others never will)
            else:
                sends.append(dist.isend(push, dst=dst, group=self.wire, tag=TAG))
            self._count(push)
        norm = self._pull()
        for work in sends:
            work.wait()
        self.rounds += 1
        return norm if self.mode == "sync" else own

    def _pull(self) -> float:
        """Receive every server's reply; write the parameters in. Returns the norm the servers replied."""
        replies = [message(self.shards.size(j)) for j in range(len(self.servers))]
        if self.links:  # every receive posted before any wait: no server's reply waits on another's
            works = [link.recv([r], ps_link.SERVER, TAG) for link, r in zip(self.links, replies)]
        else:
            works = [dist.irecv(r, src=src, group=self.wire, tag=TAG) for src, r in zip(self.servers, replies)]
        for work in works:
            work.wait()
        for j, r in enumerate(replies):
            h = header(r)
            self.versions[j] = int(h[0])
            self.seen[j] = (int(h[3]), int(h[4]), int(h[5]))
            if self.clock:
                self._count(r)
        if self.links:  # (servers may hold different counts of its steps: it died between pushes to two of them)
            self.start = self.start if self.clock else min(int(header(r)[6]) for r in replies)
            self.present = min(int(header(r)[7]) for r in replies)
        write_values(self.params, torch.cat([body(r) for r in replies]))
        return float(header(replies[0])[2])

    def _count(self, buffer: torch.Tensor) -> None:
        n = buffer.numel() * buffer.element_size()
        self.bytes_total += n
        self.window_bytes += n

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The parameters came from the servers: the worker's optimizer sees no gradient and changes nothing."""
        optimizer.zero_grad(set_to_none=True)
        optimizer.step()

    def after_step(self, step: int, layout) -> None:
        self.window_steps += 1

    def stats(self) -> dict[str, float]:
        """comm_bytes: pushed + pulled by this worker per step (log window); comm_rounds, comm_bytes_total: since the
        start (ps.rejoin: of the rounds its pushes count, across rejoins and restarts); staleness_mean over the updates
        the servers applied since the previous record, staleness_max since the start;
        ps_updates: pushes server 0 took in so far, all workers' (a restart carries the count on: it is the servers' state)."""
        applied, total = sum(s[0] for s in self.seen), sum(s[1] for s in self.seen)
        new = applied - self.logged[0]
        out = {"comm_bytes": self.window_bytes / max(self.window_steps, 1), "comm_rounds": self.rounds,
               "comm_bytes_total": self.bytes_total, "staleness_max": max(s[2] for s in self.seen),
               "staleness_mean": (total - self.logged[1]) / new if new else 0.0, "ps_updates": self.seen[0][0],
               **({"ps_workers": self.present} if self.rejoin else {})}
        self.logged = (applied, total)
        self.window_steps = self.window_bytes = 0
        return out

    def events(self) -> list[dict]:
        out, self.pending = self.pending, []
        return out

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"ps": {"rejoin": self.rejoin, "mode": self.mode, "workers": len(self.workers), "servers": len(self.servers)}}

    @classmethod
    def check_checkpoint(cls, cfg, world: int, meta: dict[str, Any], path: Path) -> None:
        """A ps.rejoin checkpoint holds the servers' state alone, the others every rank's: neither continues as the other.
        The servers' state (every worker's clock, the ssp clocks) fits only the same workers, servers and mode, and
        each server continues only from its own part."""
        ps, name = meta.get("ps") or {}, path.name
        written = bool(ps.get("rejoin", False))
        if written != cfg.ps.rejoin:
            how = "by the parameter servers alone (ps.rejoin = true)" if written else "by every rank (ps.rejoin = false)"
            raise ShoalError(f"checkpoint {name} was written {how} and cannot be continued with ps.rejoin = "
                             f"{str(cfg.ps.rejoin).lower()}; resume it with ps.rejoin = {str(written).lower()}, or train into another directory")
        if not written:
            return
        was = (meta.get("world_size"), ps.get("workers"), ps.get("servers"), ps.get("mode"))
        now = (world, world - cfg.ps.servers, cfg.ps.servers, cfg.ps.mode)
        if was != now:
            raise ShoalError(f"ps.rejoin: checkpoint {name} holds the servers' state for {was[0]} processes ({was[1]} workers, "
                             f"{_servers(was[2])}, ps.mode '{was[3]}') but this job has {now[0]} ({now[1]} workers, "
                             f"{_servers(now[2])}, ps.mode '{now[3]}'): its workers' clocks fit no other; resume with --nproc "
                             f"{was[0]}, ps.servers = {was[2]} and ps.mode = '{was[3]}', or train into another directory")
        missing = [r for r in range(world - cfg.ps.servers, world) if not has_part(path, "ps_server", r)]
        if missing:
            whose = f"the parameter server (rank {missing[0]})" if len(missing) == 1 else \
                f"the parameter servers (ranks {', '.join(map(str, missing))})"
            raise ShoalError(f"ps.rejoin: checkpoint {name} holds no state of {whose}, which alone could continue it; "
                             "resume from another checkpoint, or train into another directory")

    def state_dict(self) -> dict[str, Any]:
        return {"versions": list(self.versions), "seen": list(self.seen), "logged": self.logged, "clock": self.clock,
                "rounds": self.rounds, "bytes_total": self.bytes_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.versions, self.seen, self.logged = list(state["versions"]), [tuple(s) for s in state["seen"]], tuple(state["logged"])
        self.clock, self.rounds, self.bytes_total = state["clock"], state["rounds"], state["bytes_total"]


def _servers(n) -> str:
    return f"{n} server" + ("" if n == 1 else "s")


def _check_rejoin(cfg) -> None:
    """ps.rejoin covers async and ssp with any number of servers (each applies every worker's push of a step once, and
    they checkpoint together: ps_peers.py); sync mode (every step waits for every worker) and data read per rank or
    streamed are refused in one line."""
    why = []
    if cfg.ps.mode == "sync":
        why.append("ps.mode = 'async' or 'ssp' (here 'sync': every step waits for every worker)")
    if cfg.data_read() in ("rank", "stream"):
        why.append(f"data.read = 'all' (here '{cfg.data_read()}')")
    if why:
        raise ShoalError("ps.rejoin = true needs " + ", ".join(why) + "; set them, or ps.rejoin = false")
