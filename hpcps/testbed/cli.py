"""python -m hpcps.testbed: a real network for a cluster file on this machine (docs/testbed.md).

    python -m hpcps.testbed up --cluster FILE [--dilation D] [--name NAME]
    python -m hpcps.testbed down [--name NAME | --all]
    python -m hpcps.testbed run --cluster FILE [--dilation D] [--name NAME] [--schedule FILE | -n N] -- CMD...
    python -m hpcps.testbed list

`run` brings a testbed up, runs CMD as MPI ranks placed on its nodes (hydra with a launcher into the
node namespaces), takes the testbed down and exits with CMD's status. Bad input is one line on stderr
and exit status 2, with nothing created; so is a machine that cannot build a testbed (not root, no
iproute2, tc or iptables).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from hpcps.config import limits
from hpcps.config.errors import ConfigError
from hpcps.config.toml_schema import check_number

TOOL = "hpcps.testbed"


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `hpcps.testbed: error: ...`, with exit status 2."""

    def error(self, message):
        sys.stderr.write(f"{TOOL}: error: {message} (see --help)\n")
        sys.exit(2)


def _dilation(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 1, got {text!r}") from None
    if not value >= 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 1, got {text!r}")
    return value


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m hpcps.testbed",
                      description="One network namespace per node of a cluster file, joined through a switch, "
                                  "each NIC shaped to the node's bandwidth and latency in dilated time; MPI ranks "
                                  "on the nodes talk TCP through those links. Needs root, iproute2 and iptables.",
                      epilog="See docs/testbed.md.")
    sub = p.add_subparsers(dest="command", metavar="{up,down,run,list}", parser_class=OneLineParser)
    sub.required = True

    def common(q, default_name):
        q.add_argument("--cluster", type=Path, required=True, help="cluster TOML file (docs/cluster.md)")
        q.add_argument("--dilation", type=_dilation, default=None, metavar="D",
                       help="real seconds per emulated second: links run at nic_gbps / D with latency_us * D "
                            "(default: what this machine keeps up with for the cluster, docs/testbed.md)")
        q.add_argument("--name", default=default_name,
                       help="the testbed's name, 1-9 lower-case letters or digits "
                            f"(default: {default_name or 'r<pid>'})")
        q.add_argument("--quiet", action="store_true", help="no progress lines")

    q = sub.add_parser("up", help="build a testbed and leave it up",
                       description="Build the testbed of a cluster file and leave it up: prints how to launch "
                                   "ranks on it; remove it with down.")
    common(q, "tb")
    q.add_argument("--from-host", action="store_true",
                   help="also join this machine's own namespace to the switch (a veth hpcps-NAME at .253), for "
                        "daemons here that the nodes must reach, such as a Slurm controller")
    q = sub.add_parser("down", help="remove a testbed (or every one)",
                       description="Remove a testbed: end the processes in its namespaces, delete the namespaces, "
                                   "links, qdiscs, rules and its state. Works after its launcher was killed.")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--name", default=None, help="the testbed to remove (default: tb)")
    g.add_argument("--all", action="store_true", help="remove every testbed on this machine (names hpcps-*)")
    q.add_argument("--quiet", action="store_true", help="say nothing")
    q = sub.add_parser("run", help="up, run a command as MPI ranks on the nodes, down",
                       description="Bring a testbed up, run CMD as MPI ranks placed on its nodes, take it down; "
                                   "exits with CMD's status. Ranks are placed as under Slurm: from --schedule (or "
                                   "the --schedule of CMD), a node schedule's ranks node by node, a rank-level "
                                   "schedule's rank r on node r mod N; else -n ranks (default: one per node).")
    common(q, None)
    g = q.add_mutually_exclusive_group()
    g.add_argument("--schedule", type=Path, default=None,
                   help="place ranks as this schedule does (default: the --schedule argument of CMD, if any)")
    g.add_argument("-n", "--ranks", type=int, default=None, help="N ranks, rank r on node r mod N")
    q.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="end CMD after this long (exit status 124)")
    q.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...", help="what every rank runs")
    sub.add_parser("list", help="list the testbeds on this machine",
                   description="List the testbeds (namespaces, links or state named hpcps-*) on this machine.")
    return p


