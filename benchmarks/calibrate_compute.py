"""Calibrate the simulator's compute model on this machine and write hpcps/sim/profiles.toml.

    .venv/bin/python benchmarks/calibrate_compute.py                 # all built-in workloads
    .venv/bin/python benchmarks/calibrate_compute.py --quick --out /tmp/p.toml

For each built-in workload (default model and data options) it times one training step as the
runtime does it (gather the batch, zero the flat gradient, forward, backward) at several batch sizes,
with 1 and 2 PyTorch threads and with twice as many threads as this process may use cores, and fits
time = fixed + per_sample * batch for each thread count. It also counts the model's parameters (the
bytes every pull and push moves), estimates activation memory per sample (tensors saved for backward),
and times what servers do (weighted sum of the pushes, optimiser update, per byte; and the fixed cost of
one aggregation after the server slept waiting for pushes, the median of 31 such calls), a memory copy (transfers
between ranks of one node), and each lossy push codec's encoding (with error feedback) and decoding
per value.

Times are the fastest of repeated runs (at least 15), the thread counts taking turns: the machine is
shared, and interference only ever makes a run slower, so the fastest run best estimates the
uncontended speed that speed = 1.0 stands for. The one-thread times are thread CPU times (what
emulation charges a step, and what a busy machine does not inflate); the other thread counts are
scaled by the same factor, keeping their wall-time ratio to one thread. The load average before and
after goes into the file: multi-threaded runs on a loaded machine rarely get both cores at once, so
their ratios, and the thread scaling derived from them, are then too pessimistic.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpcps.config.job import OptimizerConfig  # noqa: E402
from hpcps.config.toml_writer import dumps  # noqa: E402
from hpcps.io.outputs import write_text  # noqa: E402
from hpcps.ps.codec import CODECS, make_codec  # noqa: E402
from hpcps.ps.flat import FlatModel  # noqa: E402
from hpcps.ps.optim import make_shard_optimizer  # noqa: E402
from hpcps.workloads import BUILTIN, build_workload, validate_options  # noqa: E402

QUANTILE = 0         # percentile of repeated runs kept: 0 is the fastest run


def timed(fn, min_reps: int, min_s: float, max_reps: int = 200) -> float:
    """The QUANTILE-th percentile of fn's run time, after one warm-up run."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_s and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, QUANTILE))


def fit_linear(batches: list[int], times: list[float]) -> tuple[float, float]:
    """fixed, per_sample minimising relative error (small batches matter as much as large ones)."""
    b = np.asarray(batches, float)
    t = np.asarray(times, float)
    a = np.stack([np.ones_like(b), b], axis=1) / t[:, None]
    (fixed, per), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    if fixed < 0:   # a negative intercept is noise: refit through the origin
        fixed, per = 0.0, float(np.sum(b / t) / np.sum((b / t) ** 2))
    return float(fixed), float(per)


def activation_bytes_per_sample(workload, flat: FlatModel) -> float:
    """Bytes autograd keeps per sample for backward: the slope of saved-tensor bytes between two batches.
    Doubled, because backward holds the activation gradients of a layer next to its saved inputs."""
    def saved_bytes(batch: int) -> int:
        seen: dict[int, int] = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = workload.loss(flat.model, workload.get_batch(np.arange(batch)))
        del loss
        return sum(seen.values())

    small, large = 2, 16
    input_per_sample = sum(t.nbytes for t in workload.get_batch(np.arange(large))) / large
    return 2.0 * (saved_bytes(large) - saved_bytes(small)) / (large - small) + input_per_sample


