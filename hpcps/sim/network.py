"""Bandwidth sharing among concurrent flows: each flow crosses its source node's NIC outwards and its
destination node's NIC inwards, and each NIC direction has a capacity shared by the flows through it.

Resources are numbered 0..n_resources-1 (the simulator uses node i's egress as i and its ingress as
n_nodes + i). Both functions are pure and vectorised over flows, because the simulator calls them
every time the set of flows changes, with up to hundreds of thousands of flows at 1024 nodes.
"""

from __future__ import annotations

import numpy as np

SHARING = ("maxmin", "equal")


def equal_share_rates(src: np.ndarray, dst: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Each NIC splits its capacity equally among the flows through it; a flow gets the smaller of its
    two shares. Cheap, but capacity a flow cannot use (it is held back at its other end) is wasted."""
    n_res = len(capacity)
    count = np.bincount(src, minlength=n_res) + np.bincount(dst, minlength=n_res)
    per_flow = capacity / np.maximum(count, 1)
    return np.minimum(per_flow[src], per_flow[dst])


def max_min_rates(src: np.ndarray, dst: np.ndarray, capacity: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Max-min fair rates by progressive filling: raise every flow's rate together; when a NIC fills,
    the flows through it stop at its fair share and the rest keep rising.

    Rather than freezing one NIC per round (the global minimum), each round freezes every NIC whose fair
    share is no larger than that of any NIC it shares a flow with. That is exact: freezing flows at a
    lower level elsewhere only raises the shares of the NICs they leave, so such a NIC's share is the
    level at which progressive filling would fill it. The rounds then number the links of the longest
    chain of ever larger bottlenecks (two or three on these clusters), not the NICs.

    src, dst: (n_flows,) resource indices; capacity: (n_resources,) bytes/s. Returns (n_flows,) bytes/s.
    """
    n_res = len(capacity)
    rates = np.empty(len(src), dtype=np.float64)
    left = capacity.astype(np.float64, copy=True)
    todo = np.arange(len(src))
    s, d = src, dst
    while todo.size:
        count = np.bincount(s, minlength=n_res) + np.bincount(d, minlength=n_res)
        share = np.full(n_res, np.inf)
        used = count > 0
        share[used] = np.maximum(left[used], 0.0) / count[used]
        ss, sd = share[s], share[d]
        # A NIC that has a flow whose other end fills sooner is not a bottleneck yet.
        later = np.zeros(n_res, dtype=bool)
        later[d[ss < sd * (1 - rtol)]] = True
        later[s[sd < ss * (1 - rtol)]] = True
        full = used & ~later
        frozen = full[s] | full[d]
        rate = np.minimum(ss[frozen], sd[frozen])
        rates[todo[frozen]] = rate
        left -= np.bincount(s[frozen], rate, minlength=n_res) + np.bincount(d[frozen], rate, minlength=n_res)
        keep = ~frozen
        todo, s, d = todo[keep], s[keep], d[keep]
    return rates


def flow_rates(src: np.ndarray, dst: np.ndarray, capacity: np.ndarray, sharing: str = "maxmin") -> np.ndarray:
    if sharing == "maxmin":
        return max_min_rates(src, dst, capacity)
    if sharing == "equal":
        return equal_share_rates(src, dst, capacity)
    raise ValueError(f"unknown sharing {sharing!r}; choose one of {', '.join(SHARING)}")
