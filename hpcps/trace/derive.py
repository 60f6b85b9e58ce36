"""What the writer rank works out from the events of all ranks before it appends them: when each
message could start to move, the waits at the barrier, and the per-iteration summary.

Pure NumPy on arrays of the schema's record types, all times already on rank 0's clock.

Waiting at the barrier: a rank in a pull or push window has posted its requests; each message can move
only once both ends have posted (an eager send excepted: it completes without the receiver). The rank
waits from the end of its own posting and local copies until the last of its messages could start,
and that interval, cut to the window, is its wait event. What remains of the window is moving data
and the exchange's own overhead.
"""

from __future__ import annotations

import numpy as np

from hpcps.trace.schema import DIRECTION, EVENT_DTYPE, ITERATION_DTYPE, PHASE, TRANSFER_KIND

_SEND, _RECV, _LOCAL = DIRECTION["send"], DIRECTION["recv"], DIRECTION["local"]


def fill_transfer_starts(tr: np.ndarray) -> np.ndarray:
    """Set t_start of every row from both ends' post times; returns the array (changed in place).

    A message is the pair (send row on its source, recv row on its destination) with the same
    iteration, kind and shard. Rows whose other end is missing (a partial trace) keep t_start = t_post.
    """
    tr["t_start"] = tr["t_post"]
    msg = np.flatnonzero(tr["direction"] != _LOCAL)
    if msg.size == 0:
        return tr
    m = tr[msg]
    is_send = m["direction"] == _SEND
    src = np.where(is_send, m["rank"], m["peer"]).astype(np.int64)
    dst = np.where(is_send, m["peer"], m["rank"]).astype(np.int64)
    order = np.lexsort((is_send, dst, src, m["shard"], m["kind"], m["iteration"]))
    keys = np.stack([m["iteration"][order], m["kind"][order], m["shard"][order], src[order], dst[order]])
    # Sorted so that a recv row directly precedes its send row.
    same_next = np.all(keys[:, :-1] == keys[:, 1:], axis=0) & ~is_send[order][:-1] & is_send[order][1:]
    recv_i, send_i = msg[order[:-1][same_next]], msg[order[1:][same_next]]
    recv_post, send_post = tr["t_post"][recv_i], tr["t_post"][send_i]
    recv_end, send_end = tr["t_end"][recv_i], tr["t_end"][send_i]
    tr["t_start"][recv_i] = np.minimum(np.maximum(recv_post, send_post), recv_end)
    # A send that completed before the receiver posted went eagerly: it never waited for it.
    waited = recv_post < send_end
    tr["t_start"][send_i] = np.where(waited, np.minimum(np.maximum(send_post, recv_post), send_end), send_post)
    return tr


def _window_key(rank: np.ndarray, iteration: np.ndarray, kind: np.ndarray) -> np.ndarray:
    return (iteration.astype(np.int64) << 33) | (rank.astype(np.int64) << 1) | kind.astype(np.int64)


