"""Time to a target on emulated hetero8 under bsp, ssp (s = 1, 2, 4) and asp: digits and charlm.

    .venv/bin/python benchmarks/staleness.py                 # digits, about 15 minutes on 2 cores
    .venv/bin/python benchmarks/staleness.py --workload charlm     # charlm, results/staleness_charlm.md
    .venv/bin/python benchmarks/staleness.py --seeds 0 --modes bsp ssp2    # a subset
    .venv/bin/python benchmarks/staleness.py --lr 0.3 --momentum 0 --modes bsp ssp1 ssp2 ssp4 asp \
        --out results/staleness_no_momentum.md                              # plain SGD

Every run is `python -m hpcps.train` emulating jobs/clusters/hetero8.toml, with the naive schedule
(8 ranks: one server on n1, an equal share of the batch on every node) or, for bsp-tuned, the schedule
the tuner finds for bsp (`python -m hpcps.tune --backend sim --strategy structured --budget 20 --seed 0`
on the same job, run first; its best schedule is in the report), an evaluation every few steps.
- digits: the MLP (hidden 128) with the default job's optimiser (SGD, lr 0.1, momentum 0.9; --lr and
  --momentum change them), global batch 64, 300 steps, an evaluation every 10; target 95% test accuracy.
  bsp-m0 and asp-m0 are the same without momentum: asp steps the optimiser on every push, which changes
  what momentum does (docs/runtime.md).
- charlm: the character LSTM (embed 32, hidden 128, seq_len 64) with Adam lr 0.003 (results/codecs.md's
  job), global batch 32, 300 steps, an evaluation every 20; target 3.0 validation bits per character,
  fixed before any run of this benchmark (float32 reaches 2.80 after these 300 steps in
  results/codecs.md: the target sits where the curve is still falling but most of the way down). Adam
  makes each asp push a full step (docs/runtime.md), so asp-lr8 is asp with lr / 8 (8 workers: a round
  of pushes then moves the parameters about as far as one bsp step), the setting a user would try first.
  bsp-tuned-lrx8 is bsp-tuned with lr x 8, asp's step per round the other way round: not in the verdict,
  it tells whether what asp gains is its pace or its larger steps (results/staleness_charlm_lr.md:
  `--workload charlm --modes bsp-tuned bsp-tuned-lrx8 asp --out results/staleness_charlm_lr.md`).
Time to target is emulated training time, evaluations excluded, until the first evaluation that
reaches the target (on rank 0, which is a worker and the server: under ssp and asp it evaluates the
parameters as they are when it reaches that step). Seeds outermost; the order of the modes rotates from
seed to seed.

Target (issue's, fixed before the run): the best stale mode (ssp1, ssp2, ssp4, asp and its variant:
median time to target over seeds, counted only if it reached the target on every seed) reaches the
target in at most 0.7x the median time of bsp-tuned.

Writes results/staleness.md and .json (digits) or results/staleness_charlm.md and .json (charlm).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import command_line, facts, facts_markdown, load_average, mpiexec  # noqa: E402

from hpcps.cluster import load_cluster  # noqa: E402
from hpcps.cluster.placement import load_node_schedule, naive, write_node_schedule  # noqa: E402
from hpcps.trace import open_trace  # noqa: E402

CLUSTER = ROOT / "jobs/clusters/hetero8.toml"
TARGET_RATIO = 0.7
TUNE_BUDGET = 20
DILATION = 16.0
N_WORKERS = 8   # the naive schedule's: a worker on every node of hetero8

# Per workload: the job (its optimiser filled in per mode), the metric and its target, and the modes:
# mode -> (sync, staleness, optimiser settings for the job template, given the command line's lr and momentum).
WORKLOADS = {
    "digits": {
        "metric": "test_accuracy", "better": "higher", "target": 0.95, "target_text": "95% test accuracy",
        "lr": 0.1, "global_batch": 64, "iterations": 300, "eval_every": 10,
        "out": "staleness.md", "verdict_modes": ("ssp1", "ssp2", "ssp4", "asp"),
        "job": """name = "digits-hetero8-{mode}"
workload = "digits"
cluster = "{cluster}"
[model]
hidden = 128
[optimizer]
name = "sgd"
lr = {lr}
momentum = {momentum}
""",
        "modes": {"bsp": ("bsp", 0, {}), "bsp-tuned": ("bsp", 0, {}), "ssp1": ("ssp", 1, {}),
                  "ssp2": ("ssp", 2, {}), "ssp4": ("ssp", 4, {}), "asp": ("asp", 0, {}),
                  "bsp-m0": ("bsp", 0, {"momentum": 0.0}), "asp-m0": ("asp", 0, {"momentum": 0.0})},
    },
    "charlm": {
        "metric": "val_bits_per_char", "better": "lower", "target": 3.0,
        "target_text": "3.0 validation bits per character",
        "lr": 0.003, "global_batch": 32, "iterations": 300, "eval_every": 20,
        "out": "staleness_charlm.md", "verdict_modes": ("ssp1", "ssp2", "ssp4", "asp", "asp-lr8"),
        "job": """name = "charlm-hetero8-{mode}"
