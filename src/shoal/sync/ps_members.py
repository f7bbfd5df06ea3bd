"""ps.rejoin, the server's side: who is connected. One watcher thread per worker makes that worker's link
(ps_link.py) whenever a new incarnation announces itself and passes on its pushes; a broken link is the
worker leaving. The server's loop takes these events in order: pushes are applied as in async or ssp
(a worker's push must be its next step: none is applied twice or skipped), a departure stops the
server waiting for that worker (ssp clocks complete without it), an arrival gets the current
parameters and how many steps that worker pushed. The run starts once every worker has joined, and
ends at the last step, an agreement point, once every worker has pushed every step. A server that
restored its checkpoint starts the same way: every worker joins as if rejoining, at its clock there.
"""

from __future__ import annotations

import queue
import sys
import threading
import time

from shoal.errors import ShoalError
from shoal.sync import ps_link
from shoal.sync.ps_wire import TAG, header, message


class Members:
    """Mixed into the Server: its ps.rejoin loop (it uses the server's clocks, links, pushes and replies)."""

    def _run_rejoin(self) -> None:
        """Pushes, arrivals and departures come from one watcher thread per worker, in the order they happened there.
        A worker that left keeps its clock: the last step is an agreement point, so the run ends only once its next
        incarnation has pushed every step it had not (each step's push is applied exactly once: checked). A joining
        worker's first reply is withheld as its push of that clock would be (ssp: the bound holds across a restart)."""
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        met: set[int] = set()  # workers that joined at least once
        started = False
        for w in range(len(self.workers)):
            threading.Thread(target=self._watch, args=(w, events, stop), daemon=True, name=f"shoal-ps-link{w}").start()
        try:
            while not started or min(self.clocks) < self.steps or self.waiting:
                kind, w, value = events.get()
                if kind == "joined":
                    self.links[w], incarnation = value
                    self.away.discard(w)
                    met.add(w)
                    if len(met) < len(self.workers):  # the run starts once every worker is there, as without rejoin
                        continue
                    # the current parameters, and how many steps it pushed (at the start: to everyone who waited)
                    for x in [w] if started else sorted(self.links):
                        self.waiting[x] = self.clocks[x]
                    started = True
                    self._release()
                    if incarnation:
                        print(f"parameter server: worker rank {self.workers[w]} rejoined (incarnation {incarnation}) with the "
                              f"parameters of update {self.version}; it goes on from step {self.clocks[w] + 1}",
                              file=sys.stderr, flush=True)
                elif kind == "left":
                    if self.links.pop(w, None) is not None and self.clocks[w] < self.steps:
                        self.waiting.pop(w, None)
                        self.away.add(w)
                        print(f"parameter server: worker rank {self.workers[w]} left after pushing step {self.clocks[w]}; "
                              f"the other workers go on, it rejoins when started again", file=sys.stderr, flush=True)
                        if self.mode == "ssp":
                            self._complete_clocks()  # the clocks that waited only for it
                            self._release()
                else:
                    step = int(header(value)[0])
                    if step != self.clocks[w] + 1:
                        raise ShoalError(f"parameter server: worker rank {self.workers[w]} pushed step {step} after step "
                                         f"{self.clocks[w]}; refusing it rather than applying a step twice or skipping one")
                    self._push(w, value)
                    self._release()
                    if w == 0:
                        self.after_worker0(step)  # its checkpoint (checkpoint.every)
        finally:
            stop.set()

    def _watch(self, w: int, events: queue.Queue, stop: threading.Event) -> None:
        """One worker's links, one incarnation after another: connect when it announces itself, then pass on its pushes
        until the link breaks (its process died, or it finished)."""
        store, seen = ps_link.job_store(self.timeout_s), -1
        while not stop.is_set():
            incarnation = ps_link.announced(store, w)
            if incarnation <= seen:
                time.sleep(0.02)
                continue
            seen = incarnation
            try:
                link = ps_link.connect(store, w, incarnation, ps_link.SERVER, self.timeout_s)
            except RuntimeError:  # it died before both ends met: wait for the next one
                continue
            events.put(("joined", w, (link, incarnation)))
            while True:
                buffer = message(self.size)
                try:
                    link.recv([buffer], ps_link.WORKER, TAG).wait()
                except RuntimeError:
                    events.put(("left", w, None))
                    break
                events.put(("push", w, buffer))
