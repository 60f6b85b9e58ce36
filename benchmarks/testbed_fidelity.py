"""The simulator against the testbed: iteration times of real MPI runs whose messages cross real shaped
links (python -m hpcps.testbed run, docs/testbed.md) against hpcps.sim's prediction, unadjusted.

    sudo .venv/bin/python benchmarks/testbed_fidelity.py            # about 25 minutes on 2 cores

Two clusters: hetero8 (jobs/clusters/hetero8.toml) and hetero10a with every NIC at 1 Gb/s (the
10-node cluster with 1 Gbit/s links; written beside the results), each at the testbed's default
dilation, job jobs/hetero8.toml (cifar-resnet, global batch 64). Per cluster 12 schedules: naive,
balanced and four variants of them, and 6 random valid schedules of at most 12 ranks
(hpcps.tune.space, seeded). Every run: ITERATIONS iterations, the first WARMUP dropped, the median
iteration time of its trace (emulated seconds).

The verdict is unadjusted: the simulator under the one calibration of the sitting, taken just before the
runs (benchmarks/calibrate_compute.py into results/testbed_fidelity_profiles.toml, which the runs'
thread model and the simulator both use, HPCPS_PROFILES), random schedules reported apart from the
hand-made ones. Beside it: the bundled calibration (hpcps/sim/profiles.toml), as `python -m hpcps.sim`
predicts, and, as a diagnostic only, the simulator at the machine's speed during each run (the median
ratio of the step times the run charged, timed alone at its start-up, to the sitting's calibration),
which leaves the network and synchronisation as what differs. Target: median error at most 10%.

Writes results/testbed_fidelity.md, .json, results/testbed_fidelity_profiles.toml and
results/testbed_hetero10a_1g.toml.
"""

from __future__ import annotations

import argparse
import json
import os
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

from _calibration import calibrate, machine_slowdown, with_speed  # noqa: E402

from hpcps.cluster import load_cluster  # noqa: E402
from hpcps.cluster.placement import NodeSchedule, balanced, naive, write_node_schedule  # noqa: E402
from hpcps.config import load_job  # noqa: E402
from hpcps.sim import SimOptions, load_profiles, simulate_job  # noqa: E402
from hpcps.testbed import default_dilation  # noqa: E402
from hpcps.trace import open_trace  # noqa: E402
from hpcps.tune.space import ScheduleSpace  # noqa: E402

JOB = ROOT / "jobs/hetero8.toml"
HETERO8 = ROOT / "jobs/clusters/hetero8.toml"
HETERO10A = ROOT / "jobs/clusters/hetero10a.toml"
ONE_GIG = ROOT / "results/testbed_hetero10a_1g.toml"
PROFILES = ROOT / "results/testbed_fidelity_profiles.toml"
TARGET = 0.10
ITERATIONS = 10
WARMUP = 2
N_RANDOM = 6
MAX_RANKS = 12


def one_gig_cluster() -> Path:
    """hetero10a with every NIC at 1 Gb/s."""
    text = HETERO10A.read_text()
    lines = [("nic_gbps = 1.0" if ln.startswith("nic_gbps") else ln) for ln in text.splitlines()]
    lines = [ln.replace('name = "hetero10a"', 'name = "hetero10a-1g"') for ln in lines]
    head = ["# hetero10a (jobs/clusters/hetero10a.toml) with every NIC at 1 Gb/s: written by",
            "# benchmarks/testbed_fidelity.py, the 10-node cluster with 1 Gbit/s links it measures."]
    ONE_GIG.write_text("\n".join(head + [ln for ln in lines if not ln.startswith("# ")]) + "\n")
    return ONE_GIG


def variants(cluster, gb: int) -> dict[str, NodeSchedule]:
    """naive, balanced and four variants: two threads per worker, one server, a server on every node."""
    nv, bal = naive(cluster, gb), balanced(cluster, gb)

    def threads(s, t):
        return replace(s, nodes=tuple(replace(p, workers=tuple(replace(w, threads=t) for w in p.workers))
                                      for p in s.nodes))

    def servers(s, names):
        return replace(s, nodes=tuple(replace(p, server=p.name in names) for p in s.nodes))

    fastest_nic = max(cluster.nodes, key=lambda n: n.type.nic_gbps).name
    return {"naive": nv, "balanced": bal, "naive-2threads": threads(nv, 2), "balanced-2threads": threads(bal, 2),
            "balanced-1server": servers(bal, {fastest_nic}),
            "balanced-all-servers": servers(bal, {p.name for p in bal.nodes})}


def random_schedules(cluster, gb: int, n: int, seed: int) -> dict[str, NodeSchedule]:
    space, rng, out = ScheduleSpace(cluster, gb), np.random.default_rng(seed), {}
    while len(out) < n:
        s = space.decode(space.random_points(1, rng)[0])
        if s.n_ranks <= MAX_RANKS:
            out[f"random-{len(out) + 1}"] = s
    return out


