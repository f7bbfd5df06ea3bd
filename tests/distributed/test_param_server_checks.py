"""What ps.rejoin refuses, in one line naming the keys to set (no processes needed)."""

from __future__ import annotations

import pytest

from shoal.config import JobConfig
from shoal.errors import ShoalError
from shoal.sync.param_server import _check_rejoin

REJOIN = {"sync": "param_server", "ps": {"mode": "async", "rejoin": True}, "checkpoint": {"at_end": False}}


def cfg(**sections) -> JobConfig:
    return JobConfig.model_validate({**REJOIN, **sections})


@pytest.mark.parametrize("mode", ["async", "ssp"])
def test_async_and_ssp_with_one_server_and_no_checkpoints_are_accepted(mode):
    _check_rejoin(cfg(ps={"mode": mode, "rejoin": True}))


@pytest.mark.parametrize("sections, named", [
    ({"ps": {"mode": "sync", "rejoin": True}}, "ps.mode = 'async' or 'ssp' (here 'sync'"),
    ({"ps": {"mode": "async", "servers": 2, "rejoin": True}}, "ps.servers = 1 (here 2)"),
    ({"checkpoint": {"every": 10, "at_end": False}}, "checkpoint.every = 0 and checkpoint.at_end = false"),
    ({"checkpoint": {}}, "checkpoint.every = 0 and checkpoint.at_end = false"),  # at_end is on by default
])
def test_what_rejoin_cannot_cover_is_refused_naming_the_key(sections, named):
    with pytest.raises(ShoalError) as err:
        _check_rejoin(cfg(**sections))
    message = str(err.value)
    assert message.startswith("ps.rejoin = true needs ") and named in message and "\n" not in message, message