def _group_max(keys: np.ndarray, values: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct keys ascending, the largest value of each) over the rows where `where` holds."""
    k, v = keys[where], values[where]
    if k.size == 0:
        return k, v
    order = np.lexsort((v, k))              # by key, then value: each group's maximum comes last
    k, v = k[order], v[order]
    last = np.flatnonzero(np.append(k[1:] != k[:-1], True))
    return k[last], v[last]


def _lookup(uniq: np.ndarray, vals: np.ndarray, keys: np.ndarray, default: float) -> np.ndarray:
    if uniq.size == 0:
        return np.full(keys.size, default)
    i = np.clip(np.searchsorted(uniq, keys), 0, uniq.size - 1)
    return np.where(uniq[i] == keys, vals[i], default)


def wait_events(events: np.ndarray, transfers: np.ndarray) -> np.ndarray:
    """Wait events (schema EVENT_DTYPE) inside the pull and push windows of events.

    transfers must have t_start filled (fill_transfer_starts). A window without messages, or whose
    messages could all start before the rank was done posting, has no wait event.
    """
    is_pull, is_push = events["phase"] == PHASE["pull"], events["phase"] == PHASE["push"]
    win = events[is_pull | is_push]
    if win.size == 0 or transfers.size == 0:
        return np.zeros(0, EVENT_DTYPE)
    win_kind = np.where(win["phase"] == PHASE["pull"], TRANSFER_KIND["pull"], TRANSFER_KIND["push"])
    wkey = _window_key(win["rank"], win["iteration"], win_kind)
    tkey = _window_key(transfers["rank"], transfers["iteration"], transfers["kind"])
    local = transfers["direction"] == _LOCAL
    ready_u, ready_v = _group_max(tkey, transfers["t_start"], ~local)
    copy_u, copy_v = _group_max(tkey, transfers["t_end"], local)
    ready = _lookup(ready_u, ready_v, wkey, -np.inf)
    start = np.maximum(win["t_start"], _lookup(copy_u, copy_v, wkey, -np.inf))
    end = np.minimum(win["t_end"], ready)
    keep = end > start
    out = np.zeros(int(keep.sum()), EVENT_DTYPE)
    out["rank"], out["iteration"] = win["rank"][keep], win["iteration"][keep]
    out["phase"] = PHASE["wait"]
    out["t_start"], out["t_end"] = start[keep], end[keep]
    out["loss"] = np.nan
    return out


def iteration_rows(events: np.ndarray) -> np.ndarray:
    """Summary rows (ITERATION_DTYPE) of every iteration that has iteration events, in order.

    time_s is the gap to the next row's t_start; the last row's time_s is NaN (its successor is not
    known yet: the caller finishes it with finish_row).
    """
    it_ev = events[events["phase"] == PHASE["iteration"]]
    iters, inv = np.unique(it_ev["iteration"], return_inverse=True)
    rows = np.zeros(iters.size, ITERATION_DTYPE)
    if iters.size == 0:
        return rows
    rows["iteration"] = iters
    # Per-group minimum and maximum by sorting (ufunc.at is slow): first and last of each group.
    by_start = np.lexsort((it_ev["t_start"], inv))
    by_end = np.lexsort((it_ev["t_end"], inv))
    first = np.searchsorted(inv[by_start], np.arange(iters.size))
    last = np.searchsorted(inv[by_end], np.arange(iters.size), side="right") - 1
    rows["t_start"] = it_ev["t_start"][by_start][first]
    rows["t_end"] = it_ev["t_end"][by_end][last]
    comp = events[events["phase"] == PHASE["compute"]]
    ci = np.searchsorted(iters, comp["iteration"])
    ok = (ci < iters.size) & (iters[np.minimum(ci, iters.size - 1)] == comp["iteration"])
    k = comp["batch"][ok].astype(np.float64)
    samples = np.bincount(ci[ok], weights=k, minlength=iters.size)
    weighted = np.bincount(ci[ok], weights=k * comp["loss"][ok], minlength=iters.size)
    rows["samples"] = samples.astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rows["loss"] = np.where(samples > 0, weighted / np.maximum(samples, 1), np.nan)
    rows["time_s"] = np.nan
    rows["time_s"][:-1] = np.diff(rows["t_start"])
    rows["samples_per_s"] = np.nan
    finish_rows(rows[:-1])
    return rows


def finish_rows(rows: np.ndarray, next_start: float | None = None) -> None:
    """Fill samples_per_s (and time_s of the last row: up to next_start, else to its own t_end)."""
    if rows.size == 0:
        return
    if np.isnan(rows["time_s"][-1]):
        rows["time_s"][-1] = (next_start if next_start is not None else rows["t_end"][-1]) - rows["t_start"][-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        rows["samples_per_s"] = np.where(rows["time_s"] > 0, rows["samples"] / rows["time_s"], np.nan)


def own_step_rates(events: np.ndarray, batches: dict[int, int], first_iteration: int) -> dict[int, float]:
    """Samples per second of each worker (rank -> batch) at its own pace: its batch over the median gap
    between the starts of its iterations from first_iteration on (NaN with fewer than two). Under ssp
    and asp, where a fast worker starts iteration i long before a slow one, the run's rate is the sum of
    these, not what the iteration rows (the first starter's gaps) say."""
    it = events[(events["phase"] == PHASE["iteration"]) & (events["iteration"] >= first_iteration)]
    out = {}
    for w, k in batches.items():
        gaps = np.diff(np.sort(it["t_start"][it["rank"] == w]))
        step = float(np.median(gaps)) if gaps.size else float("nan")
        out[int(w)] = float(k / step) if step > 0 else float("nan")
    return out

