"""python -m hpcps.cluster: tools for cluster files.

    python -m hpcps.cluster --from-slurm [--out FILE] [--partition NAME] [--name NAME]

--from-slurm writes a starting cluster file from ``scontrol show node``: node names, cores, memory,
GPUs (from Gres) and features, with nodes of the same kind grouped into one type. Speeds and network
bandwidths are placeholders for you to fill in (see docs/slurm.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TOOL = "hpcps.cluster"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpcps.cluster", description="Tools for cluster files.")
    p.add_argument("--from-slurm", action="store_true",
                   help="write a starting cluster file from 'scontrol show node' (CPUs, memory, GPUs, features)")
    p.add_argument("--out", type=Path, default=None, help="write the file here (default: print it); never overwritten")
    p.add_argument("--partition", default=None, help="only the nodes of this Slurm partition")
    p.add_argument("--name", default=None, help="the cluster's name (default: Slurm's ClusterName)")
    p.add_argument("--scontrol-output", type=Path, default=None, metavar="FILE",
                   help="read saved output of 'scontrol show node -o' instead of asking Slurm")
    return p


def _fail(message: str, status: int = 2) -> int:
    sys.stderr.write(f"{TOOL}: error: {message}\n")
    return status


def from_slurm(args) -> int:
    from hpcps.slurm.client import SlurmClient, SlurmError
    from hpcps.slurm.nodes import render_cluster_toml
    from hpcps.slurm.parse import SlurmParseError, parse_nodes

    if args.out is not None and args.out.exists():
        return _fail(f"{args.out} exists; remove it or choose another --out (cluster files are never overwritten)")
    name = args.name
    try:
        if args.scontrol_output is not None:
            if not args.scontrol_output.is_file():
                return _fail(f"{args.scontrol_output}: file not found")
            text, source = args.scontrol_output.read_text(), str(args.scontrol_output)
        else:
            client = SlurmClient()
            text, source = client.show_nodes(), "scontrol show node"
            if name is None:
                name = client.config().get("ClusterName")
        nodes = parse_nodes(text)
    except SlurmError as e:
        return _fail(f"cannot ask Slurm for its nodes: {e}", 1)
    except SlurmParseError as e:
        return _fail(str(e))
    if args.partition is not None:
        nodes = [n for n in nodes if args.partition in n.partitions]
        if not nodes:
            return _fail(f"no node in partition {args.partition!r}")
    if not nodes:
        return _fail(f"{source} lists no node")
    toml = render_cluster_toml(nodes, name or "slurm", source=source)
    if args.out is None:
        sys.stdout.write(toml)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(toml)
    tmp.rename(args.out)
    print(f"wrote {args.out}: {len(nodes)} nodes; fill in speed and nic_gbps of each type", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_slurm:
        return from_slurm(args)
    build_parser().print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