def calibrate_workload(name: str, batches: list[int], threads: list[int], min_reps: int, min_s: float) -> dict:
    model_opts, data_opts = validate_options(name, {}, {}, "<calibration>")
    workload = build_workload(name, model_opts, data_opts, seed=0)
    torch.manual_seed(0)
    flat = FlatModel(workload.build_model(), "cpu")
    rng = np.random.default_rng(0)

    def step(batch: int):
        idx = rng.integers(0, workload.n_train(), batch)
        def run():
            flat.zero_grad()
            loss, _ = workload.loss(flat.model, workload.get_batch(idx))
            loss.backward()
        return run

    out = {"params": int(flat.numel), "model": model_opts, "data": data_opts,
           "activation_bytes_per_sample": activation_bytes_per_sample(workload, flat),
           "batches": batches, "threads": threads, "times_s": {}, "fixed_s": [], "per_sample_s": []}
    # Thread counts take turns within each batch size, so a busy spell on the shared machine falls on
    # all of them rather than on whichever happened to be measured then.
    samples: dict[tuple[int, int], list[float]] = {}
    cpu: dict[int, list[float]] = {}
    for b in batches:
        run = step(b)
        for t in threads:
            torch.set_num_threads(t)
            run()                                   # warm-up
        start = time.perf_counter()
        while True:
            for t in threads:
                torch.set_num_threads(t)
                t0, c0 = time.perf_counter(), time.thread_time()
                run()
                samples.setdefault((t, b), []).append(time.perf_counter() - t0)
                if t == 1:
                    cpu.setdefault(b, []).append(time.thread_time() - c0)
            n = len(samples[(threads[0], b)])
            if n >= min_reps and (time.perf_counter() - start > min_s * len(threads) or n >= 200):
                break
    # Emulation charges a step its one-thread CPU time, which sharing the machine does not inflate as
    # it does wall time; so the profile's base is that CPU time, and every thread count keeps the
    # wall-time ratio to one thread that it showed side by side with it.
    scale = {b: float(np.percentile(cpu[b], QUANTILE) / np.percentile(samples[(1, b)], QUANTILE)) if 1 in threads
             else 1.0 for b in batches}
    for t in threads:
        times = [float(np.percentile(samples[(t, b)], QUANTILE)) * scale[b] for b in batches]
        fixed, per = fit_linear(batches, times)
        out["times_s"][str(t)] = times
        out["fixed_s"].append(fixed)
        out["per_sample_s"].append(per)
        print(f"  {name:13s} threads {t}: fixed {fixed * 1e3:7.3f} ms  per sample {per * 1e3:7.4f} ms   "
              + " ".join(f"b{b}={x * 1e3:.2f}ms" for b, x in zip(batches, times)), flush=True)
    torch.set_num_threads(1)
    return out


def resident_bytes() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


AGGREGATION_SLEEP_S = 0.01      # a server's wait for pushes, asleep, before it aggregates


def aggregation_cpu_s(elements: int, workers: int, repeats: int) -> tuple[list[float], list[float]]:
    """Thread CPU times of a server's aggregation of one piece (ServedPiece.aggregate_and_step, SGD with
    momentum, one thread): each repeat one call after an AGGREGATION_SLEEP_S sleep, as a server waiting
    for pushes makes it, and one right after that. Returns (after a sleep, right after)."""
    from hpcps.ps.plan import Piece
    from hpcps.ps.server import ServedPiece
    torch.set_num_threads(1)
    piece = ServedPiece(Piece(0, 0, 0, 0, elements), np.zeros(elements, np.float32), [8] * workers,
                        OptimizerConfig("sgd", 0.05, momentum=0.9), None)
    piece.rows[:] = 1e-3
    for _ in range(5):
        piece.aggregate_and_step()
    slept, warm = [], []
    for _ in range(repeats):
        time.sleep(AGGREGATION_SLEEP_S)
        c = time.thread_time()
        piece.aggregate_and_step()
        slept.append(time.thread_time() - c)
        c = time.thread_time()
        piece.aggregate_and_step()
        warm.append(time.thread_time() - c)
    return slept, warm


