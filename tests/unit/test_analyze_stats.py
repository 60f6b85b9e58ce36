"""The analysis maths on a synthetic BSP trace whose every time is known (tests/unit/trace_synth.py)."""

import numpy as np
import pytest

from hpcps.analyze import stats
from hpcps.analyze.report import comparison_text, summary_text
from hpcps.trace.schema import DIRECTION, TRANSFER_KIND
from tests.unit.trace_synth import Model, own_rate_trace, trace


@pytest.fixture(scope="module")
def model():
    return Model()


@pytest.fixture(scope="module")
def tr(model):
    return trace(model)


def test_breakdown_adds_up_to_each_rank_iteration_and_finds_the_compute(tr, model):
    b = stats.breakdown(tr)
    its = stats.steady_iterations(tr)
    it_ev = tr.phase("iteration")
    for rank, row in b.items():
        mine = it_ev[(it_ev["rank"] == rank) & np.isin(it_ev["iteration"], its)]
        assert sum(row.values()) == pytest.approx(np.mean(mine["t_end"] - mine["t_start"]), rel=1e-9)
        k = model.batches.get(rank, 0)
        if k:
            assert row["compute"] == pytest.approx(model.compute_a + model.compute_b * k)
            assert row["data"] == pytest.approx(model.data_per_sample * k)
            assert row["pull"] == pytest.approx(model.message_s)      # the wait is not counted as pulling
        else:
            assert row["aggregate"] == pytest.approx(model.aggregate_s)
    # The biggest batch waits least.
    shares = stats.wait_share(tr)
    assert min((shares[w], w) for w in model.batches)[1] == 3


def test_compute_line_recovers_the_model(tr, model):
    fit = stats.compute_vs_batch(tr)
    assert fit.slope_s_per_sample == pytest.approx(model.compute_b)
    assert fit.intercept_s == pytest.approx(model.compute_a)
    assert fit.r2 == pytest.approx(1.0)
    assert sorted(fit.points) == sorted((k, pytest.approx(model.compute_a + model.compute_b * k))
                                        for k in model.batches.values())


def test_fit_line_with_one_batch_size_goes_through_the_origin():
    fit = stats.fit_line(np.array([16, 16]), np.array([1.0, 3.0]))
    assert fit.slope_s_per_sample == pytest.approx(2.0 / 16) and fit.intercept_s == 0.0 and np.isnan(fit.r2)


def test_the_straggler_is_the_biggest_batch_and_its_lag_is_its_extra_work(tr, model):
    sg = stats.straggler(tr)
    assert sg.rank == 3 and sg.share_last == 1.0
    work = {w: model.compute_b * k for w, k in model.batches.items()}     # the step's own extra work
    assert sg.lag_vs_next_s == pytest.approx(work[3] - work[2])
    assert sg.lag_vs_median_s == pytest.approx(work[3] - work[2])
    assert sg.compute_s == pytest.approx(model.compute_a + model.compute_b * 40)


def test_server_traffic_reports_bytes_and_bandwidth(tr, model):
    s = stats.server_traffic(tr)[0]
    assert s["shard_bytes"] == model.shard_bytes
    assert s["pull_bytes_per_iteration"] == s["push_bytes_per_iteration"] == 3 * model.shard_bytes
    assert s["pull_median_s"] == pytest.approx(model.message_s)
    assert s["push_median_bytes_per_s"] == pytest.approx(model.shard_bytes / model.message_s)


def test_critical_path_runs_through_the_straggler(tr, model):
    path = stats.critical_path(tr)
    steps = [(p.rank, p.category) for p in path if p.category != "other"]
    assert steps == [(3, "pull"), (3, "data"), (3, "compute"), (0, "push"), (0, "aggregate")]
    assert path[-1].t_end - path[0].t_start == pytest.approx(
        model.overhead_s + model.message_s + model.data_per_sample * 40 + model.compute_a + model.compute_b * 40
        + model.overhead_s + model.message_s + model.aggregate_s)
    # Segments follow each other without gaps or overlaps.
    for a, b in zip(path, path[1:]):
        assert b.t_start == pytest.approx(a.t_end)