def _fail(message) -> int:
    sys.stderr.write(f"{TOOL}: error: {message}\n")
    return 2


def _say(args, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"{TOOL}: {message}", file=sys.stderr, flush=True)


def _load(args):
    """(cluster, dilation) after checking the cluster file and the name. Raises ConfigError."""
    from hpcps.cluster import load_cluster
    from hpcps.testbed.plan import check_name, default_dilation
    check_name(args.name)
    if not args.cluster.is_file():
        what = "is a folder" if args.cluster.is_dir() else "file not found"
        raise ConfigError(str(args.cluster), None, f"{what} (--cluster needs a cluster TOML file)")
    cluster = load_cluster(args.cluster)
    return cluster, args.dilation if args.dilation is not None else default_dilation(cluster)


def _requirements(cluster, dilation) -> str | None:
    from hpcps.testbed.runner import missing_requirements
    return missing_requirements(delayed=any(n.type.latency_us > 0 for n in cluster.nodes))


def _describe(plan) -> str:
    rates = sorted({n.rate_bps for n in plan.nodes})
    shown = ", ".join(f"{r / 1e6:.4g}" for r in rates[:4]) + (", ..." if len(rates) > 4 else "")
    return (f"testbed {plan.name}: {len(plan.nodes)} nodes of {plan.cluster_name} on {plan.network}, "
            f"time dilation {plan.dilation:g}, links at {shown} Mbit/s")


def cmd_up(args) -> int:
    from hpcps.testbed import control
    from hpcps.testbed.plan import rank_environment
    from hpcps.testbed.runner import TestbedError
    try:
        cluster, dilation = _load(args)
    except ConfigError as e:
        return _fail(e)
    why = _requirements(cluster, dilation)
    if why:
        return _fail(why)
    try:
        plan = control.up(cluster, args.name, dilation, from_host=args.from_host)
    except ConfigError as e:
        return _fail(e)
    except TestbedError as e:
        sys.stderr.write(f"{TOOL}: error: bringing up testbed {args.name} failed (nothing left behind): {e}\n")
        return 1
    d = control.state_dir(plan.name)
    env = " ".join(f"{k}={v}" for k, v in rank_environment(plan).items())
    _say(args, _describe(plan))
    link = (f"this machine reaches the nodes through link {plan.host_link} at {plan.host_address}\n"
            if plan.from_host else "")
    print(f"nodes: {' '.join(f'{n.node}={n.address}' for n in plan.nodes)}\n"
          f"launch ranks with:\n  env {env} ip netns exec {plan.switch_netns} mpiexec -localhost "
          f"{plan.switch_address} -launcher ssh -launcher-exec {d / 'launch.sh'} -hosts NODE:COUNT,... -n N CMD...\n"
          f"{link}a shell on a node: ip netns exec {plan.nodes[0].netns} bash\n"
          f"remove it with: python -m hpcps.testbed down --name {plan.name}")
    return 0


def cmd_down(args) -> int:
    from hpcps.testbed import control
    from hpcps.testbed.plan import check_name
    from hpcps.testbed.runner import missing_requirements
    name = args.name or "tb"
    if not args.all:
        try:
            check_name(name)
        except ConfigError as e:
            return _fail(e)
    why = missing_requirements(delayed=False)
    if why:
        return _fail(why)
    if args.all:
        done = control.down_all()
        for n, removed in done.items():
            _say(args, f"testbed {n} removed: {', '.join(removed)}")
        if not done:
            _say(args, "no testbed on this machine")
        return 0
    removed = control.down(name)
    _say(args, f"testbed {name} removed: {', '.join(removed)}" if removed else f"no testbed named {name}")
    return 0


