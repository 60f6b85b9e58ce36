"""python -m hpcps.cluster: tools for cluster files.

    python -m hpcps.cluster --from-slurm [--out FILE] [--partition NAME] [--name NAME]

--from-slurm writes a starting cluster file from ``scontrol show node``: node names, cores, memory,
GPUs (from Gres) and features, with nodes of the same kind grouped into one type. Speeds and network
bandwidths are placeholders for you to fill in (see docs/slurm.md). What it writes always loads:
a node that Slurm describes with values a cluster file cannot hold is an error naming the node.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from hpcps.cli import RankAwareParser, report_error, run_tool
from hpcps.config import limits
from hpcps.config.errors import ConfigError

TOOL = "hpcps.cluster"
EXIT_SLURM_FAILED = 1


def build_parser() -> RankAwareParser:
    p = RankAwareParser(prog="python -m hpcps.cluster", description="Tools for cluster files.")
    p.add_argument("--from-slurm", action="store_true",
                   help="write a starting cluster file from 'scontrol show node' (CPUs, memory, GPUs, features)")
    p.add_argument("--out", type=Path, default=None, help="write the file here (default: print it); never overwritten")
    p.add_argument("--partition", default=None, help="only the nodes of this Slurm partition")
    p.add_argument("--name", default=None, help="the cluster's name (default: Slurm's ClusterName)")
    p.add_argument("--scontrol-output", type=Path, default=None, metavar="FILE",
                   help="read saved output of 'scontrol show node -o' instead of asking Slurm")
    return p


def _read_saved(path: Path) -> str:
    if path.is_dir():
        raise ConfigError(str(path), None, "is a directory, not saved 'scontrol show node -o' output")
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), None, "file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), None, f"not UTF-8 text (byte {e.start}): give the output of "
                                           "'scontrol show node -o'") from None
    except OSError as e:
        raise ConfigError(str(path), None, f"cannot read it: {e.strerror or e}") from None


def check_nodes(nodes, source: str) -> None:
    """ConfigError for a node whose CPUs or GPUs a cluster file cannot hold (Slurm reports what its
    configuration says, CPUTot=-4 included)."""
    for n in nodes:
        if not 1 <= n.cpus <= limits.MAX_CORES:
            raise ConfigError(source, None, f"node {n.name} has CPUTot={n.cpus}; a cluster file needs 1 to "
                                            f"{limits.MAX_CORES} cores per node (fix the node in Slurm, or leave "
                                            "it out with --partition)")
        if not 0 <= n.gpus <= limits.MAX_GPUS:
            raise ConfigError(source, None, f"node {n.name} has {n.gpus} GPUs in its Gres; a cluster file holds "
                                            f"0 to {limits.MAX_GPUS}")


def from_slurm(args) -> int:
    from hpcps.cluster.description import parse_cluster
    from hpcps.io.outputs import check_output, write_text
    from hpcps.slurm.client import SlurmClient, SlurmError
    from hpcps.slurm.nodes import render_cluster_toml
    from hpcps.slurm.parse import SlurmParseError, parse_nodes

    if args.out is not None:
        check_output(args.out, "--out", inputs=[args.scontrol_output], replace=False, example="cluster.toml")
    name = args.name
    try:
        if args.scontrol_output is not None:
            text, source = _read_saved(args.scontrol_output), str(args.scontrol_output)
        else:
            client = SlurmClient()
            text, source = client.show_nodes(), "scontrol show node"
            if name is None:
                name = client.config().get("ClusterName")
        nodes = parse_nodes(text)
    except SlurmError as e:
        report_error(TOOL, f"cannot ask Slurm for its nodes: {e}")
        return EXIT_SLURM_FAILED
    except UnicodeDecodeError:
        raise ConfigError("scontrol show node", None, "its output is not UTF-8 text") from None
    except SlurmParseError as e:
        raise ConfigError(source, None, str(e)) from None
    if args.partition is not None:
        nodes = [n for n in nodes if args.partition in n.partitions]
        if not nodes:
            raise ConfigError("--partition", None, f"no node in partition {args.partition!r}")
    if not nodes:
        raise ConfigError(source, None, "lists no node")
    check_nodes(nodes, source)
    toml = render_cluster_toml(nodes, name or "slurm", source=source)
    try:
        parse_cluster(tomllib.loads(toml), f"the cluster file made from {source}")
    except ConfigError as e:
        raise ConfigError(source, None, f"Slurm describes nodes that a cluster file cannot hold: {e}") from None
    if args.out is None:
        sys.stdout.write(toml)
        return 0
    write_text(args.out, toml, "--out")
    print(f"wrote {args.out}: {len(nodes)} nodes; fill in speed and nic_gbps of each type", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.from_slurm:
        return run_tool(TOOL, lambda: from_slurm(args))
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
