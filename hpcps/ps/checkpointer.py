"""Checkpoints of a running job: when to take one, gathering the state on rank 0, and resuming.

At an iteration boundary (hpcps.ps.exchange.Exchange.at_boundary: every piece stepped, no push out)
each server sends its pieces' parameters and optimiser state to rank 0, each worker its codecs'
error-feedback residuals, every rank its random generator's state; rank 0 assembles whole-vector
arrays and writes one file (hpcps/ps/checkpoint.py). One file written by one rank, because:

- the file's layout is the schedule-free one a resume under another schedule needs, and only a rank
  that sees the whole vector can write it without a second pass;
- one rename makes it visible, so a checkpoint is either there or not (files per rank would need a
  commit step of their own);
- the gather moves each value once, as a pull does; at 11M parameters (44 MB a vector) writing is
  well under a second (results/checkpoint_cost.md).

When: every training.checkpoint_every iterations (every rank knows), every training.checkpoint_every_s
seconds and on SIGUSR1 or SIGTERM (rank 0 alone decides: it reads the clock and takes the signals).
Rank 0 tells the others through a one-integer broadcast posted without blocking at every boundary and
completed `lag` boundaries later (flag_lag), long after it arrived; the decision so takes effect that
many iterations later, at the same boundary on every rank (the k-th broadcast is the same one
everywhere). A signal means: checkpoint, then stop (exit status EXIT_STOPPED).

Under ssp and asp ranks reach a boundary at different times: each rank first settles there
(hpcps.ps.stale.StaleExchange.settle: every push of the steps before applied, every answer arrived,
serving the ranks behind meanwhile), after which the state is the one bsp has at that boundary.

Resuming: rank 0 reads the checkpoint; the parameters reach every rank through the start-up broadcast
of the initial parameters, the optimiser state goes to each piece's server (cut to the new plan's
pieces), and residuals, generator states and model buffers follow the rules in docs/checkpoints.md.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mpi4py import MPI

from hpcps.ps.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_path,
    identity_of,
    schedule_record,
    share_residuals,
    write_checkpoint,
)

# Exit status of a run stopped by a signal after its checkpoint: "try again" (sysexits' EX_TEMPFAIL).
# slurm/train.sh requeues the job on it.
EXIT_STOPPED = 75
NONE, SAVE, STOP = 0, 1, 2
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopSignals:
    """SIGUSR1 and SIGTERM ask for a checkpoint and a stop. Installed on every rank, since either
    signal would otherwise end the process, but only rank 0 acts on it; the others carry on until rank
    0 tells them. (Slurm sends them to every rank: the time limit's --signal through srun, and a
    requeue or scancel to every process of the job; SIGKILL follows after its KillWait.)"""

    def __init__(self, rank: int):
        self.rank = rank
        self.received: str | None = None
        self._old: dict[signal.Signals, Any] = {}

    def install(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.rank == 0 and self.received is None:
            self.received = signal.Signals(signum).name

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


@dataclass
class CheckpointSettings:
    """What hpcps.train asks of the runtime. resume is rank 0's alone (the checkpoint read and
    verified before the launch); resuming tells every rank that there is one."""
    directory: Path | None                   # where checkpoints go; None: none are written
    every: int = 0                           # iterations between checkpoints; 0: none periodically
    every_s: float = 0.0                     # seconds between checkpoints (rank 0's clock); 0: none
    resume: Checkpoint | None = None
    resuming: bool = False
    signals: StopSignals | None = None
    keep: int = 2


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: the run stops, naming where and the last good checkpoint."""
    one_line = True             # hpcps.comm.abort reports it without a traceback


@dataclass
class _Flag:
    buf: np.ndarray = field(default_factory=lambda: np.zeros(2, dtype=np.int64))   # action, last good
    req: MPI.Request | None = None


# Under asp no rank waits for another, so a decision of rank 0's needs a bound on how far ahead the
# others may be when it reaches them: with checkpoints, no rank passes boundary k + ASP_FLAG_LAG before
# rank 0 has passed boundary k.
ASP_FLAG_LAG = 16


