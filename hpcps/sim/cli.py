"""python -m hpcps.sim: the simulated iteration time of a schedule on a cluster, without MPI.

    python -m hpcps.sim --cluster jobs/clusters/hetero8.toml --schedule naive
    python -m hpcps.sim --cluster jobs/clusters/hetero8.toml --schedule my_nodes.toml --job jobs/default.toml --json

--schedule takes a node schedule ([[nodes]], docs/cluster.md), a rank-level schedule (servers and
[[workers]]; rank r stands for node r mod the number of nodes), or the name of a built-in: naive (one
server on the first node, equal batches on every node) or balanced (batches by speed, servers on the
fastest networks). Bad input is one line on stderr and exit status 2; nothing is written then.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hpcps.cli import RankAwareParser, cluster_path, default_job_path, run_tool
from hpcps.config import ConfigError, limits, load_job
from hpcps.config.toml_schema import check_number
from hpcps.io.outputs import check_output

TOOL = "hpcps.sim"
BUILTIN_SCHEDULES = ("naive", "balanced")
MAX_TABLE_ROWS = 64


def build_parser() -> RankAwareParser:
    p = RankAwareParser(prog="python -m hpcps.sim",
                        description="Simulate parameter-server training of a job under a schedule on a described "
                                    "cluster (bsp, ssp or asp) and print the iteration time (no MPI needed).")
    p.add_argument("--cluster", type=Path, default=None,
                   help="cluster TOML file (default: the job's cluster key)")
    p.add_argument("--schedule", default=None, metavar="{FILE,naive,balanced}",
                   help="node or rank schedule TOML file, or a built-in: naive, balanced "
                        "(default: the job's [schedule], else naive)")
    p.add_argument("--job", type=Path, default=None, help="job TOML file (default: jobs/default.toml)")
    p.add_argument("--iterations", type=int, default=5, help="iterations to simulate (default 5)")
    p.add_argument("--steady-state", action="store_true",
                   help="simulate one iteration more before and after those measured and leave them out: the "
                        "first starts cold, the last has no next pulls to share NICs with (docs/sim.md)")
    p.add_argument("--noise", type=float, default=0.0, metavar="SIGMA",
                   help="run-to-run noise: lognormal sigma of a mean-one factor on every step (default 0)")
    p.add_argument("--straggler-prob", type=float, default=0.0, metavar="P",
                   help="chance per worker and iteration of a straggling step (default 0)")
    p.add_argument("--straggler-slowdown", type=float, default=3.0, metavar="X",
                   help="how much slower a straggling step is (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and stragglers (default 0)")
    p.add_argument("--sync", choices=("bsp", "ssp", "asp"), default=None,
                   help="synchronisation simulated (default: the job's training.sync): bsp, ssp (bounded "
                        "staleness), asp (asynchronous)")
    p.add_argument("--staleness", type=int, default=None, metavar="S",
                   help="ssp's bound: a worker may run S clocks ahead of the slowest (default: the job's "
                        "training.staleness when the mode is the job's, else 0)")
    p.add_argument("--sharing", choices=("maxmin", "equal"), default="maxmin",
                   help="how flows share a NIC: max-min fair or equal shares (default maxmin)")
    p.add_argument("--resolution", type=float, default=None, metavar="SECONDS",
                   help="handle events this close together at once (default: 1/1000 of the median step; 0: exact)")
    p.add_argument("--profiles", type=Path, default=None,
                   help="compute profiles (default: $HPCPS_PROFILES, else hpcps/sim/profiles.toml, from "
                        "benchmarks/calibrate_compute.py)")
    p.add_argument("--save-schedule", type=Path, default=None, metavar="FILE",
                   help="also write the node schedule that was simulated (naive, balanced or a node schedule file)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def resolve_inputs(args):
    """Load and check everything; raises ConfigError on bad input. Returns what simulate needs."""
    from hpcps.cluster import load_cluster
    from hpcps.cluster.placement import (NodeSchedule, balanced, load_any_schedule, naive, place_rank_schedule,
                                         placement_of)
    from hpcps.sim.engine import SimOptions, job_options
    from hpcps.sim.profile import load_profiles, profile_for_job, profiles_path

    check_number("--iterations", None, args.iterations, ge=1, le=limits.MAX_SIM_ITERATIONS)
    check_number("--noise", None, args.noise, ge=0, le=limits.MAX_NOISE_SIGMA)
    check_number("--straggler-prob", None, args.straggler_prob, ge=0, le=1)
    check_number("--straggler-slowdown", None, args.straggler_slowdown, ge=1, le=limits.MAX_STRAGGLER_SLOWDOWN)
    check_number("--seed", None, args.seed, ge=0, le=limits.MAX_SEED)
    if args.resolution is not None:
        check_number("--resolution", None, args.resolution, ge=0, le=limits.MAX_STEP_S)
    if args.staleness is not None:
        check_number("--staleness", None, args.staleness, ge=0, le=limits.MAX_STALENESS)

    job_path = args.job or default_job_path()
    job = load_job(job_path)
    path = cluster_path(args.cluster, job, required=True)
    cluster = load_cluster(path)
    gb = job.training.global_batch
    node_schedule = None
    if args.schedule in BUILTIN_SCHEDULES:
        node_schedule = (naive if args.schedule == "naive" else balanced)(cluster, gb)
        placement, label = node_schedule.to_rank_schedule(), args.schedule
    elif args.schedule is not None:
        loaded = load_any_schedule(args.schedule)
        placement, label = placement_of(loaded, cluster, gb), args.schedule
        node_schedule = loaded if isinstance(loaded, NodeSchedule) else None
    elif job.schedule is not None:
        job.schedule.check_against(job.schedule.n_ranks_needed, gb)
        placement, label = place_rank_schedule(job.schedule, cluster), f"{job.source} [schedule]"
        placement.check_threads(cluster)
    else:
        node_schedule = naive(cluster, gb)
        placement, label = node_schedule.to_rank_schedule(), "naive"
    if args.save_schedule is not None:
        if node_schedule is None:
            raise ConfigError("--save-schedule", None,
                              "only a node schedule can be saved: use naive, balanced or a node schedule file")
        if not args.save_schedule.parent.is_dir():
            raise ConfigError("--save-schedule", None, f"directory {args.save_schedule.parent} does not exist")
        # Replaced atomically when it exists (docs/sim.md), but never one of this command's inputs.
        inputs = [job_path, path, args.schedule if args.schedule not in BUILTIN_SCHEDULES else None,
                  profiles_path(args.profiles)]
        check_output(args.save_schedule, "--save-schedule", inputs=inputs, replace=True, example="schedule.toml")

    profiles = load_profiles(args.profiles)
    profile = profile_for_job(profiles, job.workload, job.model, job.data)
    settings = job_options(job)
    settings.update(sync_options(args, job))
    options = SimOptions(iterations=args.iterations, noise_sigma=args.noise, straggler_prob=args.straggler_prob,
                         straggler_slowdown=args.straggler_slowdown, seed=args.seed, sharing=args.sharing,
                         resolution_s=args.resolution, steady_state=args.steady_state, **settings)
    return job, cluster, placement, label, node_schedule, profiles, profile, options


def sync_options(args, job) -> dict:
    """sync and staleness: --sync and --staleness over the job's training.sync and staleness (a mode
    other than the job's starts from staleness 0). Raises ConfigError for a staleness without ssp."""
    sync = args.sync or job.training.sync
    staleness = args.staleness
    if staleness is None:
        staleness = job.training.staleness if sync == job.training.sync else 0
    if staleness and sync != "ssp":
        where = "--sync" if args.sync else f"{job.source}: training.sync"
        raise ConfigError("--staleness", None, f"applies to ssp only, got --staleness {staleness} with sync "
                                               f"{sync!r} ({where})")
    return {"sync": sync, "staleness": staleness}