workload = "charlm"
cluster = "{cluster}"
[model]
embed = 32
hidden = 128
[data]
seq_len = 64
[optimizer]
name = "adam"
lr = {lr}
""",
        "modes": {"bsp": ("bsp", 0, {}), "bsp-tuned": ("bsp", 0, {}), "ssp1": ("ssp", 1, {}),
                  "ssp2": ("ssp", 2, {}), "ssp4": ("ssp", 4, {}), "asp": ("asp", 0, {}),
                  "asp-lr8": ("asp", 0, {"lr_scale": 1 / N_WORKERS}),
                  "bsp-tuned-lrx8": ("bsp", 0, {"lr_scale": N_WORKERS})},
    },
}

TRAINING = """[training]
global_batch = {global_batch}
iterations = {iterations}
seed = {seed}
log_every = 50
eval_every = {eval_every}
sync = "{sync}"
staleness = {staleness}
"""


def job_text(w: dict, mode: str, seed: int, sync: str, staleness: int, lr: float, momentum: float) -> str:
    opt = w["modes"].get(mode, ("bsp", 0, {}))[2]
    return (w["job"].format(mode=mode, cluster=CLUSTER, lr=lr * opt.get("lr_scale", 1.0),
                            momentum=opt.get("momentum", momentum))
            + TRAINING.format(global_batch=w["global_batch"], iterations=w["iterations"], seed=seed,
                              eval_every=w["eval_every"], sync=sync, staleness=staleness))


def reached(w: dict, value: float) -> bool:
    return value >= w["target"] if w["better"] == "higher" else value <= w["target"]


def run(w: dict, mode: str, seed: int, work: Path, lr: float, momentum: float) -> dict:
    sync, staleness, opt = w["modes"][mode]
    job = work / f"{mode}-{seed}.toml"
    job.write_text(job_text(w, mode, seed, sync, staleness, lr, momentum))
    trace = work / f"{mode}-{seed}.h5"
    schedule = work / ("tuned.toml" if mode.startswith("bsp-tuned") else "naive.toml")
    ranks = load_node_schedule(schedule).n_ranks
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "hpcps.train", "--job", str(job), "--schedule",
           str(schedule), "--time-dilation", str(DILATION), "--trace", str(trace)]
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} seed {seed} failed:\n{out.stderr[-3000:]}")
    metric = re.escape(w["metric"])
    eval_line = re.compile(r"iter\s+(\d+)/\d+\s+eval\s+.*" + metric + r" ([0-9.]+|nan|inf)")
    done_line = re.compile(r"done: \d+ iterations in ([0-9.]+) s.*" + metric + r" ([0-9.]+|nan|inf)")
    evals = [(int(m.group(1)), float(m.group(2))) for m in eval_line.finditer(out.stdout)]
    done = done_line.search(out.stdout)
    wall, final = float(done.group(1)), float(done.group(2))
    evals.append((w["iterations"], final))
    tr = open_trace(trace)
    it0 = tr.phase("iteration")
    start = float(it0["t_start"][(it0["rank"] == 0) & (it0["iteration"] == 0)][0])
    ev = tr.phase("eval")
    ev = ev[ev["rank"] == 0]
    ev = ev[np.argsort(ev["t_start"])]
    # Training time at each evaluation, earlier evaluations excluded; the last entry is the run's end.
    at = [float(t - start - (ev["t_end"][:i] - ev["t_start"][:i]).sum()) for i, t in enumerate(ev["t_start"])]
    at.append(wall)
    hit = next((i for i, (_, v) in enumerate(evals) if reached(w, v)), None)
    st = tr.staleness["staleness"]
    warning = next((ln for ln in out.stdout.splitlines() + out.stderr.splitlines() if ln.startswith("warning:")), "")
    return {"mode": mode, "sync": sync, "staleness": staleness, "lr": lr * opt.get("lr_scale", 1.0),
            "momentum": opt.get("momentum", momentum), "seed": seed, "metric": w["metric"],
            "time_to_target_s": at[hit] if hit is not None else None,
            "iterations_to_target": evals[hit][0] if hit is not None else None,
            "final": final, "wall_s": wall, "samples_per_s": w["iterations"] * w["global_batch"] / wall,
            "staleness_mean": float(st.mean()) if st.size else 0.0,
            "staleness_p90": float(np.percentile(st, 90)) if st.size else 0.0,
            "staleness_max": int(st.max()) if st.size else 0,
            "overrun_warning": warning, "real_s": time.monotonic() - t0}


def tune(w: dict, work: Path, lr: float, momentum: float) -> dict:
    """The bsp schedule the tuner finds on the simulator for this job (what bsp-tuned runs)."""
    job = work / "tune-job.toml"
    job.write_text(job_text(w, "tune", 0, "bsp", 0, lr, momentum))
    cmd = [sys.executable, "-m", "hpcps.tune", "--job", str(job), "--backend", "sim", "--strategy", "structured",
           "--budget", str(TUNE_BUDGET), "--seed", "0", "--out", str(work / "tune"), "--quiet"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"tuning failed:\n{out.stderr[-3000:]}")
    best = work / "tune" / "best_schedule.toml"
    (work / "tuned.toml").write_text(best.read_text())
    summary = next((ln.strip() for ln in out.stdout.splitlines() if ln.startswith("best:")), "")
    return {"command": command_line(["python"] + cmd[1:]), "summary": summary, "toml": best.read_text()}


def verdict(w: dict, rows: list[dict]) -> tuple[str, bool | None]:
    """The target's figure: the best stale mode's median time to target over bsp-tuned's."""
    def median_time(mode):
        mine = [r for r in rows if r["mode"] == mode]
        if not mine or any(r["time_to_target_s"] is None for r in mine):
            return None
        return float(np.median([r["time_to_target_s"] for r in mine]))
    tuned = median_time("bsp-tuned")
    stale = {m: median_time(m) for m in w["verdict_modes"]}
    got = {m: t for m, t in stale.items() if t is not None}
    if tuned is None:
        return f"bsp-tuned did not reach {w['target_text']} on every seed: no verdict", None
    if not got:
        return (f"no stale mode reached {w['target_text']} on every seed (bsp-tuned: {tuned:.3f} s): target of "
                f"{TARGET_RATIO}x not met", False)
    best = min(got, key=lambda m: got[m])
    ratio = got[best] / tuned
    return (f"best stale mode {best}: {got[best]:.3f} s against bsp-tuned {tuned:.3f} s = {ratio:.2f}x "
            f"(target at most {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'not met'})",
            ratio <= TARGET_RATIO)


