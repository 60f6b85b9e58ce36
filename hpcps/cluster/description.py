"""Cluster descriptions: node types (speed, cores, network, memory) and the named nodes of each type.

The file format is fixed by CONTRACTS.md section 2 and described in docs/cluster.md. Loading is strict:
unknown keys, wrong types, impossible values, unknown node types and repeated node names are
ConfigErrors that name the file and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from hpcps.cluster.hostlist import MAX_NAMES, HostlistError, expand_hostlist
from hpcps.config import limits
from hpcps.config.errors import ConfigError
from hpcps.config.toml_schema import Key, option, read_toml, spec_of, take_table
from hpcps.config.toml_writer import dumps


@dataclass(frozen=True)
class NodeType:
    name: str
    speed: float = option(ge=limits.MIN_SPEED, le=limits.MAX_SPEED)      # relative to the calibration machine
    cores: int = option(gt=0, le=limits.MAX_CORES)
    nic_gbps: float = option(ge=limits.MIN_NIC_GBPS, le=limits.MAX_NIC_GBPS)   # per direction
    latency_us: float = option(50.0, ge=0, le=limits.MAX_LATENCY_US)          # one-way
    fixed_ms: float = option(0.0, ge=0, le=limits.MAX_FIXED_MS)              # per training step
    memory_gb: float | None = option(None, gt=0, le=limits.MAX_MEMORY_GB)    # None: unlimited
    gpus: int = option(0, ge=0, le=limits.MAX_GPUS)

    @property
    def nic_bytes_per_s(self) -> float:
        return self.nic_gbps * 1e9 / 8

    @property
    def memory_bytes(self) -> float:
        return math.inf if self.memory_gb is None else self.memory_gb * 1e9


@dataclass(frozen=True)
class Node:
    name: str
    type: NodeType


@dataclass(frozen=True)
class Cluster:
    name: str
    types: tuple[NodeType, ...]
    nodes: tuple[Node, ...]
    source: str = "<cluster>"

    def __post_init__(self):
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    @cached_property
    def _positions(self) -> dict[str, int]:
        # Schedules look nodes up by name once per node: a dict keeps 1024-node clusters linear.
        return {n.name: i for i, n in enumerate(self.nodes)}

    def index(self, name: str) -> int:
        """Position of the named node; KeyError if the cluster has no such node."""
        return self._positions[name]

    def has(self, name: str) -> bool:
        return name in self._positions

    def node(self, name: str) -> Node:
        return self.nodes[self.index(name)]

    def to_dict(self) -> dict[str, Any]:
        """The cluster as a TOML table that parse_cluster reads back to an equal Cluster: one [[nodes]]
        entry per run of consecutive nodes of one type, so the nodes keep their order (a node's index is
        what schedules and placements refer to) whatever order the types are in; types without nodes kept."""
        types = {t.name: {k: getattr(t, k) for k in _TYPE_SPEC if getattr(t, k) is not None} for t in self.types}
        nodes: list[dict[str, str]] = []
        for n in self.nodes:
            if nodes and nodes[-1]["type"] == n.type.name:
                nodes[-1]["names"] += "," + n.name
            else:
                nodes.append({"names": n.name, "type": n.type.name})
        return {"name": self.name, "types": types, "nodes": nodes}

    def to_toml(self) -> str:
        """The cluster as a file load_cluster reads back to an equal Cluster."""
        return dumps(self.to_dict())


_TOP_SPEC = {"name": Key(str, None), "types": Key(dict), "nodes": Key(list)}
_TYPE_SPEC = spec_of(NodeType, exclude=("name",))
_NODES_SPEC = {"names": Key(str), "type": Key(str)}


def parse_node_type(name: str, table: Any, source: str) -> NodeType:
    return NodeType(name, **take_table(source, f"types.{name}", table, _TYPE_SPEC))


def parse_cluster(table: dict[str, Any], source: str) -> Cluster:
    """Validate a cluster table (a whole cluster file). Raises ConfigError naming source and key."""
    top = take_table(source, "", table, _TOP_SPEC)
    name = top["name"] if top["name"] is not None else Path(source).stem
    if not top["types"]:
        raise ConfigError(source, "types", "no node type: add a table like [types.cpu] with speed, cores and nic_gbps")
    types = {}
    for type_name, body in top["types"].items():
        if not type_name:
            raise ConfigError(source, "types", "a node type needs a non-empty name")
        types[type_name] = parse_node_type(type_name, body, source)
    if not top["nodes"]:
        raise ConfigError(source, "nodes", "no node: add at least one [[nodes]] table with names and type")
    nodes: list[Node] = []
    first_seen: dict[str, int] = {}
    for i, entry in enumerate(top["nodes"]):
        prefix = f"nodes[{i}]"
        e = take_table(source, prefix, entry, _NODES_SPEC)
        if e["type"] not in types:
            raise ConfigError(source, f"{prefix}.type",
                              f"unknown node type {e['type']!r}; the file defines {', '.join(sorted(types))}")
        try:
            names = expand_hostlist(e["names"])
        except HostlistError as err:
            raise ConfigError(source, f"{prefix}.names", f"{err}") from None
        for n in names:
            if n in first_seen:
                where = "earlier in the same entry" if first_seen[n] == i else f"in nodes[{first_seen[n]}]"
                raise ConfigError(source, f"{prefix}.names",
                                  f"node {n!r} is named twice (also {where}); node names must be unique")
            first_seen[n] = i
            nodes.append(Node(n, types[e["type"]]))
        if len(nodes) > MAX_NAMES:
            raise ConfigError(source, f"{prefix}.names", f"the file names more than {MAX_NAMES} nodes")
    return Cluster(name, tuple(types.values()), tuple(nodes), source)


def load_cluster(path: str | Path) -> Cluster:
    return parse_cluster(read_toml(path), str(path))
