"""The push codec as a tuning knob on the simulator: the best schedule found with float32 pushes only
(`none`, the default), with int8 pushes only (the job's codec int8) and with `--codecs none,int8` (each
worker's codec a knob), on the network-bound cluster
(jobs/clusters/slownet5.toml: four speed-4 nodes behind 1 Gb/s NICs, one weak node on 10 Gb/s) with the
11M-parameter job (jobs/cifar-wide.toml).

    .venv/bin/python benchmarks/tune_codecs.py                 # writes results/tune_codecs.{md,json}

Each run is the tuner's own loop (hpcps.tune.loop.TuningRun, as `python -m hpcps.tune --backend sim`
runs it): every trial is 3 simulated iterations with 5% lognormal noise on every step, seeded by run
seed, trial and iteration. A run's score is the noise-free simulated time of its best schedule (the
strategy's incumbent after the last trial). The bundled profiles carry no codec costs (encoding and
decoding are free in the simulator unless HPCPS_PROFILES points at a calibration that has them).

Verdict, fixed before the runs with the int8-only column: for `structured`, the best schedule found
with codecs as knobs is at least as fast as the best single-codec schedule of the same seed (the
faster of the none-only and int8-only bests): the median over seeds of single / knobs >= 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("OMP_NUM_THREADS", "1")      # small arrays: on a 2-core machine threads only contend

import numpy as np  # noqa: E402
from _machine import command_line, facts, facts_markdown, load_average  # noqa: E402

CLUSTER = "jobs/clusters/slownet5.toml"
JOB = "jobs/cifar-wide.toml"
# name -> (the job's codec, --codecs): none only, int8 only, each worker's codec a knob
SETS = {"none": ("none", None), "int8": ("int8", None), "none,int8": ("none", ("int8",))}


def one_run(strategy: str, job_codec: str, codecs: tuple[str, ...] | None, seed: int, budget: int,
            out: Path) -> dict:
    from dataclasses import replace

    from hpcps.cluster import load_cluster
    from hpcps.config import load_job
    from hpcps.tune.backends.sim import SimBackend
    from hpcps.tune.loop import Settings, TuningRun
    from hpcps.tune.problem import problem_for
    from hpcps.tune.strategies import make_strategy
    cluster, job = load_cluster(ROOT / CLUSTER), load_job(ROOT / JOB)
    job = replace(job, exchange=replace(job.exchange, codec=job_codec))
    problem = problem_for(cluster, job, codecs=codecs)
    backend = SimBackend(cluster, job, iterations=3, seed=seed)
    settings = Settings(job=JOB, cluster=CLUSTER, backend="sim", strategy=strategy, seed=seed, budget=budget,
                        cluster_name=cluster.name, global_batch=problem.global_batch, codecs=",".join(problem.codecs))
    t0 = time.perf_counter()
    run = TuningRun(out, settings, problem, make_strategy(strategy, problem, seed), backend, echo=lambda s: None)
    run.run(budget)
    best = run.best()
    assert best is not None
    schedule = problem.space.decode(best.point)
    return {"strategy": strategy, "codecs": ",".join(problem.codecs), "seed": seed, "budget": budget,
            "best_trial": best.trial, "best_measured_s": best.time_s, "best_true_s": backend.true_time(schedule),
            "best_summary": best.summary, "int8_workers": sum(w.codec == "int8" for p in schedule.nodes
                                                              for w in p.workers),
            "wall_s": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", default="structured,heuristic,random,anneal")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=10)
    args = ap.parse_args()
    context = facts()
    strategies = args.strategies.split(",")
    runs = []
    with tempfile.TemporaryDirectory(prefix="hpcps-tune-codecs-") as tmp:
        for strategy in strategies:
            for seed in range(args.seeds):
                for name, (job_codec, codecs) in SETS.items():
                    r = one_run(strategy, job_codec, codecs, seed, args.budget, Path(tmp) / f"{strategy}-{seed}-{name}")
                    r["set"] = name
                    runs.append(r)
                    print(f"{strategy} seed {seed} codecs {name}: best {r['best_true_s'] * 1e3:.1f} ms "
                          f"(trial {r['best_trial']}, {r['int8_workers']} int8 worker(s)), {r['wall_s']:.0f} s",
                          flush=True)
    context["load_average_at_end"] = load_average()
    argv = [".venv/bin/python", "benchmarks/tune_codecs.py"] + sys.argv[1:]
    command = command_line(argv)
    (ROOT / "results/tune_codecs.json").write_text(json.dumps({"command": command, "context": context,
                                                               "cluster": CLUSTER, "job": JOB, "runs": runs},
                                                              indent=1) + "\n")
    lines = ["# The push codec as a tuning knob (simulator)", "",
             f"Command: `{command}` (benchmarks/tune_codecs.py says what it runs).", "",
             facts_markdown(context), "",
             f"{JOB} (11M parameters, global batch 64) on {CLUSTER} (four speed-4 nodes behind 1 Gb/s NICs, one "
             f"weak node on 10 Gb/s), {args.budget} trials a run on the sim backend, seeds 0-{args.seeds - 1}. "
             "Score: the noise-free simulated iteration time of the run's best schedule; `none` is the default "
             "(float32 pushes only), `int8` the job's codec int8 (int8 pushes only), `none,int8` is "
             "`--codecs none,int8`.", "",
             "| strategy | best, none only (ms) | best, int8 only (ms) | best, none,int8 (ms) "
             "| single codec / knobs | int8 workers in the best |",
             "| --- | --- | --- | --- | ---: | --- |"]
    verdict = None
    for strategy in strategies:
        by = {name: [r for r in runs if r["strategy"] == strategy and r["set"] == name] for name in SETS}
        cells = [", ".join(f"{r['best_true_s'] * 1e3:.0f}" for r in by[name]) for name in SETS]
        ratios = [min(a["best_true_s"], b["best_true_s"]) / c["best_true_s"]
                  for a, b, c in zip(by["none"], by["int8"], by["none,int8"])]
        ratio = float(np.median(ratios))
        if strategy == "structured":
            verdict = ratio
        lines.append(f"| {strategy} | {' | '.join(cells)} | {ratio:.2f}x (median; {min(ratios):.2f}-{max(ratios):.2f}) "
                     f"| {', '.join(str(r['int8_workers']) for r in by['none,int8'])} |")
    lines += ["", "Per seed in order; single codec / knobs: the faster of the none-only and int8-only bests over "
              "the none,int8 best, per seed (median and range). The pulls are float32 here (docs/codecs.md, "
              "results/codec_bandwidth.md).", ""]
    if verdict is not None:
        lines += [f"**structured with codecs as knobs against the best single-codec schedule: {verdict:.2f}x** "
                  f"(>= 1 is at least as fast). Target (at least as fast): "
                  f"**{'met' if verdict >= 1.0 else 'not met'}**.", ""]
    (ROOT / "results/tune_codecs.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
