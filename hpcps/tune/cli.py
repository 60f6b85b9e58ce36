"""python -m hpcps.tune: find the schedule with the shortest iteration time for a job on a cluster.

    python -m hpcps.tune --job jobs/cifar.toml --cluster jobs/clusters/hetero10a.toml --backend sim \\
        --strategy structured --budget 30 --out results/runs/tune-a
    python -m hpcps.tune ... --out results/runs/tune-a --resume        # after a kill: go on

Backends: sim (the simulator, no MPI), local (real MPI runs emulating the cluster on this machine),
slurm (trials as Slurm job steps), testbed (real MPI runs on shaped links between network namespaces).
Strategies: structured, gp, random, anneal, heuristic. --codecs none,int8 lets the search give each
worker one of these push codecs (default: the job's [exchange] codec for every worker, as the job
says); --syncs bsp,ssp1,asp lets it choose the run's synchronisation too (default: the job's
training.sync; the objective stays the time of a global batch, whatever staleness does to convergence).
Bad input is one line on stderr and exit status 2, with nothing written. One tuner at a time
works in an --out (a second is refused); --resume refuses a run whose job or cluster file has changed
since it began. SIGTERM or Ctrl-C stops after saving what is finished (exit status 0; a second Ctrl-C
interrupts at once); --resume continues.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from hpcps.cli import default_job_path
from hpcps.cluster import load_cluster
from hpcps.cluster.description import Cluster
from hpcps.cluster.placement import naive
from hpcps.config import ConfigError, Job, limits, load_job
from hpcps.config.environment import env_number
from hpcps.config.schedule import CODECS
from hpcps.config.toml_schema import check_number
from hpcps.io.outputs import check_output
from hpcps.tune import rundir
from hpcps.tune.backends import BACKENDS, make_backend
from hpcps.tune.loop import Settings, TuningRun
from hpcps.tune.problem import Problem, problem_for
from hpcps.tune.space import InfeasibleSchedule
from hpcps.tune.strategies import STRATEGIES, Strategy, make_strategy
from hpcps.tune.trials import Backend, TrialRecord

TOOL = "hpcps.tune"
BACKEND_NAMES = tuple(BACKENDS)
STOP_AFTER_ENV = "HPCPS_TUNE_STOP_AFTER"      # for tests: exit hard (137) right after recording trial k


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `hpcps.tune: error: ...`, with exit status 2."""

    def error(self, message):
        sys.stderr.write(f"{TOOL}: error: {message} (see --help)\n")
        sys.exit(2)


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m hpcps.tune",
                      description="Tune a job's schedule (servers, workers, batch per worker, threads) on a "
                                  "cluster with structured Bayesian optimisation or a baseline.",
                      epilog="--out receives trials.csv, best_schedule.toml (for hpcps.train --schedule), "
                             "convergence.png, state.json and a directory per trial; it is saved after every "
                             "trial. SIGTERM or Ctrl-C stops with what is finished saved; the same command with "
                             "--resume goes on. See docs/tune.md.")
    p.add_argument("--job", type=Path, default=None, help="job TOML file (default: jobs/default.toml)")
    p.add_argument("--cluster", type=Path, default=None, help="cluster TOML file (default: the job's cluster key)")
    p.add_argument("--backend", choices=BACKEND_NAMES, required=True,
                   help="where trials run: sim (simulator), local (MPI on this machine, emulating the "
                        "cluster), slurm (Slurm job steps), testbed (MPI on this machine with real shaped "
                        "links between network namespaces, root only: docs/testbed.md)")
    p.add_argument("--strategy", choices=STRATEGIES, required=True, help="search strategy")
    p.add_argument("--budget", type=int, required=True, help="number of trials")
    p.add_argument("--out", type=Path, required=True, help="directory for the run's state, table and results")
    p.add_argument("--seed", type=int, default=0, help="seed of the search (and of the sim's noise; default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (which must hold one)")
    p.add_argument("--iterations", type=int, default=None,
                   help="training iterations per trial (default: 10 for sim, 20 for local, slurm and testbed)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a real trial may take (default 600)")
    p.add_argument("--codecs", default=None, metavar="LIST",
                   help="push codecs the search may give each worker, comma-separated, the job's own among them "
                        f"(from {', '.join(CODECS)}; lossy ones change convergence: allow only those you "
                        "accept). Default: the job's [exchange] codec for every worker, nothing else tried")
    p.add_argument("--syncs", default=None, metavar="LIST",
                   help="synchronisations the search may choose for the run, comma-separated, the job's own among "
                        "them: bsp, asp, sspN (ssp with staleness N >= 1), e.g. bsp,ssp1,ssp2,asp. Stale modes "
                        "change convergence and the search weighs only time: allow only those you accept. "
                        "Default: the job's training.sync and staleness, nothing else tried")
    p.add_argument("--dilation", type=float, default=None, metavar="D",
                   help="testbed backend only: the time dilation of every trial (default: the testbed's default for "
                        "the cluster, which counts each node at one thread: docs/testbed.md)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


@dataclass(frozen=True)
class Context:
    """What a backend factory gets."""
    cluster: Cluster
    job: Job
    job_path: Path
    cluster_path: Path
    seed: int
    iterations: int | None
    timeout_s: float
    dilation: float | None = None
    step_costs: Path | None = None   # where emulated trials share their step costs: RUN_DIR/step_costs.json


@dataclass(frozen=True)
class Parts:
    """A run's parts, built and checked before anything is written."""
    settings: Settings
    problem: Problem
    strategy: Strategy
    backend: Backend
    inputs: dict[str, str]           # the fingerprint of the job and cluster files
    stop_after: int = 0              # STOP_AFTER_ENV: the trial to exit hard after (0: none)


def _cluster_path(args, job: Job) -> Path:
    from hpcps.cli import cluster_path
    path = cluster_path(args.cluster, job, required=True)
    assert path is not None
    return path


def prepare(args) -> Parts:
    """Check the arguments and inputs and build the run's parts; raises ConfigError or RunDirError,
    writes nothing."""
    if args.budget < 1:
        raise ConfigError("--budget", None, f"must be >= 1, got {args.budget}")
    check_number("--seed", None, args.seed, ge=0, le=limits.MAX_SEED)
    if args.iterations is not None:
        # A trial runs to its end before a stop (SIGTERM, Ctrl-C) is heard: a sim trial of 10**20
        # iterations never ends. The sim backend has hpcps.sim's bound, the others hpcps.train's.
        most = limits.MAX_SIM_ITERATIONS if args.backend == "sim" else limits.MAX_ITERATIONS
        check_number("--iterations", None, args.iterations, ge=1, le=most)
    check_number("--timeout", None, args.timeout, gt=0, le=limits.MAX_TIMEOUT_S)
    if args.dilation is not None:
        if args.backend != "testbed":
            raise ConfigError("--dilation", None, f"only the testbed backend has one, not {args.backend}")
        if not 1 <= args.dilation < float("inf"):
            raise ConfigError("--dilation", None, f"must be a number >= 1, got {args.dilation}")
    out = args.out
    # A folder to create or write into: not a file, and under a folder that can take it (/dev/null/x no).
    check_output(out, "--out", replace=False, directory=True)
    if args.resume and not out.exists():
        raise ConfigError("--resume", None, f"{out} does not exist: there is no run to resume (without --resume "
                                            "a new run starts there)")
    job_path = args.job or default_job_path()
    job = load_job(job_path)
    codecs = parse_codecs(args.codecs, job)
    syncs = parse_syncs(args.syncs, job)
    cluster_path = _cluster_path(args, job)
    cluster = load_cluster(cluster_path)
    problem = problem_for(cluster, job, require_profile=args.backend == "sim", codecs=codecs, syncs=syncs)
    try:
        problem.space.decode(problem.space.encode(naive(cluster, problem.global_batch)))
    except InfeasibleSchedule as e:
        raise ConfigError(str(cluster_path), "memory_gb",
                          f"the job's global batch {problem.global_batch} fits on no schedule: {e}") from None
    settings = Settings(job=str(Path(job_path).resolve()), cluster=str(Path(cluster_path).resolve()),
                        backend=args.backend, strategy=args.strategy, seed=args.seed, budget=args.budget,
                        iterations=args.iterations, cluster_name=cluster.name, global_batch=problem.global_batch,
                        codecs=",".join(problem.codecs), dilation=args.dilation,
                        syncs=",".join(problem.syncs) if problem.space.tunes_syncs else "")
    inputs = rundir.fingerprint({"job": Path(job_path), "cluster": Path(cluster_path)})
    if out.is_dir():                             # what can be refused before the directory is locked
        rundir.RunLock(out).check_free()
        _check_existing(args, rundir.read_state(out) if rundir.is_run_dir(out) else None)
    ctx = Context(cluster, job, Path(job_path), Path(cluster_path), args.seed, args.iterations, args.timeout,
                  args.dilation, out / rundir.STEP_COSTS_FILE)
    backend = make_backend(args.backend, ctx)
    strategy = make_strategy(args.strategy, problem, args.seed)
    return Parts(settings, problem, strategy, backend, inputs, stop_after_trial())


def stop_after_trial() -> int:
    """STOP_AFTER_ENV as a trial number (unset or empty: 0, never). Read before --out is made, so that
    a value that is no number is refused with nothing written."""
    return int(env_number(STOP_AFTER_ENV, int, "a trial number >= 0 (0 or empty: never)", ge=0))


def parse_codecs(text: str | None, job: Job) -> tuple[str, ...]:
    """--codecs as a tuple of codec names (None: not given, the job's codec alone). Raises ConfigError
    naming what is wrong and what is allowed."""
    if text is None:
        return (job.exchange.codec,)
    names = [c.strip() for c in text.split(",")]
    allowed = ", ".join(CODECS)
    if not text.strip() or any(not c for c in names):
        raise ConfigError("--codecs", None, f"give codec names separated by commas, from {allowed}; got {text!r}")
    for c in names:
        if c not in CODECS:
            raise ConfigError("--codecs", None, f"unknown codec {c!r}; allowed: {allowed}")
        if names.count(c) > 1:
            raise ConfigError("--codecs", None, f"lists {c!r} more than once; give each codec once")
    if job.exchange.codec not in names:
        raise ConfigError("--codecs", None,
                          f"must include the job's own codec {job.exchange.codec!r} ([exchange] codec of "
                          f"{job.source}), which the naive schedule and every worker without a codec of its own "
                          f"push with; got {text!r}")
    return tuple(names)


def parse_syncs(text: str | None, job: Job) -> tuple[str, ...]:
    """--syncs as a tuple of synchronisation names (None: not given, the job's alone). Raises ConfigError
    naming what is wrong and what is allowed."""
    from hpcps.config.job import parse_sync_name
    own = job.sync_name
    if text is None:
        return (own,)
    names = [c.strip() for c in text.split(",")]
    if not text.strip() or any(not c for c in names):
        raise ConfigError("--syncs", None, "give synchronisations separated by commas: bsp, asp, or sspN with N "
                                           f"an integer >= 1 (e.g. bsp,ssp1,asp); got {text!r}")
    for c in names:
        try:
            parse_sync_name(c, allow_ssp0=c == own)
        except ValueError as e:
            raise ConfigError("--syncs", None, str(e)) from None
        if names.count(c) > 1:
            raise ConfigError("--syncs", None, f"lists {c!r} more than once; give each synchronisation once")
    if own not in names:
        raise ConfigError("--syncs", None,
                          f"must include the job's own synchronisation {own!r} (training.sync and staleness of "
                          f"{job.source}), which the naive schedule runs under; got {text!r}")
    return tuple(names)


def _check_existing(args, state: dict | None) -> None:
    out = args.out
    if state is None:
        if args.resume:
            raise ConfigError("--resume", None, f"{out} holds no tuning run to resume")
        if not rundir.holds_nothing_but_trials(out):
            raise ConfigError("--out", None, f"{out} is not empty and holds no tuning run; choose a new directory")
    elif not args.resume:
        raise ConfigError("--out", None, f"{out} already holds a tuning run ({len(state.get('trials', []))} trial(s)); "
                                         "add --resume to continue it, or choose another --out")


def claim(args, parts: Parts) -> tuple[rundir.RunLock, list[TrialRecord]]:
    """Lock --out (made for a new run) and return the lock and the records it holds. Raises ConfigError or
    RunDirError: another tuner works there, or the run there is not this command's (other settings,
    changed job or cluster file)."""
    out = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:                     # what check_output cannot foresee: /proc/x, a full disk
        raise ConfigError("--out", None, f"cannot create {out}: {e.strerror or e}") from None
    lock = rundir.RunLock(out)
    lock.acquire()
    try:
        state = rundir.read_state(out)
        _check_existing(args, state)
        if state is None:
            return lock, []
        old = state.get("settings", {})
        for key in Settings.IDENTITY:
            # A run from before codecs were tuned gave every worker the job's codec; one from before
            # syncs were tuned ran every trial under the job's synchronisation ("").
            recorded = old.get(key, {"codecs": parts.problem.codecs[0], "syncs": ""}.get(key))
            if recorded != getattr(parts.settings, key):
                raise ConfigError("--resume", None,
                                  f"the run in {out} has {key} = {recorded!r}, this command "
                                  f"{getattr(parts.settings, key)!r}; resume with the same job, cluster, backend, "
                                  "strategy, seed, iterations, codecs, dilation and syncs")
        changed = rundir.changed_inputs(state.get("inputs", {}), parts.inputs)
        if changed:
            files = " and ".join(f"{name} file {getattr(parts.settings, name)}" for name in changed)
            raise ConfigError("--resume", None,
                              f"the {files} changed since the run in {out} began; resume with the files it "
                              "began with, or start a new run in another --out")
        records = rundir.load_records(out, state)
        rundir.check_records(out, records, parts.problem.space)
        return lock, records
    except BaseException:
        lock.release()
        raise


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        parts = prepare(args)
        lock, history = claim(args, parts)
    except (ConfigError, rundir.RunDirError) as e:
        sys.stderr.write(f"{TOOL}: error: {e}\n")
        return 2
    logging.basicConfig(level=logging.WARNING, format=f"{TOOL}: %(message)s")
    with lock:
        run = TuningRun(args.out, parts.settings, parts.problem, parts.strategy, parts.backend, history,
                        echo=(lambda s: None) if args.quiet else (lambda s: print(s, flush=True)), inputs=parts.inputs)
        run.save_state()
        stop_after = parts.stop_after
        if stop_after:
            run.trial_end.append(lambda run, rec: os._exit(137) if rec.trial == stop_after else None)
        for note in parts.problem.notes:
            print(f"{TOOL}: note: {note}", file=sys.stderr, flush=True)
        if history and not args.quiet:
            print(f"resuming {args.out}: {len(history)} trial(s) done, {max(0, args.budget - len(history))} to go",
                  flush=True)
        old = _on_stop_signals(run)
        try:
            stopped = run.run(args.budget)
        except KeyboardInterrupt:
            print(f"{TOOL}: interrupted: {len(run.history)} trial(s) saved in {args.out}; continue with --resume",
                  file=sys.stderr, flush=True)
            return 130
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    if stopped:
        print(f"{TOOL}: {stopped}: stopped with {len(run.history)} trial(s) saved in {args.out}; "
              "continue with --resume", file=sys.stderr, flush=True)
        return 0
    print(final_report(run))
    return 0


def _on_stop_signals(run: TuningRun) -> dict:
    """SIGTERM and SIGINT ask the run to stop after what it is doing; a second SIGINT interrupts at once.
    Returns the handlers to put back."""
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def stop(signum, frame):
        run.stop_request.request(signal.Signals(signum).name)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    for s in old:
        signal.signal(s, stop)
    return old


def final_report(run: TuningRun) -> str:
    best = run.best()
    lines = [f"{len(run.history)} trial(s) in {run.out}: trials.csv, best_schedule.toml, convergence.png"]
    failed = [r for r in run.history if not r.ok]
    if failed:
        lines.append(f"{len(failed)} failed: " + "; ".join(f"trial {r.trial}: {r.status}" for r in failed[:5]))
    if best is None:
        lines.append("no trial gave a time")
        return "\n".join(lines)
    first = run.history[0]
    lines.append(f"best: trial {best.trial}, {best.time_s * 1e3:.3f} ms per iteration: {best.summary}")
    warned = [r.trial for r in run.history if r.ok and r.warnings]
    if warned:
        advice = "; raise --dilation" if run.settings.backend == "testbed" else ""
        lines.append(f"{len(warned)} of {sum(1 for r in run.history if r.ok)} measured trial(s) warned that this "
                     f"machine could not keep up with the emulated cluster (trial(s) "
                     f"{', '.join(map(str, warned[:10]))}{', ...' if len(warned) > 10 else ''}"
                     f"{'; the best among them' if best.trial in warned else ''}): their times may be too high, which "
                     f"can hide a better schedule; see trials.csv (warnings){advice}")
    if first.ok and first.note == "naive":
        lines.append(f"naive schedule (trial 1): {first.time_s * 1e3:.3f} ms; speed-up "
                     f"{first.time_s / best.time_s:.2f}x")
    lines.append(f"best schedule: {run.out / 'best_schedule.toml'}")
    return "\n".join(lines)
