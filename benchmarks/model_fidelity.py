"""How well the structured model predicts schedules it has not seen, after 5 trials.

    .venv/bin/python benchmarks/model_fidelity.py                 # writes results/model_fidelity.{md,json,png}
    .venv/bin/python benchmarks/model_fidelity.py --local 10      # also 10 real MPI runs on emulated hetero8
    sudo .venv/bin/python benchmarks/model_fidelity.py --clusters '' --testbed 10 \
        --out results/testbed_model_fidelity.md                    # only the testbed (real shaped links)

Per cluster: the structured strategy runs its first 5 trials with the sim backend (naive, the design
point, 3 by expected improvement); the model fitted to them predicts 20 schedules it has not seen, 10
drawn at random from the space and 10 of those the model itself builds and ranks best (where a tuner
looks); each is then measured like a trial (the sim backend: 5% noise on every step). Reported: the
median relative error of the predicted mean, and how many measured times fall inside the model's 90%
interval (exp(mean +- 1.645 sd) of its log-time prediction).

With --local N the same on real runs: the first 5 trials of a structured tuning run with the local
backend on jobs/hetero8.toml, then N unseen schedules (half random, half model-built) each run with
the local backend. The trials and unseen schedules of one setting share their emulated step costs
(RUNS/LABEL/step_costs.json, as a tuning run's trials share RUN_DIR/step_costs.json): a step of one
batch size is charged alike in each of them.

With --testbed N the same on the testbed (docs/testbed.md: real TCP through shaped links, one network
namespace per node, compute charged as under emulation), on the two clusters of
results/testbed_fidelity.md: hetero8 and hetero10a-1g (every NIC at 1 Gb/s), job jobs/hetero8.toml,
the testbed backend at its default time dilation. Targets (results/testbed_fidelity.md's, fixed before
the run): median error at most 10%, at least 85% of measured times inside the 90% interval.

With --replay CELL... no new runs: CELL is a cell of benchmarks/tune_testbed.py (its structured,
heuristic and random tuning runs of one cluster and seed, one sitting). The model is fitted to the
first 5 structured trials recorded there and predicts every other schedule measured in that sitting
(structured's later trials, heuristic's and random's), which costs seconds instead of testbed time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# One BLAS thread: the tuner's arrays are small, and on a 2-core machine threads only contend.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

Z90 = 1.6448536269514722


def unseen(strategy, model, history, n_random: int, n_model: int, rng) -> list[tuple[str, np.ndarray]]:
    from hpcps.tune.strategies import schedule_key
    from hpcps.tune.strategies.structured import informed_candidates
    space = strategy.space
    seen = {schedule_key(space, r.point) for r in history}
    out = []
    for p in space.random_points(50 * n_random, rng):
        p = space.repair(p)
        k = schedule_key(space, p)
        if k not in seen:
            seen.add(k)
            out.append(("random", p))
        if len(out) == n_random:
            break
    pool = informed_candidates(model)
    order = np.argsort(model.predict_mean(pool), kind="stable")
    for i in order:
        k = schedule_key(space, pool[i])
        if k not in seen:
            seen.add(k)
            out.append(("model-built", pool[i]))
        if len(out) == n_random + n_model:
            break
    return out


def evaluate(problem, strategy, backend, n_random, n_model, seed, trial_dir_root: Path, label: str, trials: int = 5):
    from hpcps.tune.loop import Settings, TuningRun
    settings = Settings(job="", cluster=problem.cluster.name, backend=backend.name, strategy="structured", seed=seed,
                        budget=trials, cluster_name=problem.cluster.name, global_batch=problem.global_batch)
    out = trial_dir_root / label
    out.mkdir(parents=True, exist_ok=True)
    run = TuningRun(out, settings, problem, strategy, backend,
                    echo=lambda s: print(f"  {label}: {s[:110]}", flush=True))
    run.run(trials)
    history = run.history
    model = strategy.model(history)
    rng = np.random.default_rng([seed, 999])
    cases = unseen(strategy, model, history, n_random, n_model, rng)
    X = np.array([p for _, p in cases])
    mean, var = model.predict(X)
    lmean, lvar = model.predict_log(X)
    rows = []
    for i, (kind, p) in enumerate(cases):
        d = out / "unseen" / f"{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        r = backend.run_trial(d, problem.space.decode(p), 1000 + i)
        lo = math.exp(lmean[i, 0] - Z90 * math.sqrt(lvar[i, 0]))
        hi = math.exp(lmean[i, 0] + Z90 * math.sqrt(lvar[i, 0]))
        rows.append({"kind": kind, "status": r.status, "measured_s": r.iteration_time_s,
                     "predicted_s": float(mean[i, 0]), "predicted_sd": float(math.sqrt(var[i, 0])),
                     "lo90_s": lo, "hi90_s": hi, "schedule": problem.space.decode(p).to_dict()})
        print(f"  {label} unseen {i + 1}/{len(cases)} ({kind}): measured {r.iteration_time_s}, "
              f"predicted {mean[i, 0]:.4g} [{lo:.4g}, {hi:.4g}]", flush=True)
    return {"label": label, "trials": [{"trial": h.trial, "measured_s": h.iteration_time_s} for h in history],
            "rows": rows}


def replay(cell: Path, trials: int = 5) -> dict:
    """The structured model fitted to the first `trials` structured trials of a tune_testbed cell,
    against every other schedule measured in it. Raises ValueError naming what is missing."""
    from hpcps.cluster import load_cluster
    from hpcps.config import load_job
    from hpcps.tune import rundir
    from hpcps.tune.problem import problem_for
    from hpcps.tune.strategies import make_strategy
    runs = {}
    for strategy in ("structured", "heuristic", "random"):
        d = cell / strategy
        state = rundir.read_state(d) if rundir.is_run_dir(d) else None
        if state is None:
            raise ValueError(f"{cell}: no {strategy} tuning run in {d} (give a cell of benchmarks/tune_testbed.py)")
        runs[strategy] = (state, rundir.load_records(d, state))
    state, structured = runs["structured"]
    inputs = {k: _recorded_input(Path(state["settings"][k]), state["inputs"][k], cell) for k in ("job", "cluster")}
    problem = problem_for(load_cluster(inputs["cluster"]), load_job(inputs["job"]))
    fitted = structured[:trials]
    if len(fitted) < trials:
        raise ValueError(f"{cell}: the structured run holds {len(fitted)} trial(s), fewer than {trials}")
    model = make_strategy("structured", problem, int(state["settings"]["seed"])).model(fitted)
    seen = {tuple(np.round(r.point, 9)) for r in fitted}
    rows = []
    for strategy, (_, records) in runs.items():
        for r in records:
            key = tuple(np.round(r.point, 9))
            if not r.ok or key in seen:
                continue
            seen.add(key)
            X = np.atleast_2d(r.point)
            mean, var = model.predict(X)
            lmean, lvar = model.predict_log(X)
            rows.append({"kind": strategy, "trial": r.trial, "status": r.status, "measured_s": r.iteration_time_s,
                         "predicted_s": float(mean[0, 0]), "predicted_sd": float(math.sqrt(var[0, 0])),
                         "lo90_s": math.exp(lmean[0, 0] - Z90 * math.sqrt(lvar[0, 0])),
                         "hi90_s": math.exp(lmean[0, 0] + Z90 * math.sqrt(lvar[0, 0])), "schedule": r.summary})
    return {"label": f"replay {cell.parent.name}/{cell.name}", "cell": str(cell),
            "inputs": {k: str(v) for k, v in inputs.items()},
            "trials": [{"trial": h.trial, "measured_s": h.iteration_time_s} for h in fitted], "rows": rows}


def _recorded_input(path: Path, digest: str, cell: Path) -> Path:
    """The job or cluster file a run recorded: its path if it is still there unchanged, else the file of
    the same name under this checkout whose contents match the recorded digest."""
    from hpcps.tune import rundir
    candidates = [path] + [ROOT / Path(*path.parts[i:]) for i in range(1, len(path.parts))]
    for c in candidates:
        if c.is_file() and rundir.fingerprint({"f": c})["f"] == digest:
            return c
    raise ValueError(f"{cell}: the run's input {path} is neither there nor in this checkout with the recorded "
                     f"contents ({digest})")


def summary(res: dict) -> dict:
    ok = [r for r in res["rows"] if r["measured_s"] is not None]
    err = [abs(r["predicted_s"] / r["measured_s"] - 1) for r in ok]
    inside = [r["lo90_s"] <= r["measured_s"] <= r["hi90_s"] for r in ok]
    by = {}
    for kind in dict.fromkeys(r["kind"] for r in res["rows"]):
        e = [abs(r["predicted_s"] / r["measured_s"] - 1) for r in ok if r["kind"] == kind]
        c = [r["lo90_s"] <= r["measured_s"] <= r["hi90_s"] for r in ok if r["kind"] == kind]
        by[kind] = (float(np.median(e)) if e else None, (sum(c), len(c)))
    signed = [r["predicted_s"] / r["measured_s"] - 1 for r in ok]
    return {"n": len(ok), "median_error": float(np.median(err)) if err else None,
            "p90_error": float(np.quantile(err, 0.9)) if err else None,
            "median_signed_error": float(np.median(signed)) if signed else None,
            "coverage": (sum(inside), len(inside)), "by_kind": by}


def figure_cells(s: dict) -> str:
    """The summary's schedules, median and 90th percentile error and coverage, as table cells."""
    k, n = s["coverage"]
    return (f"{s['n']} | {s['median_error'] * 100:.1f}% | {s['p90_error'] * 100:.1f}% | "
            f"{k}/{n} ({100 * k / max(1, n):.0f}%)")


