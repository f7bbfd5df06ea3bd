"""Machines that come and go, in an elastic job (--nnodes 1:2, --max-restarts 3) across two namespace "machines".
Four networks run at once, so the module lasts as long as its longest case:

- the cable cut for 10 s, shorter than `dist.timeout_s = 30`: the job stalls and goes on, no restart (`stall:`);
- cut for 45 s: the collectives time out, the workers restart (`worker rank ... restarting the workers`), the
  survivor goes on alone and the node whose link came back rejoins at the next rendezvous (`rendezvous: ...
  joined`): the run ends on both nodes;
- cut for 95 s: the survivor goes on alone (`rendezvous: the job goes on without 1 node`) and finishes; the
  cut-off node, finding the job gone when its link returns, ends with one `error: this node ... lost the job` line;
- a second node started mid-run is taken in at the next rendezvous: the records' world size goes 1 -> 2 and the
  model equals a one-process run's.

Steps are paced with sleeps (SHOAL_TEST_PACE_S): wall time without CPU on a small machine. TCP's retransmission
back-off is capped at 1 s in these namespaces (`Network.retransmit_quickly`): a node learns within a second of its
cable coming back what the other side did meanwhile, not up to two minutes later.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from multinode_jobs import JOB, node_command
from netns import Network, namespaces_available

pytestmark = [pytest.mark.dist, pytest.mark.timeout(480)]

PACE = {"SHOAL_TEST_PACE_S": "0.2"}
CUT_AFTER = 30  # the link goes down right after the record of step 30: a log step, not a checkpoint step
SCENARIOS = {  # name: (seconds the link is down, steps); steps: the job outlasts what the cut sets off
    "stall": (10, 90),
    "restart": (45, 260),
    "leave": (95, 130),  # the survivor finishes ~60 s after the cut (on an idle machine)
}
JOIN_STEPS, JOIN_AT = 300, 20  # the second node starts once the first trained alone to step JOIN_AT (taken in by ~step 50)


def paced_job(steps: int, name: str = "multinode-test") -> str:
    return (JOB.replace("multinode-test", name).replace("steps = 6", f"steps = {steps}").replace("log_every = 2", f"log_every = 10\neval_every = {steps}")
            + "[checkpoint]\nevery = 20\n[dist]\ntimeout_s = 30\n")


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def trained(run: Path) -> list[dict]:
    return [r for r in records(run) if r["kind"] == "train"]


def resumes(run: Path) -> list[dict]:
    return [r for r in records(run) if r["kind"] == "resume"]


def lines(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(start)]


class Case:
    """Two nodes of one job in a network of their own; `script` runs in a thread and records what happened."""

    def __init__(self, net: Network, root: Path, name: str, steps: int):
        self.net, self.root, self.name, self.steps = net, root / name, name, steps
        self.root.mkdir()
        self.job = self.root / "job.toml"
        self.job.write_text(paced_job(steps, f"cut-{name}"))  # a rendezvous run id of its own
        self.out = self.root / "run"
        self.procs: list[subprocess.Popen] = []
        self.codes: list[int | None] = []
        self.events: list[str] = []
        self.error: BaseException | None = None

    def start(self, node: int) -> None:
        argv = node_command(self.net, node, self.job, self.out, "1:2", "--max-restarts", "3")
        self.procs.append(self.net.start(node, argv, self.root / f"node{node}.log", PACE))

    def log(self, node: int) -> str:
        return (self.root / f"node{node}.log").read_text()

    def wait_for(self, done, deadline: float, what: str) -> None:
        while not done():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise AssertionError(f"{self.name}: {what} did not happen")
            time.sleep(0.05)

    def run(self, deadline: float) -> None:
        try:
            self.began = time.monotonic()
            self.script(deadline)
            for proc in self.procs:
                try:
                    self.codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 0.1)))
                except subprocess.TimeoutExpired:
                    self.codes.append(None)
            self.events.append(f"ended at {time.monotonic() - self.began:.0f} s")
        except BaseException as err:  # noqa: BLE001 - the fixture reports it with the logs
            self.error = err

    def explain(self) -> str:
        return (f"{self.name}: exit codes {self.codes}, {'; '.join(self.events)}\n"
                + "\n".join(f"--- node{i}.log\n{self.log(i)[-3000:]}" for i in range(len(self.procs))))


class Cut(Case):
    def __init__(self, net, root, name, down_s: float, steps: int):
        super().__init__(net, root, name, steps)
        self.down_s = down_s
        self.start(0)
        self.start(1)

    def script(self, deadline: float) -> None:
        # both nodes in (a node that starts late joins a round of its own first): world size 2 at a step >= CUT_AFTER
        self.wait_for(lambda: any(r["step"] >= CUT_AFTER and len(r["state_mb_per_rank"]) == 2 for r in trained(self.out)), deadline,
                      f"training on both nodes to step {CUT_AFTER}")
        self.before = {"rounds": len(lines(self.log(0), "rendezvous:")), "resumes": len(resumes(self.out))}
        cut = time.monotonic()
        self.net.link(1, up=False)
        self.events.append(f"cut at {cut - self.began:.0f} s")
        time.sleep(self.down_s)
        self.net.link(1, up=True)


class Join(Case):
    def __init__(self, net, root):
        super().__init__(net, root, "join", JOIN_STEPS)
        self.start(0)

    def script(self, deadline: float) -> None:
        self.wait_for(lambda: any(r["step"] >= JOIN_AT for r in trained(self.out)), deadline, f"training alone to step {JOIN_AT}")
        self.start(1)
        self.events.append(f"second node started at {time.monotonic() - self.began:.0f} s")


def one_process(root: Path) -> subprocess.Popen:
    """The join case's reference: the same job in one process, unpaced."""
    (root / "one.toml").write_text(paced_job(JOIN_STEPS))
    with open(root / "one.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "shoal", "train", str(root / "one.toml"), "--nproc", "1", "--out", str(root / "one")],
                                stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    why_not = namespaces_available()
    if why_not:
        pytest.skip(why_not)
    root = tmp_path_factory.mktemp("comings-and-goings")
    nets: list[Network] = []
    reference = None
    try:
        began = time.monotonic()
        found: dict[str, Case] = {}
        for name, (down, steps) in sorted(SCENARIOS.items(), key=lambda kv: -kv[1][0]):  # the longest cut starts first
            nets.append(Network(2))
            nets[-1].retransmit_quickly()
            found[name] = Cut(nets[-1], root, name, down, steps)
        nets.append(Network(2))
        nets[-1].retransmit_quickly()
        found["join"] = Join(nets[-1], root)
        reference = one_process(root)
        deadline = time.monotonic() + 420
        threads = [threading.Thread(target=c.run, args=(deadline,)) for c in found.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"\nfour cases at once: {time.monotonic() - began:.0f} s; " + "; ".join(f"{c.name}: {', '.join(c.events)}" for c in found.values()))
        assert reference.wait(timeout=60) == 0, (root / "one.log").read_text()[-2000:]
        for c in found.values():
            if c.error is not None:
                raise AssertionError(c.explain()) from c.error
        yield found
    finally:
        if reference is not None and reference.poll() is None:
            reference.kill()
        for net in nets:
            net.close()


def test_a_10_s_cut_stalls_the_job_and_it_goes_on(cases):
    c = cases["stall"]
    assert c.codes == [0, 0], c.explain()
    said = lines(c.log(0), "stall:")
    assert len(said) == 1 and "went on without a restart" in said[0], c.explain()
    stall = [r for r in records(c.out) if r["kind"] == "stall"]
    assert len(stall) == 1 and 5 < stall[0]["stall_s"] < 30 and stall[0]["step"] > CUT_AFTER, stall
    assert "restarting" not in c.log(0) + c.log(1), c.explain()
    assert len(resumes(c.out)) == c.before["resumes"] and len(lines(c.log(0), "rendezvous:")) == c.before["rounds"], c.explain()
    assert trained(c.out)[-1]["step"] == c.steps


def test_a_45_s_cut_restarts_the_workers_and_the_node_rejoins(cases):
    c = cases["restart"]
    assert c.codes == [0, 0], c.explain()
    restarted = lines(c.log(0), "worker rank")
    assert len(restarted) == 1 and "restarting the workers, restart 1 of 3" in restarted[0] and "Timed out" in restarted[0], c.explain()
    rounds = lines(c.log(0), "rendezvous:")[c.before["rounds"]:]  # usually alone first ("goes on without 1 node"), then both again
    assert rounds and ("joined" in rounds[-1] or "met again" in rounds[-1]) and "2 processes" in rounds[-1], c.explain()
    assert trained(c.out)[-1]["step"] == c.steps and len(trained(c.out)[-1]["state_mb_per_rank"]) == 2
    assert resumes(c.out)[-1]["world_size"] == 2


def test_a_95_s_cut_leaves_the_survivor_alone_and_the_cut_node_says_so(cases):
    c = cases["leave"]
    assert c.codes == [0, 1], c.explain()
    rounds = lines(c.log(0), "rendezvous:")[c.before["rounds"]:]
    assert len(rounds) == 1 and "goes on without 1 node" in rounds[0] and "1 node, 1 processes (were 2, 2)" in rounds[0], c.explain()
    assert trained(c.out)[-1]["step"] == c.steps and len(trained(c.out)[-1]["state_mb_per_rank"]) == 1
    assert (c.out / "model.pt").exists()
    last = c.log(1).strip().splitlines()[-1]
    assert last.startswith("error: this node") and "lost the job" in last and "run the same command again" in last, c.explain()
    assert "Traceback" not in c.log(1), c.explain()


def test_a_node_started_mid_run_is_taken_in_at_the_next_rendezvous(cases, tmp_path_factory):
    c = cases["join"]
    assert c.codes == [0, 0], c.explain()
    assert lines(c.log(0), "rendezvous: 1 node joined: the job goes on with 2 nodes, 2 processes (were 1, 1)"), c.explain()
    sizes = [len(r["state_mb_per_rank"]) for r in trained(c.out)]
    assert sizes[0] == 1 and sizes[-1] == 2 and sizes == sorted(sizes), sizes  # world size 1, then 2
    assert resumes(c.out)[-1]["world_size"] == 2
    assert trained(c.out)[-1]["step"] == JOIN_STEPS
    one = torch.load(c.root.parent / "one" / "model.pt", weights_only=True)
    both = torch.load(c.out / "model.pt", weights_only=True)
    assert max((both[k] - one[k]).abs().max().item() for k in one) < 1e-5
