"""How a testbed link keeps its rate, run after run, against the CPU time the machine's host takes.

    sudo .venv/bin/python benchmarks/testbed_link_steal.py               # 40 runs, about 7 min
    sudo .venv/bin/python benchmarks/testbed_link_steal.py --runs 3      # checks the script

Each run is tests/testbed/test_links.py's 1 Gbit/s case as a user would start it: `python -m
hpcps.testbed run` of two nodes with 10 Gb/s NICs at dilation 10 (1 Gbit/s links), one server and one
worker training the wide digits MLP (2.46 MB each way per iteration) for 6 iterations. From its trace:
the traced rate of each push and pull past the first iteration as a share of the link's rate, and the
run's median of each. Around it: /proc/stat's CPU counters, so the share of CPU time stolen (taken by a
virtual machine's host) during the run, and whether the run warned of it
(hpcps.testbed.control.STEAL_WARNING).

The figure set out to measure: of the runs whose median push or pull fell below 0.85 of the link's rate
(the link test's bound), how many warned of steal; and the medians of the runs with under 1% stolen.
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

from benchmarks._machine import command_line, facts, facts_markdown, load_average  # noqa: E402

NIC_GBPS, DILATION, SLOW = 10.0, 10.0, 0.85
CLUSTER = ('name = "links"\n[types.t0]\nspeed = 1.0\ncores = 2\nnic_gbps = 10.0\nlatency_us = 20.0\n'
           '[[nodes]]\nnames = "a1"\ntype = "t0"\n[[nodes]]\nnames = "a2"\ntype = "t0"\n')
SCHEDULE = '[[nodes]]\nname = "a1"\nserver = true\n[[nodes]]\nname = "a2"\nworkers = [{batch = 32}]\n'
JOB = ('name = "wide"\nworkload = "digits"\n[model]\nhidden = 8192\n[optimizer]\nname = "sgd"\nlr = 0.05\n'
       '[training]\nglobal_batch = 32\niterations = 6\nlog_every = 100\n')


def one_run(scratch: Path, index: int) -> dict:
    from hpcps.testbed.control import read_cpu_times, steal_share
    from hpcps.trace import open_trace
    from tests.testbed.test_links import received_gbps
    d = scratch / f"run{index}"
    d.mkdir()
    for name, text in (("cluster.toml", CLUSTER), ("schedule.toml", SCHEDULE), ("job.toml", JOB)):
        (d / name).write_text(text)
    cmd = [sys.executable, "-m", "hpcps.testbed", "run", "--cluster", str(d / "cluster.toml"),
           "--dilation", str(DILATION), "--name", "lsteal", "--",
           sys.executable, "-m", "hpcps.train", "--job", str(d / "job.toml"), "--cluster", str(d / "cluster.toml"),
           "--schedule", str(d / "schedule.toml"), "--trace", str(d / "trace.h5")]
    before = read_cpu_times()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=d, timeout=600)
    after = read_cpu_times()
    if r.returncode != 0:
        raise SystemExit(f"run {index} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    trace = open_trace(d / "trace.h5")
    push = received_gbps(trace, "push")[1] / NIC_GBPS
    pull = received_gbps(trace, "pull")[0] / NIC_GBPS
    warned = [ln for ln in r.stderr.splitlines() if "(steal)" in ln]
    return {"run": index, "time": time.strftime("%H:%M:%S"), "steal": steal_share(before, after),
            "warned_steal": bool(warned), "push": [round(float(x), 3) for x in push],
            "pull": [round(float(x), 3) for x in pull], "push_median": round(float(statistics.median(push)), 3),
            "pull_median": round(float(statistics.median(pull)), 3)}


def summary(rows: list[dict]) -> dict:
    slow = [r for r in rows if min(r["push_median"], r["pull_median"]) < SLOW]
    quiet = [r for r in rows if r["steal"] is not None and r["steal"] < 0.01]
    medians = [m for r in quiet for m in (r["push_median"], r["pull_median"])]
    return {"runs": len(rows), "slow_runs": len(slow), "slow_runs_that_warned": sum(r["warned_steal"] for r in slow),
            "slow_runs_steal": sorted(round(r["steal"], 4) for r in slow if r["steal"] is not None),
            "quiet_runs": len(quiet), "quiet_medians_range": [min(medians), max(medians)] if medians else None,
            "warned_runs": sum(r["warned_steal"] for r in rows)}


def markdown(rows: list[dict], s: dict, f: dict, command: str) -> str:
    out = ["# A 1 Gbit/s testbed link, run after run, against CPU time the host took", "",
           f"`{command}`", "", facts_markdown(f), "",
           "Each run: two nodes, 10 Gb/s NICs at dilation 10 (1 Gbit/s links), a server and a worker, 6 "
           "iterations of a 2.46 MB message each way (benchmarks/testbed_link_steal.py). Rates are traced "
           "rates over the link's, iterations 1-5; steal is the share of the machine's CPU time its host "
           "took during the run (/proc/stat).", "",
           f"- runs: {s['runs']}; with a median below {SLOW} (push or pull): **{s['slow_runs']}**, of which "
           f"**{s['slow_runs_that_warned']}** warned of steal (their steal: "
           f"{', '.join(f'{x:.1%}' for x in s['slow_runs_steal']) or 'none'})",
           f"- runs with under 1% stolen: {s['quiet_runs']}; their medians "
           + (f"{s['quiet_medians_range'][0]:.2f}-{s['quiet_medians_range'][1]:.2f}" if s["quiet_medians_range"]
              else "(none)"),
           f"- runs that warned of steal: {s['warned_runs']}", "",
           "| run | time | steal | warned | push median | pull median | pushes | pulls |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        steal = "" if r["steal"] is None else f"{r['steal']:.1%}"
        out.append(f"| {r['run']} | {r['time']} | {steal} | {'yes' if r['warned_steal'] else ''} | "
                   f"{r['push_median']:.2f} | {r['pull_median']:.2f} | {' '.join(f'{x:.2f}' for x in r['push'])} | "
                   f"{' '.join(f'{x:.2f}' for x in r['pull'])} |")
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=40, help="testbed runs (default 40)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "testbed_link_steal.md",
                   help="markdown results; the JSON goes beside it (default results/testbed_link_steal.md)")
    args = p.parse_args()
    if args.runs < 1:
        p.error(f"--runs must be at least 1, got {args.runs}")
    from hpcps.testbed.runner import missing_requirements
    missing = missing_requirements()
    if missing:
        print(f"testbed_link_steal: {missing}", file=sys.stderr)
        return 2
    command = command_line(["python", "benchmarks/testbed_link_steal.py"] + sys.argv[1:])
    f = facts()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpcps-link-steal-") as scratch:
        for i in range(args.runs):
            rows.append(one_run(Path(scratch), i))
            r = rows[-1]
            print(f"run {i + 1}/{args.runs}: steal {r['steal']:.1%} push {r['push_median']:.2f} "
                  f"pull {r['pull_median']:.2f}{' (warned)' if r['warned_steal'] else ''}", flush=True)
    f["load_average_at_end"] = load_average()
    s = summary(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows, s, f, command))
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "facts": f, "summary": s, "runs": rows},
                                                        indent=1) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
