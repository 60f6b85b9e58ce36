"""Slurm's nodes and the cluster file: hostlist compression, a starting cluster file from
``scontrol show node``, and checks that a cluster file's node names are Slurm's.

Nodes are matched to the cluster file by Slurm node name (``NodeName``, what ``--nodelist`` takes).
Slurm knows CPUs, memory, GPUs (from ``Gres``) and features, but not how fast a node trains or how
fast its network is: the starting file has ``speed = 1.0`` and ``nic_gbps = 10.0`` placeholders to
be replaced by measured values.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from hpcps.config.toml_writer import toml_key, toml_string
from hpcps.slurm.parse import SlurmNode

_NAME_NUM = re.compile(r"^(.*?)(\d+)$")

PLACEHOLDER_SPEED = 1.0
PLACEHOLDER_NIC_GBPS = 10.0


def compress_hostlist(names: Iterable[str]) -> str:
    """Node names as a Slurm hostlist: n1,n2,n3,n7 -> "n[1-3,7]"; gpu01,gpu02 -> "gpu[01-02]".

    Names are sorted by prefix and number; duplicates are dropped. expand_hostlist reverses it.
    """
    plain: list[str] = []
    numbered: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for name in dict.fromkeys(names):
        m = _NAME_NUM.match(name)
        if m and "[" not in name and "," not in name:
            numbered[m.group(1)].append((int(m.group(2)), m.group(2)))
        else:
            plain.append(name)
    parts = sorted(plain)
    for prefix in sorted(numbered):
        nums = sorted(numbered[prefix])
        ranges: list[tuple[str, str]] = []   # (first, last) as written
        for n, text in nums:
            if ranges:
                lo, hi = ranges[-1]
                width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
                if int(hi) + 1 == n and str(n).zfill(width) == text:
                    ranges[-1] = (lo, text)
                    continue
            ranges.append((text, text))
        if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            parts.append(prefix + ranges[0][0])
            continue
        body = ",".join(lo if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)
        parts.append(f"{prefix}[{body}]")
    return ",".join(parts)


def _type_key(node: SlurmNode) -> tuple:
    return (node.cpus, node.memory_mb, node.gres, node.features)


def _memory_gb(memory_mb: int) -> float:
    # Slurm's megabytes are MiB; cluster files count memory in 10^9 bytes.
    return round(memory_mb * 2**20 / 1e9, 1)


def _type_name(key: tuple, taken: set[str]) -> str:
    cpus, mem, gres, features = key
    if features:
        base = "-".join(features)
    else:
        base = f"cpu{cpus}"
        if mem:
            base += f"-mem{round(mem * 2**20 / 1e9):g}g"
        gpus = dict(gres).get("gpu", 0)
        if gpus:
            base += f"-gpu{gpus}"
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", base).strip("-") or "node"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def _toml_str(s: str) -> str:
    return toml_string(s)


def _toml_key(s: str) -> str:
    return toml_key(s)


def render_cluster_toml(nodes: Sequence[SlurmNode], name: str, source: str = "scontrol show node") -> str:
    """A starting cluster file (docs/cluster.md) for these nodes.

    Nodes with the same CPUs, memory, GRES and features share a node type, named after the features
    (or the CPU/memory/GPU counts when there are none). Deterministic: the same nodes give the same text.
    """
    if not nodes:
        raise ValueError("no nodes to describe")
    groups: dict[tuple, list[str]] = {}   # in order of first node: the file reads in Slurm's order
    for n in nodes:
        groups.setdefault(_type_key(n), []).append(n.name)
    order = list(groups)
    taken: set[str] = set()
    names = {k: _type_name(k, taken) for k in order}
    lines = [
        f"# Cluster file written by 'python -m hpcps.cluster --from-slurm' from {source}.",
        "# Slurm gave the node names, cores, memory, GPUs and features. Replace the placeholders:",
        "#   speed    - training speed relative to the machine that runs the emulation (1.0), e.g. from",
        "#              iterations per second of the same job on one node of each type;",
        "#   nic_gbps - network bandwidth per direction in Gb/s (and latency_us, fixed_ms if known).",
        f"name = {_toml_str(name)}",
        "",
    ]
    for k in order:
        cpus, mem, gres, features = k
        gdict = dict(gres)
        lines.append(f"[types.{_toml_key(names[k])}]")
        lines.append(f"speed = {PLACEHOLDER_SPEED!r}        # placeholder: measure")
        lines.append(f"cores = {cpus}")
        lines.append(f"nic_gbps = {PLACEHOLDER_NIC_GBPS!r}    # placeholder: measure")
        if mem:
            lines.append(f"memory_gb = {_memory_gb(mem)!r}")
        if gdict.get("gpu"):
            lines.append(f"gpus = {gdict['gpu']}")
        other = {g: c for g, c in gdict.items() if g != "gpu"}
        if other or features:
            info = []
            if features:
                info.append("features " + ",".join(features))
            if other:
                info.append("gres " + ",".join(f"{g}:{c}" for g, c in sorted(other.items())))
            lines.append(f"# Slurm: {'; '.join(info)}")
        lines.append("")
    for k in order:
        lines += ["[[nodes]]", f"names = {_toml_str(compress_hostlist(groups[k]))}",
                  f"type = {_toml_str(names[k])}", ""]
    return "\n".join(lines)


def allocation_nodes(environ: Mapping[str, str]) -> list[str] | None:
    """The nodes of the allocation this process runs in (SLURM_JOB_NODELIST expanded); None outside one."""
    from hpcps.cluster.hostlist import expand_hostlist
    text = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    return expand_hostlist(text) if text else None


def unknown_nodes(cluster_names: Iterable[str], slurm_names: Iterable[str]) -> list[str]:
    """Names of the cluster file that Slurm does not know, in file order (empty: all match)."""
    known = set(slurm_names)
    return [n for n in cluster_names if n not in known]
