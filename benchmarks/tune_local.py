"""The tuner with real MPI trials on this machine: the local backend emulating jobs/clusters/hetero8.toml.

    .venv/bin/python benchmarks/tune_local.py              # writes results/tune_local.{md,json,png}

Runs `python -m hpcps.tune --backend local` (each trial an `mpiexec` launch of hpcps.train under
emulation, its time and observations read from the trial's trace) for each strategy asked for, and
reports every trial and the best schedule's measured speed-up over the naive schedule (trial 1 of
every strategy). Target: structured at least 1.8x faster than naive within 10 trials.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--job", default="jobs/hetero8.toml")
    p.add_argument("--strategies", default="structured")
    p.add_argument("--budget", type=int, default=10)
    p.add_argument("--iterations", type=int, default=10, help="training iterations per trial (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=Path, default=ROOT / "results" / "runs" / "tune_local",
                   help="where the tuning runs go (default results/runs/tune_local, not kept in git)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "tune_local.md")
    args = p.parse_args(argv)
    command = "python benchmarks/tune_local.py " + " ".join(argv if argv is not None else sys.argv[1:])
    from _machine import facts, facts_markdown, load_average
    f = facts()
    results = []
    t_all = time.perf_counter()
    for strategy in args.strategies.split(","):
        out = args.runs / strategy
        if out.exists():
            shutil.rmtree(out)
        cmd = [sys.executable, "-m", "hpcps.tune", "--job", args.job, "--backend", "local", "--strategy", strategy,
               "--budget", str(args.budget), "--iterations", str(args.iterations), "--seed", str(args.seed),
               "--out", str(out)]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
        print(r.stdout[-3000:], r.stderr[-2000:], flush=True)
        if r.returncode != 0:
            print(f"{strategy}: exit status {r.returncode}", file=sys.stderr)
            return 1
        rows = list(csv.DictReader((out / "trials.csv").read_text().splitlines()))
        results.append({"strategy": strategy, "rows": rows, "wall_s": time.perf_counter() - t0,
                        "best_schedule": (out / "best_schedule.toml").read_text()})
        shutil.copy(out / "convergence.png", args.out.with_name(f"tune_local_{strategy}.png"))
    f["load_average_at_end"] = load_average()

    lines = ["# The tuner with real MPI trials (local backend, emulated hetero8)", "",
             f"Command: `{command}`", "",
             f"Job `{args.job}`, cluster `jobs/clusters/hetero8.toml` emulated on this machine (docs/emulation.md); "
             f"each trial is an `mpiexec` launch of `hpcps.train` for {args.iterations} iterations, its time the mean "
             "of the trace's iteration times after the first two (start-up), in emulated seconds. Total wall time "
             f"{(time.perf_counter() - t_all) / 60:.1f} min.", "", facts_markdown(f), ""]
    for res in results:
        rows = res["rows"]
        ok = [r for r in rows if r["status"] == "ok"]
        naive = float(rows[0]["iteration_time_s"]) if rows and rows[0]["status"] == "ok" else None
        lines += [f"## {res['strategy']}", "",
                  "| trial | status | measured (ms) | predicted (ms) | best so far (ms) | speed-up over naive | schedule |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in rows:
            meas = f"{float(r['iteration_time_s']) * 1e3:.2f}" if r["iteration_time_s"] else "-"
            pred = (f"{float(r['predicted_s']) * 1e3:.2f} ± {float(r['predicted_sd'] or 0) * 1e3:.2f}"
                    if r["predicted_s"] else "-")
            best = f"{float(r['best_s']) * 1e3:.2f}" if r["best_s"] else "-"
            sp = f"{naive / float(r['best_s']):.2f}x" if naive and r["best_s"] else "-"
            lines.append(f"| {r['trial']} | {r['status']} | {meas} | {pred} | {best} | {sp} | `{r['schedule']}` |")
        if ok and naive:
            within10 = [float(r["iteration_time_s"]) for r in ok if int(r["trial"]) <= 10]
            speedup = naive / min(within10)
            first = next((int(r["trial"]) for r in ok if naive / float(r["iteration_time_s"]) >= 1.8), None)
            met = "met" if speedup >= 1.8 else "NOT met"
            lines += ["", f"Best within 10 trials: **{speedup:.2f}x** faster than naive ({naive * 1e3:.2f} ms -> "
                      f"{min(within10) * 1e3:.2f} ms); first trial at 1.8x or more: "
                      f"{first if first else 'none'} (target 1.8x within 10 trials: {met}). Wall time "
                      f"{res['wall_s'] / 60:.1f} min. Convergence: `tune_local_{res['strategy']}.png`.", "",
                      "Best schedule:", "", "```toml", res["best_schedule"].strip(), "```", ""]
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "facts": f, "results": results}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
