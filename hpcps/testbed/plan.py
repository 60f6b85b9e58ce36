"""The pure part of a testbed: names, addresses, the default dilation and every command that builds it.

Nothing here runs a program, reads the clock or looks at the machine; hpcps.testbed.runner does that.

A testbed called NAME for a cluster of N nodes is

    netns hpcps-NAME-sw               the switch: bridge br0 (address .254, where mpiexec runs), one port
                                      pI per node
    netns hpcps-NAME-node-<node>      one per node: eth0 (a veth whose peer is pI in the switch)
    link  hpcps-NAME                  only when asked (from_host): in the machine's own namespace, a veth
                                      to the switch's port `host` at .253, for daemons there the nodes must
                                      reach (a Slurm controller)

on one /24 of 198.18.0.0/15 (RFC 2544's range for testing network equipment): node i is .(i+1).
Nothing is joined to the machine's real interfaces and there is no default route, so traffic between
nodes never leaves the namespaces; without the host link the machine's own namespace sees nothing of
the testbed (MPI libraries of other jobs there do not find an interface more).

Each node's NIC is shaped in both directions: egress by an htb class on its eth0, ingress by the same
on its switch port (whose egress is the node's ingress), each at nic_gbps / dilation. Each NIC also
delays what passes it by half its dilated latency_us on the way out and half on the way in (the delay
line of hpcps.testbed.delay, fed through netfilter queues), so a message between two nodes of one type
takes latency_us * dilation, and between two types the mean of their latencies.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from hpcps.cluster.description import Cluster
from hpcps.config.errors import ConfigError

PREFIX = "hpcps-"
NAME_PATTERN = re.compile(r"[a-z0-9]{1,9}")     # hpcps-NAME must fit a 15-character interface name
DEFAULT_NAME = "tb"
SUBNETS = ipaddress.ip_network("198.18.0.0/15")
MAX_NODES = 252                                  # .1 to .252 of a /24; .253 the machine's end, .254 the switch
BRIDGE, NODE_IF, HOST_PORT = "br0", "eth0", "host"
EGRESS_QUEUE, INGRESS_QUEUE = 0, 1               # netfilter queue numbers in each node's namespace
TESTBED_ENV = "HPCPS_TESTBED"                    # "NAME:DILATION" in the environment of the ranks

# What this kind of machine (2 cores, measured 2026-12, docs/testbed.md) keeps up with. The default
# dilation keeps every figure of a cluster inside them.
LINK_GBPS_MAX = 1.0        # real rate of one shaped link: TCP through the links and the delay line
AGGREGATE_GBPS_MAX = 2.0   # real traffic of all links together
COMPUTE_CORES = 0.75       # cores the emulated compute of all nodes may take together; the rest is for
                           # the network stack, the delay line, Python and MPI (hetero10a, a loaded
                           # machine: 16% of steps overran at 1.0, 12% by a tenth as much at 0.75)
DELAY_MIN_S = 100e-6       # shortest delay per NIC and direction: the delay line wakes some 20-30 us late


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError("--name", None, f"{name!r} is not a testbed name: use 1 to 9 lower-case letters "
                                          "or digits (it becomes part of namespace and interface names)")
    return name


def switch_netns(name: str) -> str:
    return f"{PREFIX}{name}-sw"


def node_netns(name: str, node: str) -> str:
    return f"{PREFIX}{name}-node-{node}"


def host_link(name: str) -> str:
    return f"{PREFIX}{name}"


def name_of_netns(netns: str) -> str | None:
    """The testbed a namespace belongs to, from its name (None: not a testbed's)."""
    m = re.fullmatch(rf"{re.escape(PREFIX)}([a-z0-9]{{1,9}})-(sw|node-.+)", netns)
    return m.group(1) if m else None


def name_of_link(link: str) -> str | None:
    m = re.fullmatch(rf"{re.escape(PREFIX)}([a-z0-9]{{1,9}})", link)
    return m.group(1) if m else None


def subnet(index: int) -> ipaddress.IPv4Network:
    """The index-th /24 of 198.18.0.0/15 (0 to 511)."""
    if not 0 <= index < 512:
        raise ValueError(f"subnet index {index} is outside 0..511")
    return ipaddress.IPv4Network(f"198.{18 + index // 256}.{index % 256}.0/24")


def choose_subnet(in_use: Iterable[str]) -> int:
    """The first /24 of 198.18.0.0/15 that overlaps none of in_use (networks or addresses with a prefix,
    as `ip -4 -o addr` and `ip -4 route` list them). Raises ConfigError when all 512 are taken."""
    taken = []
    for text in in_use:
        try:
            taken.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    taken = [n for n in taken if n.version == 4 and n.prefixlen > 0]     # a default route takes nothing
    for index in range(512):
        net = subnet(index)
        if not any(net.overlaps(t) for t in taken):
            return index
    raise ConfigError("--name", None, "every /24 of 198.18.0.0/15 is in use on this machine; "
                                      "remove stale testbeds with: python -m hpcps.testbed down --all")


def default_dilation(cluster: Cluster, profile=None) -> float:
    """Real seconds per emulated second such that this machine keeps up with the whole cluster: the
    fastest node's steps still end after their real computation (twice its speed, as emulation does;
    with a workload's profile (hpcps.sim WorkloadProfile), twice its speed-up on all its cores as the
    thread model has it, since a schedule may give a worker every core, and the same for the sum below),
    all nodes computing at once take at most COMPUTE_CORES, no link runs above LINK_GBPS_MAX and half of
    all NICs busy at once stay under AGGREGATE_GBPS_MAX, and the shortest latency gives the delay line
    at least DELAY_MIN_S each way. Rounded up to a half."""
    types = [n.type for n in cluster.nodes]
    latencies = [t.latency_us * 1e-6 for t in types if t.latency_us > 0]
    need = max(1.0,
               2 * DELAY_MIN_S / min(latencies) if latencies else 1.0,
               2.0 * max(t.speed for t in types),
               sum(t.speed for t in types) / COMPUTE_CORES,
               max(t.nic_gbps for t in types) / LINK_GBPS_MAX,
               sum(t.nic_gbps for t in types) / 2.0 / AGGREGATE_GBPS_MAX)
    if profile is not None:         # the same two bounds with every node's cores busy
        fast = [t.speed * thread_speedup(profile, t.cores) for t in types]
        need = max(need, 2.0 * max(fast), sum(fast) / COMPUTE_CORES)
    return math.ceil(need * 2 - 1e-9) / 2


def thread_speedup(profile, cores: int) -> float:
    """How much faster the thread model makes one worker's step with every one of a node's cores than
    with one thread, at the batch where threads help most (one sample or many)."""
    return max(profile.step_time(b, 1, cores, 1) / profile.step_time(b, cores, cores, cores) for b in (1, 1024))


@dataclass(frozen=True)
class NodeLink:
    """One node of a testbed: its namespace, address, switch port and shaped NIC (real units)."""
    node: str
    netns: str
    address: str
    port: str                # the node's port on the switch (in the switch's namespace)
    rate_bps: int            # bits per second, each direction
    delay_s: float           # one-way latency of this NIC; half on the way out, half on the way in

    @property
    def hook_delay_s(self) -> float:
        return self.delay_s / 2


@dataclass(frozen=True)
class TestbedPlan:
    name: str
    cluster_name: str
    cluster_source: str
    dilation: float
    subnet_index: int
    nodes: tuple[NodeLink, ...]
    from_host: bool = False          # the machine's own namespace is joined to the switch (link hpcps-NAME)

    @property
    def switch_netns(self) -> str:
        return switch_netns(self.name)

    @property
    def host_link(self) -> str:
        return host_link(self.name)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return subnet(self.subnet_index)

    @property
    def host_address(self) -> str:
        """The machine's end of the host link (when from_host)."""
        return str(self.network.network_address + 253)

    @property
    def switch_address(self) -> str:
        """The switch's own address (on br0), where mpiexec runs and its proxies call back."""
        return str(self.network.network_address + 254)

    @property
    def netns_names(self) -> tuple[str, ...]:
        return (self.switch_netns,) + tuple(n.netns for n in self.nodes)

    @property
    def delayed(self) -> bool:
        """Whether any link delays packets (then the delay line runs)."""
        return any(n.delay_s > 0 for n in self.nodes)

    @property
    def packet_bytes(self) -> int:
        """The largest packet a node's eth0 builds (its gso_max_size; see packet_bytes())."""
        return packet_bytes(n.rate_bps for n in self.nodes)

    @property
    def env_value(self) -> str:
        return f"{self.name}:{self.dilation:g}"

    def node(self, name: str) -> NodeLink:
        for n in self.nodes:
            if n.node == name:
                return n
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TestbedPlan:
        d = json.loads(text)
        d["nodes"] = tuple(NodeLink(**n) for n in d["nodes"])
        return cls(**d)


def plan_testbed(cluster: Cluster, name: str, dilation: float, subnet_index: int,
                 from_host: bool = False) -> TestbedPlan:
    """The testbed of cluster at dilation on the subnet_index-th /24 (from_host: with the host link).
    Raises ConfigError on bad input."""
    check_name(name)
    if not (isinstance(dilation, (int, float)) and math.isfinite(dilation) and dilation >= 1):
        raise ConfigError("--dilation", None, f"must be a number >= 1, got {dilation}")
    if len(cluster) > MAX_NODES:
        raise ConfigError(cluster.source, "nodes", f"a testbed holds at most {MAX_NODES} nodes; this cluster has "
                                                   f"{len(cluster)}")
    net = subnet(subnet_index)
    nodes = []
    for i, n in enumerate(cluster.nodes):
        nodes.append(NodeLink(node=n.name, netns=node_netns(name, n.name), address=str(net.network_address + i + 1),
                              port=f"p{i}", rate_bps=max(1, round(n.type.nic_gbps * 1e9 / dilation)),
                              delay_s=n.type.latency_us * 1e-6 * dilation))
    return TestbedPlan(name, cluster.name, cluster.source, float(dilation), subnet_index, tuple(nodes), from_host)


# ---- commands --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """One program run: argv, and the lines it reads on stdin (ip, tc and iptables-restore batches)."""
    argv: tuple[str, ...]
    input: str | None = None

    def text(self) -> str:
        line = " ".join(shlex.quote(a) for a in self.argv)
        return line if self.input is None else f"{line} <<EOF\n{self.input}EOF"


def _batch(tool: str, netns: str | None, lines: list[str]) -> Command:
    argv = (tool,) + (("-n", netns) if netns else ()) + ("-batch", "-")
    return Command(argv, "".join(line + "\n" for line in lines))


PEER_BURST = 1600          # bytes: one MTU-sized packet (a peer class's own rate bucket, see shaping_lines)
BURST_S = 0.0005           # a NIC's burst: half a millisecond at its rate (real time) ...
MIN_BURST_BYTES = 16384    # ... but at least this (see packet_bytes); and the largest packet the nodes build
MAX_PACKET_BYTES = 65536   # the kernel's own largest offloaded packet


def nic_burst_bytes(rate_bps: int) -> int:
    """The burst of a NIC's htb class (see shaping_lines): half a millisecond at its rate, at least
    MIN_BURST_BYTES."""
    return max(MIN_BURST_BYTES, math.ceil(rate_bps / 8 * BURST_S))


def packet_bytes(rates_bps: Iterable[int]) -> int:
    """The largest packet (gso_max_size) every node's eth0 builds: the burst of the slowest NIC, at most
    the kernel's 64 KiB. htb lets a packet through whole once its bucket is not empty, so a NIC passes a
    packet of up to its burst's size at once however slow it is, and the first bytes of a message on a
    link that was idle move at no cost. With TCP's offloaded 64 KiB packets (the kernel's default) that
    was 0.5 ms of a 1 Gb/s NIC, and slices of a few hundred KB are what a schedule with a few servers
    moves: on hetero8's `balanced` (two servers, 156 KB slices; results/testbed_packet_size.md) the 1 Gb/s
    workers' pushes took 0.74-0.83 ms and their pulls 1.01-1.12 ms with 64 KiB
    packets, 1.30-1.47 and 1.41-1.65 ms with 16 KiB, against 1.35 and 1.47 ms by the rate (as the
    simulator has them). With 8 KiB, pushes ran long (1.45-1.89 ms): the delay line hears of every
    packet. So the packet is the slowest NIC's burst, at least 16 KiB: a fast NIC sends packets of that
    size too, as its peer may be the slowest one."""
    return min(MAX_PACKET_BYTES, nic_burst_bytes(min(rates_bps)))


def shaping_lines(dev: str, rate_bps: int, match: str = "dst", peers: Sequence[str] = ()) -> list[str]:
    """tc lines that cap dev's egress at rate_bps and share it fairly among the peers.

    An htb class 1:1 at rate = ceil (it never borrows), with a burst of half a millisecond at that rate but
    at least MIN_BURST_BYTES and never less than the largest packet the nodes build (packet_bytes: with
    TCP's offloaded 64 KiB packets and a smaller burst, htb fell short of the rate; a larger burst lets the
    start of each message through faster than the link: 2 ms gave +4% on 2.5 MB at 1 Gbit/s). Below
    it one class per peer address (u32 on the IP `match` address: dst on a node's egress, src on its
    ingress) and one for anything else, each allowed the whole rate, with equal quanta: htb's deficit
    round robin then gives every busy peer the same share, the max-min sharing the
    cluster file means by a NIC shared by every flow through it. With one FIFO instead, TCP flows into a
    NIC split it by their congestion windows (0.7 : 0.3 measured for two pushes started together).

    The peer classes hold no rate of their own (8 bit/s, a one-MTU rate bucket): everything they send is
    borrowed from 1:1, so 1:1's bucket is the NIC's only burst. With a share and a 64 KiB burst each, every
    peer class let its first 64 KiB through at once (a class within its own rate sends whatever its
    parent holds): on a server NIC taking nine 104 KB pushes an iteration, more than half of the bytes
    passed unshaped, and the traced rate was 2.2-2.6x the NIC's. Their ceil bucket (cburst) is 1:1's
    burst: it only lets a class borrow as much as 1:1 could give at once; with one MTU there, a single
    flow waited for tokens after every offloaded 64 KB packet and reached 0.65-0.84 of the rate."""
    burst = nic_burst_bytes(rate_bps)
    lines = [f"qdisc add dev {dev} root handle 1: htb default 2",
             f"class add dev {dev} parent 1: classid 1:1 htb rate {rate_bps}bit ceil {rate_bps}bit "
             f"burst {burst}b cburst {burst}b"]
    for minor, peer in [(2, None)] + [(16 + i, p) for i, p in enumerate(peers)]:
        lines += [f"class add dev {dev} parent 1:1 classid 1:{minor:x} htb rate 8bit ceil {rate_bps}bit "
                  f"burst {PEER_BURST}b cburst {burst}b quantum 60000",
                  f"qdisc add dev {dev} parent 1:{minor:x} handle {minor:x}: pfifo limit 10000"]
        if peer is not None:
            lines.append(f"filter add dev {dev} parent 1: protocol ip prio 1 u32 match ip {match} {peer}/32 "
                         f"flowid 1:{minor:x}")
    return lines


def setup_commands(plan: TestbedPlan) -> list[Command]:
    """The ip and tc batches that build the testbed, in order (the delay line's rules come later:
    queue_rules). Interfaces get no IPv6 address (addrgenmode none): only IPv4 moves, nothing unasked."""
    sw, link, prefix = plan.switch_netns, plan.host_link, plan.network.prefixlen
    cmds = [_batch("ip", None, [f"netns add {ns}" for ns in plan.netns_names]),
            _batch("ip", sw, ["link set lo up", f"link add {BRIDGE} type bridge",
                              f"link set {BRIDGE} addrgenmode none",
                              f"addr add {plan.switch_address}/{prefix} dev {BRIDGE}", f"link set {BRIDGE} up"])]
    for n in plan.nodes:
        cmds.append(_batch("ip", n.netns, [
            "link set lo up",
            f"link add {NODE_IF} type veth peer name {n.port} netns {sw}",
            f"link set {NODE_IF} addrgenmode none",
            f"link set {NODE_IF} gso_max_size {plan.packet_bytes}",
            f"addr add {n.address}/{prefix} dev {NODE_IF}",
            f"link set {NODE_IF} up"]))
    ports = [n.port for n in plan.nodes]
    if plan.from_host:
        cmds.append(_batch("ip", None, [f"link add {link} type veth peer name {HOST_PORT} netns {sw}",
                                        f"link set {link} addrgenmode none",
                                        f"addr add {plan.host_address}/{prefix} dev {link}",
                                        f"link set {link} up"]))
        ports.append(HOST_PORT)
    cmds.append(_batch("ip", sw, [line for p in ports for line in
                                  (f"link set {p} addrgenmode none", f"link set {p} master {BRIDGE}",
                                   f"link set {p} up")]))
    for n in plan.nodes:
        others = [m.address for m in plan.nodes if m is not n]
        cmds.append(_batch("tc", n.netns, shaping_lines(NODE_IF, n.rate_bps, "dst", others)))   # egress
    cmds.append(_batch("tc", sw, [line for n in plan.nodes                                     # ingress
                                  for line in shaping_lines(n.port, n.rate_bps, "src",
                                                            [m.address for m in plan.nodes if m is not n])]))
    return cmds


def queue_rules(plan: TestbedPlan) -> list[Command]:
    """iptables-restore runs that hand every IPv4 packet leaving or entering a node's eth0 to the delay
    line (queue 0 out, queue 1 in). Without --queue-bypass: should the delay line die, traffic stops
    rather than silently losing its latency."""
    cmds = []
    for n in plan.nodes:
        if n.delay_s > 0:
            rules = (f"*filter\n-A OUTPUT -o {NODE_IF} -j NFQUEUE --queue-num {EGRESS_QUEUE}\n"
                     f"-A INPUT -i {NODE_IF} -j NFQUEUE --queue-num {INGRESS_QUEUE}\nCOMMIT\n")
            cmds.append(Command(("ip", "netns", "exec", n.netns, "iptables-restore", "--noflush"), rules))
    return cmds


def delay_lines(plan: TestbedPlan) -> list[tuple[str, int, float]]:
    """(namespace, queue, seconds each packet is held) for every queue the delay line serves."""
    out = []
    for n in plan.nodes:
        if n.delay_s > 0:
            out += [(n.netns, EGRESS_QUEUE, n.hook_delay_s), (n.netns, INGRESS_QUEUE, n.hook_delay_s)]
    return out


# ---- launching ranks on the nodes ---------------------------------------------------------------------

def hosts_argument(rank_nodes: Sequence[str]) -> str:
    """hydra's -hosts value that puts rank r on rank_nodes[r]: consecutive ranks of one node as NODE:COUNT,
    in rank order (hydra keeps a repeated host's entries apart and in order)."""
    if not rank_nodes:
        raise ValueError("no ranks to place")
    parts: list[list] = []
    for node in rank_nodes:
        if parts and parts[-1][0] == node:
            parts[-1][1] += 1
        else:
            parts.append([node, 1])
    return ",".join(f"{node}:{count}" for node, count in parts)


def launcher_script(plan: TestbedPlan) -> str:
    """The script hydra calls as `-launcher ssh -launcher-exec SCRIPT`: it receives [ssh options] HOST
    COMMAND... and runs COMMAND (a shell command line, as ssh would) in HOST's namespace, with the node's
    name as host name (a UTS namespace of its own), so that ranks find their node as on a real cluster."""
    cases = "\n".join(f"    {shlex.quote(n.node)}) ns={shlex.quote(n.netns)} ;;" for n in plan.nodes)
    return f"""#!/bin/sh
# hpcps testbed {plan.name} ({plan.cluster_name}): hydra's launcher into the node namespaces.
# Called as: SCRIPT [ssh options] HOST COMMAND...
while [ $# -gt 0 ]; do
    case "$1" in
        -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
host=$1
shift
case "$host" in
{cases}
    *) echo "hpcps testbed {plan.name}: no node named '$host'" >&2; exit 255 ;;
esac
exec ip netns exec "$ns" unshare --uts sh -c 'hostname "$1" && exec sh -c "$2"' sh "$host" "$*"
"""


def rank_environment(plan: TestbedPlan) -> dict[str, str]:
    """What the ranks on the testbed need in their environment: the testbed's name and dilation for
    hpcps.train, and MPI between nodes over TCP on eth0 (ranks of one node still share memory).

    MPICH's OFI netmod with libfabric's tcp provider rather than its UCX netmod (which moves as fast
    and as soon through the links here): UCX's business cards are exchanged as 4 KB blocks, which
    PMI cuts into segments whose requests overflow the line Slurm's pmi2 plugin reads, so that ranks
    launched by srun on several nodes failed at MPI_Init for some command-line lengths (1 in 12
    measured); OFI exchanges just its address."""
    return {TESTBED_ENV: plan.env_value, "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp",
            "FI_TCP_IFACE": NODE_IF}


def mpiexec_argv(plan: TestbedPlan, mpiexec: str, launcher: str | Path, rank_nodes: Sequence[str],
                 command: Sequence[str]) -> list[str]:
    """hydra's command line running command as len(rank_nodes) ranks, rank r on node rank_nodes[r]. mpiexec
    runs in the switch's namespace, where the proxies reach it at the switch's address (-localhost)."""
    unknown = sorted(set(rank_nodes) - {n.node for n in plan.nodes})
    if unknown:
        raise ValueError(f"nodes {', '.join(unknown)} are not on testbed {plan.name}")
    return ["ip", "netns", "exec", plan.switch_netns, mpiexec, "-localhost", plan.switch_address, "-launcher", "ssh",
            "-launcher-exec", str(launcher), "-hosts", hosts_argument(rank_nodes), "-n", str(len(rank_nodes)),
            *command]


def parse_testbed_env(value: str | None) -> tuple[str, float] | None:
    """(name, dilation) from HPCPS_TESTBED's value, or None when unset or malformed."""
    if not value:
        return None
    name, _, dil = value.rpartition(":")
    try:
        d = float(dil)
    except ValueError:
        return None
    if not NAME_PATTERN.fullmatch(name) or not (math.isfinite(d) and d >= 1):
        return None
    return name, d
