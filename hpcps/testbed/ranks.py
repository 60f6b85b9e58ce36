"""How a training run knows that its ranks stand on the nodes of a testbed.

The testbed puts HPCPS_TESTBED=NAME:DILATION in the ranks' environment (hpcps.testbed.plan.
rank_environment; the local test Slurm on a testbed does the same). That alone proves nothing: an
exported variable outlives the testbed. So every rank also tells which network namespace it runs in,
and the run counts as on a testbed only when all ranks name the same testbed, the ranks of one node
share a namespace and the ranks of different nodes do not: then the network between nodes is real,
and only compute is left to emulate.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from hpcps.testbed.plan import TESTBED_ENV, parse_testbed_env


def rank_identity(env: Mapping[str, str] | None = None) -> tuple[str, int]:
    """(HPCPS_TESTBED's value or "", the inode of this process's network namespace, 0 if unknown)."""
    env = os.environ if env is None else env
    try:
        inode = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        inode = 0
    return env.get(TESTBED_ENV, ""), inode


def on_testbed(identities: Sequence[tuple[str, int]], rank_nodes: Sequence[str]) -> tuple[str, float] | None:
    """(testbed name, dilation) when the ranks (rank r on node rank_nodes[r], identities[r] from
    rank_identity) stand on a testbed's nodes; None otherwise."""
    if not identities or len(identities) != len(rank_nodes):
        return None
    values = {value for value, _ in identities}
    if len(values) != 1:
        return None
    parsed = parse_testbed_env(values.pop())
    if parsed is None or any(inode == 0 for _, inode in identities):
        return None
    ns_of_node: dict[str, int] = {}
    for (_, inode), node in zip(identities, rank_nodes):
        if ns_of_node.setdefault(node, inode) != inode:
            return None                       # one node's ranks in two namespaces
    if len(set(ns_of_node.values())) != len(ns_of_node):
        return None                           # two nodes in one namespace: their traffic is not on a link
    return parsed
