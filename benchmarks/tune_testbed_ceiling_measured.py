"""The heuristic's ceiling on the testbed itself: the heuristic's schedules against the best schedule known
for the cluster, measured side by side on the shaped links.

results/tune_testbed.md sets the target "structured at least 1.2x faster than heuristic on hetero10a-1g";
results/tune_testbed_ceiling.md found by the simulator that no schedule it knows of is more than 1.18x
faster than the heuristic's there. The simulator is 6-14% off the testbed (results/testbed_fidelity.md),
so that ceiling is measured here on the testbed: the heuristic's and structured's re-measured best
schedules of every seed of results/tune_testbed.json and the simulator's best known schedule of
results/tune_testbed_ceiling.json, REPEATS times each, in rounds with every schedule once whose order
rotates, at the settings of tune_testbed's re-measurements (20 iterations, dilation 32, or --dilation:
where the testbed warns that it could not keep up, a higher one shows whether that changed the order). A
schedule's time is the median of its measurements.

Figure, fixed before any run: per sitting, for each seed's heuristic schedule, its median over the
fastest median of any schedule measured in that sitting; the median of those over the seeds is the most
"structured / heuristic" could reach with any schedule known. Below 1.2x, the target cannot be met on
this cluster by any schedule known; it may still be by one nobody found.

    sudo .venv/bin/python benchmarks/tune_testbed_ceiling_measured.py            # one sitting, ~25 min
    sudo .venv/bin/python benchmarks/tune_testbed_ceiling_measured.py --resume   # finish a stopped one
    sudo .venv/bin/python benchmarks/tune_testbed_ceiling_measured.py --dilation 64 --repeats 3 \
        --out results/tune_testbed_ceiling_measured_d64.md

Every sitting is kept in the JSON beside --out (default results/tune_testbed_ceiling_measured.md), the
markdown shows them all; runs go under --runs (default results/runs/ and the name of --out, not kept in
git). Progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TUNED = ROOT / "results" / "tune_testbed.json"
CEILING = ROOT / "results" / "tune_testbed_ceiling.json"
REPEATS = 5
SUMMARY = re.compile(r"servers=(?P<servers>[^;]+); workers=(?P<workers>[^;]+)$")


def say(msg: str) -> None:
    print(f"tune_testbed_ceiling_measured: {msg}", file=sys.stderr, flush=True)


def schedule_from_summary(text: str, order: list[str]) -> dict:
    """hpcps.tune.loop.summarize's one line (servers=a+b; workers=a:32/8,c:16/4) back as a node schedule
    table, its nodes in ORDER (the cluster's: a summary lists servers first, which would renumber ranks)."""
    m = SUMMARY.match(text.strip())
    if not m:
        raise ValueError(f"not a schedule summary: {text!r}")
    nodes: dict[str, dict] = {}
    for name in m["servers"].split("+"):
        nodes.setdefault(name, {"name": name, "server": True, "workers": []})
    for w in m["workers"].split(","):
        name, batch, threads, *codec = w.split(":")[0], *w.split(":")[1].split("/")
        worker = {"batch": int(batch), "threads": int(threads)}
        if codec:
            worker["codec"] = codec[0]
        nodes.setdefault(name, {"name": name, "server": False, "workers": []})["workers"].append(worker)
    return {"nodes": sorted(nodes.values(), key=lambda n: order.index(n["name"]))}


def schedules_for(cluster: str, tuned: dict, ceiling: dict, order: list[str]) -> dict[str, dict]:
    """name -> schedule table: heuristic-SEED and structured-SEED of every complete cell, best-known."""
    out = {}
    for cell in sorted(tuned["cells"].values(), key=lambda c: c["seed"]):
        if cell["cluster"] != cluster or not cell.get("remeasured"):
            continue
        for strategy in ("heuristic", "structured"):
            s = cell["remeasured"]["plan"]["schedules"].get(strategy)
            if s is not None:
                out[f"{strategy}-{cell['seed']}"] = s
    known = [c for c in ceiling["clusters"] if c["cluster"] == cluster]
    if known:
        out["best-known"] = schedule_from_summary(known[0]["best_known"], order)
    return out


def ceiling_of(measured: list[dict]) -> dict:
    """The sitting's figure: per heuristic schedule, its median over the fastest median measured."""
    times: dict[str, list[float]] = {}
    for m in measured:
        if m["iteration_time_s"] is not None:
            times.setdefault(m["name"], []).append(m["iteration_time_s"])
    med = {n: statistics.median(v) for n, v in times.items()}
    if not med:
        return {"medians_s": {}, "fastest": None, "heuristic_over_fastest": {}, "ceiling": None}
    fastest = min(med, key=med.__getitem__)
    ratios = {n: t / med[fastest] for n, t in med.items() if n.startswith("heuristic-")}
    return {"medians_s": med, "spread_s": {n: [min(v), max(v)] for n, v in times.items()}, "fastest": fastest,
            "heuristic_over_fastest": ratios, "ceiling": statistics.median(ratios.values()) if ratios else None}


def report(data: dict) -> str:
    from _machine import facts_markdown
    lines = ["# The heuristic's ceiling, measured on the testbed", "",
             "Why and how: the docstring of benchmarks/tune_testbed_ceiling_measured.py. Cluster "
             f"{data['cluster']} (`{data['cluster_file']}`), job `{data['job']}`, {data['iterations']} iterations "
             f"a measurement (its time the mean past the first two, emulated), dilation {data['dilation']:g}, "
             f"{data['repeats']} measurements of each schedule a sitting in rotating rounds.", "",
             "Schedules:", "", "| name | schedule |", "| --- | --- |"]
    lines += [f"| {n} | `{s}` |" for n, s in data["summaries"].items()]
    for i, s in enumerate(data["sittings"], 1):
        c = ceiling_of(s["measured"])
        facts = dict(s["facts"], load_average_at_end=s.get("load_average_at_end", ""))
        lines += ["", f"## Sitting {i}", "", f"Command: `{s['command']}`", "", facts_markdown(facts), "",
                  f"{len(s['measured'])} of {len(s['order'])} measurements, wall time "
                  f"{s.get('wall_s', 0) / 60:.1f} min.", "",
                  "| schedule | median (ms) | min - max (ms) | over the fastest | measurements that warned |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for n in data["summaries"]:
            if n in c["medians_s"]:
                lo, hi = c["spread_s"][n]
                ms = [m for m in s["measured"] if m["name"] == n]
                lines.append(f"| {n} | {c['medians_s'][n] * 1e3:.2f} | {lo * 1e3:.2f} - {hi * 1e3:.2f} | "
                             f"{c['medians_s'][n] / c['medians_s'][c['fastest']]:.2f}x | "
                             f"{sum(1 for m in ms if m['warnings'])} of {len(ms)} |")
        warned = sum(1 for m in s["measured"] if m["warnings"])
        lines += ["", f"{warned} of {len(s['measured'])} measurements warned (the testbed's own checks).", ""]
        if c["ceiling"] is not None:
            per = ", ".join(f"{n} {r:.2f}x" for n, r in c["heuristic_over_fastest"].items())
            lines.append(f"**Ceiling: heuristic / fastest = {c['ceiling']:.2f}x** (median over seeds; {per}); "
                         f"fastest: {c['fastest']}.")
    done = [ceiling_of(s["measured"])["ceiling"] for s in data["sittings"]
            if len(s["measured"]) == len(s["order"])]
    if done:
        lines += ["", "## Over sittings", "",
                  f"Ceiling per complete sitting: {', '.join(f'{x:.2f}x' for x in done)} (target of "
                  f"results/tune_testbed.md: structured at least 1.2x faster than heuristic)."]
    lines += ["", "Raw figures: the JSON beside this file."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cluster", default="hetero10a-1g", help="a cluster of tune_testbed's (default %(default)s)")
    p.add_argument("--repeats", type=int, default=REPEATS, help="measurements of each schedule (default %(default)s)")
    p.add_argument("--runs", type=Path, default=None,
                   help="where the measurements go (default results/runs/ and the name of --out without .md)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "tune_testbed_ceiling_measured.md")
    p.add_argument("--dilation", type=float, default=None,
                   help="time dilation of every measurement (default: that of tune_testbed's, 32)")
    p.add_argument("--resume", action="store_true", help="finish the last sitting if it stopped part way")
    p.add_argument("--report-only", action="store_true", help="rewrite the markdown from the JSON")
    args = p.parse_args(argv)
    raw = args.out.with_suffix(".json")
    args.runs = args.runs or ROOT / "results" / "runs" / args.out.stem
    if args.report_only:
        if not raw.is_file():
            p.error(f"--report-only: {raw} is not a file")
        args.out.write_text(report(json.loads(raw.read_text())))
        return 0
    if args.dilation is not None and not 1 <= args.dilation < float("inf"):
        p.error(f"--dilation must be a number >= 1, got {args.dilation}")
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.out.resolve() in (TUNED, CEILING) or raw.resolve() in (TUNED, CEILING):
        p.error("--out must not be one of this command's inputs")
    tuned, ceiling = json.loads(TUNED.read_text()), json.loads(CEILING.read_text())
    if args.cluster not in tuned["clusters_files"]:
        p.error(f"--cluster: {args.cluster!r} is not one of {', '.join(tuned['clusters_files'])}")

    from _machine import command_line, facts, load_average
    from tune_testbed import rotation, warnings_in

    from hpcps.cluster import load_cluster
    from hpcps.cluster.placement import parse_node_schedule
    from hpcps.config import load_job
    from hpcps.io.outputs import write_text
    from hpcps.testbed.runner import missing_requirements
    from hpcps.tune.backends.testbed import TestbedBackend
    from hpcps.tune.loop import summarize
    why = missing_requirements(delayed=True)
    if why:
        print(f"tune_testbed_ceiling_measured: {why}", file=sys.stderr)
        return 2
    cl = load_cluster(ROOT / tuned["clusters_files"][args.cluster])
    schedules = schedules_for(args.cluster, tuned, ceiling, [n.name for n in cl.nodes])
    parsed = {n: parse_node_schedule(s, n) for n, s in schedules.items()}
    plan = {"iterations": tuned["iterations"], "dilation": args.dilation or tuned["dilation"]}
    data = json.loads(raw.read_text()) if raw.exists() else None
    setup = {"cluster": args.cluster, "cluster_file": tuned["clusters_files"][args.cluster], "job": tuned["job"],
             "iterations": plan["iterations"], "dilation": plan["dilation"], "repeats": args.repeats,
             "schedules": schedules}
    if data is not None and any(data.get(k) != v for k, v in setup.items()):
        print(f"tune_testbed_ceiling_measured: {raw} holds sittings of another set-up; give another --out",
              file=sys.stderr)
        return 2
    data = data or {**setup, "summaries": {n: summarize(s) for n, s in parsed.items()}, "sittings": []}
    last = data["sittings"][-1] if data["sittings"] else None
    if args.resume and last is not None and len(last["measured"]) < len(last["order"]):
        sitting = last
        say(f"resuming sitting {len(data['sittings'])} after {len(last['measured'])} measurement(s)")
    else:
        sitting = {"command": command_line(["python", "benchmarks/tune_testbed_ceiling_measured.py",
                                            *(argv if argv is not None else sys.argv[1:])]),
                   "facts": facts(), "order": rotation(list(schedules), args.repeats), "measured": []}
        data["sittings"].append(sitting)
    n_sitting = data["sittings"].index(sitting) + 1
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    job = load_job(ROOT / data["job"])
    backend = TestbedBackend(cl, job, ROOT / data["job"], ROOT / data["cluster_file"],
                             iterations=data["iterations"], dilation=data["dilation"])
    t0 = time.monotonic() - sitting.get("wall_s", 0.0)
    run_dir = args.runs / args.cluster / f"sitting-{n_sitting}"
    for i in range(len(sitting["measured"]), len(sitting["order"])):
        rnd, name = sitting["order"][i]
        d = run_dir / f"{i + 1:03d}"
        if d.exists():                   # left by a measurement that never finished
            shutil.rmtree(d)
        d.mkdir(parents=True)
        res = backend.run_trial(d, parsed[name], i + 1)
        sitting["measured"].append({"round": rnd, "name": name, "status": res.status,
                                    "iteration_time_s": res.iteration_time_s if res.ok else None,
                                    "elapsed_s": res.elapsed_s, "warnings": warnings_in(d)})
        sitting["wall_s"] = time.monotonic() - t0
        sitting["load_average_at_end"] = load_average()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(raw, json.dumps(data, indent=1))
        write_text(args.out, report(data))
        t = f"{res.iteration_time_s * 1e3:.2f} ms" if res.ok else res.status
        say(f"sitting {n_sitting} {i + 1}/{len(sitting['order'])} (round {rnd + 1}): {name} {t} "
            f"[{res.elapsed_s:.0f} s]")
    c = ceiling_of(sitting["measured"])
    if c["ceiling"] is not None:
        say(f"sitting {n_sitting}: heuristic / fastest ({c['fastest']}) = {c['ceiling']:.2f}x")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