def flag_lag(sync: str, staleness: int = 0) -> int:
    """How many boundaries after rank 0 posts a decision every rank acts on it. bsp: the next one (every
    rank is at most one boundary ahead of another). ssp: s + 2, by when bounded staleness has already
    made every rank wait for rank 0 to pass that boundary (a worker at clock c needs every worker's
    push of c - s - 1), so the flag never holds a rank back further than the policy does. asp:
    ASP_FLAG_LAG, the one bound checkpoints add to asynchronous training."""
    if sync == "bsp":
        return 1
    if sync == "ssp":
        return staleness + 2
    return ASP_FLAG_LAG


class Checkpointer:
    """One per rank of a run with checkpoints or a resume. Call restore() once before the exchange
    starts, boundary() after every iteration, close() at the end."""

    def __init__(self, comm: MPI.Comm, settings: CheckpointSettings, *, job, schedule, plan, served: dict,
                 encoders: dict, worker_row: int | None, model: torch.nn.Module, codec_names: list[str],
                 log: Callable[[str], None], sleep_wait: bool, lag: int):
        self.comm = comm.Dup()               # its own tags and collectives, apart from the exchange's
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.settings = settings
        self.job, self.schedule, self.plan = job, schedule, plan
        self.served, self.encoders, self.worker_row = served, encoders, worker_row
        self.model = model
        self.record = schedule_record(schedule, self.size, codec_names, job.training.sync, job.training.staleness)
        self.log = log
        self.sleep_wait = sleep_wait
        self.start_iteration = 0
        self.last_good: int | None = None    # iteration of the newest checkpoint known to be whole
        self.last_path: Path | None = None
        self.lag = lag
        self._flags: list[_Flag] = []        # posted, oldest first: at most lag
        self._last_save_t = time.monotonic()
        self._stop_reason: str | None = None

    # -- which checkpoint to name ----------------------------------------------------------------------
    def last_good_text(self) -> str:
        if self.last_good is None:
            return "no checkpoint was written" if self.settings.directory else "no checkpoint (give --checkpoint DIR)"
        path = self.last_path or (checkpoint_path(self.settings.directory, self.last_good)
                                  if self.settings.directory else None)
        return f"last good checkpoint: {path} (after iteration {self.last_good})"

    # -- resuming ----------------------------------------------------------------------------------------
    def restore(self, n_params: int) -> int:
        """Load the checkpoint rank 0 read into this rank's pieces, encoders, generator and model
        buffers (the parameters travel with the start-up broadcast). Returns the iteration to start at."""
        ckpt = self.settings.resume           # rank 0's alone
        if (ckpt is not None) != (self.rank == 0):
            raise RuntimeError(f"rank {self.rank}: the checkpoint to resume from must be read on rank 0 only")
        header = None
        if ckpt is not None:
            same = (ckpt.schedule.get("n_ranks") == self.record["n_ranks"]
                    and ckpt.schedule.get("servers") == self.record["servers"]
                    and ckpt.schedule.get("workers") == self.record["workers"])
            header = {"iteration": ckpt.iteration, "keys": sorted(ckpt.optimizer_vectors),
                      "scalars": dict(ckpt.optimizer_scalars), "same_schedule": same,
                      "residuals": ckpt.residuals is not None, "path": str(ckpt.path),
                      "rng": ckpt.rng_torch is not None and ckpt.rng_torch.shape[0] == self.size,
                      "buffers": ckpt.buffers}
        header = self.comm.bcast(header, root=0)
        it = int(header["iteration"])
        self.start_iteration = self.last_good = it
        self.last_path = Path(header["path"])

        # Optimiser state: each piece's slice of every whole-vector array, from rank 0 to its server.
        keys = header["keys"]
        got = {q: {k: np.empty(self.plan.pieces[q].size, dtype=np.float32) for k in keys} for q in self.served}
        reqs = []
        for ki, key in enumerate(keys):
            for p in self.plan.pieces:
                tag = ki * len(self.plan.pieces) + p.index
                if ckpt is not None:
                    src = ckpt.optimizer_vectors[key][p.start:p.stop]
                    if p.server == 0:
                        got[p.index][key][:] = src
                    else:
                        reqs.append(self.comm.Isend(np.ascontiguousarray(src), dest=p.server, tag=tag))
                elif p.server == self.rank:
                    reqs.append(self.comm.Irecv(got[p.index][key], source=0, tag=tag))
        self._waitall(reqs)
        for q, state in self.served.items():
            state.load_optimizer_state({**got[q], **{k: np.asarray(v) for k, v in header["scalars"].items()}})

        notes = [self._restore_residuals(ckpt, header, n_params)]
        # Generators: each rank's own under the same schedule; otherwise drawn afresh from the job's seed
        # and the iteration, so that a resumed run is still a function of its inputs.
        if header["same_schedule"] and header["rng"]:
            states = list(ckpt.rng_torch) if ckpt is not None and ckpt.rng_torch is not None else None
            torch.set_rng_state(torch.from_numpy(np.array(self.comm.scatter(states, root=0), dtype=np.uint8)))
        else:
            seq = np.random.SeedSequence([self.job.training.seed, it, self.rank])
            torch.manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
        # Model buffers (statistics the servers do not train): rank 0's, on every rank (check_resumable
        # made sure they are the model's, name by name and shape by shape).
        if header["buffers"]:
            own = dict(self.model.named_buffers())
            with torch.no_grad():
                for name, value in header["buffers"].items():
                    own[name].copy_(torch.from_numpy(np.asarray(value)))
        if ckpt is not None:
            was = ckpt.schedule
            how = ("the same schedule" if header["same_schedule"] else
                   f"another schedule (it ran {was['n_ranks']} ranks, servers {was['servers']}, "
                   f"{len(was['workers'])} workers)")
            if was.get("sync", "bsp") != self.record["sync"] or was.get("staleness", 0) != self.record["staleness"]:
                how += f", written under sync {_mode(was)}, going on under {_mode(self.record)}"
            self.log(f"resuming from {ckpt.path} after iteration {it}, under {how}"
                     + "".join(f"; {n}" for n in notes if n))
        return it

    def _restore_residuals(self, ckpt: Checkpoint | None, header: dict, n_params: int) -> str:
        """Each worker's error-feedback residuals. Under the same workers (ranks, batches, codecs) each
        gets its own back; otherwise their batch-weighted sum is shared among the new workers whose
        codec keeps a residual, so that what the servers are still owed is the same (share_residuals)."""
        carried = {q: enc for q, enc in self.encoders.items()
                   if hasattr(enc, "load_state") and enc.state() is not None}
        carries = self.comm.gather(sorted(carried) if self.worker_row is not None else None, root=0)
        rows: np.ndarray | None = None
        note = ""
        if ckpt is not None and ckpt.residuals is not None and carries is not None:
            saved_workers = ckpt.schedule["workers"]
            mask = np.zeros((len(self.plan.workers), len(self.plan.pieces)), dtype=bool)
            for r, qs in enumerate(carries):
                row = self.plan.worker_row(r)
                if row is not None and qs:
                    mask[row, qs] = True
            if not mask.any():
                note = "error-feedback residuals dropped: no worker's codec keeps one now"
            elif (saved_workers == self.record["workers"]
                    and ckpt.schedule.get("codecs") == self.record["codecs"]):
                rows = ckpt.residuals
                note = "error-feedback residuals restored worker by worker"
            else:
                rows, dropped = share_residuals(ckpt.residuals, [b for _, b in saved_workers],
                                                [w.batch for w in self.schedule.workers], mask, self.plan.pieces)
                note = (f"the {len(saved_workers)} old workers' error-feedback residuals shared among the "
                        f"{int(mask.any(axis=1).sum())} new workers whose codec keeps one")
                if dropped:
                    note += f" ({dropped} values dropped: no new worker's codec keeps a residual there)"
        send = self.comm.bcast(rows is not None, root=0)
        if not send:
            return note
        reqs = []
        n_pieces = len(self.plan.pieces)
        bufs: dict[int, np.ndarray] = {}
        if rows is not None and carries is not None:
            for r, qs in enumerate(carries):
                row = self.plan.worker_row(r)
                for q in qs or ():
                    p = self.plan.pieces[q]
                    if r == 0:
                        carried[q].load_state(np.array(rows[row, p.start:p.stop], dtype=np.float32))
                    else:
                        reqs.append(self.comm.Isend(np.ascontiguousarray(rows[row, p.start:p.stop]), dest=r,
                                                    tag=q + n_pieces))
        else:
            bufs = {q: np.empty(self.plan.pieces[q].size, dtype=np.float32) for q in carried}
            reqs = [self.comm.Irecv(bufs[q], source=0, tag=q + n_pieces) for q in carried]
        self._waitall(reqs)
        if self.rank != 0:
            for q, enc in carried.items():
                enc.load_state(bufs[q])
        return note

    # -- at every boundary -------------------------------------------------------------------------------
    def boundary(self, done: int, total: int, exchange) -> int:
        """After iteration `done` (counted from 1) on every rank: save a checkpoint if one is due, and
        return STOP when the run must end here (a signal), else NONE or SAVE."""
        if self.settings.directory is None:      # resumed, writing no checkpoints: nothing to decide
            return NONE
        flagged = self._take_flag(exchange)
        final = done == total
        due = (final or flagged != NONE
               or (self.settings.every > 0 and done % self.settings.every == 0))
        if due and self.settings.directory is not None and done > self.start_iteration:
            self.save(done, exchange)
        if final:
            return SAVE if due else NONE
        if flagged == STOP:
            return STOP
        self._post_flag()
        return SAVE if due else NONE

    def _take_flag(self, exchange) -> int:
        """The decision rank 0 posted lag boundaries ago (NONE before the first lag boundaries). A rank
        waiting for it keeps serving: under ssp and asp rank 0 may need it to get there."""
        if len(self._flags) < self.lag:
            return NONE
        f = self._flags.pop(0)
        req = f.req
        assert req is not None
        exchange.wait_until(lambda: bool(req.Test()))
        if self.rank != 0 and f.buf[1] >= 0:
            self.last_good = int(f.buf[1])
        return int(f.buf[0])

    def _post_flag(self) -> None:
        f = _Flag()
        if self.rank == 0:
            action = NONE
            if self.settings.signals is not None and self.settings.signals.received:
                action = STOP
                if self._stop_reason is None:
                    self._stop_reason = self.settings.signals.received
                    when = "the next iteration boundary" if self.lag == 1 else f"the boundary {self.lag} iterations on"
                    self.log(f"{self._stop_reason}: checkpoint at {when}, then stop")
            elif (self.settings.every_s > 0 and self.settings.directory is not None
                  and time.monotonic() - self._last_save_t >= self.settings.every_s):
                action = SAVE
                self._last_save_t = time.monotonic()      # one request an interval, whatever the lag
            f.buf[:] = (action, -1 if self.last_good is None else self.last_good)
        f.req = self.comm.Ibcast(f.buf, root=0)
        self._flags.append(f)

    def close(self) -> None:
        for f in self._flags:
            if f.req is not None:
                f.req.Wait()
        self._flags.clear()
        self.comm.Free()

    # -- saving ------------------------------------------------------------------------------------------
    def save(self, done: int, exchange) -> None:
        """Gather this boundary's state on rank 0 and write it there (collective over the ranks)."""
        exchange.settle(done)
        if not exchange.at_boundary(done):
            raise RuntimeError(f"checkpoint after iteration {done} outside an iteration boundary "
                               f"(pieces at {sorted(set(exchange.version.values()))})")
        t0 = time.perf_counter()
        n = self.plan.n_elements
        n_pieces = len(self.plan.pieces)
        opt = {q: state.optimizer_state() for q, state in self.served.items()}
        residual = {q: enc.state() for q, enc in self.encoders.items()}
        residual = {q: r for q, r in residual.items() if r is not None}
        meta = {"keys": {q: {k: (v.shape, str(v.dtype)) for k, v in st.items()} for q, st in opt.items()},
                "scalars": {q: {k: np.asarray(v).copy() for k, v in st.items() if np.ndim(v) == 0}
                            for q, st in opt.items()},
                "residual": sorted(residual), "row": self.worker_row,
                "rng": torch.get_rng_state().numpy().copy()}
        metas: list[dict] | None = self.comm.gather(meta, root=0)
        residuals: np.ndarray | None = None
        if metas is not None:
            vector_keys, scalars = _agree(metas, n_pieces)
            full = {"params": np.empty(n, dtype=np.float32)}
            full.update({k: np.empty(n, dtype=np.float32) for k in vector_keys})
            if any(m["residual"] for m in metas):
                residuals = np.zeros((len(self.plan.workers), n), dtype=np.float32)
        else:
            vector_keys = None
        vector_keys = self.comm.bcast(vector_keys, root=0)
        names = ["params"] + vector_keys
        reqs = []
        for p in self.plan.pieces:
            for ki, key in enumerate(names):
                tag = ki * n_pieces + p.index
                if p.server == self.rank:
                    state = self.served[p.index]
                    src = state.params if key == "params" else opt[p.index][key]
                    if self.rank == 0:
                        full[key][p.start:p.stop] = src
                    else:
                        reqs.append(self.comm.Isend(src, dest=0, tag=tag))
                elif self.rank == 0:
                    reqs.append(self.comm.Irecv(full[key][p.start:p.stop], source=p.server, tag=tag))
        res_tag = len(names) * n_pieces
        if metas is not None:
            for r, m in enumerate(metas):
                for q in m["residual"]:
                    assert residuals is not None
                    p = self.plan.pieces[q]
                    dst = residuals[m["row"], p.start:p.stop]
                    if r == 0:
                        dst[:] = residual[q]
                    else:
                        reqs.append(self.comm.Irecv(dst, source=r, tag=res_tag + q))
        else:
            reqs += [self.comm.Isend(np.ascontiguousarray(r), dest=0, tag=res_tag + q) for q, r in residual.items()]
        self._waitall(reqs)
        if metas is not None:
            assert self.settings.directory is not None
            for k, v in full.items():
                if not np.isfinite(v).all():
                    raise TrainingDiverged(f"non-finite {k} at the checkpoint after iteration {done}; "
                                           f"{self.last_good_text()}")
            ckpt = Checkpoint(done, self.job.name, identity_of(self.job), self.record, full.pop("params"),
                              full, scalars, residuals,
                              {k: b.detach().cpu().numpy().copy() for k, b in self.model.named_buffers()},
                              np.stack([m["rng"] for m in metas]))
            t1 = time.perf_counter()
            written = write_checkpoint(self.settings.directory, ckpt, keep=self.settings.keep)
            self.last_good, self.last_path = done, written.path
            t2 = time.perf_counter()
            self.log(f"checkpoint {written.path} after iteration {done}: {written.bytes / 1e6:.1f} MB, "
                     f"gathered in {t1 - t0:.3f} s, written in {t2 - t1:.3f} s"
                     + "".join(f"; set aside {p.name} (a later iteration of an abandoned run)"
                               for p in written.set_aside))
        self._last_save_t = time.monotonic()

    def _waitall(self, reqs) -> None:
        if not self.sleep_wait:
            MPI.Request.Waitall(reqs)
            return
        while reqs and not MPI.Request.Testall(reqs):
            time.sleep(20e-6)


