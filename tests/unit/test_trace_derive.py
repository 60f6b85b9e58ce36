"""Matching both ends of messages, waits at the barrier, and the per-iteration summary (hpcps.trace.derive)."""

import numpy as np
import pytest

from hpcps.trace.derive import fill_transfer_starts, finish_rows, iteration_rows, wait_events
from hpcps.trace.schema import DIRECTION, EVENT_DTYPE, PHASE, TRANSFER_DTYPE, TRANSFER_KIND


def transfers(*rows):
    """rows: (rank, iteration, kind, direction, shard, peer, t_post, t_end)."""
    out = np.zeros(len(rows), TRANSFER_DTYPE)
    for i, (rank, it, kind, direction, shard, peer, post, end) in enumerate(rows):
        out[i] = (rank, it, TRANSFER_KIND[kind], DIRECTION[direction], shard, peer, 100, post, post, end)
    return out


def events(*rows):
    """rows: (rank, iteration, phase, t_start, t_end)."""
    out = np.zeros(len(rows), EVENT_DTYPE)
    for i, (rank, it, phase, t0, t1) in enumerate(rows):
        out[i] = (rank, it, PHASE[phase], t0, t1, 0, np.nan)
    return out


def test_a_receive_starts_when_the_later_end_posted():
    tr = fill_transfer_starts(transfers(
        (1, 0, "pull", "recv", 0, 0, 1.0, 5.0),      # worker posted at 1, server sent at 3
        (0, 0, "pull", "send", 0, 1, 3.0, 3.5),
        (2, 0, "pull", "recv", 0, 0, 4.0, 4.2),      # this worker posted after the server
        (0, 0, "pull", "send", 0, 2, 3.0, 4.1)))
    assert tr["t_start"].tolist() == [3.0, 3.0, 4.0, 4.0]


def test_an_eager_send_keeps_its_own_post_time_and_a_lone_end_is_left_alone():
    tr = fill_transfer_starts(transfers(
        (1, 0, "push", "send", 0, 0, 1.0, 1.1),      # completed before the server posted at 2: eager
        (0, 0, "push", "recv", 0, 1, 2.0, 2.1),
        (2, 0, "push", "send", 0, 0, 1.5, 2.5),      # its receiver is missing (a partial trace)
        (0, 0, "push", "local", 0, 0, 2.0, 2.05)))
    assert tr["t_start"].tolist() == [1.0, 2.0, 1.5, 2.0]


def test_matching_distinguishes_iteration_kind_shard_and_peers():
    tr = fill_transfer_starts(transfers(
        (1, 0, "pull", "recv", 0, 0, 0.0, 9.0), (1, 1, "pull", "recv", 0, 0, 10.0, 19.0),
        (1, 0, "pull", "recv", 1, 2, 0.0, 9.0), (0, 1, "pull", "send", 0, 1, 12.0, 12.5),
        (0, 0, "pull", "send", 0, 1, 2.0, 2.5), (2, 0, "pull", "send", 1, 1, 5.0, 5.5)))
    assert tr["t_start"].tolist() == [2.0, 12.0, 5.0, 12.0, 2.0, 5.0]


def test_a_receive_ends_no_earlier_than_it_starts_despite_clock_error():
    # The sender's post, seen through an imperfect clock correction, lands after the receive completed.
    tr = fill_transfer_starts(transfers((1, 0, "pull", "recv", 0, 0, 1.0, 2.0), (0, 0, "pull", "send", 0, 1, 2.1, 2.2)))
    assert tr["t_start"][0] == 2.0


def test_wait_runs_from_the_end_of_posting_and_copies_to_the_last_ready_peer():
    ev = events((0, 0, "push", 10.0, 20.0), (1, 0, "pull", 0.0, 5.0), (2, 0, "push", 30.0, 31.0))
    tr = fill_transfer_starts(transfers(
        (0, 0, "push", "local", 0, 0, 10.0, 11.0),           # server copies its own worker's gradient
        (0, 0, "push", "recv", 0, 1, 10.0, 15.0), (1, 0, "push", "send", 0, 0, 14.0, 15.0),
        (0, 0, "push", "recv", 0, 3, 10.0, 19.0), (3, 0, "push", "send", 0, 0, 18.5, 19.0),
        (1, 0, "pull", "recv", 0, 0, 0.0, 5.0), (0, 0, "pull", "send", 0, 1, 3.0, 3.2),
        (2, 0, "push", "send", 0, 0, 30.0, 30.1)))   # eager, unmatched here: no wait
    w = wait_events(ev, tr)
    got = sorted(zip(w["rank"].tolist(), w["t_start"].tolist(), w["t_end"].tolist()))
    assert got == [(0, 11.0, 18.5), (1, 0.0, 3.0)]
    assert (w["phase"] == PHASE["wait"]).all()


def test_iteration_rows_add_up_to_the_wall_time_and_weight_the_loss_by_batch():
    ev = np.zeros(6, EVENT_DTYPE)
    ev[:] = [(0, 0, PHASE["iteration"], 0.0, 1.0, 8, np.nan), (1, 0, PHASE["iteration"], 0.2, 1.1, 24, np.nan),
             (0, 1, PHASE["iteration"], 1.0, 2.5, 8, np.nan), (1, 1, PHASE["iteration"], 1.1, 2.4, 24, np.nan),
             (0, 0, PHASE["compute"], 0.1, 0.5, 8, 1.0), (1, 0, PHASE["compute"], 0.3, 0.6, 24, 3.0)]
    rows = iteration_rows(ev)
    assert rows["iteration"].tolist() == [0, 1]
    assert rows["t_start"].tolist() == [0.0, 1.0] and rows["t_end"].tolist() == [1.1, 2.5]
    assert rows["time_s"][0] == pytest.approx(1.0) and np.isnan(rows["time_s"][1])
    assert rows["samples"].tolist() == [32, 0]
    assert rows["loss"][0] == pytest.approx((8 * 1.0 + 24 * 3.0) / 32)
    assert rows["samples_per_s"][0] == pytest.approx(32.0)
    finish_rows(rows[1:], next_start=3.0)
    assert rows["time_s"][1] == pytest.approx(2.0)
    last = rows[1:].copy()
    last["time_s"] = np.nan
    finish_rows(last)
    assert last["time_s"][0] == pytest.approx(1.5)
    assert rows["time_s"][0] + 1.5 == pytest.approx(rows["t_end"][-1] - rows["t_start"][0])
