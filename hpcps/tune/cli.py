"""python -m hpcps.tune: find the schedule with the shortest iteration time for a job on a cluster.

    python -m hpcps.tune --job jobs/cifar.toml --cluster jobs/clusters/hetero10a.toml --backend sim \\
        --strategy structured --budget 30 --out results/runs/tune-a
    python -m hpcps.tune ... --out results/runs/tune-a --resume        # after a kill: go on

Backends: sim (the simulator, no MPI), local (real MPI runs emulating the cluster on this machine),
slurm (trials as Slurm job steps). Strategies: structured, gp, random, anneal, heuristic. Bad input is
one line on stderr and exit status 2, with nothing written. SIGTERM or Ctrl-C stops after saving what
is finished (exit status 0); --resume continues.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from hpcps.cli import default_job_path
from hpcps.config import ConfigError, load_job

TOOL = "hpcps.tune"
BACKEND_NAMES = ("local", "slurm", "sim")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `hpcps.tune: error: ...`, with exit status 2."""

    def error(self, message):
        sys.stderr.write(f"{TOOL}: error: {message} (see --help)\n")
        sys.exit(2)


def build_parser() -> OneLineParser:
    from hpcps.tune.strategies import STRATEGIES
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
                        "cluster), slurm (Slurm job steps)")
    p.add_argument("--strategy", choices=STRATEGIES, required=True, help="search strategy")
    p.add_argument("--budget", type=int, required=True, help="number of trials")
    p.add_argument("--out", type=Path, required=True, help="directory for the run's state, table and results")
    p.add_argument("--seed", type=int, default=0, help="seed of the search (and of the sim's noise; default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--iterations", type=int, default=None,
                   help="training iterations per trial (default: 10 for sim, 20 for local)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a real trial may take (default 600)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


@dataclass(frozen=True)
class Context:
    """What a backend factory gets."""
    cluster: object
    job: object
    job_path: Path
    cluster_path: Path
    seed: int
    iterations: int | None
    timeout_s: float


def _cluster_path(args, job) -> Path:
    from hpcps.cli import cluster_path
    return cluster_path(args.cluster, job, required=True)


def prepare(args):
    """Check everything and build the run's parts; raises ConfigError, writes nothing."""
    from hpcps.cluster import load_cluster
    from hpcps.cluster.placement import naive
    from hpcps.tune.backends import make_backend
    from hpcps.tune.loop import Settings, TuningRun
    from hpcps.tune.problem import problem_for
    from hpcps.tune.space import InfeasibleSchedule
    from hpcps.tune.strategies import make_strategy

    if args.budget < 1:
        raise ConfigError("--budget", None, f"must be >= 1, got {args.budget}")
    if args.seed < 0:
        raise ConfigError("--seed", None, f"must be >= 0, got {args.seed}")
    if args.iterations is not None and args.iterations < 1:
        raise ConfigError("--iterations", None, f"must be >= 1, got {args.iterations}")
    if not args.timeout > 0:
        raise ConfigError("--timeout", None, f"must be > 0, got {args.timeout}")
    out = args.out
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", None, f"{out} exists and is not a directory")
    job_path = args.job or default_job_path()
    job = load_job(job_path)
    cluster_path = _cluster_path(args, job)
    cluster = load_cluster(cluster_path)
    problem = problem_for(cluster, job, require_profile=args.backend == "sim")
    try:
        problem.space.decode(problem.space.encode(naive(cluster, problem.global_batch)))
    except InfeasibleSchedule as e:
        raise ConfigError(str(cluster_path), "memory_gb",
                          f"the job's global batch {problem.global_batch} fits on no schedule: {e}") from None
    settings = Settings(job=str(Path(job_path).resolve()), cluster=str(Path(cluster_path).resolve()),
                        backend=args.backend, strategy=args.strategy, seed=args.seed, budget=args.budget,
                        iterations=args.iterations, cluster_name=cluster.name, global_batch=problem.global_batch)

    state = TuningRun.read_state(out) if out.is_dir() else None
    history = []
    if state is not None:
        n = len(state.get("trials", []))
        if not args.resume:
            raise ConfigError("--out", None, f"{out} already holds a tuning run ({n} trial(s)); add --resume to "
                                             "continue it, or choose another --out")
        old = state.get("settings", {})
        for key in Settings.IDENTITY:
            if old.get(key) != getattr(settings, key):
                raise ConfigError("--resume", None,
                                  f"the run in {out} has {key} = {old.get(key)!r}, this command {getattr(settings, key)!r}; "
                                  "resume with the same job, cluster, backend, strategy, seed and iterations")
        history = TuningRun.load_history(out, state, problem.space)
    elif out.is_dir() and any(p.name != "trials" for p in out.iterdir()):
        raise ConfigError("--out", None, f"{out} is not empty and holds no tuning run; choose a new directory")

    ctx = Context(cluster, job, Path(job_path), Path(cluster_path), args.seed, args.iterations, args.timeout)
    backend = make_backend(args.backend, ctx)
    strategy = make_strategy(args.strategy, problem, args.seed)
    return settings, problem, strategy, backend, history


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings, problem, strategy, backend, history = prepare(args)
    except ConfigError as e:
        sys.stderr.write(f"{TOOL}: error: {e}\n")
        return 2
    from hpcps.tune.loop import Stop, TuningRun
    logging.basicConfig(level=logging.WARNING, format=f"{TOOL}: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    echo = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    run = TuningRun(args.out, settings, problem, strategy, backend, history, echo)
    run.save_state()

    def stop(signum, frame):
        run.request_stop(signal.Signals(signum).name)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if history and not args.quiet:
            print(f"resuming {args.out}: {len(history)} trial(s) done, {max(0, args.budget - len(history))} to go",
                  flush=True)
        run.run(args.budget)
    except Stop as e:
        cancel = getattr(backend, "cancel", None)
        if callable(cancel):
            cancel()                                  # a trial still running (normally none is)
        print(f"{TOOL}: {e}: stopped with {len(run.history)} trial(s) saved in {args.out}; "
              "continue with --resume", file=sys.stderr, flush=True)
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print(final_report(run))
    return 0


def final_report(run) -> str:
    best = run.best()
    lines = [f"{len(run.history)} trial(s) in {run.out}: trials.csv, best_schedule.toml, convergence.png"]
    failed = [r for r in run.history if not r.ok]
    if failed:
        lines.append(f"{len(failed)} failed: " + "; ".join(f"trial {r.trial}: {r.status}" for r in failed[:5]))
    if best is None:
        lines.append("no trial gave a time")
        return "\n".join(lines)
    first = run.history[0]
    lines.append(f"best: trial {best.trial}, {best.iteration_time_s * 1e3:.3f} ms per iteration: {best.summary}")
    if first.ok and first.note == "naive":
        lines.append(f"naive schedule (trial 1): {first.iteration_time_s * 1e3:.3f} ms; speed-up "
                     f"{first.iteration_time_s / best.iteration_time_s:.2f}x")
    lines.append(f"best schedule: {run.out / 'best_schedule.toml'}")
    return "\n".join(lines)
