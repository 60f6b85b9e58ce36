"""Parameter-server training across the ranks of a communicator.

The runtime builds what a rank needs (its worker, the pieces it serves, the message plan and the
exchange), then lets the job's synchronisation policy (hpcps/ps/sync.py) drive every iteration, and
logs, evaluates and traces around it. docs/runtime.md describes one iteration.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

from hpcps.comm.buffers import ExchangeBuffer, choose_transport
from hpcps.comm.waits import sleeping_barrier
from hpcps.config.job import Job
from hpcps.config.schedule import Schedule
from hpcps.data.partition import EpochPartition
from hpcps.ps.codec import Codec, make_codec, make_pull_codec, worker_codec_names
from hpcps.ps.exchange import Exchange
from hpcps.ps.plan import MessagePlan, plan_for_job
from hpcps.ps.server import ServedPiece
from hpcps.ps.stale import StaleExchange, serve_pieces
from hpcps.ps.sync import make_policy
from hpcps.ps.worker import Worker
from hpcps.workloads import build_workload


@dataclass
class TrainResult:
    iterations: int
    wall_s: float                    # training loop only: evaluation excluded
    samples_per_s: float
    final_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    sample_text: str | None = None
    final_params: np.ndarray | None = None
    start_iteration: int = 0         # where a resumed run started (0 for a fresh one)
    stopped: bool = False            # ended early by a signal, after its checkpoint
    checkpoint: str | None = None    # the newest checkpoint this run wrote (or resumed from)


def total_iterations(job: Job, per_epoch: int) -> int:
    if job.training.iterations > 0:
        return job.training.iterations
    return max(1, math.ceil(job.training.epochs * per_epoch))


def pick_device(requested: str, is_worker: bool) -> str:
    if requested == "cpu" or not is_worker:
        return "cpu"
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but PyTorch sees no GPU")
        env = os.environ
        local = int(env.get("MPI_LOCALRANKID", env.get("OMPI_COMM_WORLD_LOCAL_RANK", env.get("SLURM_LOCALID", "0"))))
        torch.cuda.set_device(local % torch.cuda.device_count())
        return "cuda"
    return "cpu"


def _exchange_buffer(t: torch.Tensor, transport: str) -> ExchangeBuffer:
    # A CUDA tensor goes to MPI as it is (mpi4py reads __cuda_array_interface__) or through pinned mirrors.
    return ExchangeBuffer(t if t.is_cuda else t.numpy(), transport)


@dataclass(frozen=True)
class Emulation:
    """Make each rank behave like the node of a described cluster it stands for (docs/emulation.md)."""
    cluster: object              # hpcps.cluster.Cluster
    placement: object            # hpcps.cluster.placement.RankPlacement: rank -> node
    profile: object              # hpcps.sim.WorkloadProfile: the calibrated thread model
    dilation: float              # real seconds per emulated second
    compute: str = "reference"   # what a step costs: its time alone measured at start-up, or each its own
    network: str = "fabric"      # "fabric": messages between nodes wait on the emulated network; "real": the
                                 # ranks stand on a testbed's nodes (hpcps.testbed), whose links are real
    # Step costs shared with other runs (hpcps/emulate/step_costs.py): the file (None: none), this
    # workload's key in it, and what it held for that key when the run started, as (batch, seconds).
    step_costs: Path | None = None
    step_costs_key: str = ""
    known_step_costs: tuple[tuple[int, float], ...] = ()


@dataclass
class RankRun:
    """What one rank's synchronisation policy works with."""
    exchange: Exchange
    plan: MessagePlan
    worker: Worker | None
    worker_index: int
    partition: EpochPartition
    iterations: int
    overlap: bool                    # pieces are pushed during the step (else after it, in push order)
    wait_per_layer: bool             # the forward pass waits per layer for its pieces (else all first)
    clock: Callable[[], float]
    compute: Callable                # batch -> (loss tensor, correct): the step, charged under emulation


def worker_codecs(job: Job, schedule: Schedule) -> list[Codec]:
    """Each worker's push codec, in schedule order (hpcps.ps.codec.worker_codec_names)."""
    return [make_codec(name) for name in worker_codec_names(job, schedule)]


