"""Effective bandwidth of hpcps's parameter exchange against raw MPI point-to-point for the same bytes.

    python benchmarks/exchange_bandwidth.py            # launches: mpiexec -n 4 python benchmarks/exchange_bandwidth.py --ranks-side
    python benchmarks/exchange_bandwidth.py --quick    # fewer repetitions, for a smoke test

For each layout and parameter count, every rank builds what run_bsp builds (plan_shards, a ServerShard
per served shard, ExchangeBuffers over flat float32 vectors on the workers, ParameterExchange), and
times one pull() + push() with no compute in between. The raw side posts exactly the same messages
with mpi4py Isend/Irecv between the same rank pairs, from and into preallocated NumPy arrays: the
pull's messages, Waitall, then the push's messages, Waitall, as the exchange does. The two sides
alternate repetition by repetition (the order rotates, so each takes every position equally often),
after a few untimed warm-up repetitions.

A repetition's time is the slowest rank's (each rank times from a barrier to the end of its own
push). Bytes moved counts the messages between distinct ranks only: both sides move the same ones.
Effective bandwidth = bytes moved / median time. Two more references: "raw + copies" is the raw side
plus the local copies by which a colocated server would serve its own worker if it kept separate
buffers (hpcps's colocated servers share their worker's host buffers and copy nothing, so this is
the cost they avoid); "pair" is one message of one
shard's size from rank 0 to rank 1 while the other ranks sleep.

The driver writes results/exchange_bandwidth.md (table, command, machine) and results/exchange_bandwidth.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
TARGET = 0.80                                   # exchange bandwidth / raw MPI bandwidth
SIZES = {"cifar-resnet": None, "1M": 1_000_000, "10M": 10_000_000}   # None: the job's parameter count
LAYOUTS = {
    "1 server colocated (rank 0), 4 workers": ((0,), (0, 1, 2, 3)),
    "2 servers colocated (ranks 0, 1), 4 workers": ((0, 1), (0, 1, 2, 3)),
    "1 dedicated server (rank 0), 3 workers": ((0,), (1, 2, 3)),
}
N_RANKS = 4


def reps_for(n_floats: int, quick: bool) -> int:
    reps = 1000 if n_floats <= 200_000 else 250 if n_floats <= 2_000_000 else 50
    return max(4, reps // 8) if quick else reps


# ----------------------------------------------------------------------------------------------------
# Rank side (under mpiexec)

def cifar_param_count(job_path: str) -> int:
    from hpcps.config import load_job
    from hpcps.workloads.cifar import small_resnet
    job = load_job(job_path)
    model = small_resnet(job.model.get("width", 16), job.model.get("blocks", 1))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def polite_barrier(comm) -> None:
    """A barrier that sleeps instead of spinning, so idle ranks leave the cores to the measured ones."""
    from mpi4py import MPI  # noqa: F401
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.0002)


class Case:
    """One layout and size: hpcps's exchange and the raw messages it stands for, over the same ranks."""

    def __init__(self, comm, n: int, servers: tuple[int, ...], worker_ranks: tuple[int, ...]):
        import numpy as np
        from hpcps.comm.buffers import ExchangeBuffer
        from hpcps.config.job import OptimizerConfig
        from hpcps.config.schedule import WorkerSpec
        from hpcps.ps.exchange import ParameterExchange
        from hpcps.ps.server import ServerShard
        from hpcps.ps.sharding import plan_shards

        self.comm, self.rank = comm, comm.Get_rank()
        rng = np.random.default_rng(1234)
        init = rng.standard_normal(n, dtype=np.float32)
        self.shards = [s for s in plan_shards(n, servers) if s.size > 0]
        self.workers = tuple(WorkerSpec(r, 16, 1) for r in worker_ranks)
        self.row = {w.rank: i for i, w in enumerate(self.workers)}
        self.is_worker = self.rank in self.row
        batches = [w.batch for w in self.workers]
        opt = OptimizerConfig("sgd", 0.1, 0.9)
        params = grads = None
        if self.is_worker:
            params = ExchangeBuffer(np.zeros(n, dtype=np.float32), "host")
            grads = ExchangeBuffer(rng.standard_normal(n, dtype=np.float32), "host")
        # As run_bsp does: a colocated server shares its worker's host buffers.
        served = {s.index: ServerShard(s, init[s.start:s.stop], batches, opt,
                                       local=(params.buf[s.start:s.stop], grads.buf[s.start:s.stop], self.row[self.rank])
                                       if self.is_worker else None)
                  for s in self.shards if s.server == self.rank}
        self.exchange = ParameterExchange(comm, self.shards, self.workers, params, grads, served)
        self.served = served
        # The raw side's own buffers, the same sizes and layout.
        self.raw_params = np.zeros(n, dtype=np.float32) if self.is_worker else None
        self.raw_grads = rng.standard_normal(n, dtype=np.float32) if self.is_worker else None
        self.raw_server = {i: st.params.copy() for i, st in served.items()}
        self.raw_rows = {i: np.zeros_like(st.pushes) for i, st in served.items()}
        self.bytes_moved = 0
        for s in self.shards:
            others = [w.rank for w in self.workers if w.rank != s.server]
            self.bytes_moved += 2 * 4 * s.size * len(others)      # pull to each, push from each
        self.pair_bytes = 4 * self.shards[0].size

    def check(self) -> None:
        """The exchange really moved the data: after a pull every worker holds every shard."""
        import numpy as np
        from mpi4py import MPI
        self.exchange.pull()
        ok = True
        if self.is_worker:
            full = np.empty_like(self.exchange.params.buf)
            for s in self.shards:
                part = self.served[s.index].params if s.server == self.rank else None
                full[s.start:s.stop] = self.comm.bcast(part, root=s.server)
            ok = bool(np.array_equal(full, self.exchange.params.buf))
        else:
            for s in self.shards:
                self.comm.bcast(self.served[s.index].params if s.server == self.rank else None, root=s.server)
        if not self.comm.allreduce(ok, op=MPI.LAND):
            raise RuntimeError("the exchange did not deliver the servers' parameters to every worker")

    def hpcps(self) -> None:
        self.exchange.pull()
        self.exchange.push()

    def raw(self) -> None:
        self._raw(local_copies=False)

    def raw_copy(self) -> None:
        self._raw(local_copies=True)

    def _raw(self, local_copies: bool) -> None:
        """The exchange's messages; with local_copies, also the copies by which a colocated server
        serves its own worker, at the same point as the exchange makes them (after posting, before waiting)."""
        from mpi4py import MPI
        comm, rank = self.comm, self.rank
        reqs = []
        if self.is_worker:
            for s in self.shards:
                if s.server != rank:
                    reqs.append(comm.Irecv(self.raw_params[s.start:s.stop], source=s.server, tag=101 + s.index))
        for s in self.shards:
            if s.server == rank:
                for w in self.workers:
                    if w.rank != rank:
                        reqs.append(comm.Isend(self.raw_server[s.index], dest=w.rank, tag=101 + s.index))
        if local_copies and self.is_worker:
            for s in self.shards:
                if s.server == rank:
                    self.raw_params[s.start:s.stop] = self.raw_server[s.index]
        MPI.Request.Waitall(reqs)
        reqs = []
        for s in self.shards:
            if s.server == rank:
                for w in self.workers:
                    if w.rank != rank:
                        reqs.append(comm.Irecv(self.raw_rows[s.index][self.row[w.rank]], source=w.rank,
                                               tag=201 + s.index))
        if self.is_worker:
            for s in self.shards:
                if s.server != rank:
                    reqs.append(comm.Isend(self.raw_grads[s.start:s.stop], dest=s.server, tag=201 + s.index))
            if local_copies:
                for s in self.shards:
                    if s.server == rank:
                        self.raw_rows[s.index][self.row[rank]] = self.raw_grads[s.start:s.stop]
        MPI.Request.Waitall(reqs)

    def pair(self, pair_comm) -> None:
        """One shard-sized message 0 -> 1 (pair_comm holds ranks 0 and 1 of the world)."""
        n = self.pair_bytes // 4
        if self.rank == 0:
            pair_comm.Send(self.raw_grads[:n] if self.raw_grads is not None else self.raw_server[0][:n], dest=1, tag=301)
        else:
            pair_comm.Recv(self.raw_params[:n], source=0, tag=301)


