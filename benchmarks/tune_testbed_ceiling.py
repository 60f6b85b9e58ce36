"""How much faster than the heuristic's schedule any schedule can be, per cluster of results/tune_testbed.md,
by the simulator under the testbed's calibration (results/testbed_fidelity.md: median |error| 9.4% against
the testbed): each cell's re-measured best schedules simulated, and a long search for the best known
schedule (benchmarks/_best_known.py), once started from those schedules and once from none of them.
heuristic / best known is then the most that "structured at least 1.2x faster than heuristic" could reach
on that cluster; nothing is run on the testbed.

    .venv/bin/python benchmarks/tune_testbed_ceiling.py              # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/tune_testbed_ceiling.py --budget 30 --out /tmp/ceiling.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RESULTS = ROOT / "results" / "tune_testbed.json"
PROFILES = ROOT / "results" / "testbed_fidelity_profiles.toml"
STRATEGIES = ("structured", "heuristic", "random", "naive")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS, help="tune_testbed's JSON (default %(default)s)")
    p.add_argument("--profiles", type=Path, default=PROFILES, help="the testbed's calibration (default %(default)s)")
    p.add_argument("--budget", type=float, default=120.0, help="seconds per search (default 120; two per cluster)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "tune_testbed_ceiling.md")
    args = p.parse_args(argv)
    for path, flag in ((args.results, "--results"), (args.profiles, "--profiles")):
        if not path.is_file():
            p.error(f"{flag}: {path} is not a file")
    if args.budget <= 0:
        p.error("--budget must be positive")
    if args.out.resolve() in (args.results.resolve(), args.profiles.resolve()):
        p.error("--out must not be one of this command's inputs")
    from _best_known import BestKnownSearch
    from _machine import facts, facts_markdown

    from hpcps.cluster import load_cluster
    from hpcps.cluster.placement import parse_node_schedule
    from hpcps.config import load_job
    from hpcps.sim import load_profiles
    from hpcps.tune.backends.sim import SimBackend
    from hpcps.tune.loop import summarize
    from hpcps.tune.problem import problem_for

    data = json.loads(args.results.read_text())
    profiles = load_profiles(args.profiles)
    job = load_job(ROOT / data["job"])
    f = facts()
    t0 = time.perf_counter()
    out = []
    for name, cluster_file in data["clusters_files"].items():
        cluster = load_cluster(ROOT / cluster_file)
        problem = problem_for(cluster, job, profiles)
        backend = SimBackend(cluster, job, profiles)
        cells, seeds = [], []
        for key, cell in data["cells"].items():
            if cell["cluster"] != name:
                continue
            plan = cell["remeasured"]["plan"]["schedules"]
            sims = {}
            for strategy in STRATEGIES:
                if strategy in plan:
                    s = parse_node_schedule(plan[strategy], f"{key} {strategy}")
                    sims[strategy] = backend.true_time(s, iterations=2)
                    seeds.append(s)
            cells.append({"cell": key, "seed": cell["seed"], "simulated_s": sims})
            print(f"{key}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in sims.items()), flush=True)
        seeded = BestKnownSearch(problem, backend, 0).run(seeds, budget_s=args.budget)
        alone = BestKnownSearch(problem, backend, 1).run([], budget_s=args.budget)
        best_s = min(seeded[0], alone[0])
        best = seeded[1] if seeded[0] <= alone[0] else alone[1]
        ceilings = [c["simulated_s"]["heuristic"] / best_s for c in cells if "heuristic" in c["simulated_s"]]
        out.append({"cluster": name, "cells": cells, "best_known_s": best_s, "seeded_search_s": seeded[0],
                    "seeded_evaluations": seeded[2], "unseeded_search_s": alone[0], "unseeded_evaluations": alone[2],
                    "best_known": summarize(best), "heuristic_over_best_known": ceilings,
                    "median_ceiling": statistics.median(ceilings) if ceilings else None})
        print(f"{name}: best known {best_s * 1e3:.2f} ms (seeded {seeded[0] * 1e3:.2f}, unseeded "
              f"{alone[0] * 1e3:.2f}); heuristic / best known: " + ", ".join(f"{c:.2f}x" for c in ceilings),
              flush=True)
    given = argv if argv is not None else sys.argv[1:]
    command = shlex.join(["python", "benchmarks/tune_testbed_ceiling.py", *given])
    lines = ["# How far the heuristic is from the best schedule on the testbed's clusters", "",
             f"Command: `{command}`", "", facts_markdown(f), "",
             f"Wall time {(time.perf_counter() - t0) / 60:.1f} min.", "",
             "results/tune_testbed.md sets the target \"structured at least 1.2x faster than heuristic on a "
             "cluster where the network matters\". Here, no testbed runs: the simulator under the testbed's "
             f"calibration ({args.profiles.relative_to(ROOT) if args.profiles.is_relative_to(ROOT) else args.profiles}"
             "; median |error| 9.4% against the testbed, results/testbed_fidelity.md) times each cell's "
             "re-measured best schedules, and searches for the best known schedule (benchmarks/_best_known.py: "
             f"iterated local search, {args.budget:.0f} s started from those schedules and {args.budget:.0f} s "
             "from none of them). heuristic / best known is the most any strategy could gain over the heuristic's "
             "schedule on that cluster, by the simulator.", "",
             "| cluster | cell | structured | heuristic | random | naive | heuristic / best known |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in out:
        for c in r["cells"]:
            s = c["simulated_s"]
            cell = [f"{s[k] * 1e3:.2f}" if k in s else "-" for k in STRATEGIES]
            ratio = f"{s['heuristic'] / r['best_known_s']:.2f}x" if "heuristic" in s else "-"
            lines.append(f"| {r['cluster']} | seed {c['seed']} | " + " | ".join(cell) + f" | {ratio} |")
    lines += ["", "Simulated ms an iteration (noise-free, steady state: hpcps.tune's SimBackend.true_time).", "",
              "| cluster | best known (ms) | seeded search | unseeded search | best known schedule | median heuristic "
              "/ best known |", "| --- | ---: | ---: | ---: | --- | ---: |"]
    for r in out:
        lines.append(f"| {r['cluster']} | {r['best_known_s'] * 1e3:.2f} | {r['seeded_search_s'] * 1e3:.2f} "
                     f"({r['seeded_evaluations']} schedules) | {r['unseeded_search_s'] * 1e3:.2f} "
                     f"({r['unseeded_evaluations']} schedules) | `{r['best_known']}` | "
                     f"{r['median_ceiling']:.2f}x |")
    lines += ["", "Raw figures: the JSON beside this file."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "facts": f, "budget_s": args.budget,
                                                         "profiles": str(args.profiles), "clusters": out}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