def diagnostic(workload: str, rows: list[dict]) -> list[str]:
    """charlm: asp's gain against bsp with asp's larger Adam steps (bsp-tuned-lrx8), beside the verdict."""
    if workload != "charlm":
        return []
    times = {m: [r["time_to_target_s"] for r in rows if r["mode"] == m] for m in ("asp", "bsp-tuned-lrx8")}
    if not all(times.values()) or any(t is None for ts in times.values() for t in ts):
        return ["Beside the verdict: `--modes bsp-tuned bsp-tuned-lrx8 asp` (results/staleness_charlm_lr.md) "
                "sets asp against bsp on the tuned schedule with lr x 8, which tells asp's pace from its larger "
                "Adam steps (8 a round).", ""]
    a, b = (float(np.median(times[m])) for m in ("asp", "bsp-tuned-lrx8"))
    return [f"Beside the verdict (not a target): asp {a:.3f} s against bsp-tuned-lrx8 {b:.3f} s = {a / b:.2f}x: "
            f"{'asp is slower' if a > b else 'asp is faster'} than bsp on the tuned schedule given the lr that "
            "matches asp's 8 Adam steps a round.", ""]


def _f(x, fmt="{:.3f}") -> str:
    return "not reached" if x is None else fmt.format(x)


DESCRIPTION = {
    "digits": "Digits MLP (hidden 128), SGD lr {lr:g} momentum {momentum:g} (bsp-m0, asp-m0: momentum 0), global "
              "batch 64",
    "charlm": "Character LSTM (embed 32, hidden 128, seq_len 64), Adam lr {lr:g} (asp-lr8: lr / 8, bsp-tuned-lrx8: "
              "lr x 8), global batch 32",
}


