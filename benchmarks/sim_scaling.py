"""How long the simulator takes per simulated iteration at 16, 128 and 1024 nodes.

    .venv/bin/python benchmarks/sim_scaling.py        # writes results/sim_scaling.md and .json

The clusters repeat the node types of jobs/clusters/large128.toml in its proportions; the job is the
charlm workload with a global batch of 8 samples per node. Each configuration runs the naive schedule
(one server: messages grow as the nodes) and the balanced one (a server per four nodes: messages grow
as the square of the nodes), without and with run-to-run noise (noise scatters the ranks' finishing
times, so far more events). Wall and CPU time are the best of --repeats runs, divided by the
iterations; on a shared machine the CPU time is the steadier measure of the simulator's cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from hpcps.cluster import Cluster, Node, load_cluster  # noqa: E402
from hpcps.cluster.placement import balanced, naive  # noqa: E402
from hpcps.sim import SimOptions, load_profiles, simulate  # noqa: E402


def cluster_like(template: Cluster, n: int) -> Cluster:
    """n nodes whose types follow template's in proportion (node i takes the type of template node
    i * len(template) // n), so every size has the same mix."""
    nodes = tuple(Node(f"x{i:05d}", template.nodes[i * len(template) // n].type) for i in range(n))
    return Cluster(f"{template.name}-as-{n}", template.types, nodes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Time the simulator per simulated iteration at several cluster sizes.")
    p.add_argument("--sizes", default="16,128,1024", help="node counts (default 16,128,1024)")
    p.add_argument("--iterations", type=int, default=3, help="iterations per simulation (default 3)")
    p.add_argument("--repeats", type=int, default=2, help="runs per configuration; the best counts (default 2)")
    p.add_argument("--workload", default="charlm", help="profiled workload (default charlm)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "sim_scaling.md",
                   help="markdown file to write (default results/sim_scaling.md)")
    args = p.parse_args(argv)

    profiles = load_profiles()
    profile = profiles.workload(args.workload)
    template = load_cluster(ROOT / "jobs/clusters/large128.toml")
    from _machine import facts, facts_markdown, load_average
    machine = facts()
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        cluster = cluster_like(template, n)
        for make in (naive, balanced):
            placement = make(cluster, 8 * n).to_rank_schedule()
            for noise in (0.0, 0.1):
                options = SimOptions(iterations=args.iterations, noise_sigma=noise)
                best, best_cpu, result = float("inf"), float("inf"), None
                for _ in range(args.repeats):
                    t0, c0 = time.perf_counter(), time.process_time()
                    result = simulate(cluster, placement, profile, profiles.machine, options)
                    best = min(best, time.perf_counter() - t0)
                    best_cpu = min(best_cpu, time.process_time() - c0)
                messages = 2 * len(placement.schedule.servers) * len(placement.schedule.workers)
                rows.append((n, make.__name__, len(placement.schedule.servers), messages, noise,
                             result.iteration_time_s, result.events / args.iterations, best / args.iterations,
                             best_cpu / args.iterations))
                print(f"{n:>5} nodes  {make.__name__:8s} noise {noise:.1f}: "
                      f"simulated {result.iteration_time_s * 1e3:8.2f} ms/iteration, "
                      f"{best / args.iterations:7.3f} s wall, {best_cpu / args.iterations:7.3f} s CPU "
                      "per iteration", flush=True)
    machine["load_average_at_end"] = load_average()

    command = " ".join(["python", "benchmarks/sim_scaling.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [
        "# Simulator wall time per simulated iteration",
        "",
        f"Command: `{command}` (from the repository root, with `.venv` active).",
        "",
        "One Python process on a machine shared with other work:",
        "",
        facts_markdown(machine),
        "",
        f"Workload `{args.workload}` ({profile.params} parameters), global batch 8 per node, "
        f"{args.iterations} iterations per simulation, best of {args.repeats} runs; clusters with the "
        "node-type mix of `jobs/clusters/large128.toml`; max-min sharing, default resolution "
        "(a thousandth of the median step).",
        "",
        "| nodes | schedule | servers | messages / iteration | noise sigma | simulated iteration (ms) "
        "| events / iteration | wall time / iteration (s) | CPU time / iteration (s) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, name, servers, messages, noise, sim_t, events, wall, cpu in rows:
        lines.append(f"| {n} | {name} | {servers} | {messages} | {noise:.1f} | {sim_t * 1e3:.2f} | {events:.0f} "
                     f"| {wall:.3f} | {cpu:.3f} |")
    lines += [
        "",
        "Messages per iteration are 2 x servers x workers (a pull and a push per shard and worker), so the",
        "balanced schedule at 1024 nodes moves 524,288 messages an iteration; noise scatters when they",
        "start and end, which multiplies the rate recomputations. CPU time is the simulator's own work;",
        "wall time exceeds it by what other jobs on the shared cores took.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    keys = ("nodes", "schedule", "servers", "messages_per_iteration", "noise_sigma", "simulated_iteration_s",
            "events_per_iteration", "wall_s_per_iteration", "cpu_s_per_iteration")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "facts": machine, "workload": args.workload, "iterations": args.iterations,
         "repeats": args.repeats, "rows": [dict(zip(keys, r)) for r in rows]}, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