def test_throughput_and_the_text_report(tr, model):
    tp = stats.throughput(tr)
    assert tp["iterations"] == model.iterations
    assert tp["samples_per_s"] == pytest.approx(64 * model.iterations / tr.iterations["time_s"].sum())
    text = summary_text(stats.summarize(tr))
    assert "Straggler: rank 3" in text and "compute_ms = 1.000 + 0.1000 * k" in text
    assert "Critical path of iteration" in text


def test_comparison_marks_the_faster_run():
    slow, fast = trace(Model(compute_b=2e-4), "slow.h5"), trace(Model(), "fast.h5")
    rows = [stats.comparison_row(slow), stats.comparison_row(fast)]
    assert rows[1]["samples_per_s"] > rows[0]["samples_per_s"]
    assert rows[0]["straggler"] == 3
    text = comparison_text(rows)
    fast_line = next(line for line in text.splitlines() if line.startswith("fast.h5"))
    assert fast_line.rstrip().endswith("best")
    shares = rows[1]["compute_share"] + rows[1]["comm_share"] + rows[1]["wait_share"]
    assert 0.9 < shares <= 1.0


def test_hidden_communication_of_a_run_that_overlaps_nothing_is_zero():
    """The synthetic run computes, then exchanges: no message moves while its rank computes."""
    tr = trace()
    h = stats.hidden_communication(tr)
    assert h["push_s"] > 0 and h["pull_s"] > 0
    assert h["hidden_share"] == 0 and h["push_hidden_share"] == 0


def test_hidden_communication_counts_message_time_inside_compute():
    tr = trace()
    t = tr.transfers
    comp = tr.phase("compute")
    end = {(int(r), int(i)): (a, b)
           for r, i, a, b in zip(comp["rank"], comp["iteration"], comp["t_start"], comp["t_end"])}
    # Move every worker's push sends into the second half of its compute: on the worker's side they
    # are then hidden entirely; the servers, which do not compute, hide nothing.
    for j in np.flatnonzero((t["kind"] == TRANSFER_KIND["push"]) & (t["direction"] == DIRECTION["send"])):
        a, b = end[(int(t["rank"][j]), int(t["iteration"][j]))]
        t["t_post"][j], t["t_end"][j] = (a + b) / 2, b
    h = stats.hidden_communication(tr)
    workers_push = t[(t["kind"] == TRANSFER_KIND["push"]) & (t["direction"] == DIRECTION["send"])
                     & np.isin(t["iteration"], stats.steady_iterations(tr))]
    sends_s = sum(b - a for a, b in zip(workers_push["t_post"], workers_push["t_end"]))
    assert h["push_hidden_s"] == pytest.approx(sends_s, rel=1e-6) and h["push_s"] > sends_s
    assert 0 < h["push_hidden_share"] < 1 and h["pull_hidden_share"] == 0


def test_asp_throughput_is_the_sum_of_each_workers_own_rate():
    """8 samples every 1 ms and every 4 ms: 10,000 samples/s, one global batch (16) in 1.6 ms. Counting
    iterations by number (the first starter's gaps, 1 ms for 16 samples) would say 16,000."""
    tp = stats.throughput(own_rate_trace("asp"))
    assert tp["steady_samples_per_s"] == pytest.approx(10_000, rel=1e-6)
    assert tp["median_iteration_s"] == pytest.approx(1.6e-3, rel=1e-6)
    assert stats.worker_rates(own_rate_trace("ssp")) == pytest.approx({1: 8_000, 2: 2_000}, rel=1e-6)
    # Read as rounds (bsp), the same steps give the first starter's gaps: one global batch a millisecond.
    assert stats.throughput(own_rate_trace("bsp"))["median_iteration_s"] == pytest.approx(1e-3, rel=1e-6)
