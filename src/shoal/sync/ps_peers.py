"""ps.rejoin with several servers: what they tell each other through the job's TCP store, never waiting on a worker.

Servers never die alone (a server's death restarts the whole job), so they may meet in collectives of
their own (`server_group`), but a server must never sit in one while a worker it holds up is what
another server waits for. So:

- **Checkpoints**: server 0 decides. Right after it took in worker 0's push of every `checkpoint.every`-th
  step it writes `save/N` = that step and worker 0's incarnation, and enters the save. Every other
  server, watching those keys from a thread, joins the save at the next turn of its event loop at which
  it holds worker 0's push of that step too, or that incarnation of worker 0 is gone (it died between
  its pushes to two servers: its next one would need server 0's reply, and server 0 is in the save).
  Until then it goes on answering pushes: worker 0 sent it that push before it waited for any reply.
- **The end**: a server that holds every worker's every step and owes no reply writes `done/J`, and
  keeps answering (a worker that died between its last pushes to two servers rejoins through all of
  them) until every server wrote it; then all leave their loops together (and write the final
  checkpoint together, `checkpoint.at_end`). No save request is left unanswered: server 0 writes
  `done/0` only after its last save, which every server joined.
"""

from __future__ import annotations

import queue
import threading
import time

from shoal.sync import ps_link


class Peers:
    """One server's view of the others (ps.rejoin, `servers` > 1)."""

    def __init__(self, index: int, servers: int, timeout_s: float):
        self.index, self.servers, self.timeout_s = index, servers, timeout_s
        self.store = ps_link.job_store(timeout_s)  # the event loop's own client (the watcher thread has another)
        self.asked = 0  # server 0: save requests written
        self.done: set[int] = set()  # servers that wrote done/J (this one included once it did)

    def ask_save(self, step: int, incarnation: int) -> None:
        """Server 0: ask the others to join the checkpoint after worker 0's push of `step` (of that incarnation)."""
        self.store.set(f"save/{self.asked}", f"{step} {incarnation}")
        self.asked += 1

    def say_done(self) -> None:
        if self.index not in self.done:
            self.store.set(f"done/{self.index}", "1")
            self.done.add(self.index)

    def all_done(self) -> bool:
        return len(self.done) == self.servers

    def watch(self, events: queue.Queue, stop: threading.Event, saves: bool) -> None:
        """Thread: pass on server 0's save requests ("save", None, (step, incarnation)), if `saves` and this is not
        server 0, and every other server's being done ("done", J, None), as events of the server's loop."""
        store, asked, others = ps_link.job_store(self.timeout_s), 0, set(range(self.servers)) - {self.index}
        while not stop.is_set():
            try:
                found = False
                if saves and self.index and store.check([f"save/{asked}"]):
                    step, incarnation = map(int, store.get(f"save/{asked}").decode().split())
                    events.put(("save", None, (step, incarnation)))
                    asked, found = asked + 1, True
                for j in sorted(others):
                    if store.check([f"done/{j}"]):
                        events.put(("done", j, None))
                        others.discard(j)
                        found = True
            except RuntimeError:  # the store's host (rank 0's process) died: the whole job restarts
                return
            if not found:
                time.sleep(0.02)
