"""Push codecs side by side: what each costs in accuracy and saves in bytes, in one run.

    python benchmarks/codecs.py                 # 3 workloads x 5 codecs x 3 seeds, about 45-60 minutes here
    python benchmarks/codecs.py --quick         # a smoke test: one seed, few iterations, a few minutes

Every run is `mpiexec -n 5 python -m hpcps.train` with a trace: four workers (ranks 0-3, equal batches)
and one server on a rank of its own (rank 4), so every worker's push goes through its codec (a push to
a server on the worker's own rank is a copy and is never encoded). Per workload, seed and codec
(none, fp16, bf16, int8, sign; the job's [exchange] codec), in rotating order:

- digits   jobs/default.toml as it is (6 epochs): test accuracy at the end.
- charlm   the character LSTM (embed 32, hidden 128, seq_len 64), Adam lr 0.003, global batch 32,
           300 iterations: validation bits per character at the end.
- cifar    jobs/cifar.toml for 40 iterations: test loss at the end (held-out samples).

Bytes per iteration come from each run's trace: the push messages sent between ranks per iteration
(transfers of kind push, direction send), beside the trace's root attribute of raw float32 push bytes.
The metrics are the workloads' own (hpcps.workloads), fixed before any run. Targets: int8 within 0.3
points of none's mean digits accuracy and within 2% of its mean charlm bits per character at about 4x
fewer push bytes; sign within 1 point on digits at 25x fewer push bytes or more.

Also times encoding (with error feedback) and decoding of a 1M-value piece per codec, the fastest of
--codec-reps, in ns per value: what the simulator's machine profile could charge per element.

Writes results/codecs.md and results/codecs.json; traces under results/runs/codecs-<time>/ (not kept).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _machine import ROOT, command_line, facts, facts_markdown, load_average, mpiexec  # noqa: E402

from hpcps.config import ConfigError  # noqa: E402
from hpcps.io.outputs import check_output  # noqa: E402

CODECS = ("none", "fp16", "bf16", "int8", "sign")
N_WORKERS = 4
SERVER_RANK = N_WORKERS

WORKLOADS = {
    "digits": {"metric": "test_accuracy", "better": "higher", "job": (ROOT / "jobs/default.toml").read_text()},
    "charlm": {"metric": "val_bits_per_char", "better": "lower", "job": """
name = "charlm"
workload = "charlm"

[model]
embed = 32
hidden = 128

[data]
seq_len = 64

[optimizer]
name = "adam"
lr = 0.003

