"""The exchange under bounded staleness (ssp) and asynchronous training (asp): one rank's side.

Both modes keep the bsp exchange's machinery (non-blocking messages per piece, progress() by polling,
the emulated network, the trace) and change what a pull is and when a worker may compute:

- A worker never receives into its parameters. Each piece a server holds elsewhere has two host
  staging buffers: one always has a receive posted, the other holds the newest values that arrived.
  Every pull message carries, after the piece's values (as the pull codec encodes them: float32 by
  default), its version (an int32 in 4 more bytes). At the start of its step at clock c the worker
  copies the newest values of every piece into its parameters (never while it computes), waiting
  first, under ssp, until every piece has a version >= c - s.
- ssp: servers aggregate per round as bsp does (every worker's push of round r, weighted k_i / sum(k),
  one optimiser step: version r + 1), so s = 0 is bsp, bit for bit. A server offers each new version
  to every worker; while a worker's previous pull is still in flight, only the newest version goes
  next (a slow receiver gets fewer messages, never an older version after a newer one).
- asp: a server steps a piece on each push as it arrives (weighted k_i / sum(k)) and answers the
  pushing worker with the values right after that step. A worker's next push of a piece is applied
  only once the answer to its previous one has left (flow control: the answer buffer is per worker),
  so every push has its own answer and the worker can tell how many updates its gradient missed.

Staleness (recorded per worker, step and piece): the version an update was applied to minus the
version the worker's gradient was computed on. Under ssp versions count rounds, the update of a step
at clock c is applied to version c, so it is c minus the version used (0 <= it <= s). Under asp
versions count pushes, so it is the number of other workers' pushes applied between the worker's
read and its own push's step.

The emulated network pairs a message's two ends by its number on its (kind, piece, worker) channel:
each channel has at most one message in flight from either end (a server sends a worker's next pull
only when the previous one has arrived; a worker pushes again only when its previous push arrived;
each side posts its next receive only when the last one completed), which is what the fabric's two
slots per channel allow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from mpi4py import MPI

from hpcps.ps.exchange import GATHER_TAG, PULL_TAG, PUSH_TAG, Exchange, Transfer
from hpcps.ps.plan import PULL, PUSH, MessagePlan
from hpcps.ps.server import AsyncPiece, RoundPiece

STALE_MODES = ("ssp", "asp")


VERSION_NBYTES = 4     # a pull's version, an int32 after its values


def _version_of(buf: np.ndarray) -> int:
    return int(buf[-VERSION_NBYTES:].view(np.int32)[0])


def _set_version(buf: np.ndarray, version: int) -> None:
    buf[-VERSION_NBYTES:].view(np.int32)[0] = version


def serve_pieces(mode: str, staleness: int, plan: MessagePlan, rank: int, initial: np.ndarray, batches: list[int],
                 optimizer, codecs, iterations: int | None = None) -> dict:
    """The piece states a rank serves under mode, for a run of iterations steps (default: unbounded)."""
    iterations = staleness + 1 if iterations is None else max(1, iterations)
    out: dict[int, RoundPiece | AsyncPiece] = {}
    for p in plan.pieces_of_server(rank):
        values = initial[p.start:p.stop]
        if mode == "ssp":
            # A worker at clock c has seen version >= c - s of every piece, so rounds up to c - s - 1
            # are aggregated everywhere: the slowest round still open is c - s at the earliest, and a
            # push can belong to rounds c - s .. c, s + 1 rounds. Round r uses row set r mod (s + 1),
            # last used by round r - s - 1, which is aggregated by the time any worker pushes round r.
            # (A run of T steps never has more than T rounds open.)
            out[p.index] = RoundPiece(p, values, batches, optimizer, codecs, rounds=min(staleness + 1, iterations))
        elif mode == "asp":
            out[p.index] = AsyncPiece(p, values, batches, optimizer, codecs)
        else:
            raise ValueError(f"no stale exchange for {mode!r}")
    return out


class StaleExchange(Exchange):
    """Built on every rank; served: piece index -> RoundPiece (ssp) or AsyncPiece (asp), from
    serve_pieces(). The worker's side: begin_clock(c) at the start of each step, then push() per
    piece as in bsp; wait_until(pushes_done) before the next step reuses the gradient buffer."""

    def __init__(self, comm: MPI.Comm, plan: MessagePlan, iterations: int, *, mode: str, staleness: int,
                 **kwargs):
        if mode not in STALE_MODES:
            raise ValueError(f"unknown stale mode {mode!r}; choose one of {', '.join(STALE_MODES)}")
        super().__init__(comm, plan, iterations, **kwargs)
        self.mode, self.staleness = mode, int(staleness)
        self.states: dict[int, RoundPiece | AsyncPiece] = dict(kwargs.get("served") or {})
        self._to_apply: list[tuple[int, int]] = []       # asp: (piece, worker row) pushes ready to apply
        n, nw = len(plan.pieces), len(plan.workers)
        # -- worker
        self.clock_c = -1
        self.have = np.zeros(n, dtype=np.int64)          # version of each piece in the parameters
        self.newest = np.zeros(n, dtype=np.int64)        # newest version staged (remote pieces)
        self.remote = [p.index for p in plan.pieces if p.server != self.rank] if self.is_worker else []
        self._stage = {q: (self._pull_buffer(q), self._pull_buffer(q)) for q in self.remote}
        self._ready = {q: -1 for q in self.remote}       # which staging buffer holds the newest values
        self._receiving = {q: False for q in self.remote}
        self._recv_seq = np.zeros(n, dtype=np.int64)
        self._replies = np.zeros(n, dtype=np.int64)      # asp: answers received per piece
        self._read: dict[int, dict[int, int]] = {q: {} for q in range(n)}   # asp: clock -> version read
        self.max_staleness = -1                          # over this worker's steps and pieces
        # -- server
        remote_rows = [row for row, w in enumerate(plan.workers) if w != self.rank]
        self._remote_rows = remote_rows
        self._next = {q: np.zeros(nw, dtype=np.int64) for q in self.states}     # next push to receive, per row
        self._parked: dict[int, list[int]] = {q: [] for q in self.states}       # ssp: receives awaiting free rows
        self._answer = {q: {row: self._pull_buffer(q) for row in remote_rows} for q in self.states}
        self._busy = {q: np.zeros(nw, dtype=bool) for q in self.states}         # a pull to row in flight
        self._sent = {q: np.zeros(nw, dtype=np.int64) for q in self.states}     # ssp: newest version sent
        self._send_seq = {q: np.zeros(nw, dtype=np.int64) for q in self.states}
        self._held = {q: np.zeros(nw, dtype=bool) for q in self.states}         # asp: push awaiting its turn

    def _pull_buffer(self, q: int) -> np.ndarray:
        """Bytes of one pull of piece q: its values as the pull codec encodes them, then its version."""
        return np.zeros(self.plan.pull_nbytes[q] + VERSION_NBYTES, dtype=np.uint8)

    # -- set-up ---------------------------------------------------------------------------------------
    def start(self, first_iteration: int = 0) -> None:
        """Post the push receives and the workers' first pull receives. Every rank starts from the same
        values, so nothing is sent before the first step. A run resumed after first_iteration steps
        (a checkpoint) starts as a settled run goes on (settle()): every clock at first_iteration, every
        worker's pushes through it applied, every piece at the version that makes (ssp: one a round;
        asp: one a push, first_iteration of every worker's, whichever workers wrote the checkpoint)."""
        n = first_iteration
        version = n if self.mode == "ssp" else n * len(self.plan.workers)
        for q, state in self.states.items():
            state.version = version
            if isinstance(state, AsyncPiece):
                state.applied[:] = n
            self._next[q][:] = n
            self._sent[q][:] = version
        self.have[:] = version
        self.newest[:] = version
        self._replies[:] = n
        if self.is_worker and self.pull_codec.lossy:
            self._round_own_values()
        for q in self.states:
            for row in self._remote_rows:
                self._post_push_receive(q, row)
        if n < self.iterations:                          # a run resumed at its end expects no pull
            for q in self.remote:
                self._post_pull_receive(q)

    def _round_own_values(self) -> None:
        """A lossy pull codec: a worker's first step reads no pull but its own copy of the values every
        rank started (or resumed) from, rounded here as its server's pull would be (bsp's first pull
        is), so every step of every worker computes on decoded values."""
        assert self.params is not None
        for p in self.plan.pieces:
            values = self.params.host_array(p.start, p.stop, np.empty(p.size, np.float32)).copy()
            wire = np.empty(self.plan.pull_nbytes[p.index], dtype=np.uint8)
            self.pull_codec.pack(values, wire, np.empty(p.size, np.float32))
            self._write_decoded(p.index, wire)
        self._settle_copies()

    # -- the worker's side ------------------------------------------------------------------------------
    def _round(self, q: int) -> RoundPiece:
        state = self.states[q]
        assert isinstance(state, RoundPiece)
        return state

    def _async(self, q: int) -> AsyncPiece:
        state = self.states[q]
        assert isinstance(state, AsyncPiece)
        return state

    def _available(self, q: int) -> int:
        state = self.states.get(q)
        return state.version if state is not None else int(self.newest[q])

    def ready_for(self, clock: int) -> bool:
        """ssp: every piece has a version >= clock - s (asp: always)."""
        if self.mode == "asp":
            return True
        need = clock - self.staleness
        return need <= 0 or all(self._available(p.index) >= need for p in self.plan.pieces)

    def begin_clock(self, clock: int) -> None:
        """The start of this worker's step at clock: wait until the policy allows it (ssp), then copy
        the newest values of every piece into the parameters and record what each piece's version is."""
        self.clock_c = clock
        self.progress()
        if not self.ready_for(clock):
            self.wait_until(lambda: self.ready_for(clock))
        copied, params = False, self.params
        assert params is not None
        for p in self.plan.pieces:
            q = p.index
            state = self.states.get(q)
            if state is not None:
                if state.version > self.have[q]:
                    if self.pull_codec.lossy:      # the values the other workers get of this version
                        self.pull_codec.pack(state.params, self._pull_wires[q], self._pull_scratch[q])
                        self._write_decoded(q, self._pull_wires[q])
                    else:
                        params.write_from_host(p.start, p.stop, state.params)
                    self.have[q], copied = state.version, True
            elif self.newest[q] > self.have[q]:
                self._write_decoded(q, self._stage[q][self._ready[q]])
                self.have[q], copied = self.newest[q], True
            if self.mode == "ssp":
                self._staleness(clock, q, int(self.have[q]), clock - int(self.have[q]))
            else:
                self._read[q][clock] = int(self.have[q])
        if copied:
            self._settle_copies()

    def _settle_copies(self) -> None:
        """Copies into device parameters run on a stream of their own; a staging buffer may receive
        again only once they are done."""
        stream = getattr(getattr(self.params, "copies", None), "stream", None)
        if self.params is not None and self.params.transport != "host" and stream is not None:
            stream.synchronize()

    def wait_pieces(self, pieces) -> None:
        """The parameters are in place for the whole step: only keep messages moving (a forward hook)."""
        self.progress()

    def expect_pulls(self, iteration: int) -> None:
        raise RuntimeError("ssp and asp workers read pulls at begin_clock, not into their parameters")

    def _staleness(self, clock: int, q: int, version: int, staleness: int) -> None:
        self.max_staleness = max(self.max_staleness, staleness)
        if self.recorder is not None:
            self.recorder.staleness(clock, self.plan.pieces[q].shard, q, version, staleness)

    def push(self, q: int) -> None:
        """Piece q's gradient of this step is complete: send it to its server, or hand it over."""
        if self.pushed[q]:
            return
        p = self.plan.pieces[q]
        if p.server != self.rank:
            super().push(q)
            return
        self.pushed[q] = True
        now = self.clock()
        if not self.first_push_at:
            self.first_push_at = now
        self.last_push_at = now
        c, grads, row = self.push_iteration, self.grads, self.row
        assert grads is not None and row is not None
        t0 = self.clock()
        if self.mode == "ssp":
            # Free: this worker saw version >= c - s of the piece, so round c - s - 1 is aggregated.
            state = self._round(q)
            rows = state.rows[state.row_set(c), row]
            rows[:] = grads.host_array(p.start, p.stop, rows)
            state.push_copied(c)
            self._record(c, Transfer(PUSH, "local", p.shard, self.rank, 4 * p.size, q), t0, self.clock())
            if state.round_complete():
                self._ready_to_aggregate.append(q)
        else:
            rows = self._async(q).rows[row]
            rows[:] = grads.host_array(p.start, p.stop, rows)
            self._record(c, Transfer(PUSH, "local", p.shard, self.rank, 4 * p.size, q), t0, self.clock())
            self._apply_push(q, row)             # at once: the row is needed again by the next step

    def _post_pull_receive(self, q: int) -> None:
        p = self.plan.pieces[q]
        i = 1 if self._ready[q] == 0 else 0
        seq = int(self._recv_seq[q])
        self._recv_seq[q] += 1
        self._receiving[q] = True
        t0 = self.clock()
        req = self.comm.Irecv(self._stage[q][i], source=p.server, tag=PULL_TAG + q)
        # The iteration it belongs to is known only from the version it carries (_finish).
        self._post(req, t0, -1, Transfer(PULL, "recv", p.shard, p.server, len(self._stage[q][i]), q),
                   self._staged_arrived, (q, i), seq=seq)

    def _staged_arrived(self, q: int, i: int) -> int:
        """Returns the iteration the pull belongs to: its version (ssp), the step whose push it answers (asp)."""
        version = _version_of(self._stage[q][i])
        self.newest[q], self._ready[q], self._receiving[q] = version, i, False
        self.arrived_at[q] = self.clock()
        if self.mode == "ssp":
            iteration, last = version, version >= self.iterations
        else:
            iteration = int(self._replies[q])
            self._replies[q] += 1
            read = self._read[q].pop(iteration, None)
            if read is not None:
                self._staleness(iteration, q, read, version - 1 - read)
            last = self._replies[q] >= self.iterations
        if not last:
            self._post_pull_receive(q)
        return iteration

    def _finish(self, iteration: int, meta: Transfer, t_post: float, then, args) -> None:
        if meta.kind != PULL or meta.direction != "recv":
            super()._finish(iteration, meta, t_post, then, args)
            return
        t1 = self.clock()
        self._record(then(*args), meta, t_post, t1)      # a staged pull: its iteration comes from its version

    # -- the server's side ------------------------------------------------------------------------------
    def _post_push_receive(self, q: int, row: int) -> None:
        r = int(self._next[q][row])
        if r >= self.iterations:
            return
        if self.mode == "ssp":
            rounds = self._round(q)
            if not rounds.set_free(r):
                self._parked[q].append(row)
                return
            wire = rounds.wires[rounds.row_set(r)][row]
        else:
            wire = self._async(q).wires[row]
        self._next[q][row] = r + 1
        w, p = self.plan.workers[row], self.plan.pieces[q]
        t0 = self.clock()
        req = self.comm.Irecv(wire, source=w, tag=PUSH_TAG + q)
        meta = Transfer(PUSH, "recv", p.shard, w, self.plan.push_nbytes[row][q], q)
        self._post(req, t0, r, meta, self._stale_push_received, (q, row, r), seq=r)

    def _stale_push_received(self, q: int, row: int, r: int) -> None:
        if self.mode == "ssp":
            rounds = self._round(q)
            rounds.push_arrived(r, row)
            self._post_push_receive(q, row)
            if rounds.round_complete():
                self._ready_to_aggregate.append(q)
        else:
            self._async(q).push_arrived(row)
            if self._busy[q][row]:
                self._held[q][row] = True      # applied once the answer to its previous push has left
            else:
                self._to_apply.append((q, row))

    def _aggregate_piece(self, q: int) -> None:
        state = self._round(q)
        while state.version < self.iterations and state.round_complete():
            self._timed(state.aggregate_round)
            parked, self._parked[q] = self._parked[q], []
            for row in parked:
                self._post_push_receive(q, row)
        self._offer(q)

    def _timed(self, fn: Callable):
        t0 = self.clock()
        out = self._aggregate(fn)
        t1 = self.clock()
        self.aggregate_span[0] = min(self.aggregate_span[0], t0)
        self.aggregate_span[1] = max(self.aggregate_span[1], t1)
        return out

    def _apply_push(self, q: int, row: int) -> None:
        """asp: step piece q on worker row's push; answer a remote worker, record a local one's staleness."""
        state = self._async(q)
        box: list[int] = []
        self._timed(lambda: box.append(state.apply(row)))
        applied_to, clock = box[0], int(state.applied[row]) - 1
        if self.plan.workers[row] == self.rank:
            read = self._read[q].pop(clock, None)
            if read is not None:
                self._staleness(clock, q, read, applied_to - read)
            return
        self._post_push_receive(q, row)
        self._send_values(q, row, clock)

    def _offer(self, q: int) -> None:
        """ssp: send the piece's newest version to every remote worker whose previous pull has left."""
        state = self.states[q]
        for row in self._remote_rows:
            if not self._busy[q][row] and self._sent[q][row] < state.version:
                self._send_values(q, row, state.version)

    def _send_values(self, q: int, row: int, iteration: int) -> None:
        state, p, w = self.states[q], self.plan.pieces[q], self.plan.workers[row]
        buf = self._answer[q][row]
        self.pull_codec.pack(state.params, buf, self._pull_scratch.get(q))
        _set_version(buf, state.version)
        self._busy[q][row] = True
        self._sent[q][row] = state.version
        seq = int(self._send_seq[q][row])
        self._send_seq[q][row] += 1
        t0 = self.clock()
        req = self.comm.Isend(buf, dest=w, tag=PULL_TAG + q)
        self._post(req, t0, iteration, Transfer(PULL, "send", p.shard, w, len(buf), q),
                   self._values_sent, (q, row), seq=seq)

    def _values_sent(self, q: int, row: int) -> None:
        self._busy[q][row] = False
        if self.mode == "ssp":
            self._offer(q)
        elif self._held[q][row]:
            self._held[q][row] = False
            self._to_apply.append((q, row))

    def settled(self, done: int) -> bool:
        """Whether this rank stands where every rank of the run stops for a checkpoint after `done`
        steps: its pushes of steps 0 .. done - 1 are out, every piece it serves has every worker's
        pushes of them applied (and no later one: no worker pushes step `done` before every rank has
        settled) with its answers and offers sent, and every piece it reads from another rank has
        arrived at that version. All clocks are then `done`, whatever the staleness allowed before:
        the state is the one a bsp run has at that boundary, and a run resumed from it starts there
        (start())."""
        if self._staging or self._ready_to_aggregate or self._to_apply:
            return False
        if self.is_worker and not self.pushes_done():
            return False
        for q, state in self.states.items():
            if self._busy[q].any() or self._held[q].any():
                return False
            if self.mode == "ssp":
                if state.version != done or any(self._sent[q][r] < done for r in self._remote_rows):
                    return False
            elif (self._async(q).applied != done).any():
                return False
        if self.mode == "ssp":
            return all(self.newest[q] >= done for q in self.remote)
        return all(self._replies[q] >= done for q in self.remote)

    def settle(self, done: int) -> None:
        """Serve until settled(done): a rank that gets there first keeps serving the ones behind."""
        self.wait_until(lambda: self.settled(done))

    def at_boundary(self, done: int) -> bool:
        return self.settled(done)

    def stop_early(self) -> None:
        """End a settled run before its planned end: cancel the receives posted for pushes and pulls
        that will never come (nothing else is in flight once settled)."""
        for req, handler in zip(self._reqs, self._done):
            if handler[1][1].direction != "recv":
                raise RuntimeError("stop_early on a rank that is not settled: a send is still in flight")
            req.Cancel()
            req.Wait()
        self._reqs, self._done = [], []
        self._receiving = {q: False for q in self._receiving}

    def served_through(self, iteration: int) -> bool:
        """Every piece this rank serves has every worker's push of iteration applied."""
        if self.mode == "ssp":
            return all(s.version > iteration for s in self.states.values())
        return all(int(self._async(q).applied.min()) > iteration for q in self.states)

    # -- progress and the end ---------------------------------------------------------------------------
    def _after_poll(self) -> bool:
        did = False
        while self._ready_to_aggregate:
            self._aggregate_piece(self._ready_to_aggregate.pop(0))
            did = True
        while self._to_apply:
            self._apply_push(*self._to_apply.pop(0))
            did = True
        return did

    def _all_done(self) -> bool:
        if self._reqs or self._fabric or self._staging or self._ready_to_aggregate or self._to_apply:
            return False
        if any(self._receiving.values()):
            return False
        for q, state in self.states.items():
            if self._busy[q].any() or self._held[q].any():
                return False
            if self.mode == "ssp":
                if state.version < self.iterations or any(self._sent[q][r] < self.iterations
                                                          for r in self._remote_rows):
                    return False
            elif int(self._async(q).applied.min()) < self.iterations:
                return False
        return True

    def drain(self) -> None:
        """Until every push of the run is applied and every pull a worker expects has arrived."""
        self.wait_until(self._all_done)

    def gather_params(self, n_elements: int, root: int = 0) -> np.ndarray | None:
        """The servers' current parameters on root, each piece as its server held it when it got here.
        Servers keep stepping meanwhile (this rank keeps serving while it waits), so they send copies."""
        reqs, copies = [], []
        full = np.empty(n_elements, dtype=np.float32) if self.rank == root else None
        for p in self.plan.pieces:
            state = self.states.get(p.index)
            if full is not None:
                if state is not None:
                    full[p.start:p.stop] = state.params
                else:
                    reqs.append(self.comm.Irecv(full[p.start:p.stop], source=p.server, tag=GATHER_TAG + p.index))
            elif state is not None:
                copies.append(state.params.copy())
                reqs.append(self.comm.Isend(copies[-1], dest=root, tag=GATHER_TAG + p.index))
        self.wait_until(lambda: MPI.Request.Testall(reqs))
        return full
