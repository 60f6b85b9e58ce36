"""What one server aggregation costs here, against the simulator's per-byte model of it.

A server aggregates each piece once an iteration (hpcps.ps.server.ServedPiece.aggregate_and_step: the
workers' weighted mean, the finiteness check, the optimiser step). The simulator and the structured
model charge it per byte (calibrate_compute.py: a weighted sum and an optimiser step over 16 MB arrays,
in a hot loop), so a smaller shard costs less and more servers look cheaper. On the testbed a server
waits for pushes between aggregations, asleep, and the call that follows pays for a cold core. This
times the call itself (calibrate_compute.aggregation_cpu_s: thread CPU time, one thread, the median of
REPEATS) for pieces of several sizes, two ways in turn each repetition: after a 10 ms sleep (as on the
testbed) and right after that call (warm), beside the per-byte model of the given profiles (which, when
calibrated since, also hold the fixed part: aggregate_fixed_s, added to the model's column).

    .venv/bin/python benchmarks/aggregate_cost.py          # about a minute; results/aggregate_cost.{md,json}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SIZES = (256, 2048, 9750, 39000, 156000, 1 << 20)     # elements; 39000: hetero10a-1g's shard at 2 servers
WORKERS = (1, 4, 8)
REPEATS = 61


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profiles", type=Path, default=ROOT / "results" / "testbed_fidelity_profiles.toml",
                   help="the per-byte model to compare with (default %(default)s)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "aggregate_cost.md")
    args = p.parse_args(argv)
    if not args.profiles.is_file():
        p.error(f"--profiles: {args.profiles} is not a file")
    if args.out.resolve() == args.profiles.resolve():
        p.error("--out must not be --profiles")
    import numpy as np
    from _machine import command_line, facts, facts_markdown, load_average
    from calibrate_compute import AGGREGATION_SLEEP_S, aggregation_cpu_s

    from hpcps.ps.plan import BYTES_PER_ELEMENT
    from hpcps.sim import load_profiles

    machine = load_profiles(args.profiles).machine
    f = facts()
    rows = []
    for size in SIZES:
        for n_w in WORKERS:
            slept, hot = aggregation_cpu_s(size, n_w, REPEATS)
            model = (machine.aggregate_s_per_byte_per_worker * n_w + machine.update_cost("sgd")) \
                * BYTES_PER_ELEMENT * size + machine.aggregate_fixed_s
            rows.append({"elements": size, "workers": n_w, "hot_s": float(np.median(hot)),
                         "hot_min_s": float(np.min(hot)), "after_sleep_s": float(np.median(slept)),
                         "after_sleep_min_s": float(np.min(slept)), "model_s": model})
            r = rows[-1]
            print(f"{size:8d} elements, {n_w} workers: warm {r['hot_s'] * 1e6:7.1f} us, after a sleep "
                  f"{r['after_sleep_s'] * 1e6:7.1f} us, model {model * 1e6:7.1f} us", flush=True)
    f["load_average_at_end"] = load_average()
    command = command_line(["python", "benchmarks/aggregate_cost.py", *(argv if argv is not None else sys.argv[1:])])
    small = [r for r in rows if r["elements"] <= 39000]
    lines = ["# One server aggregation here, against the simulator's per-byte model", "",
             f"Command: `{command}`", "", facts_markdown(f), "",
             "Why and how: the docstring of benchmarks/aggregate_cost.py. Thread CPU time of "
             "`ServedPiece.aggregate_and_step` (SGD with momentum, one thread), median over "
             f"{REPEATS} (minimum in brackets); the model: `(aggregate_s_per_byte_per_worker x workers + "
             f"update_s_per_byte.sgd) x bytes + aggregate_fixed_s` of `{args.profiles.name}` "
             f"(aggregate_fixed_s {machine.aggregate_fixed_s * 1e6:.1f} us: 0 where not calibrated).", "",
             "| elements | workers | after a 10 ms sleep (us) | right after that (us) | model (us) | "
             "after a sleep / model |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['elements']} | {r['workers']} | {r['after_sleep_s'] * 1e6:.1f} "
                     f"({r['after_sleep_min_s'] * 1e6:.1f}) | {r['hot_s'] * 1e6:.1f} ({r['hot_min_s'] * 1e6:.1f}) | "
                     f"{r['model_s'] * 1e6:.1f} | {r['after_sleep_s'] / r['model_s']:.0f}x |")
    lines += ["", f"Up to 39000 elements (the shards of hetero10a-1g's schedules), an aggregation after a sleep "
              f"took {min(r['after_sleep_s'] for r in small) * 1e6:.0f}-"
              f"{max(r['after_sleep_s'] for r in small) * 1e6:.0f} us whatever the size, right after that "
              f"{min(r['hot_s'] for r in small) * 1e6:.0f}-{max(r['hot_s'] for r in small) * 1e6:.0f} us; "
              f"the model says {min(r['model_s'] for r in small) * 1e6:.1f}-"
              f"{max(r['model_s'] for r in small) * 1e6:.1f} us.", "", "Raw figures: the JSON beside this file."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "facts": f, "repeats": REPEATS,
                                                         "sleep_s": AGGREGATION_SLEEP_S, "profiles": str(args.profiles),
                                                         "rows": rows}, indent=1))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