def calibrate_machine(min_reps: int, min_s: float, idle_rank_bytes: float) -> dict:
    torch.set_num_threads(1)
    n = 1 << 22                                      # 16 MB of float32: past the caches, as shards are
    a, b = np.ones(n, np.float32), np.empty(n, np.float32)
    memcpy = 4 * n / timed(lambda: np.copyto(b, a), min_reps, min_s)

    workers = 8
    pushes = np.ones((workers, n // 4), np.float32)
    weights = np.full(workers, 1 / workers, np.float32)
    grad = np.empty(n // 4, np.float32)
    agg = timed(lambda: np.dot(weights, pushes, out=grad), min_reps, min_s) / (pushes.nbytes)

    update = {}
    for name in ("sgd", "adam", "adamw"):
        params = np.ones(n // 4, np.float32)
        opt = make_shard_optimizer(OptimizerConfig(name, 0.01, momentum=0.9 if name == "sgd" else 0.0),
                                   params, grad)
        update[name] = timed(opt.step, min_reps, min_s) / params.nbytes
    codecs = {}
    m = n // 4
    g = np.random.default_rng(0).standard_normal(m).astype(np.float32)
    for name in CODECS:
        codec = make_codec(name)
        if not codec.lossy:
            continue
        enc, row = codec.encoder(m), np.empty(m, np.float32)
        wire = enc.encode(g)
        codecs[name] = [timed(partial(enc.encode, g), min_reps, min_s) / m,
                        timed(partial(codec.decode_into, wire, row), min_reps, min_s) / m]
    # The fixed part of an aggregation: a piece too small for its bytes to count, after a sleep. The median,
    # not the fastest: waking up cold is the cost itself, and emulation charges each call's own CPU time.
    fixed = float(np.median(aggregation_cpu_s(256, 4, max(min_reps, 31))[0]))
    return {"memcpy_bytes_per_s": memcpy, "aggregate_s_per_byte_per_worker": agg, "update_s_per_byte": update,
            "rank_overhead_bytes": idle_rank_bytes, "codec_s_per_element": codecs, "aggregate_fixed_s": fixed}


def render(result: dict) -> str:
    """profiles.toml text: the notes first, then [machine] and one table per workload."""
    return dumps(result, comment="Compute profiles for hpcps.sim, measured on the machine that speed = 1.0 "
                                 "stands for.\nWritten by benchmarks/calibrate_compute.py: rerun it rather than "
                                 "editing by hand.\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Time the built-in workloads on this machine and write the "
                                            "simulator's compute profiles.")
    p.add_argument("--out", type=Path, default=ROOT / "hpcps" / "sim" / "profiles.toml",
                   help="where to write the profiles (default hpcps/sim/profiles.toml)")
    p.add_argument("--workload", action="append", choices=sorted(BUILTIN),
                   help="calibrate only this workload (repeatable; default all built-ins)")
    p.add_argument("--batches", default="1,2,4,8,16,32,64", help="batch sizes to time (default 1,2,4,8,16,32,64)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (for a smoke test, not for the record)")
    args = p.parse_args(argv)
    # What a rank costs before it holds a model: interpreter, PyTorch, NumPy, the hpcps modules.
    idle_rank_bytes = float(resident_bytes())

    batches = sorted({int(b) for b in args.batches.split(",")})
    cpus = len(os.sched_getaffinity(0))
    # 2 * cpus threads measures what oversubscribing the cores costs, past what fewer cores explains.
    threads = sorted({1, 2, 2 * cpus})
    min_reps, min_s = (2, 0.05) if args.quick else (15, 0.5)
    rel = os.path.relpath(args.out, ROOT) if args.out.is_absolute() else str(args.out)
    command = "python benchmarks/calibrate_compute.py" + ("" if rel == "hpcps/sim/profiles.toml"
                                                          else f" --out {shlex.quote(rel)}")
    if args.workload:
        command += "".join(f" --workload {w}" for w in args.workload)
    if args.batches != p.get_default("batches"):
        command += f" --batches {args.batches}"
    if args.quick:
        command += " --quick"

    print(f"calibrating on {platform.node()} ({cpus} cpus), torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if os.getloadavg()[0] > 0.5 * cpus:
        print("  warning: the machine is busy; the profile will be slower and noisier than its hardware", flush=True)
    result = {"command": command, "measured_at": datetime.datetime.now().isoformat(timespec="seconds"),
              "host": f"{platform.machine()} {platform.processor() or platform.system()}",
              "torch": torch.__version__, "cpus": cpus, "quantile": QUANTILE,
              "load_average_before": round(os.getloadavg()[0], 2)}
    result["machine"] = calibrate_machine(min_reps, min_s, idle_rank_bytes)
    print(f"  memcpy {result['machine']['memcpy_bytes_per_s'] / 1e9:.2f} GB/s", flush=True)
    result["workloads"] = {w: calibrate_workload(w, batches, threads, min_reps, min_s)
                           for w in (args.workload or list(BUILTIN))}
    result["load_average_after"] = round(os.getloadavg()[0], 2)
    for w in result["workloads"].values():
        w["times_s"] = [w["times_s"][str(t)] for t in w["threads"]]   # one row per thread count
    write_text(args.out, render(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