def render_table(result, job, cluster, label: str, profile, options=None) -> str:
    stale = options is not None and options.sync != "bsp"
    lines = [f"cluster {cluster.name} ({len(cluster)} nodes), job {job.name} (workload {job.workload}, "
             f"{profile.params} parameters), schedule {label}: {result.n_servers} server(s), "
             f"{result.n_workers} worker(s), global batch {result.global_batch}"]
    if stale:
        mode = options.sync + (f" (staleness {options.staleness})" if options.sync == "ssp" else "")
        lines.append(f"{mode}: iteration time {result.iteration_time_s * 1e3:.3f} ms (a global batch at the "
                     f"workers' own rates, over {len(result.iteration_times_s)} iterations each; iter_ms: each "
                     f"rank's own), {result.samples_per_s:.1f} samples/s, "
                     f"{result.bytes_per_iteration / 1e6:.3f} MB over NICs per iteration")
    else:
        lines.append(f"iteration time {result.iteration_time_s * 1e3:.3f} ms (mean of {len(result.iteration_times_s)}), "
                     f"{result.samples_per_s:.1f} samples/s, {result.bytes_per_iteration / 1e6:.3f} MB over NICs "
                     "per iteration")
    for note in result.notes:
        lines.append(f"note: compute profile {note}")
    header = f"{'rank':>5} {'node':<12} {'server':>6} {'batch':>6} {'thr':>3} " \
             f"{'compute_ms':>10} {'pull_ms':>8} {'push_ms':>8} {'update_ms':>9} {'wait_ms':>8}"
    lines.append(header + (f" {'iter_ms':>8}" if stale else ""))
    for r in result.ranks[:MAX_TABLE_ROWS]:
        lines.append(f"{r.rank:>5} {r.node:<12} {'yes' if r.server else '':>6} {r.batch or '':>6} "
                     f"{r.threads or '':>3} {r.compute_s * 1e3:>10.3f} {r.pull_s * 1e3:>8.3f} "
                     f"{r.push_s * 1e3:>8.3f} {r.aggregate_s * 1e3:>9.3f} {r.wait_s * 1e3:>8.3f}"
                     + (f" {r.iteration_s * 1e3:>8.3f}" if stale else ""))
    if len(result.ranks) > MAX_TABLE_ROWS:
        lines.append(f"... {len(result.ranks) - MAX_TABLE_ROWS} more ranks (--json lists all)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(TOOL, lambda: run(args))


def run(args) -> int:
    job, cluster, placement, label, node_schedule, profiles, profile, options = resolve_inputs(args)
    from hpcps.cluster.placement import write_node_schedule
    from hpcps.sim.engine import simulate
    result = simulate(cluster, placement, profile, profiles.machine, options)
    if not result.feasible:
        raise ConfigError(label, None, f"the schedule cannot run on {cluster.source}: {result.status}")
    if args.save_schedule is not None:
        write_node_schedule(node_schedule, args.save_schedule, "--save-schedule")
    if args.json:
        out = result.to_dict()
        out.update({"cluster": cluster.name, "cluster_file": cluster.source, "schedule": label, "job": job.name,
                    "workload": job.workload, "params": profile.params, "profiles": profiles.source,
                    "options": {"iterations": options.iterations, "noise_sigma": options.noise_sigma,
                                "straggler_prob": options.straggler_prob,
                                "straggler_slowdown": options.straggler_slowdown, "seed": options.seed,
                                "sharing": options.sharing, "resolution_s": options.resolution_s,
                                "bucket_mb": options.bucket_mb, "overlap": options.overlap,
                                "steady_state": options.steady_state, "sync": options.sync,
                                "staleness": options.staleness}})
        print(json.dumps(out))
    else:
        print(render_table(result, job, cluster, label, profile, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
