"""What ps.rejoin refuses, in one line naming the keys to set, and which checkpoints it refuses to continue from
(no processes needed)."""

from __future__ import annotations

from pathlib import Path

import ps_workers
import pytest
from torch import nn

from error_contract import refused
from shoal.checkpoint import Checkpointer
from shoal.config import JobConfig
from shoal.errors import ShoalError
from shoal.sync.param_server import ParamServer, _check_rejoin

REJOIN = {"sync": "param_server", "ps": {"mode": "async", "rejoin": True}, "checkpoint": {"at_end": False}}


def cfg(**sections) -> JobConfig:
    return JobConfig.model_validate({**REJOIN, **sections})


@pytest.mark.parametrize("mode", ["async", "ssp"])
@pytest.mark.parametrize("checkpoint", [{"at_end": False}, {}, {"every": 10, "at_end": True}])
def test_async_and_ssp_with_one_server_are_accepted_with_or_without_checkpoints(mode, checkpoint):
    _check_rejoin(cfg(ps={"mode": mode, "rejoin": True}, checkpoint=checkpoint))


@pytest.mark.parametrize("sections, named", [
    ({"ps": {"mode": "sync", "rejoin": True}}, "ps.mode = 'async' or 'ssp' (here 'sync'"),
    ({"ps": {"mode": "async", "servers": 2, "rejoin": True}}, "ps.servers = 1 (here 2)"),
])
def test_what_rejoin_cannot_cover_is_refused_naming_the_key(sections, named):
    with pytest.raises(ShoalError) as err:
        _check_rejoin(cfg(**sections))
    message = str(err.value)
    assert message.startswith("ps.rejoin = true needs ") and named in message and "\n" not in message, message


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
    (cfg(), 4, marker(4, workers=2, servers=2), "(2 workers, 2 server"),
    (cfg(), 4, marker(4, rejoin=False), "written by every rank (ps.rejoin = false)"),
    (cfg(), 4, {"step": 4, "world_size": 4}, "cannot be continued with ps.rejoin = true"),  # sync = allreduce's, say
    (cfg(ps={"mode": "async"}), 4, marker(4), "by the parameter server alone (ps.rejoin = true)"),
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


def test_shoal_train_resume_on_another_process_count_is_refused_before_any_worker_starts(tmp_path, capsys):
    job, out = ps_workers.run_with_a_rejoin_checkpoint(tmp_path, 4)
    refused(["train", str(job), "--out", str(out), "--resume", "--nproc", "5"],
            ["ps.rejoin: checkpoint step-00000040", "for 4 processes", "--nproc 4"], tmp_path, capsys)
    refused(["train", str(job), "--out", str(out), "--resume", "--nproc", "4", "--set", "ps.rejoin=false"],
            ["checkpoint step-00000040 was written by the parameter server alone", "ps.rejoin = true"], tmp_path, capsys)
    job, out = ps_workers.run_with_a_rejoin_checkpoint(tmp_path / "without", 4, server_state=False)
    refused(["train", str(job), "--out", str(out), "--resume", "--nproc", "4"],  # its marker fits, but not its contents
            ["checkpoint step-00000040 holds no state of the parameter server (rank 3)"], tmp_path, capsys)
