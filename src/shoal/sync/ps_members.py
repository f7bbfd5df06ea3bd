"""ps.rejoin, the server's side: who is connected. One watcher thread per worker makes that worker's link
(ps_link.py) whenever a new incarnation announces itself and passes on its pushes; a broken link is the
worker leaving. The server's loop takes these events in order: pushes are applied as in async or ssp
(a worker's push must be its next step: none is applied twice or skipped), a departure stops the
server waiting for that worker (ssp clocks complete without it), an arrival gets the current
parameters and how many steps that worker pushed. The run starts once every worker has joined, and
ends at the last step, an agreement point, once every worker has pushed every step. A server that
restored its checkpoint starts the same way: every worker joins as if rejoining, at its clock there.
With several servers a worker goes on after the fewest steps any of them holds of it: a server that holds
more answers those re-pushed steps without applying them again (only those, right after the worker
joined), and the servers' checkpoints and end are agreed among them (ps_peers.py).
"""

from __future__ import annotations

import queue
import sys
import threading
import time

from shoal.errors import ShoalError
from shoal.sync import ps_link
from shoal.sync.ps_peers import Peers
from shoal.sync.ps_wire import TAG, header, message


class Members:
    """Mixed into the Server: its ps.rejoin loop (it uses the server's clocks, links, pushes and replies)."""

    def _run_rejoin(self) -> None:
        """Pushes, arrivals and departures come from one watcher thread per worker, in the order they happened there.
        A worker that left keeps its clock: the last step is an agreement point, so the run ends only once its next
        incarnation has pushed every step it had not (each step's push is applied exactly once: checked). A joining
        worker's first reply is withheld as its push of that clock would be (ssp: the bound holds across a restart).
        With several servers, save requests and the others' being done arrive as events too (ps_peers.py)."""
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        for w in range(len(self.workers)):
            threading.Thread(target=self._watch, args=(w, events, stop), daemon=True, name=f"shoal-ps-link{w}").start()
        servers = len(self.shards.bounds) - 1
        if servers > 1:
            self.peers = Peers(self.index, servers, self.timeout_s)
            threading.Thread(target=self.peers.watch, args=(events, stop, bool(self.every)), daemon=True,
                             name="shoal-ps-peers").start()
        try:
            while not (self.started and self._finished() and (self.peers is None or self.peers.all_done())):
                kind, w, value = events.get()
                if kind == "joined":
                    self._joined(w, *value)
                elif kind == "left":
                    self._left(w)
                elif kind == "push":
                    self._pushed(w, value)
                elif kind == "save":
                    self.requested = value
                else:  # "done": server w holds every step
                    self.peers.done.add(w)
                if self.requested is not None and self._may_save(*self.requested):
                    self.requested = None
                    self._save_alone(self.clocks[0])  # with the others (server 0 is there already)
                if self.peers is not None and self.started and self._finished():
                    self.peers.say_done()
        finally:
            stop.set()

    def _finished(self) -> bool:
        return min(self.clocks) >= self.steps and not self.waiting

    def _joined(self, w: int, link, incarnation: int) -> None:
        self.links[w], self.incarnations[w] = link, incarnation
        self.repeats[w] = (self.clocks[w], None)  # it may re-push steps this server has (another server had fewer)
        self.away.discard(w)
        self.met.add(w)
        if len(self.met) < len(self.workers):  # the run starts once every worker is there, as without rejoin
            return
        # the current parameters, and how many steps it pushed (at the start: to everyone who waited)
        for x in [w] if self.started else sorted(self.links):
            self.waiting[x] = self.clocks[x]
        self.started = True
        self._release()
        if incarnation and self.index == 0:
            where = f"from step {self.clocks[w] + 1}" if self.peers is None else \
                f"after the fewest steps any server holds of it (server 0 holds {self.clocks[w]})"
            print(f"parameter server: worker rank {self.workers[w]} rejoined (incarnation {incarnation}) with the "
                  f"parameters of update {self.version}; it goes on {where}", file=sys.stderr, flush=True)

    def _left(self, w: int) -> None:
        if self.links.pop(w, None) is not None and self.clocks[w] < self.steps:
            self.waiting.pop(w, None)
            self.away.add(w)
            if self.index == 0:
                print(f"parameter server: worker rank {self.workers[w]} left after pushing step {self.clocks[w]}; "
                      f"the other workers go on, it rejoins when started again", file=sys.stderr, flush=True)
            if self.mode == "ssp":
                self._complete_clocks()  # the clocks that waited only for it
                self._release()

    def _pushed(self, w: int, buffer) -> None:
        step = int(header(buffer)[0])
        if self._repeated(w, step):  # answered as usual, applied once already
            self.waiting[w] = step
            self._release()
            return
        if step != self.clocks[w] + 1:
            raise ShoalError(f"parameter server: worker rank {self.workers[w]} pushed step {step} after step "
                             f"{self.clocks[w]}; refusing it rather than applying a step twice or skipping one")
        self.repeats.pop(w, None)
        self._push(w, buffer)
        self._release()
        if w == 0:
            self.after_worker0(step)  # its checkpoint (checkpoint.every)

    def _repeated(self, w: int, step: int) -> bool:
        """A step this server has, re-pushed by a worker that joined with fewer on another server: consecutive steps up
        to what it held at the join, from the first one re-pushed."""
        held, expected = self.repeats.get(w, (0, None))
        if step > held or expected not in (None, step):
            return False
        self.repeats[w] = (held, step + 1)
        return True

    def _may_save(self, step: int, incarnation: int) -> bool:
        """Join server 0's save after worker 0's push of `step` once this server has it too, or once that incarnation
        of worker 0 is gone (ps_peers.py)."""
        return self.clocks[0] >= step or self.incarnations.get(0) != incarnation or 0 not in self.links

    def _watch(self, w: int, events: queue.Queue, stop: threading.Event) -> None:
        """One worker's links, one incarnation after another: connect when it announces itself, then pass on its pushes
        until the link breaks (its process died, or it finished)."""
        store, seen = ps_link.job_store(self.timeout_s), -1
        while not stop.is_set():
            try:
                incarnation = ps_link.announced(store, w)
            except RuntimeError:  # the store's host (rank 0's process) died: the whole job restarts, nothing to watch
                return
            if incarnation <= seen:
                time.sleep(0.02)
                continue
            seen = incarnation
            try:
                link = ps_link.connect(store, self.index, w, incarnation, ps_link.SERVER, self.timeout_s)
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
