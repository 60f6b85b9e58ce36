"""Traces of real MPI training runs: their content against what ran, a killed run, and the analysis."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hpcps.analyze.chrome import validate_chrome
from hpcps.trace import open_trace
from hpcps.trace.schema import DIRECTION, PHASE, TRANSFER_KIND
from tests.conftest import MPIEXEC, ROOT, assert_no_leftovers, mpi_env, run_mpi

SKEW_S = 0.25       # rank r's clock reads r * SKEW_S ahead: the start-up estimate must remove it

UNEQUAL = """
name = "digits-unequal"
workload = "digits"
[model]
hidden = 1024     # enough compute per sample that the worker with batch 40 is the straggler
[optimizer]
name = "sgd"
lr = 0.1
momentum = 0.9
[training]
global_batch = 64
iterations = 60
log_every = 20
[schedule]
servers = [0, 3]
[[schedule.workers]]
rank = 1
batch = 8
[[schedule.workers]]
rank = 2
batch = 16
[[schedule.workers]]
rank = 3
batch = 40
"""
BATCH = {1: 8, 2: 16, 3: 40}


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("traced")
    job = tmp / "job.toml"
    job.write_text(UNEQUAL)
    path = tmp / "trace.h5"
    out = run_mpi(4, ["-m", "hpcps.train", "--job", str(job), "--trace", str(path), "--trace-flush-s", "0.05"],
                  timeout=180, env={"HPCPS_TRACE_CLOCK_SKEW_S": str(SKEW_S)})
    assert out.returncode == 0, out.stderr
    assert f"trace: {path}" in out.stdout
    return path, open_trace(path), out


def test_every_rank_is_described(traced_run):
    _path, tr, _out = traced_run
    assert tr.complete and tr.n_ranks == 4
    assert tr.ranks["rank"].tolist() == [0, 1, 2, 3]
    assert tr.ranks["role"].tolist() == ["server", "worker", "worker", "server+worker"]
    assert tr.rank_field("batch") == {0: 0, **BATCH}
    assert set(tr.ranks["node_type"]) == {"local"} and all(tr.ranks["host"]) and all(tr.ranks["pid"] > 0)
    assert tr.meta["job_toml"] == UNEQUAL and "servers = [0, 3]" in tr.meta["schedule_effective_toml"]
    assert tr.versions["mpi_vendor"] and tr.versions["torch"].startswith("2.")
    assert tr.attrs["iterations_planned"] == 60 and tr.attrs["final_metrics"]


def test_one_compute_event_per_worker_and_iteration_with_its_batch(traced_run):
    _path, tr, _out = traced_run
    comp = tr.phase("compute")
    assert comp.size == 60 * 3
    for w, k in BATCH.items():
        mine = comp[comp["rank"] == w]
        assert sorted(mine["iteration"].tolist()) == list(range(60))
        assert (mine["batch"] == k).all() and np.isfinite(mine["loss"]).all()
    assert tr.phase("compute")[tr.phase("compute")["rank"] == 0].size == 0
    rows = tr.iterations
    assert rows["iteration"].tolist() == list(range(60)) and (rows["samples"] == 64).all()
    assert (rows["time_s"] > 0).all() and rows["loss"][-5:].mean() < rows["loss"][:5].mean()


def test_messages_move_exactly_the_shards(traced_run):
    _path, tr, _out = traced_run
    assert tr.shards["server"].tolist() == [0, 3]
    assert tr.shards["nbytes"].sum() == 4 * tr.attrs["n_params"]
    size = dict(zip(tr.shards["shard"].tolist(), tr.shards["nbytes"].tolist()))
    t = tr.transfers
    assert all(size[s] == n for s, n in zip(t["shard"], t["nbytes"]))
    push_sends = t[(t["kind"] == TRANSFER_KIND["push"]) & (t["direction"] == DIRECTION["send"])]
    # Workers 1 and 2 push both shards every iteration; worker 3 serves shard 1 itself by a copy.
    for w, n in ((1, 2), (2, 2), (3, 1)):
        assert push_sends[push_sends["rank"] == w].size == 60 * n
    local = t[t["direction"] == DIRECTION["local"]]
    assert set(zip(local["rank"].tolist(), local["shard"].tolist())) == {(3, 1)}
    assert local.size == 2 * 60                           # a pull copy and a push copy per iteration
    recv = t[t["direction"] == DIRECTION["recv"]]
    assert recv.size == t[t["direction"] == DIRECTION["send"]].size


def test_times_agree_across_ranks_after_the_clock_correction(traced_run):
    _path, tr, _out = traced_run
    offset = dict(zip(tr.ranks["rank"].tolist(), tr.ranks["clock_offset_s"].tolist()))
    rtt = dict(zip(tr.ranks["rank"].tolist(), tr.ranks["clock_rtt_s"].tolist()))
    for r in range(4):
        assert abs(offset[r] - r * SKEW_S) <= rtt[r] / 2 + 1e-6
    t = tr.transfers
    send, recv = t[t["direction"] == DIRECTION["send"]], t[t["direction"] == DIRECTION["recv"]]

    def key(rows, src, dst):
        return {(int(a), int(b), int(c), int(d), int(e)): i for i, (a, b, c, d, e) in enumerate(
            zip(rows["iteration"], rows["kind"], rows["shard"], src, dst))}

    sends = key(send, send["rank"], send["peer"])
    recvs = key(recv, recv["peer"], recv["rank"])
    assert sends.keys() == recvs.keys()
    ev = tr.events
    compute_start = {(int(r), int(i)): e
                     for r, i, e in zip(*(tr.phase("compute")[f] for f in ("rank", "iteration", "t_start")))}
    agg_end = {(int(r), int(i)): e
               for r, i, e in zip(*(tr.phase("aggregate")[f] for f in ("rank", "iteration", "t_end")))}
    raw_violations = 0
    for k, si in sends.items():
        ri = recvs[k]
        it, kind, _shard, src, dst = k
        tol = rtt[src] / 2 + rtt[dst] / 2 + 2e-4
        # A message is received after it was sent...
        assert send["t_post"][si] <= recv["t_end"][ri] + tol, k
        if kind == TRANSFER_KIND["push"]:
            # ...a gradient after the worker started computing it (pushes overlap the backward pass)...
            assert compute_start[(src, it)] <= recv["t_end"][ri] + tol, k
        elif it > 0:
            # ...and parameters after the server's step of the previous iteration.
            assert agg_end[(src, it - 1)] <= recv["t_end"][ri] + tol, k
        raw_violations += (send["t_post"][si] + offset[src]) > (recv["t_end"][ri] + offset[dst]) + tol
    assert raw_violations > 0          # without the correction the skewed clocks would disagree
    # Each rank's iterations follow each other, and within one a worker loads its batch, then computes,
    # and pushes only once computing has started.
    span = {(int(r), int(i), int(p)): (a, b) for r, i, p, a, b in
            zip(ev["rank"], ev["iteration"], ev["phase"], ev["t_start"], ev["t_end"])}
    for r in range(4):
        its = ev[(ev["rank"] == r) & (ev["phase"] == PHASE["iteration"])]
        its = its[np.argsort(its["iteration"])]
        assert (its["t_end"][:-1] <= its["t_start"][1:] + 1e-9).all()
        for i in range(60):
            inside = [span[(r, i, PHASE[p])] for p in ("pull", "data", "compute", "push", "aggregate")
                      if (r, i, PHASE[p]) in span]
            begin, end = span[(r, i, PHASE["iteration"])]
            assert all(begin - 1e-9 <= a <= b <= end + 1e-9 for a, b in inside), (r, i)
            if r in BATCH:
                data, compute, push = (span[(r, i, PHASE[p])] for p in ("data", "compute", "push"))
                assert data[1] <= compute[0] <= push[0] + 1e-9, (r, i)


def test_pushes_start_before_the_backward_pass_ends(traced_run):
    """Overlap: a worker sends the gradient of its last layers while the backward pass goes on."""
    _path, tr, _out = traced_run
    t = tr.transfers
    push_sends = t[(t["kind"] == TRANSFER_KIND["push"]) & (t["direction"] == DIRECTION["send"])]
    compute = tr.phase("compute")
    end = {(int(r), int(i)): e for r, i, e in zip(compute["rank"], compute["iteration"], compute["t_end"])}
    early = [p["t_post"] < end[(int(p["rank"]), int(p["iteration"]))] for p in push_sends]
    assert np.mean(early) > 0.9


def test_waits_lie_inside_exchange_windows(traced_run):
    _path, tr, _out = traced_run
    waits = tr.phase("wait")
    assert waits.size > 0
    windows = tr.events[np.isin(tr.events["phase"], [PHASE["pull"], PHASE["push"]])]
    for w in waits:
        mine = windows[(windows["rank"] == w["rank"]) & (windows["iteration"] == w["iteration"])]
        assert ((mine["t_start"] <= w["t_start"]) & (w["t_end"] <= mine["t_end"])).any()


def test_analyze_names_the_straggler_and_exports_sound_chrome_json(traced_run, tmp_path):
    path, _tr, _out = traced_run
    chrome, plots = tmp_path / "t.json", tmp_path / "plots"
    out = subprocess.run([sys.executable, "-m", "hpcps.analyze", str(path),
                          "--chrome", str(chrome), "--plot", str(plots)],
                         capture_output=True, text=True, timeout=180, cwd=ROOT, env=mpi_env())
    assert out.returncode == 0, out.stderr
    assert "Straggler: rank 3" in out.stdout and "Critical path of iteration" in out.stdout
    doc = json.loads(chrome.read_text())
    assert validate_chrome(doc) == []
    assert {e["pid"] for e in doc["traceEvents"] if e["ph"] == "X"} == {0, 1, 2, 3}
    assert sum(e["ph"] == "s" for e in doc["traceEvents"]) > 0
    assert sorted(p.name for p in plots.iterdir()) == ["breakdown.png", "compute_vs_batch.png", "throughput.png",
                                                       "timeline.png"]


def test_default_trace_location_and_no_trace(tmp_path):
    out = run_mpi(2, ["-m", "hpcps.train", "--iterations", "8", "--quiet"], cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    traces = list((tmp_path / "results" / "runs").glob("*/trace.h5"))
    assert len(traces) == 1 and open_trace(traces[0]).iterations.size == 8
    other = tmp_path / "other"
    other.mkdir()
    out = run_mpi(2, ["-m", "hpcps.train", "--iterations", "4", "--no-trace"], cwd=other, timeout=120)
    assert out.returncode == 0, out.stderr
    assert list(other.iterdir()) == []


def test_a_trace_path_that_cannot_be_written_is_bad_input(tmp_path):
    (tmp_path / "dir.h5").mkdir()
    out = run_mpi(2, ["-m", "hpcps.train", "--iterations", "4", "--trace", str(tmp_path / "dir.h5")], timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == f"hpcps.train: error: --trace: {tmp_path / 'dir.h5'} is a directory; give a file " \
                                 f"name such as {tmp_path / 'dir.h5' / 'trace.h5'}"
    assert [p.name for p in tmp_path.iterdir()] == ["dir.h5"]


def test_killing_a_worker_leaves_a_partial_trace_that_reads(tmp_path):
    path = tmp_path / "killed.h5"
    cmd = [MPIEXEC, "-n", "4", sys.executable, "-m", "hpcps.train", "--iterations", "1000000", "--quiet",
           "--trace", str(path), "--trace-flush-s", "0.2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        flushed = None
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if path.exists():
                try:
                    flushed = open_trace(path)
                except Exception:  # noqa: BLE001 - the file may be between creation and its first flush
                    continue
                if flushed.iterations.size >= 30:
                    break
        assert flushed is not None and flushed.iterations.size >= 30, "the run never flushed 30 iterations"
        victim = int(flushed.ranks["pid"][flushed.ranks["rank"] == 2][0])
        os.kill(victim, signal.SIGKILL)
        _stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode != 0
    tr = open_trace(path)
    assert not tr.complete and tr.attrs["status"] == "running"
    assert tr.ranks["rank"].tolist() == [0, 1, 2, 3]
    n = tr.iterations.size
    assert n >= flushed.iterations.size
    comp = tr.phase("compute")
    done = np.unique(comp["iteration"])
    assert done.tolist() == list(range(done.size)) and done.size in (n, n + 1)
    for w in range(4):                          # the default schedule: every rank a worker, k = 16
        mine = comp[comp["rank"] == w]
        assert mine["iteration"].tolist() == sorted(mine["iteration"].tolist()) and mine.size == done.size
        assert (mine["batch"] == 16).all()
    out = subprocess.run([sys.executable, "-m", "hpcps.analyze", str(path)], capture_output=True, text=True,
                         timeout=180, cwd=ROOT, env=mpi_env())
    assert out.returncode == 0, out.stderr
    assert "is partial" in out.stderr and "status running" in out.stdout
    assert_no_leftovers(str(path))


COUNTING = """
name = "counting-{sync}"
workload = "tests.fixtures.counting_workload:factory"
[model]
block = 200
[data]
ranks = [0, 1, 2, 3]
batches = [1, 2, 4, 1]
delay_ms = [30.0, 4.0, 4.0, 4.0]
[optimizer]
name = "sgd"
lr = 1.0
[training]
global_batch = 8
iterations = 16
log_every = 4
sync = "{sync}"
staleness = {staleness}
[exchange]
bucket_mb = 0.0009765625   # 1 KiB: 4 pieces in two shards
[schedule]
servers = [3, 4]
[[schedule.workers]]
rank = 0
batch = 1
[[schedule.workers]]
rank = 1
batch = 2
[[schedule.workers]]
rank = 2
batch = 4
[[schedule.workers]]
rank = 3
batch = 1
"""


@pytest.mark.parametrize("sync, staleness", [("ssp", 2), ("asp", 0)])
def test_stale_runs_trace_each_steps_staleness_and_analyze_shows_it(tmp_path, sync, staleness):
    """Five ranks, one slow worker, flushes every 0.05 s (ranks waiting for a flush keep serving)."""
    job = tmp_path / "job.toml"
    job.write_text(COUNTING.format(sync=sync, staleness=staleness))
    path = tmp_path / "trace.h5"
    out = run_mpi(5, ["-m", "hpcps.train", "--job", str(job), "--trace", str(path), "--trace-flush-s", "0.05"],
                  timeout=240)
    assert out.returncode == 0, out.stderr
    assert [line.split()[1] for line in out.stdout.splitlines() if line.startswith("iter ")] == \
        ["4/16", "8/16", "12/16", "16/16"]
    tr = open_trace(path)
    assert tr.complete and tr.attrs["sync"] == sync and tr.attrs["staleness"] == staleness
    st = tr.staleness
    # one row per worker, step and piece
    assert st.size == 4 * 16 * 4
    assert sorted(set(zip(st["rank"].tolist(), st["iteration"].tolist()))) == \
        [(r, i) for r in range(4) for i in range(16)]
    assert (st["staleness"] >= 0).all()
    if sync == "ssp":
        assert (st["staleness"] <= staleness).all() and (st["version"] == st["iteration"] - st["staleness"]).all()
        assert st["staleness"].max() == staleness        # the fast workers ran ahead of the slow one
    text = subprocess.run([sys.executable, "-m", "hpcps.analyze", str(path)], capture_output=True, text=True,
                          env=mpi_env(), cwd=ROOT)
    assert text.returncode == 0, text.stderr
    assert f"Staleness ({sync}," in text.stdout
    # Throughput at each worker's own rate: the run's rate is their sum, one global batch its inverse.
    from hpcps.analyze.stats import summarize
    s = summarize(tr)
    own = {r["rank"]: r["samples_per_s"] for r in s["ranks"] if r["rank"] in tr.workers}
    assert s["throughput"]["steady_samples_per_s"] == pytest.approx(sum(own.values()), rel=1e-9)
    assert s["throughput"]["median_iteration_s"] == pytest.approx(8 / sum(own.values()), rel=1e-9)
    if sync == "asp":      # rank 1 (2 samples, 4 ms a sample's delay) is not held back by rank 0 (1, 30 ms)
        assert own[1] > 3 * own[0]
