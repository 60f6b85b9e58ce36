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

from hpcps.cluster.hostlist import HostlistError, expand_hostlist
from hpcps.config.errors import ConfigError
from hpcps.config.toml_schema import REQUIRED, read_toml, require_positive, take_table

_TOP_SPEC = {"name": (str, None), "types": (dict, REQUIRED), "nodes": (list, REQUIRED)}
_TYPE_SPEC = {
    "speed": (float, REQUIRED),
    "cores": (int, REQUIRED),
    "nic_gbps": (float, REQUIRED),
    "latency_us": (float, 50.0),
    "fixed_ms": (float, 0.0),
    "memory_gb": (float, None),   # None: unlimited
    "gpus": (int, 0),
}
_NODES_SPEC = {"names": (str, REQUIRED), "type": (str, REQUIRED)}


@dataclass(frozen=True)
class NodeType:
    name: str
    speed: float                     # compute speed relative to the calibration machine (1.0)
    cores: int
    nic_gbps: float                  # per direction
    latency_us: float = 50.0         # one-way
    fixed_ms: float = 0.0            # per training step
    memory_gb: float | None = None   # None: unlimited
    gpus: int = 0

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

    def to_toml(self) -> str:
        """The cluster as a file load_cluster reads back to an equal Cluster (one [[nodes]] per type)."""
        lines = [f"name = {_quote(self.name)}", ""]
        for t in self.types:
            lines += [f"[types.{_quote(t.name)}]", f"speed = {t.speed!r}", f"cores = {t.cores}",
                      f"nic_gbps = {t.nic_gbps!r}", f"latency_us = {t.latency_us!r}", f"fixed_ms = {t.fixed_ms!r}"]
            if t.memory_gb is not None:
                lines.append(f"memory_gb = {t.memory_gb!r}")
            lines += [f"gpus = {t.gpus}", ""]
        for t in self.types:
            names = [n.name for n in self.nodes if n.type.name == t.name]
            if names:
                lines += ["[[nodes]]", f"names = {_quote(','.join(names))}", f"type = {_quote(t.name)}", ""]
        return "\n".join(lines)


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_finite(source: str, key: str, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(source, key, f"must be a finite number, got {value!r}")


def parse_node_type(name: str, table: Any, source: str) -> NodeType:
    prefix = f"types.{name}"
    t = take_table(source, prefix, table, _TYPE_SPEC)
    for k in ("speed", "nic_gbps", "latency_us", "fixed_ms", "memory_gb"):
        if t[k] is not None:
            _check_finite(source, f"{prefix}.{k}", t[k])
    require_positive(source, f"{prefix}.speed", t["speed"])
    require_positive(source, f"{prefix}.cores", t["cores"])
    require_positive(source, f"{prefix}.nic_gbps", t["nic_gbps"])
    require_positive(source, f"{prefix}.latency_us", t["latency_us"], allow_zero=True)
    require_positive(source, f"{prefix}.fixed_ms", t["fixed_ms"], allow_zero=True)
    if t["memory_gb"] is not None:
        require_positive(source, f"{prefix}.memory_gb", t["memory_gb"])
    require_positive(source, f"{prefix}.gpus", t["gpus"], allow_zero=True)
    return NodeType(name, **t)


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
    return Cluster(name, tuple(types.values()), tuple(nodes), source)


def load_cluster(path: str | Path) -> Cluster:
    return parse_cluster(read_toml(path), str(path))
