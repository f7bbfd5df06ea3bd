"""`shoal train --nnodes/--node-rank/--rdzv/--max-restarts`: parsing, and one-line errors naming the option."""

from __future__ import annotations

import pytest

from shoal.cli import main
from shoal.errors import ShoalError
from shoal.launch.nodes import NodeSpec, node_counts, node_spec, parse_nnodes, route_address

GOOD = 'name = "t"\n[data]\nname = "digits"\n[train]\nglobal_batch_size = 12\nsteps = 1\n'


def test_nnodes_and_rendezvous_parse():
    assert parse_nnodes("2") == (2, 2) and parse_nnodes("1:3") == (1, 3)
    spec = node_spec("1:3", 0, "10.1.2.3:29400")
    assert spec == NodeSpec(1, 3, 0, "10.1.2.3", 29400) and spec.is_host and spec.elastic
    assert node_spec(None, None, None) is None
    assert list(node_counts(2, 4)) == [2, 3, 4]
    assert route_address("127.0.0.1", 1) == "127.0.0.1"


@pytest.mark.parametrize("args, message", [
    (["--nnodes", "two"], "--nnodes 'two'"),
    (["--nnodes", "3:2"], "--nnodes '3:2'"),
    (["--nnodes", "2"], "--nnodes 2 needs --rdzv"),
    (["--nnodes", "2", "--rdzv", "10.0.0.1:29400"], "--node-rank is required"),
    (["--nnodes", "2", "--rdzv", "10.0.0.1", "--node-rank", "0"], "--rdzv '10.0.0.1'"),
    (["--nnodes", "2", "--rdzv", "10.0.0.1:99999", "--node-rank", "0"], "--rdzv '10.0.0.1:99999'"),
    (["--nnodes", "2", "--rdzv", "10.0.0.1:29400", "--node-rank", "2"], "--node-rank 2"),
    (["--rdzv", "10.0.0.1:29400"], "--rdzv and --node-rank need --nnodes"),
    (["--max-restarts", "-1"], "--max-restarts -1"),
    (["--nnodes", "4:5", "--rdzv", "10.0.0.1:29400", "--node-rank", "0", "--set", "data.partition_scope='dataset'"],
     "at every size the elastic job may run at (4, 5 processes); pick a multiple of 20"),
])
def test_bad_node_options_are_one_line_errors(tmp_path, capsys, args, message):
    job = tmp_path / "job.toml"
    job.write_text(GOOD)
    with pytest.raises(SystemExit) as done:
        main(["train", str(job), "--out", str(tmp_path / "run"), *args])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def test_node_spec_is_a_shoal_error():
    with pytest.raises(ShoalError, match="--nnodes"):
        node_spec("0", 0, "h:1")