def write_results(out: Path, lines: list[str], command: str, f: dict, results: list) -> None:
    """The markdown at out, the JSON beside it, and the markdown on standard output."""
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"command": command, "facts": f, "results": results}, indent=1))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clusters", default="hetero10a,hetero10b,hetero10c")
    p.add_argument("--job", default="jobs/cifar.toml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local", type=int, default=0, help="also N unseen schedules on real MPI runs (hetero8)")
    p.add_argument("--testbed", type=int, default=0,
                   help="also N unseen schedules on the testbed, on hetero8 and hetero10a-1g (root)")
    p.add_argument("--runs", type=Path, default=None, help="keep the runs here (default: a temporary directory)")
    p.add_argument("--replay", type=Path, nargs="+", default=[], metavar="CELL",
                   help="instead of new runs: cells of benchmarks/tune_testbed.py (e.g. "
                        "results/tune_testbed_cells/hetero8/seed-2), the model fitted to each one's first 5 "
                        "structured trials against every other schedule measured there")
    p.add_argument("--out", type=Path, default=None,
                   help="results file (default: results/model_fidelity.md, with --replay "
                        "results/testbed_model_replay.md)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = ROOT / "results" / ("testbed_model_replay.md" if args.replay else "model_fidelity.md")
    command = shlex.join(["python", "benchmarks/model_fidelity.py", *(argv if argv is not None else sys.argv[1:])])
    if args.replay:
        return main_replay(args, command)
    from _machine import facts, facts_markdown, load_average

    from hpcps.cluster import load_cluster
    from hpcps.config import load_job
    from hpcps.tune.backends.sim import SimBackend
    from hpcps.tune.problem import problem_for
    from hpcps.tune.strategies import make_strategy

    f = facts()
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        root = args.runs or Path(tmp)
        for c in args.clusters.split(","):
            if not c:
                continue
            cluster = load_cluster(ROOT / "jobs" / "clusters" / f"{c}.toml")
            job = load_job(ROOT / args.job)
            problem = problem_for(cluster, job)
            backend = SimBackend(cluster, job, iterations=10, seed=args.seed)
            strategy = make_strategy("structured", problem, args.seed)
            results.append(evaluate(problem, strategy, backend, 10, 10, args.seed, root, f"sim {c}"))
        # Real runs: (label, backend class, cluster file, unseen schedules), job jobs/hetero8.toml.
        real = []
        if args.local:
            from hpcps.tune.backends.local import LocalBackend
            real.append(("local hetero8", LocalBackend, ROOT / "jobs" / "clusters" / "hetero8.toml", args.local))
        if args.testbed:
            from hpcps.tune.backends.testbed import TestbedBackend
            real += [("testbed-hetero8", TestbedBackend, ROOT / "jobs" / "clusters" / "hetero8.toml", args.testbed),
                     ("testbed-hetero10a-1g", TestbedBackend, ROOT / "results" / "testbed_hetero10a_1g.toml",
                      args.testbed)]
        job_path = ROOT / "jobs" / "hetero8.toml"
        for label, backend_class, cluster_path, n in real:
            cluster, job = load_cluster(cluster_path), load_job(job_path)
            problem = problem_for(cluster, job)
            backend = backend_class(cluster, job, job_path, cluster_path, iterations=10)
            if hasattr(backend, "dilation"):
                label = f"{label}-dilation-{backend.dilation:g}"
            # The trials and the unseen schedules of one setting charge a step alike, as a tuning run's do.
            backend.step_costs = (root / label / "step_costs.json").resolve()
            strategy = make_strategy("structured", problem, args.seed)
            results.append(evaluate(problem, strategy, backend, n // 2, n - n // 2, args.seed, root, label))
    f["load_average_at_end"] = load_average()
    lines = ["# Model fidelity: the structured model after 5 trials, on schedules it has not seen", "",
             f"Command: `{command}`", "", __doc__.split("\n\n", 2)[2].strip(), "",
             f"Wall time {(time.perf_counter() - t0) / 60:.1f} min.", "", facts_markdown(f), "",
             "| setting | unseen schedules | median error | 90th percentile error | inside the 90% interval | "
             "random: median error, inside | model-built: median error, inside |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for res in results:
        s = summary(res)
        res["summary"] = s
        parts = []
        for kind in ("random", "model-built"):
            e, (k, n) = s["by_kind"].get(kind, (None, (0, 0)))
            parts.append(f"{e * 100:.1f}%, {k}/{n}" if e is not None else "-")
        lines.append(f"| {res['label']} | {figure_cells(s)} | {parts[0]} | {parts[1]} |")
    for res in results:
        lines += ["", f"## {res['label']}", "", "| # | kind | measured (ms) | predicted (ms) | 90% interval (ms) |",
                  "| ---: | --- | ---: | ---: | --- |"]
        for i, r in enumerate(res["rows"]):
            m = f"{r['measured_s'] * 1e3:.2f}" if r["measured_s"] else r["status"]
            lines.append(f"| {i + 1} | {r['kind']} | {m} | {r['predicted_s'] * 1e3:.2f} | "
                         f"[{r['lo90_s'] * 1e3:.2f}, {r['hi90_s'] * 1e3:.2f}] |")
    lines += ["", f"Scatter: `{args.out.with_suffix('.png').name}`.", ""]
    plot(results, args.out.with_suffix(".png"))
    write_results(args.out, lines, command, f, results)
    return 0


def main_replay(args, command: str) -> int:
    from _machine import facts, facts_markdown, load_average
    f = facts()
    t0 = time.perf_counter()
    results = []
    for cell in args.replay:
        try:
            results.append(replay(cell))
        except ValueError as e:
            print(f"model_fidelity: {e}", file=sys.stderr)
            return 2
    f["load_average_at_end"] = load_average()
    lines = ["# Model fidelity replayed: the structured model after 5 trials, on the schedules a testbed "
             "sitting measured", "", f"Command: `{command}`", "",
             "For each cell of results/tune_testbed.md (one cluster and seed, one sitting, every trial on the "
             "testbed): the structured model fitted to the first 5 structured trials recorded there "
             "predicts every other schedule measured in that sitting: structured's later trials (chosen by "
             "the tuner), heuristic's and random's (each trial's in-run time, 20 iterations, the mean past the "
             "first two). No new runs. Reported as in results/testbed_model_fidelity.md: the median relative "
             "error of the predicted mean, and how many measured times lie inside the model's 90% interval. "
             "Targets (that file's): median error at most 10%, at least 85% inside.", "",
             f"Wall time {time.perf_counter() - t0:.0f} s.", "", facts_markdown(f), "",
             "| cell | fitted to | schedules | median error | 90th percentile error | inside the 90% interval | "
             "median signed error | by run: median error, inside |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for res in results:
        s = summary(res)
        res["summary"] = s
        parts = [f"{kind} {e * 100:.1f}%, {k}/{n}" for kind, (e, (k, n)) in s["by_kind"].items() if e is not None]
        lines.append(f"| {res['label']} | structured trials 1-{len(res['trials'])} | {figure_cells(s)} | "
                     f"{s['median_signed_error'] * 100:+.1f}% | {'; '.join(parts)} |")
    for res in results:
        lines += ["", f"## {res['label']}", "",
                  "| run | trial | measured (ms) | predicted (ms) | 90% interval (ms) | schedule |",
                  "| --- | ---: | ---: | ---: | --- | --- |"]
        for r in res["rows"]:
            lines.append(f"| {r['kind']} | {r['trial']} | {r['measured_s'] * 1e3:.2f} | {r['predicted_s'] * 1e3:.2f} | "
                         f"[{r['lo90_s'] * 1e3:.2f}, {r['hi90_s'] * 1e3:.2f}] | `{r['schedule']}` |")
    lines.append("")
    write_results(args.out, lines, command, f, results)
    return 0


def plot(results, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results):
        for kind, color in (("random", "C0"), ("model-built", "C1")):
            rs = [r for r in res["rows"] if r["kind"] == kind and r["measured_s"]]
            if not rs:
                continue
            m = np.array([r["measured_s"] for r in rs]) * 1e3
            pr = np.array([r["predicted_s"] for r in rs]) * 1e3
            lo = pr - np.array([r["lo90_s"] for r in rs]) * 1e3
            hi = np.array([r["hi90_s"] for r in rs]) * 1e3 - pr
            ax.errorbar(m, pr, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], fmt="o", color=color, label=kind,
                        ms=4, capsize=2)
        lim = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
        ax.plot(lim, lim, "k:", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured (ms)")
        ax.set_ylabel("predicted (ms)")
        ax.set_title(res["label"])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