def _agree(metas: list[dict], n_pieces: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """The optimiser-state keys every piece has, and the scalars (equal on every piece: every piece has
    taken the same steps). Raises RuntimeError if pieces disagree."""
    per_piece = {}
    scalars: dict[str, np.ndarray] = {}
    for m in metas:
        for q, keys in m["keys"].items():
            per_piece[q] = keys
            for k, v in m["scalars"][q].items():
                if k in scalars and not np.array_equal(scalars[k], v):
                    raise RuntimeError(f"optimiser scalar {k!r} differs between pieces: {scalars[k]} and {v}")
                scalars[k] = v
    if len(per_piece) != n_pieces:
        raise RuntimeError(f"{len(per_piece)} of {n_pieces} pieces reported their state")
    kinds = {tuple(sorted((k, len(shape), dtype) for k, (shape, dtype) in keys.items()))
             for keys in per_piece.values()}
    if len(kinds) != 1:
        raise RuntimeError(f"pieces hold different optimiser state: {sorted(kinds)}")
    vector_keys = sorted(k for k, (shape, _) in next(iter(per_piece.values())).items() if len(shape) == 1)
    return vector_keys, scalars


def _mode(record: dict) -> str:
    sync = record.get("sync", "bsp")
    return f"{sync} (staleness {record.get('staleness', 0)})" if sync == "ssp" else sync


def pid_line(comm: MPI.Comm) -> str | None:
    """On rank 0, every rank's process id and host (the launcher names a killed process by its pid)."""
    import socket
    info = comm.gather((os.getpid(), socket.gethostname()), root=0)
    if info is None:
        return None
    return "rank processes: " + ", ".join(f"{r}=pid {pid} on {host}" for r, (pid, host) in enumerate(info))


__all__ = ["Checkpointer", "CheckpointSettings", "StopSignals", "TrainingDiverged", "EXIT_STOPPED",
           "CheckpointError", "pid_line"]
