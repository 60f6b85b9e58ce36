"""One rank's side of every message of the plan (hpcps/ps/plan.py), moved without blocking and driven
by progress(): non-blocking point-to-point, one message per piece and peer, straight from and into the
flat buffers (never pickled objects).

A worker pushes a piece as soon as its gradient is complete (push()), and waits only for the pieces a
layer is about to read (wait_pieces()). A server receives each piece's pushes into one row per
worker; when a piece has every push it aggregates it, steps the optimiser on it and sends the new
values to every worker at once, without waiting for the rest of its shard. A rank that is both
serves itself by copies, never messages.

Nothing here blocks except the wait_* methods, which call progress() until their condition holds:
MPI moves large messages only while a rank is inside MPI, so the worker's hooks call progress() too,
between the layers of the backward and forward passes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from hpcps.comm.buffers import ExchangeBuffer
from hpcps.comm.waits import SocketWake
from hpcps.ps.codec import Codec, Encoder
from hpcps.ps.plan import PULL, PUSH, MessagePlan
from hpcps.ps.server import ServedPiece

# Tags: one per kind and piece. MPI keeps messages with one source, tag and communicator in order, so
# iterations never mix: a piece's next message cannot start before this one was used. The MPI standard
# promises tags up to 32767 only: 8191 pieces per kind.
_TAG_SPACE = 1 << 13
PULL_TAG, PUSH_TAG, GATHER_TAG = 1 * _TAG_SPACE, 2 * _TAG_SPACE, 3 * _TAG_SPACE
# How long a rank that waits sleeps between polls when ranks outnumber cores: short next to a
# message's time on shared memory, long enough to hand the core to a rank that has work.
SLEEP_WAIT_S = 20e-6


def ranks_outnumber_cores(comm: MPI.Comm) -> bool:
    """Whether this node runs more ranks than this process may use cores."""
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_size() > len(os.sched_getaffinity(0))
    finally:
        local.Free()


@dataclass(frozen=True)
class Transfer:
    """What one posted request moves; the tracer records it when the request completes."""
    kind: str        # "pull" or "push"
    direction: str   # "send", "recv", or "local" (a rank serving itself by a copy)
    shard: int
    peer: int
    nbytes: int
    piece: int = -1  # the plan's piece (not in traces, which keep the shard)


class Exchange:
    """Built on every rank. params/grads: the worker's flat buffers (None on a rank that only serves);
    served: piece index -> ServedPiece for the pieces this rank serves; encoders: piece index -> this
    worker's encoder; pull_codec: what pulls travel as (hpcps.ps.codec.make_pull_codec; default
    float32). iterations: how many the run has (no pull is sent after the last)."""

    def __init__(self, comm: MPI.Comm, plan: MessagePlan, iterations: int, *,
                 params: ExchangeBuffer | None = None, grads: ExchangeBuffer | None = None,
                 served: dict[int, ServedPiece] | None = None, encoders: dict[int, Encoder] | None = None,
                 recorder=None, clock: Callable[[], float] = time.perf_counter, emulator=None,
                 sleep_wait: bool | None = None, aggregate: Callable[[Callable[[], None]], None] | None = None,
                 pull_codec: Codec | None = None):
        self.comm, self.rank = comm, comm.Get_rank()
        self.plan, self.iterations = plan, iterations
        if GATHER_TAG + len(plan.pieces) > comm.Get_attr(MPI.TAG_UB):
            raise ValueError(f"{len(plan.pieces)} pieces need more message tags than this MPI offers; "
                             "raise [exchange] bucket_mb")
        self.row = plan.worker_row(self.rank)
        self.is_worker = self.row is not None
        self.params, self.grads = params, grads
        self.served = served or {}
        self.encoders = encoders or {}
        self.pull_codec = pull_codec or Codec()
        self.recorder = recorder
        self.clock = clock
        self.emulator = emulator
        self._aggregate = aggregate or (lambda fn: fn())
        self.sleep_wait = ranks_outnumber_cores(comm) if sleep_wait is None else sleep_wait
        self.poll_s = 1e-4 if emulator is not None else SLEEP_WAIT_S
        # Sleeping ranks wake for their sockets' bytes: a message over TCP moves only in their MPI calls.
        self._wake = SocketWake(self.poll_s) if self.sleep_wait else None

        n = len(plan.pieces)
        self.arrived = np.zeros(n, dtype=bool)        # worker: piece of the awaited iteration in place
        self.arrived_at = np.zeros(n)
        self.pushed = np.zeros(n, dtype=bool)         # worker: piece of the current iteration pushed
        self.pull_iteration = -1                      # worker: the iteration whose parameters are awaited
        self.push_iteration = -1
        self.version = {q: 0 for q in self.served}    # server: aggregations done per piece
        self._send_reqs: dict[int, list] = {q: [] for q in self.served}   # server: pull sends per piece
        self._reqs: list = []                         # every posted request, and beside it
        self._done: list[tuple[Callable, tuple]] = []  # what to do when it completes
        self._in_flight_pushes = 0
        self._staging: list[tuple[object, int, int]] = []     # (copy handle, piece, iteration)
        self._host_grads: dict[int, np.ndarray] = {}          # lossy codecs on device buffers: host copies
        self._fabric: list[tuple[int, int, Callable, tuple]] = []   # (template, iteration, then, args)
        self._ready_to_aggregate: list[int] = []
        self.defer_aggregation = False                # set during an emulated step: update after it
        self._in_progress = False
        self.first_push_at = self.last_push_at = 0.0
        self.blocked_s = 0.0                          # worker: time its forward pass waited for pieces
        self.aggregate_span = [np.inf, -np.inf]
        # A lossy pull codec: a server encodes each new version of a piece once into its pull wire, and
        # workers receive into a byte buffer per piece and decode it into their parameters.
        self._pull_wires: dict[int, np.ndarray] = {}   # server: the piece's current version, encoded
        self._pull_scratch: dict[int, np.ndarray] = {}
        self._pull_recv: dict[int, np.ndarray] = {}    # worker: where a remote piece's pull arrives
        self._pull_host: dict[int, np.ndarray] = {}    # worker on a device ("direct"): decoded values
        if self.pull_codec.lossy:
            for q in self.served:
                self._pull_wires[q] = np.empty(plan.pull_nbytes[q], dtype=np.uint8)
                self._pull_scratch[q] = np.empty(plan.pieces[q].size, dtype=np.float32)
            if self.is_worker:
                self._pull_recv = {p.index: np.empty(plan.pull_nbytes[p.index], dtype=np.uint8)
                                   for p in plan.pieces if p.server != self.rank}

    # -- set-up and the worker's side ---------------------------------------------------------------
    def start(self, first_iteration: int = 0) -> None:
        """Post the first iteration's pulls (every rank starts from the same values, but the pull of
        the first iteration is what tells a worker which values the servers hold) and the push receives.
        first_iteration: where a resumed run starts (its servers' pieces have that many steps behind them)."""
        for q in self.served:
            self.version[q] = first_iteration
            self._post_push_receives(q)
            self._send_piece(q, first_iteration)
        if self.is_worker:
            self.expect_pulls(first_iteration)

    def expect_pulls(self, iteration: int) -> None:
        """Post the receives of iteration's parameters. Call once the backward pass no longer reads them."""
        self.pull_iteration = iteration
        self.arrived[:] = False
        self._pull_posted = self.clock()
        for p in self.plan.pieces:
            if p.server == self.rank:
                continue
            q = p.index
            t0 = self.clock()
            into = self._pull_recv[q] if self.pull_codec.lossy else self.params.view(p.start, p.stop)
            req = self.comm.Irecv(into, source=p.server, tag=PULL_TAG + p.index)
            meta = Transfer(PULL, "recv", p.shard, p.server, self.plan.pull_nbytes[q], q)
            self._post(req, t0, iteration, meta, self._pull_arrived, (q,))
        self._deliver_local()

    def _pull_arrived(self, q: int) -> None:
        p = self.plan.pieces[q]
        if self.pull_codec.lossy:
            self._write_decoded(q, self._pull_recv[q])
        else:
            self.params.after_recv(p.start, p.stop)
        self.arrived[q] = True
        self.arrived_at[q] = self.clock()

    def _write_decoded(self, q: int, wire: np.ndarray) -> None:
        """Piece q's values as the pull codec encoded them in wire, decoded into the worker's parameters:
        in place where MPI would have received them (host memory, or the host mirror of a staged device
        buffer), through a host buffer of the piece's own onto a device MPI writes directly."""
        p = self.plan.pieces[q]
        if self.params.transport == "direct":
            out = self._pull_host.get(q)
            if out is None:
                out = self._pull_host[q] = np.empty(p.size, dtype=np.float32)
            self.pull_codec.unpack(wire, out)
            self.params.write_from_host(p.start, p.stop, out)
        else:
            self.pull_codec.unpack(wire, self.params.view(p.start, p.stop))
            self.params.after_recv(p.start, p.stop)

    def wait_pieces(self, pieces) -> None:
        """Until these pieces of the awaited iteration are in the worker's parameter buffer. The time it
        blocks adds to blocked_s (a layer waiting for its parameters is not computing)."""
        self.progress()
        if self.arrived[pieces].all():
            return
        t0 = self.clock()
        self.wait_until(lambda: bool(self.arrived[pieces].all()))
        self.blocked_s += self.clock() - t0

    def begin_pushes(self, iteration: int) -> None:
        self.push_iteration = iteration
        self.pushed[:] = False
        self.first_push_at = 0.0

    def push(self, q: int) -> None:
        """Piece q's gradient is complete: send it to its server (or hand it over, if that is this rank)."""
        if self.pushed[q]:
            return
        self.pushed[q] = True
        p = self.plan.pieces[q]
        now = self.clock()
        if not self.first_push_at:
            self.first_push_at = now
        self.last_push_at = now
        if p.server == self.rank:
            state = self.served[q]
            t0 = self.clock()
            state.rows[self.row][:] = self.grads.host_array(p.start, p.stop, state.rows[self.row])
            self._record(self.push_iteration, Transfer(PUSH, "local", p.shard, self.rank, 4 * p.size, q), t0,
                         self.clock())
            self._push_in(q)
            return
        self._in_flight_pushes += 1
        handle = self.grads.begin_send(p.start, p.stop)
        if self.grads.ready(handle):
            self._send_push(q, self.push_iteration)
        else:
            self._staging.append((handle, q, self.push_iteration))

    def _send_push(self, q: int, iteration: int) -> None:
        p = self.plan.pieces[q]
        view = self.grads.view(p.start, p.stop)
        encoder = self.encoders.get(q)
        if encoder is not None and encoder.lossy and self.grads.transport == "direct":
            # Lossy encoders work on host memory: a gradient MPI would read on the device is copied over.
            if q not in self._host_grads:
                self._host_grads[q] = np.empty(p.size, dtype=np.float32)
            view = self.grads.host_array(p.start, p.stop, self._host_grads[q])
        wire = encoder.encode(view) if encoder is not None else view
        t0 = self.clock()
        req = self.comm.Isend(wire, dest=p.server, tag=PUSH_TAG + q)
        meta = Transfer(PUSH, "send", p.shard, p.server, self.plan.push_nbytes[self.row][q], q)
        self._post(req, t0, iteration, meta, self._push_sent, ())

    def encoder_states(self) -> dict[int, np.ndarray]:
        """This worker's error-feedback residuals, piece index -> float32 values (pieces whose codec
        keeps none are left out): what a checkpoint saves to resume a lossy codec where it was."""
        out = {}
        for q, enc in self.encoders.items():
            state = enc.state()
            if state is not None:
                out[q] = state
        return out

    def load_encoder_states(self, states: dict[int, np.ndarray]) -> None:
        """Restore what encoder_states() returned; pieces it does not name start from a zero residual."""
        unknown = sorted(set(states) - set(self.encoders))
        if unknown:
            raise ValueError(f"residuals for pieces {unknown} that this worker does not push")
        for q, enc in self.encoders.items():
            if enc.lossy or q in states:
                enc.load_state(states.get(q))

    def _push_sent(self) -> None:
        self._in_flight_pushes -= 1
        self.last_push_at = self.clock()

    def pushes_done(self) -> bool:
        return bool(self.pushed.all()) and self._in_flight_pushes == 0

    # -- the server's side --------------------------------------------------------------------------
    def _post_push_receives(self, q: int) -> None:
        state = self.served[q]
        p = self.plan.pieces[q]
        it = self.version[q]
        for row, w in enumerate(self.plan.workers):
            if w == self.rank:
                continue
            t0 = self.clock()
            req = self.comm.Irecv(state.wires[row], source=w, tag=PUSH_TAG + q)
            meta = Transfer(PUSH, "recv", p.shard, w, self.plan.push_nbytes[row][q], q)
            self._post(req, t0, it, meta, self._push_received, (q, row))

    def _push_received(self, q: int, row: int) -> None:
        if self.served[q].push_arrived(row):
            self._ready_to_aggregate.append(q)

    def _push_in(self, q: int) -> None:
        """This rank's own worker handed its push of q over."""
        state = self.served[q]
        state.received += 1
        if state.received == len(state.rows):
            self._ready_to_aggregate.append(q)

    def _aggregate_piece(self, q: int) -> None:
        state = self.served[q]
        for r in self._send_reqs[q]:       # last iteration's pull sends read these values: they are through
            self._wait_request(r)
        self._send_reqs[q] = []
        t0 = self.clock()
        self._aggregate(state.aggregate_and_step)
        t1 = self.clock()
        self.aggregate_span[0] = min(self.aggregate_span[0], t0)
        self.aggregate_span[1] = max(self.aggregate_span[1], t1)
        self.version[q] += 1
        if self.version[q] < self.iterations:
            self._post_push_receives(q)
            self._send_piece(q, self.version[q])

    def _send_piece(self, q: int, iteration: int) -> None:
        """Pull of iteration: the piece's current values to every other worker (this rank's own worker
        takes them by a copy once it expects them: _deliver_local)."""
        state = self.served[q]
        p = self.plan.pieces[q]
        values = state.params
        if self.pull_codec.lossy:     # once for every worker (the last sends of this wire are through)
            self.pull_codec.pack(state.params, self._pull_wires[q], self._pull_scratch[q])
            values = self._pull_wires[q]
        for w in self.plan.workers:
            if w == self.rank:
                continue
            t0 = self.clock()
            req = self.comm.Isend(values, dest=w, tag=PULL_TAG + q)
            self._send_reqs[q].append(req)
            self._post(req, t0, iteration, Transfer(PULL, "send", p.shard, w, self.plan.pull_nbytes[q], q), None, ())

    def _deliver_local(self) -> None:
        if not self.is_worker:
            return
        for q, state in self.served.items():
            if not self.arrived[q] and self.version[q] >= self.pull_iteration >= 0:
                p = self.plan.pieces[q]
                t0 = self.clock()
                if self.pull_codec.lossy:         # the values every other worker gets
                    self._write_decoded(q, self._pull_wires[q])
                else:
                    self.params.write_from_host(p.start, p.stop, state.params)
                self.arrived[q] = True
                self.arrived_at[q] = self.clock()
                self._record(self.pull_iteration, Transfer(PULL, "local", p.shard, self.rank, 4 * p.size, q),
                             t0, self.arrived_at[q])

    def served_through(self, iteration: int) -> bool:
        """Every piece this rank serves is aggregated for iteration."""
        return all(v > iteration for v in self.version.values())

    # -- progress -------------------------------------------------------------------------------------
    def _post(self, req, t_post: float, iteration: int, meta: Transfer, then: Callable | None, args: tuple,
              seq: int | None = None) -> None:
        """t_post: read before the request was posted (a small message may arrive before the call returns).
        seq: the message's number on its (kind, piece, worker) channel, which the emulated network pairs
        both ends by (default: the iteration, as in bsp, where each channel carries one message an
        iteration)."""
        seq = iteration if seq is None else seq
        self._reqs.append(req)
        self._done.append((self._completed, (iteration, meta, t_post, then, args, seq)))
        if self.emulator is not None:
            self.emulator.post(meta, seq, self.rank)

    def _completed(self, iteration: int, meta: Transfer, t_post: float, then, args, seq: int) -> None:
        template = self.emulator.template(meta, self.rank) if self.emulator is not None else None
        if template is not None:
            # The data is here; the emulated network decides when it may be used.
            self._fabric.append((template, seq, self._finish, (iteration, meta, t_post, then, args)))
            return
        self._finish(iteration, meta, t_post, then, args)

    def _finish(self, iteration: int, meta: Transfer, t_post: float, then, args) -> None:
        self._record(iteration, meta, t_post, self.clock())
        if then is not None:
            then(*args)

    def _record(self, iteration: int, meta: Transfer, t0: float, t1: float) -> None:
        if self.recorder is not None:
            self.recorder.transfer(meta, t0, t1, iteration)

    def progress(self) -> bool:
        """Complete whatever can be completed now, without blocking. Returns whether anything did."""
        if self._in_progress:            # called from a hook while already inside (an aggregation's hold)
            return False
        self._in_progress = True
        try:
            did = self._poll()
            return self._after_poll() or did
        finally:
            self._in_progress = False

    def _poll(self) -> bool:
        """Start staged pushes whose copies are done and complete finished requests."""
        did = False
        if self._staging:
            still = []
            for handle, q, it in self._staging:
                if self.grads.ready(handle):
                    self._send_push(q, it)
                    did = True
                else:
                    still.append((handle, q, it))
            self._staging = still
        if self._reqs:
            try:
                finished = MPI.Request.Testsome(self._reqs)
            except MPI.Exception as e:
                raise self._peer_failure(e) from None
            if finished:
                did = True
                done = sorted(finished)
                handlers = [self._done[i] for i in done]
                keep = np.ones(len(self._reqs), dtype=bool)
                keep[done] = False
                self._reqs = [r for r, k in zip(self._reqs, keep) if k]
                self._done = [h for h, k in zip(self._done, keep) if k]
                for fn, args in handlers:
                    fn(*args)
        if self._fabric:
            still = []
            for item in self._fabric:
                template, it, then, args = item
                if self.emulator.arrived(template, it):
                    then(*args)
                    did = True
                else:
                    still.append(item)
            self._fabric = still
        return did

    def _after_poll(self) -> bool:
        """The policy's work once messages are in: aggregate complete pieces, deliver this rank's own."""
        did = False
        while self._ready_to_aggregate and not self.defer_aggregation:
            self._aggregate_piece(self._ready_to_aggregate.pop(0))
            did = True
        if self.is_worker and not self.arrived.all():
            self._deliver_local()
        return did

    def _peer_failure(self, error: MPI.Exception) -> RuntimeError:
        """An error completing this rank's messages, naming the ranks at their other end: the requests
        that completed in error are the ones MPI released (a peer whose process died, most often)."""
        peers = sorted({handler[1][1].peer for req, handler in zip(self._reqs, self._done)
                        if req == MPI.REQUEST_NULL})
        who = f"rank {', '.join(map(str, peers))}" if peers else "a peer"
        return RuntimeError(f"messages with {who} failed ({error.Get_error_string().splitlines()[0]}); "
                            f"its process has probably ended")

    def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            if not self.progress():
                if self._wake is not None:
                    self._wake.pause()
                else:
                    os.sched_yield()

    def _wait_request(self, req) -> None:
        while not req.Test():
            if self._wake is not None:
                self._wake.pause()

    def drain(self) -> None:
        """Complete every request still posted (the end of a run)."""
        self.wait_until(lambda: not self._reqs and not self._fabric and not self._staging
                        and not self._ready_to_aggregate)

    def at_boundary(self, done: int) -> bool:
        """Whether this rank stands at the boundary after `done` iterations: every piece it serves has
        exactly `done` steps, this worker's pushes are all out and none is being staged or waiting for
        its aggregation. Pulls of the next iteration may be under way: they only read the parameters.
        True on every rank right after the synchronisation policy's iteration returns, until progress()
        runs again (a push of the next iteration can only follow a pull of it): the point at which a
        checkpoint reads the servers' pieces and the workers' encoders."""
        return (all(v == done for v in self.version.values())
                and (not self.is_worker or self.pushes_done())
                and not self._staging and not self._ready_to_aggregate)

    def settle(self, done: int) -> None:
        """Bring this rank to the boundary after `done` iterations, where a checkpoint reads it. Under bsp
        the policy's iteration has just brought it there (at_boundary)."""

    def stop_early(self) -> None:
        """End the run at an iteration boundary before its planned end: cancel the receives of pushes
        that will never come, then complete what is left (the next iteration's pulls, posted on both
        sides)."""
        keep_reqs, keep_done = [], []
        for req, handler in zip(self._reqs, self._done):
            meta = handler[1][1]
            if meta.kind == PUSH and meta.direction == "recv":
                req.Cancel()
                req.Wait()
            else:
                keep_reqs.append(req)
                keep_done.append(handler)
        self._reqs, self._done = keep_reqs, keep_done
        self.drain()

    # -- outside the iterations -----------------------------------------------------------------------
    def gather_params(self, n_elements: int, root: int = 0) -> np.ndarray | None:
        """The whole current parameter vector on root (None elsewhere): for evaluation and checkpoints."""
        reqs = []
        full = np.empty(n_elements, dtype=np.float32) if self.rank == root else None
        for p in self.plan.pieces:
            state = self.served.get(p.index)
            if self.rank == root:
                if state is not None:
                    full[p.start:p.stop] = state.params
                else:
                    reqs.append(self.comm.Irecv(full[p.start:p.stop], source=p.server, tag=GATHER_TAG + p.index))
            elif state is not None:
                reqs.append(self.comm.Isend(state.params, dest=root, tag=GATHER_TAG + p.index))
        MPI.Request.Waitall(reqs)
        return full