def ranks_side(args) -> None:
    import numpy as np
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size != N_RANKS:
        raise SystemExit(f"run with mpiexec -n {N_RANKS}")
    n_cifar = cifar_param_count(args.job)
    pair_comm = comm.Split(0 if rank < 2 else MPI.UNDEFINED, rank)
    variants = ("hpcps", "raw", "raw_copy", "pair")
    for size_name, n in SIZES.items():
        n = n or n_cifar
        for layout, (servers, worker_ranks) in LAYOUTS.items():
            case = Case(comm, n, servers, worker_ranks)
            case.check()
            reps = reps_for(n, args.quick)
            times = {name: [] for name in variants}
            for r in range(3 + reps):                     # 3 untimed warm-ups of each
                k = r % len(variants)                     # rotate: each variant takes every position equally often
                for name in variants[k:] + variants[:k]:
                    if name == "pair":
                        # Ranks 2 and 3 sleep meanwhile, so they take no core from the pair.
                        polite_barrier(comm)
                        dt = 0.0
                        if rank < 2:
                            pair_comm.Barrier()
                            t0 = time.perf_counter()
                            case.pair(pair_comm)
                            dt = time.perf_counter() - t0
                        polite_barrier(comm)
                    else:
                        comm.Barrier()
                        t0 = time.perf_counter()
                        getattr(case, name)()
                        dt = time.perf_counter() - t0
                    if r >= 3:
                        times[name].append(dt)
            slowest = {}
            for name, ts in times.items():
                mine = np.array(ts)
                out = np.empty_like(mine)
                comm.Allreduce(mine, out, op=MPI.MAX)
                slowest[name] = out.tolist()
            if rank == 0:
                print("RESULT " + json.dumps({"size": size_name, "n_floats": n, "layout": layout,
                                              "servers": list(servers), "workers": list(worker_ranks),
                                              "bytes_moved": case.bytes_moved, "pair_bytes": case.pair_bytes,
                                              "reps": reps, "seconds": slowest}), flush=True)
            del case
            comm.Barrier()