[training]
global_batch = 32
iterations = 300
seed = 0
log_every = 50
"""},
    "cifar": {"metric": "test_loss", "better": "lower",
              "job": (ROOT / "jobs/cifar.toml").read_text().replace("epochs = 2", "iterations = 40")},
}


def job_text(base: str, codec: str, seed: int, iterations: int | None) -> str:
    lines = []
    for ln in base.splitlines():
        if ln.strip().startswith("seed ="):
            ln = f"seed = {seed}"
        if iterations is not None and (ln.strip().startswith("epochs =") or ln.strip().startswith("iterations =")):
            ln = f"iterations = {iterations}"
        lines.append(ln)
    return "\n".join(lines) + f'\n\n[exchange]\ncodec = "{codec}"\n'


def schedule_text(global_batch: int) -> str:
    from hpcps.config.schedule import split_evenly
    out = [f"servers = [{SERVER_RANK}]", ""]
    for r, b in enumerate(split_evenly(global_batch, N_WORKERS)):
        out += ["[[workers]]", f"rank = {r}", f"batch = {b}", ""]
    return "\n".join(out)


def run_one(workload: str, codec: str, seed: int, out: Path, iterations: int | None) -> dict:
    from hpcps.config import load_job
    from hpcps.trace.reader import open_trace
    from hpcps.trace.schema import DIRECTION, TRANSFER_KIND
    name = f"{workload}-{codec}-s{seed}"
    job_path, sched_path, trace = out / f"{name}.toml", out / f"{name}.schedule.toml", out / f"{name}.h5"
    job_path.write_text(job_text(WORKLOADS[workload]["job"], codec, seed, iterations))
    sched_path.write_text(schedule_text(load_job(job_path).training.global_batch))
    argv = [mpiexec(), "-n", str(N_WORKERS + 1), sys.executable, "-m", "hpcps.train", "--job", str(job_path),
            "--schedule", str(sched_path), "--trace", str(trace), "--device", "cpu"]
    t0 = time.time()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"codecs: {name} failed with status {proc.returncode}")
    t = open_trace(trace)
    sends = t.transfers[(t.transfers["kind"] == TRANSFER_KIND["push"])
                        & (t.transfers["direction"] == DIRECTION["send"])]
    per_it = {int(i): int(sends["nbytes"][sends["iteration"] == i].sum()) for i in set(sends["iteration"].tolist())}
    all_sends = t.transfers[t.transfers["direction"] == DIRECTION["send"]]
    metrics = json.loads(t.attrs["final_metrics"])
    row = {"workload": workload, "codec": codec, "seed": seed, "metric": WORKLOADS[workload]["metric"],
           "value": metrics[WORKLOADS[workload]["metric"]], "final_metrics": metrics,
           "iterations": len(t.iterations),
           "push_bytes_per_iteration": statistics.median(per_it.values()),
           "push_bytes_per_iteration_min_max": [min(per_it.values()), max(per_it.values())],
           "all_sent_bytes_per_iteration": int(all_sends["nbytes"].sum()) / max(1, len(t.iterations)),
           "trace_push_nbytes_per_iteration": int(t.attrs["push_nbytes_per_iteration"]),
           "trace_push_raw_nbytes_per_iteration": int(t.attrs["push_raw_nbytes_per_iteration"]),
           "wall_s": float(t.attrs["wall_s"]), "launch_s": time.time() - t0, "trace": str(trace.relative_to(ROOT))}
    print(f"  {name}: {row['metric']} {row['value']:.4f}, push {row['push_bytes_per_iteration']:.0f} B/iteration "
          f"({row['launch_s']:.0f} s)", flush=True)
    return row


def codec_costs(n: int, reps: int) -> dict:
    """Fastest encode (with error feedback) and decode of an n-value piece, ns per value."""
    import numpy as np

    from hpcps.ps.codec import make_codec
    g = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    out = {}
    for name in CODECS + ("topk",):
        codec = make_codec(name)
        enc = codec.encoder(n)
        row = np.empty(n, np.float32)
        buf = codec.receive_buffer(row)
        te, td = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            wire = enc.encode(g)
            te.append(time.perf_counter() - t0)
            if buf is not wire:
                buf[...] = wire
            t0 = time.perf_counter()
            codec.decode_into(buf, row)
            td.append(time.perf_counter() - t0)
        out[name] = {"encode_ns_per_value": 1e9 * min(te) / n, "decode_ns_per_value": 1e9 * min(td) / n,
                     "wire_bytes_per_value": codec.wire_nbytes(n) / n}
    return out


def mean_sd(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(rows: list[dict]) -> dict:
    out = {}
    for w in WORKLOADS:
        for c in CODECS:
            rs = [r for r in rows if r["workload"] == w and r["codec"] == c]
            if not rs:
                continue
            m, sd = mean_sd([r["value"] for r in rs])
            out[f"{w}/{c}"] = {"mean": m, "sd": sd, "values": [r["value"] for r in rs],
                               "push_bytes_per_iteration": statistics.median(r["push_bytes_per_iteration"] for r in rs),
                               "raw_push_bytes_per_iteration": rs[0]["trace_push_raw_nbytes_per_iteration"]}
    for key, s in out.items():
        base = out.get(key.split("/")[0] + "/none")
        s["push_bytes_fewer_x"] = base["push_bytes_per_iteration"] / s["push_bytes_per_iteration"] if base else None
    return out


def targets(s: dict) -> list[dict]:
    def get(k):
        return s.get(k)
    checks = []
    d0, di, ds = get("digits/none"), get("digits/int8"), get("digits/sign")
    c0, ci = get("charlm/none"), get("charlm/int8")
    if d0 and di:
        gap = 100 * (d0["mean"] - di["mean"])
        checks.append({"target": "int8 digits accuracy within 0.3 points of none", "figure": f"{gap:+.2f} points below",
                       "met": gap <= 0.3})
    if c0 and ci:
        rel = 100 * (ci["mean"] / c0["mean"] - 1)
        checks.append({"target": "int8 charlm bits per character within 2% of none", "figure": f"{rel:+.2f}%",
                       "met": rel <= 2.0})
    for k in ("digits/int8", "charlm/int8"):
        if get(k):
            x = s[k]["push_bytes_fewer_x"]
            checks.append({"target": f"{k.split('/')[0]} int8: 4x fewer push bytes", "figure": f"{x:.2f}x",
                           "met": x >= 3.95})
    if d0 and ds:
        gap = 100 * (d0["mean"] - ds["mean"])
        checks.append({"target": "sign digits accuracy within 1 point of none", "figure": f"{gap:+.2f} points below",
                       "met": gap <= 1.0})
        x = ds["push_bytes_fewer_x"]
        checks.append({"target": "sign: 25x fewer push bytes", "figure": f"{x:.1f}x", "met": x >= 25})
    return checks


def markdown(f: dict, cmd: str, rows: list[dict], s: dict, checks: list[dict], costs: dict, seeds: list[int]) -> str:
    out = ["# Push codecs: accuracy and bytes", "",
           f"Command: `{cmd}`", "",
           facts_markdown(f), "",
           "Every run: `mpiexec -n 5 python -m hpcps.train`, four workers with equal batches (ranks 0-3) and one "
           "server on rank 4, so every push is encoded; the job's `[exchange] codec` set per column. "
           f"Seeds {', '.join(map(str, seeds))} (`training.seed`: data order, split and initial parameters). "
           "Metric after the run, on held-out data: digits test accuracy (jobs/default.toml, 6 epochs), charlm "
           "validation bits per character (LSTM embed 32 hidden 128, seq_len 64, Adam lr 0.003, global batch 32, "
           f"{rows_iterations(rows, 'charlm')} iterations), cifar test loss (jobs/cifar.toml, "
           f"{rows_iterations(rows, 'cifar')} iterations). Push bytes: median over iterations of the push messages "
           "sent between ranks in one iteration, from the trace; raw: the same pushes as float32.", "",
           "| workload (metric) | " + " | ".join(CODECS) + " |",
           "| --- | " + " | ".join("---" for _ in CODECS) + " |"]
    for w, spec in WORKLOADS.items():
        cells = []
        for c in CODECS:
            v = s.get(f"{w}/{c}")
            if v is None:
                cells.append("")
                continue
            scale, unit = (100, "%") if spec["metric"] == "test_accuracy" else (1, "")
            vals = ", ".join(f"{scale * x:.2f}" for x in v["values"])
            cells.append(f"{scale * v['mean']:.2f}{unit} ± {scale * v['sd']:.2f} ({vals})")
        out.append(f"| {w} ({spec['metric']}, {spec['better']} is better) | " + " | ".join(cells) + " |")
    for w in WORKLOADS:
        cells = []
        for c in CODECS:
            v = s.get(f"{w}/{c}")
            cells.append("" if v is None else
                         f"{v['push_bytes_per_iteration'] / 1e3:.1f} kB ({v['push_bytes_fewer_x']:.2f}x fewer)")
        raw = next((v["raw_push_bytes_per_iteration"] for k, v in s.items() if k.startswith(w + "/")), None)
        if raw is not None:
            out.append(f"| {w}: push bytes per iteration (raw {raw / 1e3:.1f} kB) | " + " | ".join(cells) + " |")
    out += ["", "Mean ± standard deviation over seeds (each seed's value in brackets); accuracy in percent.", "",
            "## Targets", "", "| target | figure | met |", "| --- | --- | --- |"]
    out += [f"| {c['target']} | {c['figure']} | {'yes' if c['met'] else 'no'} |" for c in checks]
    out += ["", "## Encoding cost", "",
            "One 1M-value piece on one core of this machine, the fastest of the repetitions (the load above "
            "slows the rest): encode with error feedback (add the residual, compress, decode, subtract) on the "
            "worker, decode on the server. Memory copy of the same piece for scale: "
            f"{costs.get('_copy_ns_per_value', float('nan')):.2f} ns per value.", "",
            "| codec | wire bytes per value | encode ns/value | decode ns/value |", "| --- | --- | --- | --- |"]
    out += [f"| {k} | {v['wire_bytes_per_value']:.4f} | {v['encode_ns_per_value']:.2f} | "
            f"{v['decode_ns_per_value']:.2f} |"
            for k, v in costs.items() if not k.startswith("_")]
    out += ["", "Raw rows (every run, its trace and launch time) are in results/codecs.json.", ""]
    return "\n".join(out)


def rows_iterations(rows, w):
    its = sorted({r["iterations"] for r in rows if r["workload"] == w})
    return "/".join(map(str, its)) or "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Push codecs side by side: accuracy and bytes per iteration.")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--codecs", default=",".join(CODECS))
    p.add_argument("--quick", action="store_true", help="one seed, 20 iterations each: a smoke test")
    p.add_argument("--codec-reps", type=int, default=30)
    p.add_argument("--out", default=None,
                   help="where codecs.md and codecs.json go (default results/, or the runs folder with --quick)")
    args = p.parse_args(argv)
    seeds = [0] if args.quick else [int(x) for x in args.seeds.split(",")]
    iterations = 20 if args.quick else None
    workloads = args.workloads.split(",")
    codecs = args.codecs.split(",")
    cmd = command_line([".venv/bin/python", "benchmarks/codecs.py"] + (argv if argv is not None else sys.argv[1:]))
    f = facts()
    if f["uncommitted_changes"]:
        print(f"warning: uncommitted changes to {', '.join(f['uncommitted_changes'])}", flush=True)
    runs = ROOT / "results" / "runs" / time.strftime("codecs-%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else (runs if args.quick else ROOT / "results")
    # Made before the runs: a folder that cannot be made ends this in a second, not after them.
    try:
        check_output(out, "--out", replace=True, directory=True)
    except ConfigError as e:
        p.error(str(e))
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True)
    rows = []
    order = list(itertools.product(seeds, workloads))
    for i, (seed, w) in enumerate(order):
        rot = i % len(codecs)
        for c in codecs[rot:] + codecs[:rot]:          # the order of codecs rotates from block to block
            rows.append(run_one(w, c, seed, runs, iterations))
    import numpy as np
    n = 1 << 20
    a, b = np.ones(n, np.float32), np.empty(n, np.float32)
    copy = []
    for _ in range(args.codec_reps):
        t0 = time.perf_counter()
        np.copyto(b, a)
        copy.append(time.perf_counter() - t0)
    costs = codec_costs(n, args.codec_reps)
    costs["_copy_ns_per_value"] = 1e9 * min(copy) / n
    f["load_average_at_end"] = load_average()
    s = summarize(rows)
    checks = targets(s)
    (out / "codecs.json").write_text(json.dumps({"command": cmd, "machine": f, "summary": s, "targets": checks,
                                                  "codec_costs": costs, "runs": rows}, indent=1))
    (out / "codecs.md").write_text(markdown(f, cmd, rows, s, checks, costs, seeds))
    print((out / "codecs.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
