"""The simulator against emulated runs under bsp, ssp and asp: each worker's time per step.

    .venv/bin/python benchmarks/staleness_fidelity.py                  # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/staleness_fidelity.py --modes bsp ssp1 ssp2 asp --keep /tmp/traces

Four ranks emulate four nodes of jobs/clusters/hetero8.toml: n1 (gpu-fast, speed 4) serves and works,
n3 and n4 (cpu-mid, speed 1) and n6 (cpu-slow, speed 0.25) work; 16 samples each of cifar-resnet
(jobs/hetero8.toml), at time dilation 16, one run per mode. Each run's trace gives every worker's step
starts. The simulator runs the same schedule with the step each worker was charged (the trace's
emulated_step_cost_s: the emulation charges a step its time measured alone at start-up, so the two
share it) and the bundled profiles' server costs.

Compared: each worker's mean time per step over the iterations from --skip to the second to last (the
trace's first flush, at iteration 5, holds every rank until the slowest gets there; the last step has
no successor), from the emulated trace and from the simulated timeline over the same iterations; and
the two combined as the simulator reports an iteration (global batch / the sum of the workers' rates),
with the simulator's steady-state figure (SimOptions.steady_state) beside them.

Prints a table; writes nothing outside a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import load_average, mpiexec  # noqa: E402

from hpcps.cluster import load_cluster  # noqa: E402
from hpcps.cluster.placement import NodePlan, NodeSchedule, NodeWorker, write_node_schedule  # noqa: E402
from hpcps.config import load_job  # noqa: E402
from hpcps.sim import SimOptions, job_options, load_profiles, profile_for_job  # noqa: E402
from hpcps.sim.engine import simulate_run  # noqa: E402
from hpcps.trace import open_trace  # noqa: E402

JOB = ROOT / "jobs/hetero8.toml"
CLUSTER = ROOT / "jobs/clusters/hetero8.toml"
SCHEDULE = NodeSchedule((NodePlan("n1", True, (NodeWorker(16),)), NodePlan("n3", False, (NodeWorker(16),)),
                         NodePlan("n4", False, (NodeWorker(16),)), NodePlan("n6", False, (NodeWorker(16),))))
MODES = {"bsp": ("bsp", 0), "ssp0": ("ssp", 0), "ssp1": ("ssp", 1), "ssp2": ("ssp", 2), "asp": ("asp", 0)}
DILATION = 16.0


def job_text(sync: str, staleness: int) -> str:
    lines = [ln for ln in JOB.read_text().splitlines() if not ln.startswith("cluster =")]
    return "\n".join(lines) + f'\nsync = "{sync}"\nstaleness = {staleness}\n'


def emulate(mode: str, work: Path, iterations: int) -> Path:
    sync, staleness = MODES[mode]
    job, trace = work / f"{mode}.toml", work / f"{mode}.h5"
    job.write_text(job_text(sync, staleness))
    cmd = [mpiexec(), "-n", str(SCHEDULE.n_ranks), sys.executable, "-m", "hpcps.train", "--job", str(job),
           "--cluster", str(CLUSTER), "--schedule", str(work / "schedule.toml"), "--iterations", str(iterations),
           "--time-dilation", str(DILATION), "--trace", str(trace), "--trace-flush-s", "100000"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{out.stderr[-3000:]}")
    for line in (out.stdout + out.stderr).splitlines():
        if "warning" in line:
            print(f"  {mode}: {line.strip()}", flush=True)
    return trace


def per_worker(starts: np.ndarray, a: int, b: int) -> np.ndarray:
    """Mean seconds per step over steps a..b of each worker; starts: (iterations, workers)."""
    return (starts[b] - starts[a]) / (b - a)


def combined(batches: np.ndarray, seconds: np.ndarray) -> float:
    return float(batches.sum() / np.sum(batches / seconds))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=["bsp", "ssp1", "asp"])
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--skip", type=int, default=10, help="first iteration compared (default 10)")
    p.add_argument("--keep", type=Path, default=None, help="copy the runs' traces into this directory")
    args = p.parse_args()
    a, b = args.skip, args.iterations - 2
    cluster, job = load_cluster(CLUSTER), load_job(JOB)
    profiles = load_profiles()
    base = profile_for_job(profiles, job.workload, job.model, job.data)
    placement = SCHEDULE.to_rank_schedule()
    batches = np.array([w.batch for w in placement.schedule.workers], dtype=np.float64)
    nodes = [placement.rank_nodes[w.rank] for w in placement.schedule.workers]
    print(f"load average before: {load_average()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpcps-stale-fidelity-") as tmp:
        work = Path(tmp)
        write_node_schedule(SCHEDULE, work / "schedule.toml")
        for mode in args.modes:
            t0 = time.monotonic()
            path = emulate(mode, work, args.iterations)
            if args.keep is not None:
                shutil.copy(path, args.keep / path.name)
            tr = open_trace(path)
            comp = tr.phase("compute")
            emu_starts = np.full((args.iterations, len(nodes)), np.nan)
            for i, w in enumerate(placement.schedule.workers):
                mine = comp[comp["rank"] == w.rank]
                emu_starts[mine["iteration"], i] = mine["t_start"]
            costs = [c for c in json.loads(tr.attrs["emulated_step_cost_s"]) if c is not None]
            # One batch size: every worker is charged the same step (the least of their timings).
            profile = replace(base, fixed_s=float(min(costs)), per_sample_s=0.0)
            sync, staleness = MODES[mode]
            opts = replace(SimOptions(iterations=args.iterations, **job_options(job)), sync=sync, staleness=staleness)
            res, timeline = simulate_run(cluster, placement, profile, profiles.machine, opts)
            steady, _ = simulate_run(cluster, placement, profile, profiles.machine,
                                     replace(opts, iterations=10, steady_state=True))
            emu_w, sim_w = per_worker(emu_starts, a, b), per_worker(timeline.step_start, a, b)
            row = {"mode": mode, "step_cost_ms": min(costs) * 1e3, "nodes": nodes,
                   "emulated_ms": (emu_w * 1e3).tolist(), "simulated_ms": (sim_w * 1e3).tolist(),
                   "emulated_combined_ms": combined(batches, emu_w) * 1e3,
                   "simulated_combined_ms": combined(batches, sim_w) * 1e3,
                   "simulated_steady_ms": steady.iteration_time_s * 1e3,
                   "trace_median_iteration_ms": float(np.median(tr.iterations["time_s"][a:b])) * 1e3,
                   "real_s": time.monotonic() - t0}
            rows.append(row)
            print(f"{mode:5} step cost {row['step_cost_ms']:.2f} ms; per worker ({', '.join(nodes)}) emulated "
                  + " ".join(f"{x:7.2f}" for x in row["emulated_ms"]) + " ms, simulated "
                  + " ".join(f"{x:7.2f}" for x in row["simulated_ms"])
                  + f"; combined emulated {row['emulated_combined_ms']:.2f} simulated "
                  f"{row['simulated_combined_ms']:.2f} (steady {row['simulated_steady_ms']:.2f}) ms; trace median "
                  f"iteration {row['trace_median_iteration_ms']:.2f} ms [{row['real_s']:.0f} s]", flush=True)
    print(f"load average after: {load_average()}")
    print("| mode | worker | emulated ms/step | simulated ms/step | error |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        for node, e, s in zip(r["nodes"], r["emulated_ms"], r["simulated_ms"]):
            print(f"| {r['mode']} | {node} | {e:.2f} | {s:.2f} | {s / e - 1:+.1%} |")
        e, s = r["emulated_combined_ms"], r["simulated_combined_ms"]
        steady = r["simulated_steady_ms"]
        print(f"| {r['mode']} | combined | {e:.2f} | {s:.2f} (steady {steady:.2f}) | {s / e - 1:+.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
