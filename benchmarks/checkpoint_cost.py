"""What checkpoints cost for the 11M-parameter job (jobs/cifar-wide.toml): writing and reading one, and
the overhead on training, side by side.

    python benchmarks/checkpoint_cost.py            # writes results/checkpoint_cost.md and .json
    python benchmarks/checkpoint_cost.py --quick    # short: checks the script, measures little

1. The file: a checkpoint of the job's 11,093,130 parameters with SGD's momentum (its optimiser: two
   vectors, 89 MB) and with Adam's state (three vectors and a step, 133 MB), written (temporary file,
   fsync, rename) and read back with every check (hpcps/ps/checkpoint.py), in rounds whose order
   alternates. A read is timed twice: "cold", after the file's pages were dropped from the page cache
   (posix_fadvise DONTNEED: the file comes from the disk, as after a requeue on another node), and
   "warm", right after.
2. Training: one MPI job (2 ranks, each a worker of 32 samples and a server of half the vector, so half
   of every checkpoint crosses MPI) trains the job again and again with hpcps's own run_training,
   alternating a run without checkpoints and a run with one every EVERY iterations, the order swapping
   from pair to pair (one job, runs minutes apart: each pair sees about the same machine). A run's time
   is run_training's wall_s (the training loop, which is where checkpoints are taken; evaluation
   excluded). Per pair: the time checkpoints added, per checkpoint; beside it rank 0's own timing of
   each checkpoint (gathering, writing). Also the cost of the per-iteration broadcast that carries rank
   0's decisions (signals, time-based checkpoints), measured on its own.
3. The overhead at the default interval (training.checkpoint_every_s = 600 s, checkpoint_every = 0):
   per-checkpoint time / 600 s plus the broadcast's time per iteration over the iteration's time.
   Target: at most 2%.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
JOB = "jobs/cifar-wide.toml"
DEFAULT_INTERVAL_S = 600.0
TARGET = 0.02


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": values}


# ----------------------------------------------------------------------------------------------------
# 1. Writing and reading the file

def n_params_of_job() -> int:
    from hpcps.config import load_job
    from hpcps.ps.flat import FlatModel
    from hpcps.workloads import build_workload
    job = load_job(ROOT / JOB)
    workload = build_workload(job.workload, job.model, {**job.data, "samples": 64, "test_samples": 64},
                              job.training.seed)
    return FlatModel(workload.build_model()).numel


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def file_side(scratch: Path, rounds: int) -> dict:
    import numpy as np

    from hpcps.config import load_job
    from hpcps.ps.checkpoint import Checkpoint, identity_of, read_checkpoint, write_checkpoint
    job = load_job(ROOT / JOB)
    n = n_params_of_job()
    rng = np.random.default_rng(0)
    params = rng.standard_normal(n).astype(np.float32)
    kinds = {
        "sgd-momentum": ({"momentum_buffer": rng.standard_normal(n).astype(np.float32)}, {}),
        "adam": ({"exp_avg": rng.standard_normal(n).astype(np.float32),
                  "exp_avg_sq": rng.random(n).astype(np.float32)}, {"step": np.array(100.0, np.float32)}),
    }
    schedule = {"n_ranks": 2, "servers": [0, 1], "workers": [[0, 32], [1, 32]], "codecs": ["none", "none"]}
    times = {k: {"write_s": [], "read_cold_s": [], "read_warm_s": [], "bytes": 0} for k in kinds}
    for r in range(rounds):
        order = list(kinds) if r % 2 == 0 else list(reversed(kinds))
        for kind in order:
            vectors, scalars = kinds[kind]
            d = scratch / f"file-{kind}"
            ckpt = Checkpoint(r + 1, job.name, identity_of(job), schedule, params, vectors, scalars)
            t0 = time.perf_counter()
            written = write_checkpoint(d, ckpt)
            t1 = time.perf_counter()
            drop_from_page_cache(written.path)
            t2 = time.perf_counter()
            back = read_checkpoint(written.path)
            t3 = time.perf_counter()
            read_checkpoint(written.path)
            t4 = time.perf_counter()
            assert back.iteration == r + 1 and back.params.shape == (n,)
            times[kind]["write_s"].append(t1 - t0)
            times[kind]["read_cold_s"].append(t3 - t2)
            times[kind]["read_warm_s"].append(t4 - t3)
            times[kind]["bytes"] = written.bytes
            print(f"  file {kind:13s} round {r + 1}: write {t1 - t0:.3f} s, read cold {t3 - t2:.3f} s, "
                  f"warm {t4 - t3:.3f} s", flush=True)
        shutil.rmtree(scratch / "file-sgd-momentum", ignore_errors=True)
        shutil.rmtree(scratch / "file-adam", ignore_errors=True)
    return {"n_params": n, "kinds": {k: {"bytes": v["bytes"], **{m: spread(v[m]) for m in
                                                                ("write_s", "read_cold_s", "read_warm_s")}}
                                     for k, v in times.items()}}


# ----------------------------------------------------------------------------------------------------
# 2. Training, under mpiexec

def ranks_side(args) -> None:
    import numpy as np
    from mpi4py import MPI

    from hpcps.config import load_job
    from hpcps.config.schedule import Schedule, WorkerSpec
    from hpcps.ps.checkpointer import CheckpointSettings
    from hpcps.ps.runtime import run_training

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    job = load_job(ROOT / JOB)
    gb = job.training.global_batch
    schedule = Schedule(tuple(range(size)), tuple(WorkerSpec(r, gb // size + (r < gb % size)) for r in range(size)))
    scratch = Path(args.scratch)
    gathered = re.compile(r"gathered in ([\d.]+) s, written in ([\d.]+) s")

    def one(side: str, iterations: int, tag: str):
        logs: list[str] = []
        settings = CheckpointSettings(scratch / tag, args.every, 0.0) if side == "on" else None
        comm.Barrier()
        result = run_training(comm, job.with_iterations(iterations), schedule, device="cpu", log=logs.append,
                              checkpoints=settings)
        marks = [tuple(map(float, m.groups())) for m in map(gathered.search, logs) if m]
        return result, marks

    one("off", 1, "warm-up")                       # imports, first-touch costs, untimed
    rows = []
    for pair in range(args.pairs):
        order = ("off", "on") if pair % 2 == 0 else ("on", "off")
        row = {"pair": pair + 1, "first": order[0]}
        for side in order:
            result, marks = one(side, args.iterations, f"pair{pair}")
            if rank == 0:
                row[f"wall_{side}_s"] = result.wall_s
                if side == "on":
                    row["checkpoints"] = len(marks)
                    row["gather_s"] = [g for g, _ in marks]
                    row["write_s"] = [w for _, w in marks]
                print(f"  pair {pair + 1} {side:3s}: {result.wall_s:.2f} s"
                      + (f", {len(marks)} checkpoints (gather+write "
                         + ", ".join(f"{g + w:.2f}" for g, w in marks) + " s)" if side == "on" else ""),
                      flush=True)
        if rank == 0:
            rows.append(row)
        shutil.rmtree(scratch / f"pair{pair}", ignore_errors=True) if rank == 0 else None

    # The per-iteration broadcast on its own: post, then complete (in a run it completes an iteration
    # later, long after it arrived; here it is waited for at once, an upper bound).
    flag_comm = comm.Dup()
    buf = np.zeros(2, dtype=np.int64)
    cycles = 2000
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(cycles):
        req = flag_comm.Ibcast(buf, root=0)
        while not req.Test():
            time.sleep(20e-6)
    flag_s = (time.perf_counter() - t0) / cycles
    flag_comm.Free()
    if rank == 0:
        print(json.dumps({"rows": rows, "flag_s": flag_s, "ranks": size, "iterations": args.iterations,
                          "every": args.every}))


def training_side(args, scratch: Path) -> dict:
    from benchmarks._machine import mpiexec
    cmd = [mpiexec(), "-n", str(args.ranks), sys.executable, str(Path(__file__).resolve()), "--ranks-side",
           "--scratch", str(scratch / "train"), "--pairs", str(args.pairs), "--iterations", str(args.iterations),
           "--every", str(args.every)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    last = None
    for line in proc.stdout:
        if line.startswith("{"):
            last = json.loads(line)
        else:
            print(line, end="", flush=True)
    if proc.wait() != 0 or last is None:
        raise SystemExit(f"checkpoint_cost: the MPI job failed ({proc.returncode})")
    rows = last["rows"]
    n_ckpt = [r["checkpoints"] for r in rows]
    per_ckpt = [(r["wall_on_s"] - r["wall_off_s"]) / r["checkpoints"] for r in rows]
    own = [g + w for r in rows for g, w in zip(r["gather_s"], r["write_s"])]
    iter_s = [r["wall_off_s"] / args.iterations for r in rows]
    return {**last, "checkpoints_per_run": n_ckpt, "added_per_checkpoint_s": spread(per_ckpt),
            "rank0_checkpoint_s": spread(own), "gather_s": spread([g for r in rows for g in r["gather_s"]]),
            "write_s": spread([w for r in rows for w in r["write_s"]]), "iteration_s": spread(iter_s),
            "ratio_on_off": spread([r["wall_on_s"] / r["wall_off_s"] for r in rows])}


# ----------------------------------------------------------------------------------------------------
# Report

def report(facts: dict, command: str, file_res: dict, train: dict, args) -> str:
    from benchmarks._machine import facts_markdown
    n = file_res["n_params"]
    lines = [
        "# Checkpoint cost",
        "",
        f"Writing and reading a checkpoint of `{JOB}` ({n:,} parameters, {4 * n / 1e6:.1f} MB a vector), and "
        "what checkpoints add to its training. Command:",
        "",
        "```sh", command, "```", "",
        facts_markdown(facts), "",
        "The machine is shared (2 cores, other tenants): times vary from minute to minute, so every figure is "
        "a median over rounds that alternate the order of what they compare, with the range beside it.",
        "",
        "## The file",
        "",
        f"{args.rounds} rounds, each kind written and read once per round (order alternating). Write: temporary "
        "file, fsync, rename, directory fsync. Read: every check (complete mark, sizes, fletcher32 checksums of "
        "every chunk); cold after the file's pages were dropped from the page cache, warm right after.",
        "",
        "| optimiser state | file | write (median, range) | read cold | read warm |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, k in file_res["kinds"].items():
        cells = [f"{k[m]['median']:.2f} s ({k[m]['min']:.2f}-{k[m]['max']:.2f})" for m in
                 ("write_s", "read_cold_s", "read_warm_s")]
        lines.append(f"| {kind} | {k['bytes'] / 1e6:.1f} MB | " + " | ".join(cells) + " |")
    t = train
    per = t["added_per_checkpoint_s"]
    own = t["rank0_checkpoint_s"]
    it = t["iteration_s"]
    ratio = t["ratio_on_off"]
    cost = max(per["median"], own["median"])
    projected = cost / DEFAULT_INTERVAL_S + t["flag_s"] / it["median"]
    worst = max(per["max"], own["max"]) / DEFAULT_INTERVAL_S + t["flag_s"] / it["min"]
    lines += [
        "",
        "## Training",
        "",
        f"One MPI job of {t['ranks']} ranks (each a worker of 32 samples and the server of half the vector), "
        f"{args.pairs} pairs of runs of {t['iterations']} iterations, one run without checkpoints and one with "
        f"a checkpoint every {t['every']} iterations ({t['checkpoints_per_run'][0]} a run, the last at its end), "
        "the order swapping from pair to pair.",
        "",
        "| | median | range |",
        "| --- | --- | --- |",
        f"| iteration without checkpoints | {it['median']:.2f} s | {it['min']:.2f}-{it['max']:.2f} s |",
        f"| time a checkpoint added to the run (per pair: difference of the runs / checkpoints) | "
        f"{per['median']:.2f} s | {per['min']:.2f}-{per['max']:.2f} s |",
        f"| a checkpoint as rank 0 timed it (gather + write) | {own['median']:.2f} s | "
        f"{own['min']:.2f}-{own['max']:.2f} s |",
        f"| of which gathering (half the vector over MPI) | {t['gather_s']['median']:.2f} s | "
        f"{t['gather_s']['min']:.2f}-{t['gather_s']['max']:.2f} s |",
        f"| of which writing | {t['write_s']['median']:.2f} s | "
        f"{t['write_s']['min']:.2f}-{t['write_s']['max']:.2f} s |",
        f"| run with / without checkpoints (a checkpoint every {t['every']} iterations) | {ratio['median']:.3f} | "
        f"{ratio['min']:.3f}-{ratio['max']:.3f} |",
        f"| the per-iteration broadcast of rank 0's decisions | {t['flag_s'] * 1e6:.0f} µs | |",
        "",
        "## Overhead at the default interval",
        "",
        f"With `--checkpoint` and the job's defaults (`checkpoint_every = 0`, `checkpoint_every_s = "
        f"{DEFAULT_INTERVAL_S:.0f}`) a checkpoint is taken every {DEFAULT_INTERVAL_S:.0f} s, and the broadcast runs "
        "every iteration: overhead = checkpoint time / 600 s + broadcast / iteration time "
        f"= {cost:.2f} s / {DEFAULT_INTERVAL_S:.0f} s + {t['flag_s'] * 1e6:.0f} µs / {it['median']:.2f} s = "
        f"**{100 * projected:.2f}%** (with the slowest checkpoint and the fastest iteration measured: "
        f"{100 * worst:.2f}%); target at most {100 * TARGET:.0f}%: "
        f"**{'met' if worst <= TARGET else 'not met'}**. (The checkpoint time taken is the larger of the two "
        "measures above.) Measured directly, a checkpoint every "
        f"{t['every']} iterations ({t['every'] * it['median']:.0f} s here) made runs "
        f"{100 * (ratio['median'] - 1):.1f}% longer (median).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a short run that checks the script")
    p.add_argument("--rounds", type=int, default=5, help="rounds of writing and reading the file (default 5)")
    p.add_argument("--pairs", type=int, default=3, help="pairs of training runs (default 3)")
    p.add_argument("--iterations", type=int, default=4, help="iterations per training run (default 4)")
    p.add_argument("--every", type=int, default=2, help="checkpoint every this many iterations (default 2)")
    p.add_argument("--ranks", type=int, default=2, help="MPI ranks of the training runs (default 2)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "checkpoint_cost.md")
    p.add_argument("--ranks-side", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ranks_side:
        from mpi4py import MPI

        from hpcps.comm.abort import abort_on_error
        with abort_on_error(MPI.COMM_WORLD, "benchmarks/" + Path(__file__).name):   # one rank's error ends the job
            ranks_side(args)
        return 0
    if args.quick:
        args.rounds, args.pairs, args.iterations, args.every = 1, 1, 2, 1
    from benchmarks._machine import command_line, facts, load_average
    f = facts()
    command = command_line(["python", "benchmarks/checkpoint_cost.py", *(argv if argv is not None else sys.argv[1:])])
    scratch = ROOT / "results" / "runs" / f"checkpoint-cost-{time.strftime('%Y%m%d-%H%M%S')}"
    scratch.mkdir(parents=True)
    try:
        print("the file:", flush=True)
        file_res = file_side(scratch, args.rounds)
        print("training:", flush=True)
        train = training_side(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    f["load_average_at_end"] = load_average()
    text = report(f, command, file_res, train, args)
    if args.quick:
        print(text)
        return 0
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": f, "file": file_res,
                                                         "training": train}, indent=1) + "\n")
    print(text)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