def report(workload: str, rows: list[dict], f: dict, argv: list[str], lr: float, momentum: float) -> str:
    w = WORKLOADS[workload]
    tt = w["target_text"]
    lines = [f"# Time to {tt}: bsp, ssp and asp on emulated hetero8 ({workload})", "",
             "Reproduce: `" + command_line([".venv/bin/python", "benchmarks/staleness.py"] + argv) + "`", "",
             DESCRIPTION[workload].format(lr=lr, momentum=momentum) + ", "
             f"{w['iterations']} steps, an evaluation "
             f"every {w['eval_every']} steps; emulating jobs/clusters/hetero8.toml at time dilation {DILATION:g} "
             "with the naive schedule (8 ranks: one server on n1, an equal share of the batch on every node), "
             "bsp-tuned with the tuner's schedule (below). Times are emulated seconds of "
             f"training, evaluations excluded, to the first evaluation that reaches {tt} (rank 0's step count; "
             "under ssp and asp rank 0 evaluates the parameters as they are when it reaches that step). "
             "Staleness: over every worker's steps and pieces (ssp: rounds; asp: other workers' pushes "
             "between read and push).", "",
             f"**Target: {verdict(w, rows)[0]}.**", ""] + diagnostic(workload, rows) + [
             "## Per mode (median over seeds)", "",
             f"| mode | seeds reaching the target | time to target (s) | steps to target | final {w['metric']} | "
             "samples/s | staleness mean / p90 / max |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for mode in w["modes"]:
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        got = [r for r in mine if r["time_to_target_s"] is not None]
        t = float(np.median([r["time_to_target_s"] for r in got])) if got else None
        its = float(np.median([r["iterations_to_target"] for r in got])) if got else None
        lines.append(f"| {mode} | {len(got)} of {len(mine)} | {_f(t)} | {_f(its, '{:.0f}')} | "
                     f"{np.median([r['final'] for r in mine]):.3f} | "
                     f"{np.median([r['samples_per_s'] for r in mine]):.0f} | "
                     f"{np.mean([r['staleness_mean'] for r in mine]):.2f} / "
                     f"{np.median([r['staleness_p90'] for r in mine]):.0f} / "
                     f"{max(r['staleness_max'] for r in mine)} |")
    lines += ["", "## Every run", "", f"| mode | seed | time to target (s) | steps to target | final {w['metric']} | "
              "training time (s) | samples/s | staleness mean / max | emulation |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['seed']} | {_f(r['time_to_target_s'])} | "
                     f"{_f(r['iterations_to_target'], '{:.0f}')} | {r['final']:.3f} | {r['wall_s']:.3f} | "
                     f"{r['samples_per_s']:.0f} | {r['staleness_mean']:.2f} / {r['staleness_max']} | "
                     f"{r['overrun_warning'].replace('|', '/') or 'no overruns reported'} |")
    if f.get("tuned_schedule"):
        t = f["tuned_schedule"]
        lines += ["", "## The tuned schedule", "", f"`{t['command']}`: {t['summary']}", "", "```toml",
                  t["toml"].strip(), "```"]
    lines += ["", facts_markdown(f), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=list(WORKLOADS), default="digits")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", help="a subset of the workload's modes (default: all of them)")
    p.add_argument("--lr", type=float, help="the optimiser's learning rate (digits 0.1, charlm 0.003)")
    p.add_argument("--momentum", type=float, default=0.9, help="digits: for every mode but the -m0 ones")
    p.add_argument("--out", type=Path, help="default results/staleness.md (digits), results/staleness_charlm.md")
    args = p.parse_args()
    w = WORKLOADS[args.workload]
    modes = args.modes or list(w["modes"])
    unknown = [m for m in modes if m not in w["modes"]]
    if unknown:
        p.error(f"--modes: {', '.join(unknown)} not a mode of {args.workload} (allowed: {', '.join(w['modes'])})")
    lr = w["lr"] if args.lr is None else args.lr
    out_path = args.out or ROOT / "results" / w["out"]
    f = facts()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpcps-staleness-") as tmp:
        work = Path(tmp)
        write_node_schedule(naive(load_cluster(CLUSTER), w["global_batch"]), work / "naive.toml")
        if any(m.startswith("bsp-tuned") for m in modes):
            tuned = tune(w, work, lr, args.momentum)
            f["tuned_schedule"] = tuned
            print(f"tuned schedule: {tuned['summary']}", flush=True)
        for i, seed in enumerate(args.seeds):  # seeds outermost: the machine's drift spreads over every mode
            k = i % len(modes)
            for mode in modes[k:] + modes[:k]:
                r = run(w, mode, seed, work, lr, args.momentum)
                rows.append(r)
                print(f"{mode:9} seed {seed}: time to target {_f(r['time_to_target_s'])} s "
                      f"({_f(r['iterations_to_target'], '{:.0f}')} steps), final {w['metric']} {r['final']:.3f}, "
                      f"staleness mean {r['staleness_mean']:.2f} max {r['staleness_max']} "
                      f"[{r['real_s']:.0f} s real] {r['overrun_warning']}", flush=True)
    f["load_average_at_end"] = load_average()
    argv = sys.argv[1:]
    out_path.write_text(report(args.workload, rows, f, argv, lr, args.momentum))
    out_path.with_suffix(".json").write_text(json.dumps({"machine": f, "workload": args.workload,
                                                         "target": w["target"], "runs": rows}, indent=1) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