def cmd_list(args) -> int:
    from hpcps.testbed import control
    from hpcps.testbed.runner import NetRunner, missing_requirements
    why = missing_requirements(delayed=False)
    if why:
        return _fail(why)
    for name in sorted(control.names_in_use(NetRunner())):
        plan = control.load_plan(name)
        print(_describe(plan) if plan else f"testbed {name}: no state (its launcher was killed?); "
                                           f"remove it with: python -m hpcps.testbed down --name {name}")
    return 0


def schedule_in_command(cmd: list[str]) -> Path | None:
    """The value of --schedule in a command line (--schedule X or --schedule=X), if any."""
    for i, a in enumerate(cmd):
        if a == "--schedule" and i + 1 < len(cmd):
            return Path(cmd[i + 1])
        if a.startswith("--schedule="):
            return Path(a.split("=", 1)[1])
    return None


def rank_nodes_for(args, cluster) -> list[str]:
    """Where each rank goes: the schedule's placement, or -n ranks round the nodes. Raises ConfigError."""
    from hpcps.cluster.placement import load_placement
    path = args.schedule or schedule_in_command(args.cmd)
    if path is not None:
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "file not found"
            raise ConfigError(str(path), None, f"{what} (the schedule the ranks are placed by)")
        return list(load_placement(path, cluster).rank_nodes)
    n = args.ranks if args.ranks is not None else len(cluster)
    if n < 1:
        raise ConfigError("-n", None, f"must be >= 1, got {n}")
    return [cluster.nodes[r % len(cluster)].name for r in range(n)]


def _stop_on_signals() -> None:
    """SIGTERM, SIGINT and SIGHUP end `run` through its finally clauses (so the testbed comes down); the
    first one only: a second must not cut the taking down short."""
    def stop(signum, frame):
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        raise SystemExit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)


def cmd_run(args) -> int:
    from hpcps.testbed import control
    from hpcps.testbed.runner import TestbedError
    _stop_on_signals()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    args.cmd = cmd
    if args.name is None:
        args.name = f"r{os.getpid() % 10**8}"
    if not cmd:
        return _fail("no command: give it after --, e.g. run --cluster C -- python -m hpcps.train --job J")
    try:
        if args.timeout is not None:
            check_number("--timeout", None, args.timeout, gt=0, le=limits.MAX_TIMEOUT_S)
        cluster, dilation = _load(args)
        rank_nodes = rank_nodes_for(args, cluster)
    except ConfigError as e:
        return _fail(e)
    why = _requirements(cluster, dilation)
    if why:
        return _fail(why)
    mpiexec = control.find_mpiexec()
    if mpiexec is None or not control.is_hydra(mpiexec):
        return _fail(f"{mpiexec or 'mpiexec'}: the testbed launches ranks with MPICH's hydra (mpiexec "
                     "-launcher-exec); install the mpich wheel (make venv) or put MPICH's mpiexec on PATH")
    try:
        plan = control.up(cluster, args.name, dilation)
    except ConfigError as e:
        return _fail(e)
    except TestbedError as e:
        sys.stderr.write(f"{TOOL}: error: bringing up testbed {args.name} failed (nothing left behind): {e}\n")
        return 1
    try:
        _say(args, _describe(plan) + f"; {len(rank_nodes)} rank(s) on {', '.join(dict.fromkeys(rank_nodes))}")
        report = control.run_on(plan, rank_nodes, cmd, mpiexec=mpiexec, timeout_s=args.timeout)
        summary = control.run_summary(report)
        if summary:
            _say(args, summary)
        for w in report.warnings:
            print(f"{TOOL}: warning: {w}", file=sys.stderr, flush=True)
        if report.returncode == 124 and args.timeout is not None:
            print(f"{TOOL}: the command ran past --timeout {args.timeout:g} s and was ended", file=sys.stderr)
        return report.returncode
    finally:
        control.down(plan.name)
        _say(args, f"testbed {plan.name} removed")


COMMANDS = {"up": cmd_up, "down": cmd_down, "run": cmd_run, "list": cmd_list}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)
