"""What tracing costs: training throughput with the trace on against off, side by side in one run.

    python benchmarks/trace_overhead.py            # both configurations, writes results/trace_overhead.md
    python benchmarks/trace_overhead.py --quick    # short blocks: checks the script, measures nothing

One MPI job per configuration (mpiexec -n RANKS python benchmarks/trace_overhead.py --ranks-side ...)
trains the same job again and again with hpcps's own run_bsp, alternating a run without a recorder
and a run with one (the TraceRecorder that hpcps.train uses, writing a real trace file), the order
swapping from pair to pair. Doing both inside one job, seconds apart, is what makes the comparison
hold on a shared, oversubscribed machine whose speed drifts by a factor of several within minutes:
each pair of neighbouring runs sees about the same machine, and the result is the median of the
per-pair throughput ratios (traced / untraced). Throughput is run_bsp's own figure (samples over the
training loop's wall time, as hpcps.train reports it): every flush but the final one falls inside
it; start-up (clock sync, creating the file) and the final flush do not. The target: a ratio of at
least 0.97. Two views that other tenants of the machine disturb far less: the CPU time all ranks
use per iteration (time.process_time summed over ranks; waiting ranks sleep when they outnumber the
cores, so this is work, not waiting; each side also runs a tenth as many iterations, and the
difference of the two runs' CPU times over the difference of their iterations leaves set-up and
evaluation out), and, from each traced run's own trace, the time the writer rank spent flushing as
a share of the loop's time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.97
CONFIGS = {
    # The MLP on digits: iterations of a few milliseconds, the worst case for any per-iteration cost.
    "digits": {"job": "jobs/default.toml", "iterations": 2000, "pairs": 16, "quick": (60, 2)},
    # The CIFAR-shaped ResNet: iterations of a tenth of a second and more.
    "cifar": {"job": "jobs/cifar.toml", "iterations": 40, "pairs": 5, "quick": (4, 1)},
}


# ----------------------------------------------------------------------------------------------------
# Rank side (under mpiexec)

def ranks_side(args) -> None:
    from mpi4py import MPI

    from hpcps.config import default_schedule, load_job
    from hpcps.ps.runtime import run_bsp
    from hpcps.trace import TraceRecorder
    from hpcps.trace.metadata import RunInfo

    comm = MPI.COMM_WORLD
    base = load_job(ROOT / args.job)
    short = max(2, args.iterations // 10)
    schedule = default_schedule(comm.Get_size(), base.training.global_batch)

    def one(side: str, iterations: int, path: Path):
        recorder = TraceRecorder(comm, path, RunInfo(run_id=path.stem)) if side == "on" else None
        comm.Barrier()
        cpu0 = time.process_time()
        result = run_bsp(comm, base.with_iterations(iterations), schedule, device="cpu", recorder=recorder)
        if recorder is not None:
            recorder.close()
        return result, comm.reduce(time.process_time() - cpu0, root=0)

    one("off", short, Path(args.scratch) / f"{args.name}-warm-up.h5")        # imports and first-touch costs, untimed
    rows = []
    for pair in range(args.pairs):
        order = ("off", "on") if pair % 2 == 0 else ("on", "off")
        row = {"pair": pair + 1, "first": order[0]}
        for side in order:
            result, cpu_long = one(side, args.iterations, Path(args.scratch) / f"{args.name}-pair{pair}.h5")
            _, cpu_short = one(side, short, Path(args.scratch) / f"{args.name}-short{pair}.h5")
            if comm.Get_rank() == 0:
                row[side] = result.samples_per_s
                row[f"{side}_wall_s"] = result.wall_s
                row[f"{side}_cpu_ms"] = 1e3 * (cpu_long - cpu_short) / (args.iterations - short)
        if comm.Get_rank() == 0:
            row["ratio"] = row["on"] / row["off"]
            row["cpu_ratio"] = row["on_cpu_ms"] / row["off_cpu_ms"]
            row.update(flush_facts(Path(args.scratch) / f"{args.name}-pair{pair}.h5", row["on_wall_s"]))
            rows.append(row)
            print(f"{args.name} pair {pair + 1}/{args.pairs}: off {row['off']:10.1f}  on {row['on']:10.1f} "
                  f"samples/s  ratio {row['ratio']:.3f}  CPU ratio {row['cpu_ratio']:.3f}", flush=True)
    if comm.Get_rank() == 0:
        Path(args.scratch, f"{args.name}.json").write_text(json.dumps(rows))


def flush_facts(path: Path, wall_s: float) -> dict:
    import numpy as np

    from hpcps.trace import open_trace
    tr = open_trace(path)
    fl = tr.phase("trace")
    root, others = fl[fl["rank"] == 0], fl[fl["rank"] != 0]

    def d(rows):
        return rows["t_end"] - rows["t_start"]

    return {"flushes": int(np.unique(fl["iteration"]).size),
            "flush_share": float(d(root).sum() / wall_s),
            "rank0_flush_ms": float(1e3 * np.median(d(root))) if root.size else float("nan"),
            "other_flush_ms": float(1e3 * np.median(d(others))) if others.size else float("nan"),
            "events": int(tr.events.size), "transfers": int(tr.transfers.size), "file_mb": path.stat().st_size / 1e6}


# ----------------------------------------------------------------------------------------------------
# Driver

def mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else "mpiexec"


def machine() -> dict:
    """benchmarks/_machine.py's facts, with h5py's and HDF5's versions (the trace writer's)."""
    import h5py
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _machine import facts
    return {**facts(), "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version}


def run_config(name: str, cfg: dict, ranks: int, quick: bool, scratch: Path) -> dict:
    iterations, pairs = cfg["quick"] if quick else (cfg["iterations"], cfg["pairs"])
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, str(Path(__file__).resolve()), "--ranks-side",
           "--name", name, "--job", cfg["job"], "--iterations", str(iterations), "--pairs", str(pairs),
           "--scratch", str(scratch)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=7200, env=env)
    rows = json.loads((scratch / f"{name}.json").read_text())
    on, off = [r["on"] for r in rows], [r["off"] for r in rows]
    return {"name": name, "job": cfg["job"], "iterations": iterations, "ranks": ranks, "rows": rows,
            "median_on": statistics.median(on), "median_off": statistics.median(off),
            "median_ratio": statistics.median(r["ratio"] for r in rows),
            "median_cpu_ratio": statistics.median(r["cpu_ratio"] for r in rows),
            "median_flush_share": statistics.median(r["flush_share"] for r in rows)}


def markdown(results: list[dict], facts: dict, command: str) -> str:
    from _machine import facts_markdown
    lines = ["# Tracing overhead", "",
             "Training throughput with a trace recorder against without, identical trainings alternating inside "
             "one MPI job (see the docstring of `benchmarks/trace_overhead.py`). Throughput: run_bsp's samples/s "
             "over the training loop, as hpcps.train reports it. Target: traced / untraced >= "
             f"{TARGET} (at most 3% lower throughput), judged on the median of the per-pair ratios.", "",
             f"Command: `{command}`", "",
             facts_markdown(facts), "",
             f"h5py {facts['h5py']} (HDF5 {facts['hdf5']}). The ranks outnumber the cores, "
             "and other jobs shared the machine: single runs vary by several times, so only neighbouring runs "
             "are compared.", ""]
    for r in results:
        verdict = "meets" if r["median_ratio"] >= TARGET else "misses"
        lines += [f"## {r['name']}: `{r['job']}`, {r['ranks']} ranks (default schedule), {r['iterations']} "
                  "iterations per run", "",
                  "| pair | first | off: samples/s | on: samples/s | on / off | off: CPU ms/it | on: CPU ms/it "
                  "| on / off | flushes | rank 0 flushing, share of the loop |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for p in r["rows"]:
            lines.append(f"| {p['pair']} | {p['first']} | {p['off']:.1f} | {p['on']:.1f} | {p['ratio']:.3f} | "
                         f"{p['off_cpu_ms']:.3f} | {p['on_cpu_ms']:.3f} | {p['cpu_ratio']:.3f} | "
                         f"{p['flushes']} | {100 * p['flush_share']:.2f}% |")
        last = r["rows"][-1]
        lines += ["", f"Median of the per-pair ratios **{r['median_ratio']:.3f}**: this {verdict} the target of "
                      f"{TARGET}. (Medians over all runs: off {r['median_off']:.1f}, on {r['median_on']:.1f} "
                      f"samples/s.) CPU time per iteration, all ranks: median ratio {r['median_cpu_ratio']:.3f}. "
                      f"Rank 0, the writer, spent a median {100 * r['median_flush_share']:.2f}% of the loop's time "
                      "flushing.", "",
                  f"A traced run of this size: {last['flushes']} flushes, median {last['rank0_flush_ms']:.2f} ms on "
                  f"rank 0 and {last['other_flush_ms']:.2f} ms on the other ranks; {last['events']} events and "
                  f"{last['transfers']} transfers in a {last['file_mb']:.2f} MB file.", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    p.add_argument("--quick", action="store_true", help="short blocks: checks the script, measures nothing")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "trace_overhead.md")
    p.add_argument("--ranks-side", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--iterations", type=int, help=argparse.SUPPRESS)
    p.add_argument("--pairs", type=int, help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ranks_side:
        from mpi4py import MPI

        from hpcps.comm.abort import abort_on_error
        with abort_on_error(MPI.COMM_WORLD, "benchmarks/" + Path(__file__).name):   # one rank's error ends the job
            ranks_side(args)
        return 0
    command = shlex.join(["python", "benchmarks/trace_overhead.py", *sys.argv[1:]])
    facts = machine()
    with tempfile.TemporaryDirectory() as scratch:
        results = [run_config(name, CONFIGS[name], args.ranks, args.quick, Path(scratch)) for name in args.configs]
    from _machine import load_average
    facts["load_average_at_end"] = load_average()
    text = markdown(results, facts, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "facts": facts, "results": results},
                                                        indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
