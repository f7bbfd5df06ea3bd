"""A checkpoint directory that is not shared between nodes is detected at the first save, on every rank, instead
of committing a checkpoint without the other nodes' shards (simulated: rank 1 looks at a directory of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.checkpoint import check_shared
from shoal.distributed.env import init_distributed
from shoal.errors import ShoalError
from shoal.launch.local import launch_local

pytestmark = pytest.mark.dist


def probe(shared: str, own: str) -> dict:
    """Rank 0 writes into `shared`; rank 1 looks into `shared` (one file system), then into `own` (its node's disk)."""
    env = init_distributed("gloo")
    out = {}
    for case, mine in (("shared", shared), ("separate", shared if env.rank == 0 else own)):
        try:
            check_shared(Path(mine), env.rank == 0)
            out[case] = None
        except ShoalError as err:
            out[case] = str(err)
    return out


def test_a_directory_the_nodes_do_not_share_is_refused_on_every_rank(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "own").mkdir()
    results = launch_local(probe, (str(tmp_path / "shared"), str(tmp_path / "own")), nproc=2)
    for rank in (0, 1):
        assert results[rank]["shared"] is None
        message = results[rank]["separate"]
        assert message and "is not shared between the nodes: rank 1 on " in message and "\n" not in message
        assert "PersistentVolumeClaim" in message
    assert not list((tmp_path / "shared").iterdir())  # the probe file is gone


def newest(root: str) -> dict:
    """At a restart each rank finds its newest checkpoint itself: the same one, then none on rank 1 (its own disk)."""
    from shoal.run_start import _same_everywhere

    env = init_distributed("gloo")
    out = {}
    for case, name in (("shared", "step-00000040"), ("separate", "step-00000040" if env.rank == 0 else None)):
        try:
            _same_everywhere(Path(root), Path(root) / name if name else None)
            out[case] = None
        except ShoalError as err:
            out[case] = str(err)
    return out

def test_ranks_that_see_different_newest_checkpoints_at_a_restart_all_stop_in_one_line(tmp_path):
    """ps.rejoin's server writes its checkpoints alone (no shared-directory check at its saves): a restart where rank 0
    and the server see different newest checkpoints must not continue from two different states."""
    results = launch_local(newest, (str(tmp_path),), nproc=2)
    for rank in (0, 1):
        assert results[rank]["shared"] is None
        message = results[rank]["separate"]
        assert message and "(rank 0: step-00000040, rank 1: none)" in message and "\n" not in message, message
