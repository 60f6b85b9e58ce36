"""Recording a run's events in memory on every rank, and handing them to the writer rank now and then.

The training loop gives the recorder raw time.perf_counter() readings: one tuple per iteration and
one per completed transfer, appended to lists (well under a microsecond each). Every few iterations,
at the start of an iteration, all ranks flush together: each turns its lists into arrays on rank 0's
clock, rank 0 gathers them, works out the waits and the iteration summary and appends everything to
the file. How many iterations pass between flushes follows the measured iteration time, so that a
flush comes about every flush_s seconds: often enough that a killed run loses little, rarely enough
that its cost (a gather and an HDF5 append) stays small. Unless flush_s is given, the interval is one
second, stretched when needed so that flushing takes at most FLUSH_BUDGET of the time.

A test hook: HPCPS_TRACE_CLOCK_SKEW_S=x makes rank r's clock read x * r seconds ahead, as if the ranks
ran on hosts whose clocks disagree; the start-up estimate must then find and remove the skew.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from hpcps.config.environment import env_number
from hpcps.trace.clock import estimate_offsets
from hpcps.trace.derive import fill_transfer_starts, wait_events
from hpcps.trace.metadata import RunInfo, rank_info, software_versions
from hpcps.trace.schema import (
    DIRECTION,
    EVENT_DTYPE,
    PHASE,
    SHARD_DTYPE,
    STALENESS_DTYPE,
    TRANSFER_DTYPE,
    TRANSFER_KIND,
)

SKEW_ENV = "HPCPS_TRACE_CLOCK_SKEW_S"
MAX_SKEW_S = 1e3        # per rank: far past any real skew, and rank x skew stays a trace's finite time
_TAG_BLOCK, _TAG_NEXT = 711, 712

_MIN_FLUSH_STEP = 2     # iterations between flushes, at least: see TraceRecorder._flush
_POLL_S = 1e-4
DEFAULT_FLUSH_S = 1.0
FLUSH_BUDGET = 0.005    # with the default interval: the largest share of the time spent flushing
# The first flush: early, so that a run that dies soon still leaves its metadata and first iterations,
# but after a few iterations, so that the first interval is not judged by the warm-up iteration alone.
FIRST_FLUSH = 5


def clock_skew_s() -> float:
    """SKEW_ENV: a clock skew each rank makes up per rank number (tests of the clock correction);
    unset or empty: 0. ConfigError unless a finite number of seconds within MAX_SKEW_S (nan made
    every time of the trace nan)."""
    return float(env_number(SKEW_ENV, float, "a number of seconds", ge=-MAX_SKEW_S, le=MAX_SKEW_S))


# Columns of one iteration record, as the training loop hands them over.
# Phases of an overlapped iteration may overlap each other (a push during the backward pass), so each
# has its own start and end.
REC_FIELDS = ("iteration", "begin", "pull0", "pull1", "data0", "data1", "compute0", "compute1", "push0", "push1",
              "aggregate0", "aggregate1", "loss")


def iteration_events(records: np.ndarray, ends: np.ndarray, rank: int, batch: int, is_worker: bool,
                     is_server: bool) -> np.ndarray:
    """Event rows from iteration records (shape (n, len(REC_FIELDS))) and each iteration's end (n,).

    Times are taken as they are: convert them to the common clock before or after.
    """
    col = {name: records[:, i] for i, name in enumerate(REC_FIELDS)}
    it = col["iteration"].astype(np.int32)
    spans = [("iteration", col["begin"], ends, batch if is_worker else 0, None),
             ("pull", col["pull0"], col["pull1"], 0, None),
             ("push", col["push0"], col["push1"], 0, None)]
    if is_worker:
        spans += [("data", col["data0"], col["data1"], batch, None),
                  ("compute", col["compute0"], col["compute1"], batch, col["loss"])]
    if is_server:
        spans.append(("aggregate", col["aggregate0"], col["aggregate1"], 0, None))
    out = np.zeros(len(spans) * it.size, EVENT_DTYPE)
    for j, (name, t0, t1, k, loss) in enumerate(spans):
        part = out[j * it.size:(j + 1) * it.size]
        part["rank"], part["iteration"], part["phase"] = rank, it, PHASE[name]
        part["t_start"], part["t_end"], part["batch"] = t0, t1, k
        part["loss"] = np.nan if loss is None else loss
    return out


def phase_events(phases: list[tuple[int, int, float, float]], rank: int) -> np.ndarray:
    out = np.zeros(len(phases), EVENT_DTYPE)
    if phases:
        arr = np.array(phases, dtype=np.float64)
        out["rank"], out["iteration"], out["phase"] = rank, arr[:, 0], arr[:, 1]
        out["t_start"], out["t_end"], out["loss"] = arr[:, 2], arr[:, 3], np.nan
    return out


def transfer_rows(transfers: list, rank: int) -> np.ndarray:
    """Rows from (iteration, Transfer, t_post, t_end) tuples; t_start is filled in later."""
    kind, direction = TRANSFER_KIND, DIRECTION
    return np.array([(rank, it, kind[m.kind], direction[m.direction], m.shard, m.peer, m.nbytes, t0, t0, t1)
                     for it, m, t0, t1 in transfers], dtype=TRANSFER_DTYPE)


def next_flush(now_iteration: int, seconds: float, iterations: int, flush_s: float, max_iterations: int,
               min_iterations: int = 1) -> int:
    """The iteration at which to flush next, about flush_s seconds of training from now."""
    per_iteration = seconds / max(iterations, 1)
    step = flush_s / per_iteration if per_iteration > 0 else max_iterations
    return now_iteration + int(min(max(round(step), min_iterations), max(max_iterations, min_iterations)))


def _wait_polling(request, poll_s: float = 1e-4, idle=None):
    """Complete a (lowercase, pickling) mpi4py request by polling with sleeps; returns its object.
    idle(): called between polls (a rank that must keep serving while it waits)."""
    while True:
        done, value = request.test()
        if done:
            return value
        if idle is None or not idle():
            time.sleep(poll_s)


class TraceRecorder:
    """One per rank; every method but the recording ones (iteration, phase, transfer) is collective."""

    def __init__(self, comm, path: str | Path, info: RunInfo | None = None, *, node_name: str | None = None,
                 node_type: str | None = None, flush_s: float | None = None, max_flush_iterations: int = 2000,
                 clock=time.perf_counter):
        self.now = clock                   # the training loop's clock (emulated runs: the dilated one)
        self.comm = comm.Dup()             # trace traffic never matches training messages
        self.rank = self.comm.Get_rank()
        self.path, self.info = Path(path), info
        self.node_name, self.node_type = node_name, node_type
        self.flush_s, self.max_flush_iterations = flush_s, max_flush_iterations
        self._flush_cost = 0.0             # rank 0: how long its last flush took
        self.shift = self.rank * clock_skew_s()
        self.offset = self.rtt = 0.0
        self.t0 = 0.0                      # rank 0's clock reading at time zero
        self.writer = None
        self._records: list[tuple] = []
        self._ends: list[float] = []
        self._phases: list[tuple[int, int, float, float]] = []
        self._transfers: list[tuple] = []
        self._staleness: list[tuple] = []
        # Called while this rank waits for others to flush (returns whether it did anything): under ssp
        # and asp the exchange's progress(), since a rank behind may need this one's pieces to get here.
        self.while_waiting = None
        self._it = -1
        self._begin = 0.0
        self._next_flush: int | None = FIRST_FLUSH
        self._decision_due = 0
        self._decision = None
        self._sends: list = []
        self._last_flush = (0, 0.0)
        self._role = (False, False, 0)

    # -- set-up ----------------------------------------------------------------------------------
    def begin_run(self, *, device: str, threads: int, batch: int, is_server: bool, is_worker: bool,
                  shards, attrs: dict | None = None) -> None:
        """Estimate clock offsets, tell rank 0 what every rank is, and create the file there."""
        clock = self._clock
        est = estimate_offsets(self.comm, clock)
        self.offset, self.rtt = est.offset_s, est.rtt_s
        zero = self.comm.bcast((clock(), time.time()) if self.rank == 0 else None, root=0)
        self.t0 = zero[0]
        self._role = (is_server, is_worker, batch)
        me = rank_info(self.rank, is_server=is_server, is_worker=is_worker, device=device, threads=threads,
                       batch=batch, node_name=self.node_name, node_type=self.node_type)
        me.update(clock_offset_s=self.offset, clock_rtt_s=self.rtt)
        everyone = self.comm.gather(me, root=0)
        error = None
        if self.rank == 0:
            from hpcps.trace.writer import TraceWriter
            shard_rows = np.array([(s.index, s.server, s.start, s.stop, 4 * s.size) for s in shards],
                                  dtype=SHARD_DTYPE)
            info = self.info or RunInfo(run_id=self.path.stem)
            try:
                self.writer = TraceWriter(self.path, info, ranks=everyone, shards=shard_rows,
                                          versions=software_versions(), t0_unix_s=zero[1],
                                          attrs={"clock_method": "ping-pong with rank 0, best of 12 round trips",
                                                 **(attrs or {})})
            except OSError as e:
                error = f"cannot write the trace {self.path}: {e}"
        error = self.comm.bcast(error, root=0)
        if error:
            raise OSError(error)
        self._last_flush = (0, self.now())

    def _clock(self) -> float:
        return self.now() + self.shift

    # -- the hot path ----------------------------------------------------------------------------
    def begin_iteration(self, it: int) -> None:
        now = self.now()
        if self._it >= 0:
            self._ends.append(now)
        if self._next_flush is None:
            self._receive_decision(wait=it >= self._decision_due)
        if it == self._next_flush:
            self._flush(it, now, final=False)
        self._it, self._begin = it, now

    def iteration(self, pull0: float, pull1: float, data0: float, data1: float, compute0: float, compute1: float,
                  push0: float, push1: float, aggregate0: float, aggregate1: float, loss: float = math.nan) -> None:
        """The iteration's phase spans (clock readings) and the worker's loss."""
        self._records.append((self._it, self._begin, pull0, pull1, data0, data1, compute0, compute1, push0, push1,
                              aggregate0, aggregate1, loss))

    def phase(self, name: str, t0: float, t1: float) -> None:
        self._phases.append((self._it, PHASE[name], t0, t1))

    def transfer(self, meta, t0: float, t1: float, iteration: int | None = None) -> None:
        """meta: an exchange Transfer; t0 when it was posted, t1 when it completed; iteration: the one it
        belongs to (default: the current one; an overlapped run sends the next iteration's pulls early)."""
        self._transfers.append((self._it if iteration is None else iteration, meta, t0, t1))

    def staleness(self, iteration: int, shard: int, piece: int, version: int, staleness: int) -> None:
        """The version of a piece that the worker's step at iteration computed on, and its staleness."""
        self._staleness.append((self.rank, iteration, shard, piece, version, staleness))

    # -- flushing --------------------------------------------------------------------------------
    def _to_common(self, t):
        return t + (self.shift - self.offset - self.t0)

    def _pack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = min(len(self._records), len(self._ends))
        is_server, is_worker, batch = self._role
        parts = [phase_events(self._phases, self.rank)]
        if n:
            parts.append(iteration_events(np.array(self._records[:n], dtype=np.float64),
                                          np.array(self._ends[:n]), self.rank, batch, is_worker, is_server))
        events = np.concatenate(parts)
        transfers = transfer_rows(self._transfers, self.rank)
        stale = np.array(self._staleness, dtype=STALENESS_DTYPE)
        del self._records[:n], self._ends[:n]
        self._phases.clear()
        self._transfers.clear()
        self._staleness.clear()
        for arr, fields in ((events, ("t_start", "t_end")), (transfers, ("t_post", "t_start", "t_end"))):
            for f in fields:
                arr[f] = self._to_common(arr[f])
        return events, transfers, stale

    def _flush(self, upto: int, now: float, final: bool) -> None:
        """Hand this rank's events to rank 0; on rank 0, write everyone's.

        Only rank 0 waits: the others send their block without blocking and go on training. Rank 0
        tells them the next flush iteration before it writes, at least two iterations ahead, so that
        they learn it in time without waiting for it (a rank that reaches that point first waits).
        Waiting ranks sleep between polls instead of spinning in MPI, leaving the cores to ranks that
        still work.
        """
        t_a = self.now()
        block = self._pack()
        if self.rank != 0:
            self._sends.append(self.comm.isend(block, dest=0, tag=_TAG_BLOCK))
            self._sends = [r for r in self._sends if not r.Test()]
            if final:
                for r in self._sends:
                    _wait_polling(r, idle=self.while_waiting)
                self._sends.clear()
            else:
                self._next_flush, self._decision_due = None, upto + _MIN_FLUSH_STEP
                self._decision = self.comm.irecv(source=0, tag=_TAG_NEXT)
                self._phases.append((upto, PHASE["trace"], t_a, self.now()))
            return
        blocks = [block]
        for peer in range(1, self.comm.Get_size()):
            while not self.comm.iprobe(source=peer, tag=_TAG_BLOCK):
                if self.while_waiting is None or not self.while_waiting():
                    time.sleep(_POLL_S)
            blocks.append(self.comm.recv(source=peer, tag=_TAG_BLOCK))
        if not final:
            last_it, last_t = self._last_flush
            interval = self.flush_s or max(DEFAULT_FLUSH_S, self._flush_cost / FLUSH_BUDGET)
            self._next_flush = next_flush(upto, now - last_t, upto - last_it, interval,
                                          self.max_flush_iterations, _MIN_FLUSH_STEP)
            for peer in range(1, self.comm.Get_size()):
                self.comm.send(self._next_flush, dest=peer, tag=_TAG_NEXT)
            self._last_flush = (upto, now)
        events = np.concatenate([b[0] for b in blocks])
        transfers = fill_transfer_starts(np.concatenate([b[1] for b in blocks]))
        events = np.concatenate([events, wait_events(events, transfers)])
        self.writer.append(events, transfers, final=final, staleness=np.concatenate([b[2] for b in blocks]))
        if not final:
            t_b = self.now()
            self._flush_cost = t_b - t_a
            self._phases.append((upto, PHASE["trace"], t_a, t_b))

    def _receive_decision(self, wait: bool) -> None:
        if wait:
            self._next_flush = _wait_polling(self._decision, idle=self.while_waiting)
            return
        done, value = self._decision.test()
        if done:
            self._next_flush = value

    # -- the end ---------------------------------------------------------------------------------
    def end_run(self) -> None:
        """Collective: write what is left. The file stays marked as running until close()."""
        self._ends.append(self.now())
        if self._next_flush is None:
            self._receive_decision(wait=True)       # every message rank 0 sent is received
        self._flush(self._it + 1, self.now(), final=True)

    def close(self, attrs: dict | None = None) -> None:
        """Mark the trace complete (rank 0; others return at once). attrs go on the root group."""
        if self.writer is not None:
            self.writer.close(complete=True, attrs=attrs)
            self.writer = None
        self.comm.Free()
