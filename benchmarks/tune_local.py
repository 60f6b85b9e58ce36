"""The tuner with real MPI trials on this machine: the local backend emulating jobs/clusters/hetero8.toml.

    .venv/bin/python benchmarks/tune_local.py              # writes results/tune_local.{md,json,png}

Runs `python -m hpcps.tune --backend local` (each trial an `mpiexec` launch of hpcps.train under
emulation, its time and observations read from the trial's trace) for each strategy asked for, and
reports every trial, for each strategy and each of --seeds seeds.

The verdict does not compare one naive measurement with the best of ten noisy ones: after the tuning
runs, in the same sitting, the naive schedule and every run's best schedule are measured again
--repeats times each, the same way as a trial, in rounds whose order rotates. A run's speed-up is the
median naive time over the median time of its best schedule, both from those re-measurements.
Target: structured at least 1.8x faster than naive within 10 trials (median over seeds).
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


def remeasure(args, results: list[dict]) -> None:
    """Naive and every run's best schedule, args.repeats times each, as trials of the local backend, in
    rounds whose order rotates; the times go into results (naive_remeasured_s, best_remeasured_s)."""
    import tempfile

    from hpcps.cluster import load_cluster
    from hpcps.cluster.placement import load_node_schedule, naive
    from hpcps.config import load_job
    from hpcps.tune.backends.local import LocalBackend
    job_path = ROOT / args.job
    job = load_job(job_path)
    cluster_path = job.cluster_path()
    if cluster_path is None:
        raise SystemExit(f"{args.job} names no cluster")
    cluster = load_cluster(cluster_path)
    backend = LocalBackend(cluster, job, job_path, cluster_path, iterations=args.iterations)
    entries = [("naive", naive(cluster, job.training.global_batch), None)]
    entries += [(f"{r['strategy']}-{r['seed']}", load_node_schedule(r["best_schedule_path"]), r) for r in results]
    times: dict[str, list[float]] = {name: [] for name, _, _ in entries}
    with tempfile.TemporaryDirectory(prefix="tune-local-") as tmp:
        n = 0
        for rnd in range(args.repeats):
            k = rnd % len(entries)
            for name, sched, _ in entries[k:] + entries[:k]:
                n += 1
                d = Path(tmp) / f"{n:03d}"
                d.mkdir()
                res = backend.run_trial(d, sched, n)
                if not res.ok:
                    raise SystemExit(f"re-measuring {name}: {res.status}")
                times[name].append(res.iteration_time_s)
                print(f"round {rnd + 1}: {name} {res.iteration_time_s * 1e3:.2f} ms", flush=True)
    for name, _, r in entries:
        if r is None:
            for res in results:
                res["naive_remeasured_s"] = times[name]
        else:
            r["best_remeasured_s"] = times[name]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--job", default="jobs/hetero8.toml")
    p.add_argument("--strategies", default="structured")
    p.add_argument("--budget", type=int, default=10)
    p.add_argument("--iterations", type=int, default=10, help="training iterations per trial (default 10)")
    p.add_argument("--seeds", type=int, default=3, help="tuning runs per strategy, seeds 0..N-1 (default 3)")
    p.add_argument("--repeats", type=int, default=3,
                   help="re-measurements of naive and of each run's best schedule (default 3)")
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
        for seed in range(args.seeds):
            out = args.runs / f"{strategy}-{seed}"
            if out.exists():
                shutil.rmtree(out)
            cmd = [sys.executable, "-m", "hpcps.tune", "--job", args.job, "--backend", "local", "--strategy",
                   strategy, "--budget", str(args.budget), "--iterations", str(args.iterations), "--seed", str(seed),
                   "--out", str(out)]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
            print(r.stdout[-3000:], r.stderr[-2000:], flush=True)
            if r.returncode != 0:
                print(f"{strategy} seed {seed}: exit status {r.returncode}", file=sys.stderr)
                return 1
            rows = list(csv.DictReader((out / "trials.csv").read_text().splitlines()))
            results.append({"strategy": strategy, "seed": seed, "rows": rows, "wall_s": time.perf_counter() - t0,
                            "best_schedule": (out / "best_schedule.toml").read_text(),
                            "best_schedule_path": str(out / "best_schedule.toml")})
            if seed == 0:
                shutil.copy(out / "convergence.png", args.out.with_name(f"tune_local_{strategy}.png"))
    remeasure(args, results)
    f["load_average_at_end"] = load_average()

    lines = ["# The tuner with real MPI trials (local backend, emulated hetero8)", "",
             f"Command: `{command}`", "",
             f"Job `{args.job}`, cluster `jobs/clusters/hetero8.toml` emulated on this machine (docs/emulation.md); "
             f"each trial is an `mpiexec` launch of `hpcps.train` for {args.iterations} iterations, its time the mean "
             "of the trace's iteration times after the first two (start-up), in emulated seconds. Total wall time "
             f"{(time.perf_counter() - t_all) / 60:.1f} min.", "", facts_markdown(f), ""]
    naive_ms = [v * 1e3 for v in results[0]["naive_remeasured_s"]] if results else []
    lines += ["## Re-measured: naive against each run's best schedule", "",
              f"After the tuning runs, naive and every run's best schedule, {args.repeats} times each like a "
              "trial, the order rotating from round to round. Naive: "
              + ", ".join(f"{v:.2f}" for v in naive_ms) + " ms.", "",
              "| strategy | seed | best schedule, re-measured (ms) | median | speed-up over naive (medians) |",
              "| --- | ---: | --- | ---: | ---: |"]
    import statistics
    by_strategy: dict[str, list[float]] = {}
    for res in results:
        vals = [v * 1e3 for v in res["best_remeasured_s"]]
        sp = statistics.median(naive_ms) / statistics.median(vals) if vals and naive_ms else float("nan")
        res["speedup_remeasured"] = sp
        by_strategy.setdefault(res["strategy"], []).append(sp)
        lines.append(f"| {res['strategy']} | {res['seed']} | {', '.join(f'{v:.2f}' for v in vals)} | "
                     f"{statistics.median(vals):.2f} | {sp:.2f}x |")
    lines.append("")
    for strategy, sps in by_strategy.items():
        med = statistics.median(sps)
        lines.append(f"- {strategy}: median speed-up over naive **{med:.2f}x** over {len(sps)} seeds "
                     f"[{min(sps):.2f}, {max(sps):.2f}]" + (f" (target 1.8x within {args.budget} trials: "
                     f"{'met' if med >= 1.8 else 'NOT met'})" if strategy == "structured" else "") + ".")
    lines.append("")
    for res in results:
        rows = res["rows"]
        naive = float(rows[0]["iteration_time_s"]) if rows and rows[0]["status"] == "ok" else None
        lines += [f"## {res['strategy']}, seed {res['seed']}: the trials", "",
                  "| trial | status | measured (ms) | predicted (ms) | best so far (ms) | over trial 1 (naive) | "
                  "schedule |", "| ---: | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in rows:
            meas = f"{float(r['iteration_time_s']) * 1e3:.2f}" if r["iteration_time_s"] else "-"
            pred = (f"{float(r['predicted_s']) * 1e3:.2f} ± {float(r['predicted_sd'] or 0) * 1e3:.2f}"
                    if r["predicted_s"] else "-")
            best = f"{float(r['best_s']) * 1e3:.2f}" if r["best_s"] else "-"
            sp = f"{naive / float(r['best_s']):.2f}x" if naive and r["best_s"] else "-"
            lines.append(f"| {r['trial']} | {r['status']} | {meas} | {pred} | {best} | {sp} | `{r['schedule']}` |")
        lines += ["", f"Wall time {res['wall_s'] / 60:.1f} min. Best schedule:", "", "```toml",
                  res["best_schedule"].strip(), "```", ""]
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "facts": f, "results": results}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
