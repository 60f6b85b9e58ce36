"""hpcps against PyTorch DistributedDataParallel (gloo) on the CIFAR-shaped network: same processes,
same global batch, same machine, one run.

    python benchmarks/ps_vs_ddp.py                                  # 4 processes, about 3-4 minutes
    python benchmarks/ps_vs_ddp.py --rounds 2 --separate-rounds 0   # a smoke test, under a minute

One `mpiexec -n 4` launch of benchmarks/_ps_vs_ddp_ranks.py runs, round after round, one timed block of
each configuration, in an order that rotates from round to round, so every configuration sees the
same machine load:

- hpcps:1  hpcps's BSP runtime (run_bsp, what `python -m hpcps.train` runs) with the default schedule
           for 4 ranks: every rank a worker with global_batch / 4, one server colocated on rank 0.
- hpcps:4  the same with a server on every rank (each serves a quarter of the parameters).
- ddp      DistributedDataParallel over gloo (TCP on 127.0.0.1), the same network, data, per-rank
           batches and optimiser (SGD with momentum, from the job), one PyTorch thread per process.

Each block builds its model afresh, runs --warmup iterations untimed, then --iterations timed ones.
After the rounds, the same launch times one step's communication alone (--comm-reps times each):
ParameterExchange pull + push against gloo all_reduce of the gradient.
The table gives the median samples/s over rounds per configuration, the CPU time per iteration summed
over the processes, the ratio of medians hpcps / DDP, and the median of the per-round ratios. The
target: hpcps at least as fast as DDP at 4 workers; it counts as met when both ratios are >= 1, not
met when both are < 1, and inconclusive otherwise.

With --separate-rounds N, N more rounds launch every block as its own mpiexec run (fresh processes,
only one framework in them), as a cross-check of the in-process interleaving, reported in their own table.

Writes results/ps_vs_ddp.md (table, command, machine) and results/ps_vs_ddp.json (every block).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _machine import ROOT, command_line, facts, facts_markdown, load_average, mpiexec  # noqa: E402

RANKS_SCRIPT = "benchmarks/_ps_vs_ddp_ranks.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n: int, configs: list[str], rounds: int, args, comm_reps: int = 0) -> tuple[list[dict], dict | None, list[str]]:
    """One mpiexec run of the rank script: its RESULT lines, its COMM line, the command as a user would type it."""
    tail = ["--job", args.job, "--configs", ",".join(configs), "--rounds", str(rounds),
            "--warmup", str(args.warmup), "--iterations", str(args.iterations), "--window", str(args.window)]
    if comm_reps:
        tail += ["--comm-reps", str(comm_reps)]
    port = ["--port", str(free_port())]
    argv = [mpiexec(), "-n", str(n), sys.executable, str(ROOT / RANKS_SCRIPT)] + tail + port
    shown = [".venv/bin/mpiexec", "-n", str(n), ".venv/bin/python", RANKS_SCRIPT] + tail
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"ps_vs_ddp: the MPI run failed with status {proc.returncode}")
    lines = proc.stdout.splitlines()
    comm = [json.loads(ln[len("COMM "):]) for ln in lines if ln.startswith("COMM ")]
    return ([json.loads(ln[len("RESULT "):]) for ln in lines if ln.startswith("RESULT ")],
            comm[0] if comm else None, shown)


def summarize(blocks: list[dict], configs: list[str]) -> dict:
    by = {c: [b for b in blocks if b["config"] == c] for c in configs}
    out = {c: {"median_samples_per_s": statistics.median(b["samples_per_s"] for b in bs),
               "min_samples_per_s": min(b["samples_per_s"] for b in bs),
               "max_samples_per_s": max(b["samples_per_s"] for b in bs),
               "median_iteration_ms": statistics.median(1e3 * b["seconds"] / b["iterations"] for b in bs),
               "median_cpu_ms_per_iteration_all_ranks": statistics.median(
                   1e3 * b["cpu_s_per_iteration_all_ranks"] for b in bs),
               "blocks": len(bs)} for c, bs in by.items()}
    ddp = {b["round"]: b["samples_per_s"] for b in by.get("ddp", [])}
    for c in configs:
        if c == "ddp" or not ddp:
            continue
        per_round = sorted(b["samples_per_s"] / ddp[b["round"]] for b in by[c] if b["round"] in ddp)
        out[c]["ratio_of_medians_vs_ddp"] = out[c]["median_samples_per_s"] / out["ddp"]["median_samples_per_s"]
        out[c]["median_per_round_ratio_vs_ddp"] = statistics.median(per_round)
        out[c]["per_round_ratios_vs_ddp"] = per_round
        out[c]["rounds_faster_than_ddp"] = sum(r >= 1.0 for r in per_round)
    return out


def table(summary: dict, configs: list[str], label: dict[str, str]) -> list[str]:
    rows = ["| configuration | blocks | median samples/s | min - max samples/s | median ms / iteration | "
            "median CPU ms / iteration, all processes | "
            "hpcps / DDP (ratio of medians) | hpcps / DDP (median per-round ratio) | rounds hpcps >= DDP |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in configs:
        s = summary[c]
        ratio = (f"**{s['ratio_of_medians_vs_ddp']:.2f}**", f"{s['median_per_round_ratio_vs_ddp']:.2f}",
                 f"{s['rounds_faster_than_ddp']} of {len(s['per_round_ratios_vs_ddp'])}") \
            if "ratio_of_medians_vs_ddp" in s else ("1", "1", "")
        rows.append(f"| {label[c]} | {s['blocks']} | {s['median_samples_per_s']:.1f} | "
                    f"{s['min_samples_per_s']:.1f} - {s['max_samples_per_s']:.1f} | {s['median_iteration_ms']:.1f} | "
                    f"{s['median_cpu_ms_per_iteration_all_ranks']:.1f} | "
                    + " | ".join(ratio) + " |")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", default="jobs/cifar.toml", help="the CIFAR-resnet job (network, data, batch, optimiser)")
    p.add_argument("-n", "--processes", type=int, default=4, help="processes for each framework (default 4)")
    p.add_argument("--configs", default="hpcps:1,hpcps:4,ddp",
                   help="comma-separated: hpcps:SERVERS (servers colocated on the first ranks) or ddp")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds in the single launch")
    p.add_argument("--separate-rounds", type=int, default=0,
                   help="extra rounds where every block is its own mpiexec launch (about 20 s each)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iterations", type=int, default=40, help="timed iterations per block")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--comm-reps", type=int, default=200,
                   help="then time one step's communication alone (no compute) this many times per configuration")
    p.add_argument("--out", default="results")
    args = p.parse_args()
    configs = args.configs.split(",")
    if "ddp" not in configs:
        p.error("--configs must include ddp, the baseline")

    from hpcps.config import load_job
    job = load_job(ROOT / args.job if not Path(args.job).is_absolute() else args.job)
    f = facts()
    t0 = time.time()
    blocks, comm_alone, shown = launch(args.processes, configs, args.rounds, args, args.comm_reps)
    separate, shown_separate = [], None
    for r in range(args.separate_rounds):
        k = r % len(configs)
        for c in configs[k:] + configs[:k]:
            got, _, shown_separate = launch(args.processes, [c], 1, args)
            for b in got:
                b["round"] = r
            separate += got
    f["load_average_at_end"] = load_average()
    f["benchmark_seconds"] = round(time.time() - t0, 1)

    summary = summarize(blocks, configs)
    summary_separate = summarize(separate, configs) if separate else None
    n = args.processes
    gb = job.training.global_batch
    label = {c: ("DDP (gloo)" if c == "ddp" else
                 f"hpcps, {c[6:]} server{'s' if c[6:] != '1' else ''} colocated"
                 + (" (the default schedule)" if c == "hpcps:1" and n // 4 <= 1 else "")) for c in configs}
    hp1 = summary.get("hpcps:1")
    # Met when both estimates say hpcps >= DDP, not met when both say less; otherwise within the noise.
    if hp1 is None:
        met, word = None, "not measured (hpcps:1 was not run)"
    else:
        a, b = hp1["ratio_of_medians_vs_ddp"], hp1["median_per_round_ratio_vs_ddp"]
        met = True if a >= 1 and b >= 1 else False if a < 1 and b < 1 else None
        word = {True: "met", False: "NOT met", None: "inconclusive (the two estimates disagree)"}[met]
    best = max((c for c in configs if c != "ddp"), key=lambda c: summary[c]["ratio_of_medians_vs_ddp"])
    verdict = (f"**Target (hpcps at least as fast as DDP at {n} workers): {word}** with the default schedule "
               f"(1 colocated server): hpcps / DDP = {hp1['ratio_of_medians_vs_ddp']:.2f} (ratio of medians), "
               f"{hp1['median_per_round_ratio_vs_ddp']:.2f} (median of per-round ratios), hpcps ahead in "
               f"{hp1['rounds_faster_than_ddp']} of {len(hp1['per_round_ratios_vs_ddp'])} rounds."
               if hp1 else f"**Target: {word}.**")
    if best != "hpcps:1":
        verdict += (f" Best hpcps configuration: {label[best]}, hpcps / DDP = "
                    f"{summary[best]['ratio_of_medians_vs_ddp']:.2f}.")
    command = command_line([".venv/bin/python", "benchmarks/ps_vs_ddp.py"] + sys.argv[1:])
    md = [
        "# hpcps against PyTorch DistributedDataParallel (gloo), CIFAR-shaped ResNet",
        "",
        "Reproduce (from the repository root, with `.venv` built by `make venv`):",
        "",
        "```",
        command,
        "```",
        "",
        f"which launches `{command_line(shown)} --port PORT` (all configurations interleaved in one run).",
        "",
        f"Workload: `{args.job}` ({job.workload}, width {job.model.get('width')}, blocks {job.model.get('blocks')}), "
        f"global batch {gb} split over {n} processes ({gb // n} each), SGD lr {job.optimizer.lr} momentum "
        f"{job.optimizer.momentum}, one PyTorch thread per process, all processes on this one machine. "
        f"Every block: {args.warmup} warm-up iterations, then {args.iterations} timed iterations; "
        f"{args.rounds} rounds, the order of the configurations rotating from round to round. "
        "hpcps time: run_bsp's own log windows after the warm-up; DDP time: between two barriers. "
        "A per-round ratio compares blocks run back to back. CPU time: time.process_time of every process over "
        "the timed iterations (all its threads), summed over the processes, per iteration; with "
        f"{n} processes on {f['nproc']} cores it bounds the step time from below at CPU / cores when the "
        "machine is otherwise idle.",
        "",
        verdict,
        "",
        *table(summary, configs, label),
        "",
    ]
    if summary_separate:
        md += [f"Cross-check, {args.separate_rounds} rounds with every block a fresh `mpiexec` launch "
               f"(`{command_line(shown_separate)} --port PORT` with one configuration at a time):", "",
               *table(summary_separate, configs, label), ""]
    if comm_alone:
        med = comm_alone["median_seconds"]
        md += [f"Communication of one step alone, no compute ({comm_alone['bytes'] / 1e3:.0f} kB of gradients, "
               f"median of {comm_alone['reps']} repetitions in rotating order, slowest rank; same launch, after the rounds): "
               + ", ".join(f"{label[c]}: {'ParameterExchange pull + push' if c != 'ddp' else 'gloo all_reduce'} "
                           f"{med[c] * 1e3:.2f} ms" for c in configs)
               + f". Median step time of DDP above: {summary['ddp']['median_iteration_ms']:.1f} ms.", ""]
    losses = {c: statistics.median(b["last_window_loss"] for b in blocks if b["config"] == c) for c in configs}
    md += ["Same training on both sides: mean training loss over each block's last "
           f"{args.window} iterations (median over blocks): "
           + ", ".join(f"{label[c]} {losses[c]:.4f}" for c in configs) + ".", "",
           facts_markdown(f), "", "Every block's numbers: `results/ps_vs_ddp.json`.", ""]
    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    (out / "ps_vs_ddp.md").write_text("\n".join(md))
    (out / "ps_vs_ddp.json").write_text(json.dumps(
        {"command": command, "launched": command_line(shown), "machine": f, "target": "hpcps:1 >= ddp",
         "target_met": met, "summary": summary, "blocks": blocks, "communication_alone": comm_alone,
         "separate_launch_summary": summary_separate, "separate_launch_blocks": separate}, indent=1))
    print("\n".join(md))
    print(f"wrote {out / 'ps_vs_ddp.md'} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