def run(cluster_path: Path, schedule: NodeSchedule, workdir: Path, tag: str, dilation: float) -> dict:
    sched, trace = workdir / f"{tag}.toml", workdir / f"{tag}.h5"
    write_node_schedule(schedule, sched)
    cmd = [sys.executable, "-m", "hpcps.testbed", "run", "--cluster", str(cluster_path), "--dilation", f"{dilation:g}",
           "--schedule", str(sched), "--quiet", "--",
           sys.executable, "-m", "hpcps.train", "--job", str(JOB), "--cluster", str(cluster_path), "--schedule",
           str(sched), "--iterations", str(ITERATIONS), "--trace", str(trace), "--quiet"]
    t0 = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HPCPS_PROFILES=str(PROFILES))
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    if out.returncode != 0:
        return {"tag": tag, "error": (out.stdout + out.stderr)[-1500:], "wall_s": time.monotonic() - t0}
    t = open_trace(trace)
    it = t.iterations[t.iterations["iteration"] >= WARMUP]
    costs = json.loads(t.attrs["emulated_step_cost_s"])
    batches = t.rank_field("batch")
    return {"tag": tag, "iteration_s": float(np.median(it["time_s"])), "network": t.attrs.get("emulation_network"),
            "step_cost_s_by_batch": {int(batches[r]): c for r, c in enumerate(costs) if c is not None},
            "wall_s": time.monotonic() - t0, "schedule": schedule.to_dict(), "n_ranks": schedule.n_ranks,
            "warnings": [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if "warning" in ln]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="two schedules per cluster (a smoke test; writes nothing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random schedules (default 0)")
    args = p.parse_args(argv)
    from _machine import command_line, facts, facts_markdown, load_average

    from hpcps.testbed.runner import missing_requirements
    why = missing_requirements()
    if why:
        print(f"testbed_fidelity: {why}", file=sys.stderr)
        return 2
    job = load_job(JOB)
    gb = job.training.global_batch
    machine, t_start = facts(), time.monotonic()
    global PROFILES
    if args.quick:                   # a smoke test writes nothing under results/
        PROFILES = Path(tempfile.mkdtemp(prefix="hpcps-testbed-fidelity-")) / "profiles.toml"
    print("calibrating cifar-resnet on this machine ...", flush=True)
    machine["calibration"] = calibrate(PROFILES)
    profiles, bundled = load_profiles(PROFILES), load_profiles()
    clusters = [("hetero8", HETERO8), ("hetero10a-1g", one_gig_cluster() if not args.quick else HETERO10A)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpcps-testbed-fidelity-") as tmp:
        for cname, cpath in clusters:
            cluster = load_cluster(cpath)
            dilation = default_dilation(cluster)
            schedules = {**variants(cluster, gb), **random_schedules(cluster, gb, N_RANDOM, args.seed)}
            if args.quick:
                schedules = dict(list(schedules.items())[:2])
            for key, s in schedules.items():
                r = run(cpath, s, Path(tmp), f"{cname}-{key}", dilation)
                r.update(cluster=cname, key=key, dilation=dilation, random=key.startswith("random"))
                if "error" in r:
                    print(f"{cname:13s} {key:22s} FAILED: {r['error'][-300:]}", flush=True)
                    rows.append(r)
                    continue
                placement = s.to_rank_schedule()
                r["sim_s"] = simulate_job(cluster, placement, job, SimOptions(iterations=10), profiles).iteration_time_s
                r["sim_bundled_s"] = simulate_job(cluster, placement, job, SimOptions(iterations=10),
                                                  bundled).iteration_time_s
                r["abs_error_bundled"] = abs(r["sim_bundled_s"] - r["iteration_s"]) / r["iteration_s"]
                r["machine_slowdown"] = machine_slowdown(profiles, r)
                r["sim_at_speed_s"] = simulate_job(cluster, placement, job, SimOptions(iterations=10),
                                                   with_speed(profiles, r["machine_slowdown"])).iteration_time_s
                r["error"] = None
                r["abs_error"] = abs(r["sim_s"] - r["iteration_s"]) / r["iteration_s"]
                r["abs_error_at_speed"] = abs(r["sim_at_speed_s"] - r["iteration_s"]) / r["iteration_s"]
                rows.append(r)
                print(f"{cname:13s} {key:22s} testbed {r['iteration_s'] * 1e3:8.2f} ms  sim {r['sim_s'] * 1e3:8.2f} ms "
                      f"({r['abs_error']:.1%})  at x{r['machine_slowdown']:.2f}: {r['sim_at_speed_s'] * 1e3:8.2f} ms "
                      f"({r['abs_error_at_speed']:.1%})  [{r['wall_s']:.0f} s]", flush=True)
    machine["load_average_at_end"] = load_average()
    if args.quick:
        return 0
    write_results(rows, machine, time.monotonic() - t_start, command_line([sys.executable, *sys.argv]), facts_markdown)
    return 0


def write_results(rows, machine, wall_s, command, facts_markdown) -> None:
    res = ROOT / "results"
    ok = [r for r in rows if r.get("error") is None]
    errs = np.array([r["abs_error"] for r in ok])
    errs_speed = np.array([r["abs_error_at_speed"] for r in ok])
    made = [r["abs_error"] for r in ok if not r["random"]]
    rand = [r["abs_error"] for r in ok if r["random"]]
    summary = {"schedules": len(rows), "ok": len(ok), "median_abs_error": float(np.median(errs)),
               "median_abs_error_hand_made": float(np.median(made)) if made else None,
               "median_abs_error_random": float(np.median(rand)) if rand else None,
               "median_abs_error_bundled": float(np.median([r["abs_error_bundled"] for r in ok])),
               "worst_abs_error": float(errs.max()), "median_abs_error_at_speed": float(np.median(errs_speed)),
               "worst_abs_error_at_speed": float(errs_speed.max())}
    for cname in sorted({r["cluster"] for r in ok}):
        e = np.array([r["abs_error"] for r in ok if r["cluster"] == cname])
        summary[f"median_abs_error_{cname}"] = float(np.median(e))
    (res / "testbed_fidelity.json").write_text(json.dumps({"summary": summary, "runs": rows, "facts": machine,
                                                           "command": command, "wall_s": wall_s}, indent=1))
    lines = ["# The simulator against the testbed (real shaped links), unadjusted", "",
             "Command: `sudo .venv/bin/python benchmarks/testbed_fidelity.py`  ",
             f"Job `jobs/hetero8.toml` (cifar-resnet, global batch 64), {ITERATIONS} iterations per run, the first "
             f"{WARMUP} dropped, median iteration time from each run's trace (emulated seconds). Each run: `python -m "
             "hpcps.testbed run --cluster C --schedule S -- python -m hpcps.train ...` at the testbed's default "
             "dilation: messages between nodes over real TCP through htb-shaped veths and the delay line, compute "
             "charged as under emulation (docs/testbed.md). Simulator: `hpcps.sim.simulate_job`, 10 iterations, "
             "with the calibration taken in this sitting just before the runs (the verdict) and with the bundled "
             f"one. Wall time {wall_s / 60:.1f} min.", "", facts_markdown(machine), "",
             f"**{len(ok)} of {len(rows)} schedules ran.** Median |error| of the unadjusted simulator "
             f"**{summary['median_abs_error']:.1%}**, worst **{summary['worst_abs_error']:.1%}**"
             + "".join(f"; {k[len('median_abs_error_'):]}: median {v:.1%}" for k, v in summary.items()
                       if k.startswith("median_abs_error_") and not k.endswith(("at_speed", "hand_made", "random",
                                                                                 "bundled")))
             + f" (target at most {TARGET:.0%}: {'met' if summary['median_abs_error'] <= TARGET else 'not met'}); "
             f"hand-made schedules {summary['median_abs_error_hand_made']:.1%}, random "
             f"{summary['median_abs_error_random']:.1%}. With the bundled calibration: median "
             f"{summary['median_abs_error_bundled']:.1%}. Diagnostic, at the machine's speed during each run: median "
             f"{summary['median_abs_error_at_speed']:.1%}, worst {summary['worst_abs_error_at_speed']:.1%}.", "",
             "| cluster (dilation) | schedule | ranks | testbed (ms) | simulated (ms) | error (verdict) | "
             "simulated, bundled calibration (ms) | error | machine slowdown | simulated at that speed (ms) | "
             "error (diagnostic) |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r.get("error") is not None:
            lines.append(f"| {r['cluster']} ({r['dilation']:g}) | {r['key']} | | failed | | | | | | | |")
            continue
        lines.append(f"| {r['cluster']} ({r['dilation']:g}) | {r['key']} | {r['n_ranks']} | "
                     f"{r['iteration_s'] * 1e3:.2f} | {r['sim_s'] * 1e3:.2f} | {r['abs_error']:.1%} | "
                     f"{r['sim_bundled_s'] * 1e3:.2f} | {r['abs_error_bundled']:.1%} | {r['machine_slowdown']:.2f} | "
                     f"{r['sim_at_speed_s'] * 1e3:.2f} | {r['abs_error_at_speed']:.1%} |")
    lines += ["", "Schedules: naive (one server on the first node, equal batches), balanced (batches by speed, a "
              "server per four nodes on the fastest NICs), each with two threads per worker, balanced with one "
              "server and with a server on every node, and six random valid schedules of at most "
              f"{MAX_RANKS} ranks per cluster (`hpcps.tune.space.ScheduleSpace.random_points`, seed 0). "
              "hetero10a-1g is `results/testbed_hetero10a_1g.toml`.", "",
              "Machine slowdown: the median ratio of the step times a run charged (each worker's step timed alone "
              "at its start-up) to the sitting's calibration; the simulator given the calibration times that "
              "factor leaves the network, the sharing of NICs and servers, and synchronisation as what differs."]
    warns = sorted({w for r in rows for w in r.get("warnings", [])})
    if warns:
        lines += ["", "Warnings the runs printed:", ""] + [f"- {w}" for w in warns]
    (res / "testbed_fidelity.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