# ----------------------------------------------------------------------------------------------------
# Driver

def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def write_results(rows: list[dict], facts: dict, command: str, launched: str, out: Path) -> bool:
    from _machine import facts_markdown
    table = ["| parameters | layout | bytes moved per pull+push | hpcps median ms | raw MPI median ms | "
             "hpcps GB/s | raw MPI GB/s | hpcps / raw | paired ratio (median, IQR) | raw + copies median ms | "
             "hpcps / (raw + copies) | pair 0->1 GB/s |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    met_all = True
    for row in rows:
        s = row["seconds"]
        h, r, c, p = (statistics.median(s[k]) for k in ("hpcps", "raw", "raw_copy", "pair"))
        paired = sorted(rs / hs for hs, rs in zip(s["hpcps"], s["raw"]))   # raw time / hpcps time = bw ratio
        q1, q3 = paired[len(paired) // 4], paired[(3 * len(paired)) // 4]
        ratio = r / h
        row.update(hpcps_median_s=h, raw_median_s=r, raw_copy_median_s=c, ratio_vs_raw_copy=c / h, pair_median_s=p, hpcps_gbps=gbps(row["bytes_moved"], h),
                   raw_gbps=gbps(row["bytes_moved"], r), pair_gbps=gbps(row["pair_bytes"], p),
                   ratio=ratio, paired_ratio_median=statistics.median(paired), paired_ratio_iqr=[q1, q3],
                   meets_target=ratio >= TARGET)
        met_all &= ratio >= TARGET
        table.append(f"| {row['size']} ({row['n_floats']:,} floats) | {row['layout']} | "
                     f"{row['bytes_moved'] / 1e6:.2f} MB | {h * 1e3:.3f} | {r * 1e3:.3f} | "
                     f"{row['hpcps_gbps']:.2f} | {row['raw_gbps']:.2f} | **{ratio:.2f}** | "
                     f"{row['paired_ratio_median']:.2f} ({q1:.2f}-{q3:.2f}) | {c * 1e3:.3f} | {c / h:.2f} | "
                     f"{row['pair_gbps']:.2f} |")
    ratios = [row["ratio"] for row in rows]
    verdict = (f"**Target (exchange >= {TARGET:.0%} of raw MPI bandwidth for the same bytes): "
               f"{'met' if met_all else 'NOT met'}**: met in {sum(r >= TARGET for r in ratios)} of {len(rows)} "
               f"cases; hpcps / raw from {min(ratios):.2f} to {max(ratios):.2f}.")
    md = [
        "# Parameter exchange bandwidth against raw MPI point-to-point",
        "",
        "Reproduce (from the repository root, with `.venv` built by `make venv`):",
        "",
        "```",
        command,
        "```",
        "",
        f"which launches `{launched}`.",
        "",
        "What is measured: one `ParameterExchange.pull()` + `push()` (hpcps/ps/exchange.py, built as "
        "`run_bsp` builds it, no compute) against the same messages posted with raw mpi4py `Isend`/`Irecv` "
        "between the same rank pairs (pull's messages, `Waitall`, push's messages, `Waitall`). Bytes moved "
        "counts messages between distinct ranks; effective bandwidth = bytes moved / median time of the "
        "slowest rank. \"hpcps / raw\" is the ratio of effective bandwidths (raw median time / hpcps median "
        "time); the paired ratio is the median over repetitions of the same ratio taken within one "
        "repetition (the sides run back to back, in an order that rotates from one repetition to the next). \"raw + copies\" adds to the raw side "
        "the local copies by which a colocated server serves its own worker (the exchange makes them; in the "
        "dedicated-server layout there are none); \"hpcps / (raw + copies)\" is then what the exchange's own "
        "code costs beyond MPI and those copies. \"pair 0->1\" is one shard-sized message from rank 0 to "
        "rank 1 while the other ranks sleep, for scale. 4 MPI ranks on one machine "
        "(shared memory).",
        "",
        verdict,
        "",
        *table,
        "",
        facts_markdown(facts),
        "",
        "Raw per-repetition times (seconds, slowest rank): `results/exchange_bandwidth.json`.",
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "exchange_bandwidth.md").write_text("\n".join(md))
    (out / "exchange_bandwidth.json").write_text(json.dumps({"command": command, "launched": launched,
                                                             "machine": facts, "target_ratio": TARGET,
                                                             "target_met": met_all, "cases": rows}, indent=1))
    return met_all


def driver(args) -> int:
    from _machine import ROOT, command_line, facts, load_average, mpiexec
    f = facts()
    argv = [mpiexec(), "-n", str(N_RANKS), sys.executable, str(Path(__file__).resolve()), "--ranks-side",
            "--job", args.job] + (["--quick"] if args.quick else [])
    launched = command_line([".venv/bin/mpiexec", "-n", str(N_RANKS), ".venv/bin/python",
                             "benchmarks/exchange_bandwidth.py", "--ranks-side", "--job", args.job]
                            + (["--quick"] if args.quick else []))
    command = command_line([".venv/bin/python", "benchmarks/exchange_bandwidth.py"] + sys.argv[1:])
    t0 = time.time()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        print(f"exchange_bandwidth: the MPI run failed with status {proc.returncode}", file=sys.stderr)
        return 1
    rows = [json.loads(ln[len("RESULT "):]) for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    f["load_average_at_end"] = load_average()
    f["benchmark_seconds"] = round(time.time() - t0, 1)
    met = write_results(rows, f, command, launched, Path(args.out))
    print((Path(args.out) / "exchange_bandwidth.md").read_text())
    print(f"target {'met' if met else 'not met'}; wrote {args.out}/exchange_bandwidth.md and .json")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", default="jobs/cifar.toml", help="job whose network sets the first size")
    p.add_argument("--quick", action="store_true", help="an eighth of the repetitions")
    p.add_argument("--out", default="results", help="where the driver writes its table")
    p.add_argument("--ranks-side", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ranks_side:
        ranks_side(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
