"""What ps.rejoin refuses, in one line naming the keys to set, and which checkpoints it refuses to continue from
(no processes needed)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import ps_workers
import pytest
import torch.distributed.checkpoint as dcp
from torch import nn

from error_contract import refused
from shoal.checkpoint import Checkpointer
from shoal.config import JobConfig
from shoal.errors import ShoalError
from shoal.sync.param_server import ParamServer, _check_rejoin
from shoal.sync.ps_members import Members
from shoal.sync.ps_wire import header, message

REJOIN = {"sync": "param_server", "ps": {"mode": "async", "rejoin": True}, "checkpoint": {"at_end": False}}


def cfg(**sections) -> JobConfig:
    return JobConfig.model_validate({**REJOIN, **sections})


@pytest.mark.parametrize("servers", [1, 2, 3])
@pytest.mark.parametrize("mode", ["async", "ssp"])
@pytest.mark.parametrize("checkpoint", [{"at_end": False}, {}, {"every": 10, "at_end": True}])
def test_async_and_ssp_with_any_number_of_servers_are_accepted_with_or_without_checkpoints(servers, mode, checkpoint):
    _check_rejoin(cfg(ps={"mode": mode, "servers": servers, "rejoin": True}, checkpoint=checkpoint))


@pytest.mark.parametrize("sections, named", [
    ({"ps": {"mode": "sync", "rejoin": True}}, "ps.mode = 'async' or 'ssp' (here 'sync'"),
    ({"ps": {"mode": "sync", "servers": 2, "rejoin": True}}, "ps.mode = 'async' or 'ssp' (here 'sync'"),
])
def test_what_rejoin_cannot_cover_is_refused_naming_the_key(sections, named):
    with pytest.raises(ShoalError) as err:
        _check_rejoin(cfg(**sections))
    message = str(err.value)
    assert message.startswith("ps.rejoin = true needs ") and named in message and "\n" not in message, message
    assert "ps.servers" not in message, message  # any number of servers is covered


def marker(world: int = 4, rejoin: bool = True, mode: str = "async", **ps) -> dict:
    """What a parameter-server checkpoint's shoal.json says (checkpoint_meta plus the checkpointer's keys)."""
    return {"job": "j", "run_id": "r", "step": 40, "world_size": world,
            "ps": {"rejoin": rejoin, "mode": mode, "workers": world - 1, "servers": 1, **ps}}


class Part:
    def state_dict(self) -> dict:
        return {"clocks": [1, 2]}

    def load_state_dict(self, state: dict) -> None:
        pass


def written(root, rank: int, world: int) -> Path:
    """A checkpoint rank `rank` wrote alone, as a ps.rejoin server does."""
    return Checkpointer(root, rank, world, run_id="r").save_alone(40, [nn.Linear(2, 2)], {}, {"ps_server": Part()})


def test_a_rejoin_checkpoint_of_the_same_processes_and_mode_is_continued(tmp_path):
    ParamServer.check_checkpoint(cfg(), 4, marker(), written(tmp_path / "a", 3, 4))
    ParamServer.check_checkpoint(cfg(ps={"mode": "ssp", "rejoin": True}), 3, marker(3, mode="ssp"), written(tmp_path / "b", 2, 3))
    ParamServer.check_checkpoint(cfg(ps={"mode": "async"}), 4, marker(rejoin=False), NAMED)
    ParamServer.check_checkpoint(cfg(ps={"mode": "async"}), 4, {"step": 4, "world_size": 4}, NAMED)  # older, without "ps"


NAMED = Path("step-00000040")  # the refusals below come from the marker alone


@pytest.mark.parametrize("job, world, meta, named", [
    (cfg(), 5, marker(4), "for 4 processes (3 workers, 1 server, ps.mode 'async') but this job has 5 (4 workers"),
    (cfg(), 3, marker(4), "resume with --nproc 4"),
    (cfg(ps={"mode": "ssp", "rejoin": True}), 4, marker(4), "ps.mode = 'async'"),
    (cfg(), 4, marker(4, workers=2, servers=2), "(2 workers, 2 servers, ps.mode 'async') but this job has 4 (3 workers, 1 server,"),
    (cfg(ps={"mode": "async", "servers": 2, "rejoin": True}), 4, marker(4), "ps.servers = 1"),
    (cfg(), 4, marker(4, rejoin=False), "written by every rank (ps.rejoin = false)"),
    (cfg(), 4, {"step": 4, "world_size": 4}, "cannot be continued with ps.rejoin = true"),  # sync = allreduce's, say
    (cfg(ps={"mode": "async"}), 4, marker(4), "by the parameter servers alone (ps.rejoin = true)"),
])
def test_a_checkpoint_the_server_state_does_not_fit_is_refused_in_one_line(job, world, meta, named):
    with pytest.raises(ShoalError) as err:
        ParamServer.check_checkpoint(job, world, meta, NAMED)
    message = str(err.value)
    assert "step-00000040" in message and named in message and "\n" not in message, message


def test_a_checkpoint_without_the_servers_state_is_refused_in_one_line(tmp_path):
    """A checkpoint the server alone wrote, asked of another rank (another layout): its state is not there. The marker
    check refuses it on every rank; loading it would too."""
    path = written(tmp_path, 3, 4)
    with pytest.raises(ShoalError, match="holds no state of the parameter server \\(rank 2\\)") as err:
        ParamServer.check_checkpoint(cfg(), 3, marker(3), path)
    assert "\n" not in str(err.value)
    Checkpointer(tmp_path, 3, 4).load_alone(path, {"ps_server": Part()})
    with pytest.raises(ShoalError, match="has no ps_server state of rank 2") as err:
        Checkpointer(tmp_path, 2, 3).load_alone(path, {"ps_server": Part()})
    assert "\n" not in str(err.value)


def parts_of(root: Path, ranks: list[int]) -> Path:
    """A checkpoint holding the ps_server parts of `ranks` only, as several servers write one together."""
    path = root / "step-00000040"
    path.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*single process.*")
        dcp.save({f"part_ps_server_rank{r}": io.BytesIO(b"state") for r in ranks}, checkpoint_id=str(path), no_dist=True)
    return path


def test_a_checkpoint_of_several_servers_needs_every_servers_part(tmp_path):
    """ps.servers = 2 of 4 processes: ranks 2 and 3 each continue from their own part; one missing is named."""
    two = cfg(ps={"mode": "async", "servers": 2, "rejoin": True})
    meta = marker(4, workers=2, servers=2)
    ParamServer.check_checkpoint(two, 4, meta, parts_of(tmp_path / "both", [2, 3]))
    for present, named in [([3], "of the parameter server (rank 2)"), ([], "of the parameter servers (ranks 2, 3)")]:
        with pytest.raises(ShoalError) as err:
            ParamServer.check_checkpoint(two, 4, meta, parts_of(tmp_path / f"only{present}", present))
        message = str(err.value)
        assert f"holds no state {named}, which alone could continue it" in message and "\n" not in message, message


def test_shoal_train_resume_on_another_process_count_is_refused_before_any_worker_starts(tmp_path, capsys):
    job, out = ps_workers.run_with_a_rejoin_checkpoint(tmp_path, 4)
    refused(["train", str(job), "--out", str(out), "--resume", "--nproc", "5"],
            ["ps.rejoin: checkpoint step-00000040", "for 4 processes", "--nproc 4"], tmp_path, capsys)
    refused(["train", str(job), "--out", str(out), "--resume", "--nproc", "4", "--set", "ps.rejoin=false"],
            ["checkpoint step-00000040 was written by the parameter servers alone", "ps.rejoin = true"], tmp_path, capsys)
    job, out = ps_workers.run_with_a_rejoin_checkpoint(tmp_path / "without", 4, server_state=False)
    refused(["train", str(job), "--out", str(out), "--resume", "--nproc", "4"],  # its marker fits, but not its contents
            ["checkpoint step-00000040 holds no state of the parameter server (rank 3)"], tmp_path, capsys)


class Pushes(Members):
    """The server's handling of one worker's pushes (ps_members.py) without links or gradients: applying a push sets
    the worker's clock."""

    def __init__(self, clocks: list[int]):
        self.workers, self.clocks, self.repeats, self.waiting, self.applied = list(range(len(clocks))), clocks, {}, {}, []

    def _push(self, w, buffer):
        self.clocks[w] = int(header(buffer)[0])
        self.applied.append((w, self.clocks[w]))

    def _release(self):
        self.waiting.clear()

    def after_worker0(self, step):
        pass

    def push(self, w: int, step: int) -> None:
        buffer = message(1)
        header(buffer)[0] = step
        self._pushed(w, buffer)


def test_a_joined_worker_may_re_push_only_the_steps_a_server_holds_and_only_in_order():
    """With several servers a worker goes on after the fewest steps any holds of it: this server, holding 5 of worker
    1's steps at its join, answers 3-5 again without applying them, applies 6 on; anything else is refused in one line."""
    server = Pushes([7, 5])
    server.repeats[1] = (5, None)  # what joining records (Members._joined)
    for step in (3, 4, 5, 6, 7):
        server.push(1, step)
    assert server.applied == [(1, 6), (1, 7)] and server.clocks == [7, 7]
    for clocks, joined, steps, refused_step in [([0, 5], True, (3, 5), 5), ([0, 7], False, (7,), 7), ([0, 5], True, (3, 7), 7)]:
        server = Pushes(clocks)
        if joined:
            server.repeats[1] = (5, None)
        with pytest.raises(ShoalError) as err:
            for step in steps:
                server.push(1, step)
        assert f"pushed step {refused_step} after step" in str(err.value) and "\n" not in str(err.value), str(err.value)
        assert not server.applied
