"""Push codecs where bandwidth is scarce: the 11M-parameter job (jobs/cifar-wide.toml) on an emulated
cluster of 1 Gbit/s nodes, pushes as float32 against int8, side by side, with the simulator's
prediction beside each.

    .venv/bin/python benchmarks/codec_bandwidth.py            # about 10 minutes on 2 cores

Cluster: three nodes of speed 4 (a fast node: compute is small next to the network), 1 Gbit/s NICs,
50 us; one serves, two work (batch 8 each, one thread). Every worker pushes with the codec of the
run (none or int8, per worker in the node schedule, as the tuner would set it). Pulls stay float32.
Three sittings, the order of the codecs rotated in each; the figure is each run's median emulated
iteration time after WARMUP iterations, from its trace.

Verdict, fixed before the first run: int8 at least 2x faster per iteration than float32 (the ratio of
the medians over all sittings); the spread is the range of the per-sitting ratios.

Writes results/codec_bandwidth.md and .json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import command_line, facts, facts_markdown, load_average  # noqa: E402

from hpcps.cluster import parse_cluster  # noqa: E402
from hpcps.cluster.placement import NodePlan, NodeSchedule, NodeWorker, write_node_schedule  # noqa: E402
from hpcps.config import load_job  # noqa: E402
from hpcps.sim import SimOptions, simulate_job  # noqa: E402
from hpcps.trace import open_trace  # noqa: E402

JOB = ROOT / "jobs/cifar-wide.toml"
CLUSTER_TEXT = """
name = "bw1g"
[types.fast]
speed = 4.0
cores = 4
nic_gbps = 1.0
latency_us = 50.0
memory_gb = 64.0
[[nodes]]
names = "n[1-3]"
type = "fast"
"""
CODECS = ("none", "int8")
SITTINGS = 3
ITERATIONS = 8
WARMUP = 2
BATCH = 8
BIN = Path(sys.executable).parent


def schedule(codec: str) -> NodeSchedule:
    return NodeSchedule((NodePlan("n1", True, ()),
                         NodePlan("n2", False, (NodeWorker(BATCH, 1, codec),)),
                         NodePlan("n3", False, (NodeWorker(BATCH, 1, codec),))))


def run(codec: str, workdir: Path, tag: str, cluster_path: Path, job_path: Path) -> dict:
    sched_path, trace = workdir / f"{tag}.toml", workdir / f"{tag}.h5"
    write_node_schedule(schedule(codec), sched_path)
    cmd = [str(BIN / "mpiexec"), "-n", "3", sys.executable, "-m", "hpcps.train", "--job", str(job_path),
           "--cluster", str(cluster_path), "--schedule", str(sched_path), "--iterations", str(ITERATIONS),
           "--trace", str(trace), "--quiet"]
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{tag} failed:\n{out.stderr[-3000:]}")
    t = open_trace(trace)
    it = t.iterations[t.iterations["iteration"] >= WARMUP]
    per_iter = [float(np.max(it["time_s"][it["iteration"] == i])) for i in np.unique(it["iteration"])]
    return {"codec": codec, "tag": tag, "iteration_s": float(np.median(per_iter)), "iterations_s": per_iter,
            "push_nbytes_per_iteration": int(t.attrs["push_nbytes_per_iteration"]),
            "push_raw_nbytes_per_iteration": int(t.attrs["push_raw_nbytes_per_iteration"]),
            "wall_s": time.monotonic() - t0,
            "warnings": [ln for ln in (out.stdout + out.stderr).splitlines() if "warning" in ln]}


def main() -> int:
    import tomllib
    from dataclasses import replace
    context = facts()
    cluster = parse_cluster(tomllib.loads(CLUSTER_TEXT), "bw1g")
    job = load_job(JOB)
    job = replace(job, training=replace(job.training, global_batch=2 * BATCH))
    predicted = {c: simulate_job(cluster, schedule(c).to_rank_schedule(), job,
                                 SimOptions(iterations=10, steady_state=True)).iteration_time_s for c in CODECS}
    print("simulated: " + ", ".join(f"{c} {t:.3f} s" for c, t in predicted.items()), flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="hpcps-codec-bw-") as tmp:
        work = Path(tmp)
        cluster_path = work / "bw1g.toml"
        cluster_path.write_text(CLUSTER_TEXT)
        job_path = work / "cifar-wide-16.toml"          # the job at the global batch of the two workers
        job_path.write_text(JOB.read_text().replace("global_batch = 64", f"global_batch = {2 * BATCH}"))
        for sitting in range(SITTINGS):
            order = CODECS[sitting % len(CODECS):] + CODECS[:sitting % len(CODECS)]
            for codec in order:
                r = run(codec, work, f"s{sitting}-{codec}", cluster_path, job_path)
                r["sitting"] = sitting
                runs.append(r)
                print(f"sitting {sitting + 1}/{SITTINGS} {codec}: {r['iteration_s']:.3f} s an iteration "
                      f"(wall {r['wall_s']:.0f} s){'; ' + r['warnings'][0] if r['warnings'] else ''}", flush=True)
    context["load_average_at_end"] = load_average()
    med = {c: float(np.median([r["iteration_s"] for r in runs if r["codec"] == c])) for c in CODECS}
    per_sitting = [next(r for r in runs if r["sitting"] == s and r["codec"] == "none")["iteration_s"]
                   / next(r for r in runs if r["sitting"] == s and r["codec"] == "int8")["iteration_s"]
                   for s in range(SITTINGS)]
    ratio = med["none"] / med["int8"]
    met = ratio >= 2.0
    command = command_line([".venv/bin/python", "benchmarks/codec_bandwidth.py"])
    out = {"command": command, "context": context, "cluster": CLUSTER_TEXT, "job": str(JOB.relative_to(ROOT)),
           "batch_per_worker": BATCH, "iterations": ITERATIONS, "warmup": WARMUP, "runs": runs,
           "median_iteration_s": med, "simulated_iteration_s": predicted, "speedup_int8": ratio,
           "speedup_int8_per_sitting": per_sitting, "target": "int8 >= 2x faster per iteration", "met": met}
    (ROOT / "results/codec_bandwidth.json").write_text(json.dumps(out, indent=1) + "\n")
    push = {c: next(r for r in runs if r["codec"] == c)["push_nbytes_per_iteration"] for c in CODECS}
    lines = [
        "# Push codecs where bandwidth is scarce", "",
        f"Command: `{command}` (benchmarks/codec_bandwidth.py says what it runs).", "",
        facts_markdown(context), "",
        "The 11M-parameter job (jobs/cifar-wide.toml, batch 8 on each of two workers) emulated on three "
        "nodes of speed 4 with 1 Gbit/s NICs: one serves, two work, every push float32 (`none`) or `int8`; "
        "pulls float32. Median emulated seconds an iteration after the first "
        f"{WARMUP}, {SITTINGS} sittings, codec order rotated.", "",
        "| codec | push bytes / iteration | median iteration (s) | per sitting (s) | simulated (s) |",
        "| --- | ---: | ---: | --- | ---: |"]
    for c in CODECS:
        each = ", ".join(f"{r['iteration_s']:.3f}" for r in runs if r["codec"] == c)
        lines.append(f"| {c} | {push[c] / 1e6:.1f} MB | {med[c]:.3f} | {each} | {predicted[c]:.3f} |")
    simulated = predicted["none"] / predicted["int8"]
    lines += ["", f"**int8 against float32: {ratio:.2f}x faster per iteration** (per sitting "
              f"{min(per_sitting):.2f}-{max(per_sitting):.2f}x; simulated {simulated:.2f}x). "
              f"Target 2x: **{'met' if met else 'not met'}**.", ""]
    if not met:
        lines += [
              "Why: NICs are full duplex (docs/sim.md, docs/testbed.md). int8 cuts the pushes into the server "
              "to about a quarter, but the server still sends every worker the whole float32 vector, the same "
              "bytes in the other direction, so the iteration stays bound by the pulls (and the steps). A 2x "
              "gain at this size needs the pulls compressed too (fp16 or bf16 pulls, which hpcps does not have "
              "yet), or more servers to spread them.", ""]
    warned = [r for r in runs if r["warnings"]]
    if warned:
        lines += [f"Emulation warnings in {len(warned)} of {len(runs)} runs "
                  f"(the first: `{warned[0]['warnings'][0]}`).", ""]
    (ROOT / "results/codec_bandwidth.md").write_text("\n".join(lines))
    print(f"int8 {ratio:.2f}x faster; target {'met' if met else 'not met'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
