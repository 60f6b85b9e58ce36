"""hpcps against the data-parallel baselines a capable user would pick, on the CIFAR-shaped ResNet: same
processes, same global batch, same machine, side by side.

    python benchmarks/ps_vs_ddp.py                                       # 78k parameters (jobs/cifar.toml)
    python benchmarks/ps_vs_ddp.py --job jobs/cifar-wide.toml --warmup 2 --iterations 6 --window 2   # 11M
    python benchmarks/ps_vs_ddp.py --sittings 1 --rounds 2               # a smoke test

Each sitting is one `mpiexec -n 4` launch of benchmarks/_ps_vs_ddp_ranks.py that runs, round after round,
one timed block of each configuration, in an order that rotates from round to round, so every
configuration sees the same machine load. Sittings follow each other with a pause, so the machine's
state changes between them; the tables give the median over every block and the spread over sittings.

- hpcps:1    hpcps (run_training, what `python -m hpcps.train` runs) with the default schedule for 4
             ranks: every rank a worker with global_batch / 4, one server colocated on rank 0.
- hpcps:4    the same with a server on every rank (each serves a quarter of the parameters).
- ddp        DistributedDataParallel over gloo (TCP on 127.0.0.1), same network, data, batches, optimiser.
- allreduce  data parallelism on the same MPI: one mpi4py Allreduce of the flat gradient per step.

The verdict, fixed before any run: hpcps (the faster of hpcps:1 and hpcps:4, as a user would pick the
faster schedule) against the better baseline (the faster of ddp and allreduce), by the ratio of median
samples/s over all blocks and by the median of per-round ratios (each round's blocks run back to back).
The target (hpcps at least as fast) is met when both ratios are >= 1, not met when both are < 1, and
inconclusive otherwise.

Writes results/ps_vs_ddp_<job name>.md and .json (every block, the command, the machine).
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
BASELINES = ("ddp", "allreduce")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n: int, configs: list[str], rounds: int, args) -> tuple[list[dict], list[str]]:
    """One mpiexec run of the rank script: its RESULT lines, and the command as a user would type it."""
    tail = ["--job", args.job, "--configs", ",".join(configs), "--rounds", str(rounds),
            "--warmup", str(args.warmup), "--iterations", str(args.iterations), "--window", str(args.window),
            "--device", args.device]
    argv = [mpiexec(), "-n", str(n), sys.executable, str(ROOT / RANKS_SCRIPT)] + tail + ["--port", str(free_port())]
    shown = [".venv/bin/mpiexec", "-n", str(n), ".venv/bin/python", RANKS_SCRIPT] + tail
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"ps_vs_ddp: the MPI run failed with status {proc.returncode}")
    return [json.loads(ln[len("RESULT "):]) for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")], shown


def per_config(blocks: list[dict], configs: list[str]) -> dict:
    out = {}
    for c in configs:
        bs = [b for b in blocks if b["config"] == c]
        sittings = sorted({b["sitting"] for b in bs})
        by_sitting = [statistics.median(b["samples_per_s"] for b in bs if b["sitting"] == s) for s in sittings]
        out[c] = {"median_samples_per_s": statistics.median(b["samples_per_s"] for b in bs),
                  "sitting_medians": by_sitting, "spread_over_sittings": [min(by_sitting), max(by_sitting)],
                  "median_iteration_ms": statistics.median(1e3 * b["seconds"] / b["iterations"] for b in bs),
                  "median_cpu_ms_per_iteration_all_ranks": statistics.median(
                      1e3 * b["cpu_s_per_iteration_all_ranks"] for b in bs),
                  "last_window_loss": statistics.median(b["last_window_loss"] for b in bs), "blocks": len(bs)}
    return out


def verdict(blocks: list[dict], summary: dict, configs: list[str]) -> dict:
    hp = max((c for c in configs if c.startswith("hpcps:")), key=lambda c: summary[c]["median_samples_per_s"])
    base = max((c for c in configs if c in BASELINES), key=lambda c: summary[c]["median_samples_per_s"])
    rounds = {}
    for b in blocks:
        rounds.setdefault((b["sitting"], b["round"]), {})[b["config"]] = b["samples_per_s"]
    per_round = sorted(r[hp] / r[base] for r in rounds.values() if hp in r and base in r)
    a = summary[hp]["median_samples_per_s"] / summary[base]["median_samples_per_s"]
    b = statistics.median(per_round)
    met = True if a >= 1 and b >= 1 else False if a < 1 and b < 1 else None
    return {"hpcps": hp, "baseline": base, "ratio_of_medians": a, "median_per_round_ratio": b,
            "per_round_ratios": per_round, "rounds_hpcps_ahead": sum(r >= 1 for r in per_round), "met": met}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", default="jobs/cifar.toml", help="the CIFAR-resnet job (network, data, batch, optimiser)")
    p.add_argument("-n", "--processes", type=int, default=4, help="processes for each framework (default 4)")
    p.add_argument("--configs", default="hpcps:1,hpcps:4,ddp,allreduce",
                   help="comma-separated: hpcps:SERVERS (servers colocated on the first ranks), ddp, allreduce")
    p.add_argument("--sittings", type=int, default=3, help="separate launches, --pause seconds apart")
    p.add_argument("--pause", type=float, default=30.0)
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds per sitting")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iterations", type=int, default=40, help="timed iterations per block")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: every process on the machine's GPU(s); DDP's gloo all_reduce then takes CUDA tensors")
    p.add_argument("--out", default="results")
    args = p.parse_args()
    configs = args.configs.split(",")
    if not any(c in BASELINES for c in configs) or not any(c.startswith("hpcps:") for c in configs):
        p.error("--configs needs at least one hpcps configuration and one of ddp, allreduce")

    from hpcps.config import load_job
    job = load_job(ROOT / args.job if not Path(args.job).is_absolute() else args.job)
    f = facts()
    t0 = time.time()
    blocks, shown, loads = [], None, []
    for s in range(args.sittings):
        if s:
            time.sleep(args.pause)
        loads.append(load_average())
        got, shown = launch(args.processes, configs, args.rounds, args)
        for b in got:
            b["sitting"] = s
        blocks += got
        print(f"sitting {s + 1}/{args.sittings} done", flush=True)
    f["load_average_at_end"] = load_average()
    f["load_average_at_each_sitting"] = loads
    f["benchmark_seconds"] = round(time.time() - t0, 1)

    summary = per_config(blocks, configs)
    v = verdict(blocks, summary, configs)
    n, gb = args.processes, job.training.global_batch
    label = {c: {"ddp": "DDP (gloo)", "allreduce": "mpi4py Allreduce"}.get(c) or
             f"hpcps, {c[6:]} server{'s' if c[6:] != '1' else ''} colocated" for c in configs}
    word = {True: "met", False: "NOT met", None: "inconclusive (the two estimates disagree)"}[v["met"]]
    numel = None
    try:
        from hpcps.workloads import build_workload
        numel = sum(q.numel() for q in build_workload(job.workload, job.model, job.data, 0).build_model().parameters())
    except Exception:  # noqa: BLE001 - only for the description
        pass
    command = command_line([".venv/bin/python", "benchmarks/ps_vs_ddp.py"] + sys.argv[1:])
    rows = ["| configuration | blocks | median samples/s | sitting medians (spread) | median ms / iteration | "
            "median CPU ms / iteration, all processes | loss, last window |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in configs:
        s = summary[c]
        rows.append(f"| {label[c]} | {s['blocks']} | {s['median_samples_per_s']:.1f} | "
                    + ", ".join(f"{x:.1f}" for x in s["sitting_medians"])
                    + f" ({s['spread_over_sittings'][0]:.1f} - {s['spread_over_sittings'][1]:.1f}) | "
                    f"{s['median_iteration_ms']:.1f} | {s['median_cpu_ms_per_iteration_all_ranks']:.1f} | "
                    f"{s['last_window_loss']:.4f} |")
    md = [
        f"# hpcps against data-parallel baselines, `{args.job}`"
        + (f" ({numel / 1e6:.2f}M parameters)" if numel else ""), "",
        "Reproduce (from the repository root, with `.venv` built by `make venv`):", "", "```", command, "```", "",
        f"Each sitting launches `{command_line(shown)} --port PORT` (all configurations interleaved, the order "
        f"rotating from round to round); {args.sittings} sittings {args.pause:g} s apart.", "",
        f"Workload: {job.workload} (width {job.model.get('width')}, blocks {job.model.get('blocks')}), global batch "
        f"{gb} over {n} processes, SGD lr {job.optimizer.lr} momentum {job.optimizer.momentum}, one PyTorch thread "
        f"per process, all processes on this one machine ({f['nproc']} cores). Every block: {args.warmup} warm-up "
        f"iterations, then {args.iterations} timed ones.", "",
        f"**Target (hpcps at least as fast as the better of DDP and Allreduce): {word}.** "
        f"{label[v['hpcps']]} against {label[v['baseline']]}: {v['ratio_of_medians']:.2f} (ratio of medians), "
        f"{v['median_per_round_ratio']:.2f} (median of per-round ratios), hpcps ahead in {v['rounds_hpcps_ahead']} of "
        f"{len(v['per_round_ratios'])} rounds.", "",
        *rows, "",
        "The CPU time bounds the step time from below at CPU / cores: with more processes than cores, "
        "what a framework costs in CPU is what it costs in time.", "",
        facts_markdown(f), "", "Every block's numbers: the .json beside this file.", ""]
    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    stem = f"ps_vs_ddp_{job.name}" + ("_cuda" if args.device == "cuda" else "")
    (out / f"{stem}.md").write_text("\n".join(md))
    (out / f"{stem}.json").write_text(json.dumps(
        {"command": command, "launched": command_line(shown), "machine": f, "verdict": v, "summary": summary,
         "blocks": blocks}, indent=1))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