build_plan = plan_for_job    # the plan with each worker's encoded push bytes (hpcps/ps/plan.py)


def run_training(comm: MPI.Comm, job: Job, schedule: Schedule, *, device: str = "auto", gpu_transport: str = "auto",
                 log: Callable[[str], None] | None = None, warn: Callable[[str], None] | None = None,
                 recorder=None, emulation: Emulation | None = None, checkpoints=None) -> TrainResult | None:
    """Train job under schedule on comm. Returns the result on rank 0, None elsewhere.

    log: progress lines (rank 0). warn: what makes the run's times doubtful, such as an emulation that
    could not keep up (rank 0; default: log). A caller that wants no progress lines still wants those.

    recorder: a hpcps.trace.TraceRecorder (or anything with its methods) that times every phase; the
    caller closes it after this returns. It must read the same clock as this loop: the emulator's
    time() under emulation, time.perf_counter otherwise.
    emulation: run each rank as its node of a described cluster; reported times are emulated seconds.
    checkpoints: a hpcps.ps.checkpointer.CheckpointSettings: where and when to checkpoint, and what to
    resume from (docs/checkpoints.md).
    """
    rank = comm.Get_rank()
    log = log if (log and rank == 0) else (lambda _msg: None)
    warn = warn if (warn and rank == 0) else log
    me = schedule.worker(rank)
    # Emulated threads are accounted for by the node clock; really running them would only make the
    # ranks sharing this machine's cores fight over them.
    torch.set_num_threads(me.threads if me and emulation is None else 1)
    torch.manual_seed(job.training.seed)
    policy = make_policy(job.training.sync, job.training.staleness)
    synchronous = policy.name == "bsp"

    workload = build_workload(job.workload, job.model, job.data, job.training.seed, job.source)
    dev = pick_device(device, me is not None)
    worker = Worker(workload, dev)
    flat = worker.flat
    # Every rank starts from rank 0's initial parameters, whatever its own RNG or device did (or from
    # the checkpoint's, which rank 0 alone has read).
    init = flat.params.detach().cpu().numpy().copy()
    resume = checkpoints.resume if checkpoints is not None and rank == 0 else None
    if resume is not None:
        from hpcps.ps.checkpoint import check_resumable
        check_resumable(resume, job, flat.numel,
                        {name: tuple(b.shape) for name, b in worker.model.named_buffers()})
        init[:] = resume.params
    sleeping_barrier(comm)                # ranks still importing or loading data are not starved
    comm.Bcast(init, root=0)
    flat.params.copy_(torch.from_numpy(init))
    plan = build_plan(job, schedule, flat.numel)
    batches = [w.batch for w in schedule.workers]
    worker_row = plan.worker_row(rank)
    params_xb = grads_xb = None
    if me is not None:
        transport = choose_transport(gpu_transport, flat.params.is_cuda)
        params_xb, grads_xb = _exchange_buffer(flat.params, transport), _exchange_buffer(flat.grads, transport)
    codecs = worker_codecs(job, schedule)
    served = ({p.index: ServedPiece(p, init[p.start:p.stop], batches, job.optimizer, codecs)
               for p in plan.pieces if p.server == rank} if synchronous else {})
    encoders = ({p.index: codecs[worker_row].encoder(p.size) for p in plan.pieces if p.server != rank}
                if me is not None else {})

    emulator = None
    clock = time.perf_counter
    if emulation is not None:
        from hpcps.emulate.rank import RankEmulator
        emulator = RankEmulator(comm, emulation.cluster, emulation.placement, plan, emulation.profile,
                                emulation.dilation, emulation.network)
        clock = emulator.time
    # A testbed's nodes share this machine's cores, which MPI cannot tell: waiting ranks must sleep.
    sleep_wait = True if emulation is not None and emulation.network == "real" else None
    partition = EpochPartition(workload.n_train(), batches, job.training.seed)
    total = total_iterations(job, partition.per_epoch)
    if not synchronous:
        served = serve_pieces(policy.name, policy.staleness, plan, rank, init, batches, job.optimizer, codecs,
                              iterations=total)
    checkpointer = None
    if checkpoints is not None and (checkpoints.directory is not None or checkpoints.resuming):
        # Under ssp and asp every rank settles at a checkpoint's boundary first (hpcps/ps/checkpointer.py).
        from hpcps.ps.checkpointer import Checkpointer, flag_lag
        from hpcps.ps.exchange import ranks_outnumber_cores
        checkpointer = Checkpointer(comm, checkpoints, job=job, schedule=schedule, plan=plan, served=served,
                                    encoders=encoders, worker_row=worker_row, model=flat.model,
                                    codec_names=[c.name for c in codecs], log=log,
                                    sleep_wait=ranks_outnumber_cores(comm),
                                    lag=flag_lag(policy.name, policy.staleness))
    start = checkpointer.restore(flat.numel) if checkpoints is not None and checkpoints.resuming else 0
    if start > total:
        from hpcps.config.errors import ConfigError
        raise ConfigError("--resume", None, f"the checkpoint is after iteration {start}, past this run's "
                                            f"{total} iterations (give --iterations N with N >= {start})")
    common = dict(params=params_xb, grads=grads_xb, served=served, encoders=encoders, recorder=recorder, clock=clock,
                  emulator=emulator, sleep_wait=sleep_wait,
                  aggregate=emulator.clock.run_aggregate if emulator is not None else None,
                  pull_codec=make_pull_codec(job.exchange.pull_codec))
    exchange = (Exchange(comm, plan, total, **common) if synchronous else
                StaleExchange(comm, plan, total, mode=policy.name, staleness=policy.staleness, **common))
    # Pieces go out while the backward pass runs. Under emulation the real step runs first and only
    # records when each piece was complete; the node clock's hold then pushes each at its share of the
    # emulated step, as the simulator models it (docs/emulation.md), and the forward pass waits for
    # every piece before it starts (the simulator does not model a forward pass that starts early).
    # Under ssp and asp the parameters are in place before the step, and the forward hooks only keep
    # messages moving; emulated, their steps push after the step and keep serving while held.
    overlapping = job.exchange.overlap and (emulator is None or synchronous)     # the run's mode
    overlap = overlapping and me is not None                                      # this rank's
    if emulator is not None and not synchronous:
        emulator.clock.idle = exchange.progress
    pushes = None
    if overlap and emulator is None:
        def ready(q: int) -> None:
            exchange.push(q)
            exchange.progress()
        worker.attach(plan, ready, exchange.wait_pieces)
    elif overlap:
        from hpcps.emulate.node import PushSchedule
        pushes = PushSchedule(exchange.push, exchange.progress)
        worker.attach(plan, pushes.ready, lambda _pieces: None)

    def step(batch):
        if emulator is None:
            return worker.step(batch)
        if not synchronous:
            return emulator.clock.run_step(lambda: worker.step(batch))
        # A rank that also serves updates the pieces that became ready meanwhile after its step, as
        # the simulator has it.
        exchange.defer_aggregation = True
        try:
            return emulator.clock.run_step(lambda: worker.step(batch), pushes=pushes)
        finally:
            exchange.defer_aggregation = False

    run = RankRun(exchange, plan, worker if me is not None else None, worker_row if me is not None else -1,
                  partition, total, overlap, overlap and emulator is None, clock, step)
    targets = workload.targets_per_sample()
    log(f"{job.name}: {comm.Get_size()} ranks, {len(schedule.servers)} servers, {len(schedule.workers)} workers, "
        f"{flat.numel} parameters in {len(plan.shards)} shards of {len(plan.pieces)} pieces, "
        f"global batch {partition.global_batch}, {total} iterations ({total / partition.per_epoch:.2f} epochs), "
        f"{policy.name}{f' (staleness {policy.staleness})' if policy.name == 'ssp' else ''}"
        f"{', overlapped' if overlapping else ''}"
        + (f", from iteration {start}" if start else ""))
    from hpcps.ps.checkpointer import pid_line
    pids = pid_line(comm)
    if pids:
        log(pids)

    run_attrs = {"sync": policy.name, "staleness": int(policy.staleness), "overlap": int(overlap),
                 "pieces": len(plan.pieces),
                 "codec": job.exchange.codec, "worker_codecs": json.dumps([c.name for c in codecs]),
                 "push_nbytes_per_iteration": plan.push_bytes(),
                 "push_raw_nbytes_per_iteration": plan.push_bytes(raw=True),
                 "pull_codec": job.exchange.pull_codec, "pull_nbytes_per_iteration": plan.pull_bytes(),
                 "pull_raw_nbytes_per_iteration": plan.pull_bytes(raw=True)}
    if emulation is not None:
        run_attrs.update(emulation_dilation=float(emulation.dilation), emulation_compute=emulation.compute,
                         emulation_network=emulation.network)
    if emulator is not None and emulation.compute == "reference":
        costs = _measure_reference(comm, emulator, workload, flat,
                                   partition.indices(0, worker_row) if me else None, log, emulation)
        run_attrs["emulated_step_cost_s"] = json.dumps(costs)

    tracing = recorder is not None
    if tracing and not synchronous:
        # Ranks wait for each other when the trace is flushed: meanwhile they keep serving (a worker
        # behind may need this rank's pieces to get there).
        recorder.while_waiting = exchange.progress
    if tracing:
        recorder.begin_run(device=dev, threads=me.threads if me else 1, batch=me.batch if me else 0,
                           is_server=rank in schedule.servers, is_worker=me is not None,
                           shards=list(plan.shards), attrs={"job_name": job.name, "workload": job.workload,
                                                            "global_batch": partition.global_batch,
                                                            "iterations_planned": total, "n_params": flat.numel,
                                                            **run_attrs})
    sync_device = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    stats = np.zeros(4)                     # loss * k, correct, samples, predictions since the last log line
    history: list[dict[str, float]] = []
    reports = None if synchronous else _DeferredReports(comm, exchange, clock, me.batch if me else 0)
    eval_s = 0.0
    comm.Barrier()
    t_start = t_log = clock()
    if reports is not None:
        reports.t_last = t_start
    it_log = reached = start
    stopped = False
    exchange.start(start)
    it = start
    try:
        for it in range(start, total):
            if tracing:
                recorder.begin_iteration(it)
            t_begin = clock()
            times = policy.iteration(run, it, t_begin)
            if me is not None and not math.isfinite(times.loss):
                raise _diverged(f"non-finite loss ({times.loss})", it, rank, checkpointer)
            if me is not None:
                stats += (times.loss * me.batch, times.correct, me.batch, me.batch * targets)
            if tracing:
                recorder.iteration(*times.pull, *times.data, *times.compute, *times.push, *times.aggregate, times.loss)

            done = reached = it + 1
            if checkpointer is not None:
                t0 = clock()
                action = checkpointer.boundary(done, total, exchange)
                if tracing and action:
                    recorder.phase("checkpoint", t0, clock())
                stopped = action == 2                # hpcps.ps.checkpointer.STOP: a signal asked to stop here
            if reports is not None:
                # Ranks reach a step number at different times: the loss is summed without waiting, and
                # rank 0 prints it once every rank has contributed.
                if done % job.training.log_every == 0 or done == total:
                    t_report = clock()
                    reports.post(stats, done)
                    stats[:] = 0
                    if tracing:
                        recorder.phase("report", t_report, clock())
                for row in reports.poll():
                    _log_row(row, partition, total, history, log)
            elif done % job.training.log_every == 0 or done == total or stopped:
                t_report = clock()
                summed = np.zeros(4)
                comm.Reduce(stats, summed, op=MPI.SUM, root=0)
                stats[:] = 0
                now = clock()
                if rank == 0:
                    rate = (done - it_log) * partition.global_batch / max(now - t_log, 1e-9)
                    row = {"iteration": done, "epoch": done / partition.per_epoch, "loss": summed[0] / summed[2],
                           "train_accuracy": summed[1] / summed[3], "samples_per_s": rate}
                    history.append(row)
                    log(f"iter {done:>5}/{total}  epoch {row['epoch']:5.2f}  loss {row['loss']:.4f}  "
                        f"train-acc {row['train_accuracy']:.3f}  {rate:8.1f} samples/s")
                t_log, it_log = now, done
                if tracing:
                    recorder.phase("report", t_report, clock())
            if job.training.eval_every and done % job.training.eval_every == 0 and done < total and not stopped:
                t0 = clock()
                metrics = _evaluate_on_root(exchange, worker, sync_device)
                if rank == 0:
                    log(f"iter {done:>5}/{total}  eval  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                eval_s += clock() - t0
                t_log += clock() - t0
                if tracing:
                    recorder.phase("eval", t0, clock())
            if stopped:
                break
        if stopped:
            exchange.stop_early()
        else:
            exchange.drain()
    except FloatingPointError as e:
        # A server's aggregated gradient (hpcps/ps/server.py), found wherever this rank serves: under
        # ssp and asp that is also between its own steps, and the step it belongs to is the piece's.
        step = getattr(e, "iteration", None)
        raise _diverged(f"{e}", it if step is None else step, rank, checkpointer) from None
    if reports is not None:
        for row in reports.finish():
            _log_row(row, partition, total, history, log)
    if checkpointer is not None:
        checkpointer.close()
    ran = reached - start
    wall = clock() - t_start - eval_s
    if tracing:
        recorder.end_run()
    worker.detach()

    if emulator is not None:
        _report_emulation(comm, emulator, total, warn)
        emulator.close(comm)
    params = exchange.gather_params(flat.numel, root=0)
    if rank != 0:
        return None
    rate = ran * partition.global_batch / wall if ran else 0.0
    last = str(checkpointer.last_path) if checkpointer is not None and checkpointer.last_path else None
    if stopped:
        log(f"stopped after iteration {reached} of {total} ({checkpointer.settings.signals.received}): "
            f"{checkpointer.last_good_text()}; continue with --resume {checkpointer.settings.directory}")
        return TrainResult(reached, wall, rate, {}, history, None, params, start, True, last)
    flat.params.copy_(torch.from_numpy(params))
    metrics = worker.evaluate()
    text = workload.finish(worker.model)
    what = f"{ran} iterations" + (f" ({start + 1}-{total})" if start else "")
    log(f"done: {what} in {wall:.2f} s, {rate:.1f} samples/s; "
        + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if text:
        log(f"sample: {text!r}")
    return TrainResult(total, wall, rate, metrics, history, text, params, start, False, last)


def _diverged(what: str, it: int, rank: int, checkpointer) -> Exception:
    from hpcps.ps.checkpointer import TrainingDiverged
    where = checkpointer.last_good_text() if checkpointer is not None else "no checkpoint (give --checkpoint DIR)"
    return TrainingDiverged(f"{what} in iteration {it + 1} on rank {rank}; {where}")


run_bsp = run_training   # the name the first version had


class _DeferredReports:
    """Progress lines under ssp and asp: each report is a non-blocking reduction that rank 0 prints
    when every rank has posted it, so that no rank waits for slower ones to reach the same step.
    Samples/s is the sum of each worker's own rate since its previous report (workers may run at
    different paces, and their clocks need not agree)."""

    def __init__(self, comm, exchange, clock, batch: int):
        self.comm, self.exchange, self.clock, self.batch = comm, exchange, clock, batch
        self.pending: list = []
        self.t_last, self.it_last = clock(), 0

    def post(self, stats: np.ndarray, done: int) -> None:
        now = self.clock()
        rate = self.batch * (done - self.it_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.it_last = now, done
        send = np.append(stats, rate)
        recv = np.zeros_like(send)
        self.pending.append((self.comm.Ireduce(send, recv, op=MPI.SUM, root=0), send, recv, done))

    def poll(self) -> list[tuple[int, np.ndarray]]:
        rows = []
        while self.pending and self.pending[0][0].Test():
            _, _, summed, done = self.pending.pop(0)
            if self.comm.Get_rank() == 0:
                rows.append((done, summed))
        return rows

    def finish(self) -> list[tuple[int, np.ndarray]]:
        rows = []
        while self.pending:
            self.exchange.wait_until(lambda: self.pending[0][0].Test())
            rows += self.poll()
        return rows


def _log_row(report: tuple[int, np.ndarray], partition, total: int, history: list, log) -> None:
    done, summed = report
    row = {"iteration": done, "epoch": done / partition.per_epoch, "loss": summed[0] / summed[2],
           "train_accuracy": summed[1] / summed[3], "samples_per_s": float(summed[4])}
    history.append(row)
    log(f"iter {done:>5}/{total}  epoch {row['epoch']:5.2f}  loss {row['loss']:.4f}  "
        f"train-acc {row['train_accuracy']:.3f}  {row['samples_per_s']:8.1f} samples/s")


def _step(workload, model, batch):
    loss, correct = workload.loss(model, batch)
    loss.backward()
    return loss, correct


def _measure_reference(comm, emulator, workload, flat, indices, log, emulation: Emulation) -> list | None:
    """Time this worker's step alone (hpcps.emulate.rank.RankEmulator.measure_reference), leaving the
    model, its buffers (running statistics) and the random state as they were, unless the run's step-costs
    file holds its batch size already; rank 0 records there the ones timed. Returns on rank 0 each rank's
    charged step time in seconds (None for a rank that is not a worker)."""
    known = dict(emulation.known_step_costs)
    key = len(indices) if indices is not None else None
    step = None
    if indices is not None:
        batch = workload.get_batch(indices)

        def step():
            flat.zero_grad()
            _step(workload, flat.model, batch)
    rng = torch.get_rng_state()
    buffers = [b.detach().clone() for b in flat.model.buffers()]
    ref = emulator.measure_reference(comm, step, key=key, known=known)
    refs = comm.gather((emulator.node_name, key, ref), root=0)
    if refs is not None:
        reused = sum(1 for _, k, r in refs if r is not None and k in known)
        log("emulated step cost (CPU time alone here, ms): "
            + ", ".join(f"{node} {r * 1e3:.2f}" for node, _, r in refs if r is not None)
            + (f" ({reused} as recorded in {emulation.step_costs})" if reused else ""))
        timed = {k: r for _, k, r in refs if r is not None and k not in known}
        if emulation.step_costs is not None and timed:
            from hpcps.emulate import step_costs
            step_costs.add(emulation.step_costs, emulation.step_costs_key, timed)
    torch.set_rng_state(rng)
    with torch.no_grad():
        for b, saved in zip(flat.model.buffers(), buffers):
            b.copy_(saved)
    flat.zero_grad()
    return None if refs is None else [r for _, _, r in refs]


def _report_emulation(comm, emulator, iterations: int, log) -> None:
    """Say on rank 0 how often real steps overran their emulated time (then the node looked slower),
    and how often an overlapped step pushed a piece later than its time (the real step was not
    through by then: then the node's pushes looked later)."""
    clock = emulator.clock
    counts = comm.gather((clock.overruns, clock.lag_s, clock.pushes, clock.late_pushes), root=0)
    if comm.Get_rank() != 0:
        return
    overruns = sum(c[0] for c in counts)
    steps = iterations * len(counts)
    if overruns > 0.05 * steps:
        log(f"warning: {overruns} of {steps} emulated steps ran longer here than on their node "
            f"(by {sum(c[1] for c in counts) / emulator.dilation * 1e3:.1f} ms emulated in all); "
            "raise --time-dilation for a faithful emulation")
    pushes, late = sum(c[2] for c in counts), sum(c[3] for c in counts)
    if late > 0.05 * pushes:
        log(f"warning: {late} of {pushes} overlapped pushes went out later than on their node (the real "
            "step was not through by then); raise --time-dilation for a faithful overlap")


def _evaluate_on_root(exchange: Exchange, worker: Worker, sync_device) -> dict[str, float]:
    """Rank 0 evaluates the servers' current parameters on a copy of its model's, which it puts back:
    pulls of the next iteration may already be arriving in its buffer."""
    params = exchange.gather_params(worker.flat.numel, root=0)
    if params is None:
        return {}
    exchange.wait_pieces(slice(None)) if exchange.is_worker else None
    saved = worker.flat.params.clone()
    worker.flat.params.copy_(torch.from_numpy(params))
    try:
        return worker.evaluate()
    finally:
        worker.flat.params.copy_(saved)
        sync_device()
