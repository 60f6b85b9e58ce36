"""How fast a slow testbed NIC moves the slices of a schedule with a few servers, by the largest packet
the nodes build (hpcps.testbed.plan.packet_bytes).

    sudo .venv/bin/python benchmarks/testbed_packet_size.py              # 3 rounds of 3 settings, ~10 min
    sudo .venv/bin/python benchmarks/testbed_packet_size.py --rounds 1   # checks the script

Each run is results/testbed_fidelity.md's `balanced` schedule of hetero8 (two 10 Gb/s servers, workers
on all eight nodes, three of them behind 1 Gb/s NICs; 156 KB slices each way) as a user would start
it: `python -m hpcps.testbed run` at the cluster's default dilation, `python -m hpcps.train` with a
trace, 10 iterations. The settings are the least burst of a NIC and the largest packet the nodes build
(MIN_BURST_BYTES, hence packet_bytes): 64 KiB (the kernel's own packets, as the testbed was before),
16 KiB (the testbed's default) and 8 KiB; each round runs all three, in an order that rotates.

From each trace, iterations 2-9, each message's received rate (bytes over the time from when both ends
had posted it until the receiver had it all, as tests/testbed/test_links.py counts it) over the slow
NIC's 1 Gb/s: every push of a 1 Gb/s worker, and the last pull into it in each iteration (the one it
waits for; the other shard is often in before the worker posts its receive). The figure set out to
measure: per setting, the medians of those over all runs, against 1.0 (the link's rate) and the link
tests' 15%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import command_line, facts, facts_markdown, load_average  # noqa: E402

SETTINGS = (65536, 16384, 8192)
JOB = ROOT / "jobs/hetero8.toml"
CLUSTER = ROOT / "jobs/clusters/hetero8.toml"
ITERATIONS, WARMUP = 10, 2
# The testbed's own command line with the setting in place (a benchmark's override; the tool has none).
LAUNCH = ("import sys, hpcps.testbed.plan as p; p.MIN_BURST_BYTES = int(sys.argv.pop(1)); "
          "from hpcps.testbed.cli import main; sys.exit(main(sys.argv[1:]))")


def one_run(scratch: Path, setting: int, index: int) -> dict:
    from hpcps.cluster import load_cluster
    from hpcps.cluster.placement import balanced, write_node_schedule
    from hpcps.config import load_job
    from hpcps.testbed import default_dilation
    from hpcps.testbed.control import read_cpu_times, steal_share
    from hpcps.trace import open_trace
    from hpcps.trace.schema import DIRECTION
    cluster, job = load_cluster(CLUSTER), load_job(JOB)
    d = scratch / f"run{index}"
    d.mkdir()
    write_node_schedule(balanced(cluster, job.training.global_batch), d / "schedule.toml")
    cmd = [sys.executable, "-c", LAUNCH, str(setting), "run", "--cluster", str(CLUSTER),
           "--dilation", f"{default_dilation(cluster):g}", "--schedule", str(d / "schedule.toml"), "--name", "pkt",
           "--", sys.executable, "-m", "hpcps.train", "--job", str(JOB), "--cluster", str(CLUSTER),
           "--schedule", str(d / "schedule.toml"), "--iterations", str(ITERATIONS), "--trace", str(d / "trace.h5"),
           "--quiet"]
    before = read_cpu_times()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    after = read_cpu_times()
    if r.returncode != 0:
        raise SystemExit(f"run {index} ({setting}) failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    trace = open_trace(d / "trace.h5")
    host = trace.rank_field("host")
    slow = {rank for rank, name in host.items() if cluster.nodes[cluster.index(name)].type.nic_gbps == 1.0}
    batch = trace.rank_field("batch")
    slow = {rank for rank in slow if batch[rank] > 0}
    pushes, pulls = [], []
    for kind in ("push", "pull"):
        tr = trace.transfers_of(kind)
        tr = tr[(tr["direction"] == DIRECTION["recv"]) & (tr["iteration"] >= WARMUP)]
        rate = tr["nbytes"] * 8 / (tr["t_end"] - tr["t_start"]) / 1e9
        if kind == "push":
            pushes += [float(x) for x, peer in zip(rate, tr["peer"]) if int(peer) in slow]
            continue
        for rank in slow:
            for it in set(tr["iteration"][tr["rank"] == rank].tolist()):
                sel = (tr["rank"] == rank) & (tr["iteration"] == it)
                pulls.append(float(rate[sel][tr["t_end"][sel].argmax()]))
    it = trace.iterations[trace.iterations["iteration"] >= WARMUP]
    iteration_ms = round(float(statistics.median(it["time_s"])) * 1e3, 3)
    return {"run": index, "setting": setting, "time": time.strftime("%H:%M:%S"), "steal": steal_share(before, after),
            "warned_steal": "(steal)" in r.stderr, "iteration_ms": iteration_ms,
            "push": [round(x, 3) for x in pushes], "pull": [round(x, 3) for x in pulls],
            "push_median": round(statistics.median(pushes), 3), "pull_median": round(statistics.median(pulls), 3)}


def summary(rows: list[dict]) -> dict:
    out = {}
    for s in SETTINGS:
        mine = [r for r in rows if r["setting"] == s]
        if not mine:
            continue
        out[str(s)] = {"runs": len(mine),
                       "push_median": round(statistics.median(x for r in mine for x in r["push"]), 3),
                       "pull_median": round(statistics.median(x for r in mine for x in r["pull"]), 3),
                       "push_run_medians": [min(r["push_median"] for r in mine), max(r["push_median"] for r in mine)],
                       "pull_run_medians": [min(r["pull_median"] for r in mine), max(r["pull_median"] for r in mine)],
                       "iteration_ms": [min(r["iteration_ms"] for r in mine), max(r["iteration_ms"] for r in mine)],
                       "runs_that_warned_of_steal": sum(r["warned_steal"] for r in mine)}
    return out


def markdown(rows: list[dict], s: dict, f: dict, command: str, wall_s: float) -> str:
    out = ["# Slices through a slow testbed NIC, by the largest packet the nodes build", "",
           f"Command: `{command}`", "", facts_markdown(f), "", f"Wall time {wall_s / 60:.1f} min.", "",
           "hetero8's `balanced` schedule (results/testbed_fidelity.md) on the testbed at its default dilation, "
           "10 iterations; 156 KB slices. Rates are received rates over the slow NICs' 1 Gb/s, iterations 2-9: "
           "every push of a 1 Gb/s worker, and the last pull into it in each iteration "
           "(benchmarks/testbed_packet_size.py). Setting: the least burst of a NIC, and so the largest packet "
           "(64 KiB: the kernel's own, as the testbed was before).", "",
           "| setting (bytes) | runs | pushes: median (run medians) | last pulls: median (run medians) | "
           "iteration (ms, range) | runs that warned of steal |",
           "| ---: | ---: | --- | --- | --- | ---: |"]
    for k, v in s.items():
        out.append(f"| {k} | {v['runs']} | **{v['push_median']:.2f}** ({v['push_run_medians'][0]:.2f}-"
                   f"{v['push_run_medians'][1]:.2f}) | **{v['pull_median']:.2f}** ({v['pull_run_medians'][0]:.2f}-"
                   f"{v['pull_run_medians'][1]:.2f}) | {v['iteration_ms'][0]:.2f}-{v['iteration_ms'][1]:.2f} | "
                   f"{v['runs_that_warned_of_steal']} |")
    out += ["", "| run | time | setting | steal | push median | last pull median | iteration (ms) |",
            "| ---: | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        steal = "" if r["steal"] is None else f"{r['steal']:.1%}"
        out.append(f"| {r['run']} | {r['time']} | {r['setting']} | {steal}{' (warned)' if r['warned_steal'] else ''} | "
                   f"{r['push_median']:.2f} | {r['pull_median']:.2f} | {r['iteration_ms']:.2f} |")
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds of every setting (default 3)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "testbed_packet_size.md",
                   help="markdown results; the JSON goes beside it (default results/testbed_packet_size.md)")
    args = p.parse_args()
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    from hpcps.testbed.runner import missing_requirements
    missing = missing_requirements()
    if missing:
        print(f"testbed_packet_size: {missing}", file=sys.stderr)
        return 2
    command = command_line(["python", "benchmarks/testbed_packet_size.py"] + sys.argv[1:])
    f, t0 = facts(), time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpcps-packet-size-") as scratch:
        for rnd in range(args.rounds):
            order = SETTINGS[rnd % len(SETTINGS):] + SETTINGS[:rnd % len(SETTINGS)]
            for setting in order:
                rows.append(one_run(Path(scratch), setting, len(rows)))
                r = rows[-1]
                print(f"round {rnd + 1}/{args.rounds} {setting:>6}: push {r['push_median']:.2f} pull "
                      f"{r['pull_median']:.2f} iteration {r['iteration_ms']:.2f} ms steal {r['steal']:.1%}", flush=True)
    f["load_average_at_end"] = load_average()
    s = summary(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows, s, f, command, time.monotonic() - t0))
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "facts": f, "summary": s, "runs": rows},
                                                        indent=1) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
