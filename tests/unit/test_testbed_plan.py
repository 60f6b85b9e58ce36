"""The testbed's pure part: names, addresses, default dilation, the commands that build it (golden), the
hydra host list, the launcher script and the environment the ranks get."""

import ipaddress
import subprocess
from pathlib import Path

import pytest

from hpcps.cluster import load_cluster, parse_cluster
from hpcps.config.errors import ConfigError
from hpcps.testbed.plan import (
    COMPUTE_CORES,
    DELAY_MIN_S,
    MAX_NODES,
    MAX_PACKET_BYTES,
    MIN_BURST_BYTES,
    check_name,
    choose_subnet,
    default_dilation,
    delay_lines,
    host_link,
    hosts_argument,
    launcher_script,
    mpiexec_argv,
    name_of_link,
    name_of_netns,
    nic_burst_bytes,
    node_netns,
    packet_bytes,
    parse_testbed_env,
    plan_testbed,
    queue_rules,
    rank_environment,
    setup_commands,
    shaping_lines,
    subnet,
    switch_netns,
)
from hpcps.testbed.plan import TestbedPlan as Plan
from tests.unit.golden import check_golden

ROOT = Path(__file__).resolve().parents[2]
HETERO8 = load_cluster(ROOT / "jobs/clusters/hetero8.toml")


def cluster(text_types: str, nodes: str) -> object:
    import tomllib
    return parse_cluster(tomllib.loads(text_types + nodes), "<test>")


TWO = cluster('[types.a]\nspeed = 1.0\ncores = 2\nnic_gbps = 1.0\nlatency_us = 50.0\n'
              '[types.b]\nspeed = 0.5\ncores = 2\nnic_gbps = 0.5\nlatency_us = 0.0\n',
              '[[nodes]]\nnames = "x1"\ntype = "a"\n[[nodes]]\nnames = "y-2.b"\ntype = "b"\n')


@pytest.mark.parametrize("name", ["tb", "a", "abc123xyz", "0"])
def test_good_names(name):
    assert check_name(name) == name
    assert len(host_link(name)) <= 15            # Linux interface names: 15 characters


@pytest.mark.parametrize("name", ["", "TB", "a-b", "abcdefghij", "a b", "a.b", "x/y"])
def test_bad_names_say_what_is_allowed(name):
    with pytest.raises(ConfigError, match="1 to 9 lower-case letters or digits"):
        check_name(name)


def test_names_map_back_to_their_testbed():
    assert name_of_netns(switch_netns("tb")) == "tb"
    assert name_of_netns(node_netns("tb", "n1")) == "tb"
    assert name_of_netns(node_netns("t9", "r1-n.2_x")) == "t9"
    assert name_of_netns("hpcps-tb") is None and name_of_netns("other-tb-sw") is None
    assert name_of_netns("hpcps-TB-sw") is None
    assert name_of_link(host_link("tb")) == "tb" and name_of_link("hpcps-tb-x") is None
    assert name_of_link("eth0") is None


def test_subnets_are_distinct_24s_of_the_benchmarking_range():
    nets = [subnet(i) for i in range(512)]
    assert len(set(nets)) == 512
    assert all(n.prefixlen == 24 and n.subnet_of(ipaddress.ip_network("198.18.0.0/15")) for n in nets)
    assert str(subnet(0)) == "198.18.0.0/24" and str(subnet(256)) == "198.19.0.0/24"
    with pytest.raises(ValueError):
        subnet(512)


def test_choose_subnet_skips_what_is_in_use():
    assert choose_subnet([]) == 0
    assert choose_subnet(["127.0.0.1/8", "192.0.2.2/24", "0.0.0.0/0"]) == 0
    assert choose_subnet(["198.18.0.254/24", "198.18.1.0/24"]) == 2
    assert choose_subnet(["198.18.0.0/23"]) == 2                      # a wider route covers two
    assert choose_subnet(["198.18.0.0/16"]) == 256
    assert choose_subnet(["garbage", "198.18.0.5/32"]) == 1
    with pytest.raises(ConfigError, match="down --all"):
        choose_subnet(["198.18.0.0/15"])


def test_default_dilation_keeps_every_figure_within_what_the_machine_sustains():
    # hetero8: speeds sum to 2*4 + 3*1 + 3*0.25 = 11.75, on 0.75 of a core for compute: 15.67, so 16.
    assert default_dilation(HETERO8) == 16.0
    for f in sorted((ROOT / "jobs/clusters").glob("*.toml")):
        c = load_cluster(f)
        d = default_dilation(c)
        types = [n.type for n in c.nodes]
        assert d >= 2 * max(t.speed for t in types)
        assert sum(t.speed for t in types) / d <= COMPUTE_CORES
        assert max(t.nic_gbps for t in types) / d <= 1.0
        assert all(t.latency_us * 1e-6 * d / 2 >= DELAY_MIN_S - 1e-12 for t in types if t.latency_us > 0)
        assert d * 2 == int(d * 2)
    # A cluster faster than this machine on no count still runs at dilation >= 1... here latency rules.
    assert default_dilation(TWO) == 4.0           # 2 * 100 us / 50 us


def test_with_a_workload_the_default_dilation_counts_every_core_as_the_thread_model_does():
    """A schedule may give a worker all of its node's cores: the thread model makes hetero8's fast nodes
    (speed 4, 8 cores) about 8x this machine's one thread, so the fastest node's steps and the sum of
    all nodes' need about twice the dilation that counting one thread gives (on hetero8, a schedule with
    8 threads on the fast nodes ran 33% slow at dilation 16 and the same at 24 and 32)."""
    from hpcps.config import load_job
    from hpcps.sim import load_profiles, profile_for_job
    from hpcps.testbed.plan import thread_speedup
    job = load_job(ROOT / "jobs/hetero8.toml")
    profile = profile_for_job(load_profiles(), job.workload, job.model, job.data)
    d = default_dilation(HETERO8, profile)
    fast = [n.type.speed * thread_speedup(profile, n.type.cores) for n in HETERO8.nodes]
    assert d >= 2 * max(fast) and sum(fast) / d <= COMPUTE_CORES and d * 2 == int(d * 2)
    assert d >= 24 and d == default_dilation(HETERO8, profile) > default_dilation(HETERO8)
    assert 1 < thread_speedup(profile, 8) <= 8 and thread_speedup(profile, 1) == 1


def test_plan_addresses_rates_and_delays():
    plan = plan_testbed(TWO, "tb", 4.0, 3)
    assert plan.network == ipaddress.ip_network("198.18.3.0/24")
    assert plan.switch_address == "198.18.3.254" and plan.host_address == "198.18.3.253" and not plan.from_host
    x, y = plan.nodes
    assert (x.node, x.netns, x.address, x.port) == ("x1", "hpcps-tb-node-x1", "198.18.3.1", "p0")
    assert (y.node, y.netns, y.address, y.port) == ("y-2.b", "hpcps-tb-node-y-2.b", "198.18.3.2", "p1")
    assert x.rate_bps == 250_000_000 and y.rate_bps == 125_000_000
    assert x.delay_s == pytest.approx(200e-6) and x.hook_delay_s == pytest.approx(100e-6)
    assert y.delay_s == 0 and plan.delayed
    assert plan.env_value == "tb:4"
    assert Plan.from_json(plan.to_json()) == plan
    assert delay_lines(plan) == [("hpcps-tb-node-x1", 0, pytest.approx(100e-6)),
                                 ("hpcps-tb-node-x1", 1, pytest.approx(100e-6))]


def test_plan_rejects_bad_input():
    with pytest.raises(ConfigError, match="--dilation"):
        plan_testbed(TWO, "tb", 0.5, 0)
    with pytest.raises(ConfigError, match="--dilation"):
        plan_testbed(TWO, "tb", float("nan"), 0)
    with pytest.raises(ConfigError, match="--name"):
        plan_testbed(TWO, "Bad", 2.0, 0)
    big = cluster('[types.a]\nspeed = 1.0\ncores = 2\nnic_gbps = 1.0\n',
                  f'[[nodes]]\nnames = "n[1-{MAX_NODES + 1}]"\ntype = "a"\n')
    with pytest.raises(ConfigError, match=f"at most {MAX_NODES} nodes"):
        plan_testbed(big, "tb", 2.0, 0)


def test_shaping_caps_the_rate_and_gives_each_peer_a_class():
    lines = shaping_lines("eth0", 100_000_000, "dst", ["10.0.0.2", "10.0.0.3"])
    assert lines[0] == "qdisc add dev eth0 root handle 1: htb default 2"
    assert "classid 1:1 htb rate 100000000bit ceil 100000000bit burst 16384b" in lines[1]    # 0.5 ms < 16 KiB
    leaves = [ln for ln in lines if "parent 1:1 classid" in ln]
    assert len(leaves) == 3                                        # two peers and everything else
    # The peer classes borrow everything from 1:1: no rate of their own (a one-packet rate bucket), so
    # that the NIC's burst is 1:1's alone (not 64 KiB more per peer); their ceiling bucket is 1:1's
    # burst, so that a lone flow is not held back after each offloaded packet.
    assert all("rate 8bit ceil 100000000bit burst 1600b cburst 16384b" in ln and "quantum 60000" in ln
               for ln in leaves)
    assert "u32 match ip dst 10.0.0.2/32 flowid 1:10" in lines[6] and "match ip dst 10.0.0.3/32 flowid 1:11" in lines[9]
    assert "burst 625000b" in shaping_lines("p0", 10_000_000_000)[1]                          # 0.5 ms at 10 Gbit/s
    assert "match ip src 10.0.0.2/32" in "".join(shaping_lines("p0", 10**9, "src", ["10.0.0.2"]))


def test_packets_are_no_larger_than_the_slowest_nics_burst():
    """htb passes a packet whole once its bucket is not empty: packets larger than a NIC's burst would let
    the first bytes of every message through a slow NIC at once (64 KiB, the kernel's offloaded packet,
    was 0.5 ms of a 1 Gb/s NIC)."""
    assert nic_burst_bytes(100_000_000) == MIN_BURST_BYTES == 16384          # 6250 B at 0.5 ms: the floor
    assert nic_burst_bytes(10**9) == 62500 and nic_burst_bytes(10**10) == 625000
    assert packet_bytes([10**10, 10**9]) == 62500                              # the slowest NIC's burst
    assert packet_bytes([10**10, 10**8]) == 16384
    assert packet_bytes([10**10]) == MAX_PACKET_BYTES                          # never above the kernel's
    plan = plan_testbed(HETERO8, "tb", 16.0, 0)                                # 1 Gb/s NICs at 62.5 Mbit/s
    assert plan.packet_bytes == 16384
    for n in plan.nodes:                                                       # every node, fast ones too
        assert packet_bytes([n.rate_bps]) >= plan.packet_bytes
        assert all(f"burst {nic_burst_bytes(n.rate_bps)}b" in ln for ln in shaping_lines("eth0", n.rate_bps)[1:3])
    ip_input = "".join(c.input for c in setup_commands(plan) if c.argv[0] == "ip")
    assert ip_input.count("link set eth0 gso_max_size 16384\n") == len(plan.nodes)


def test_setup_commands_golden():
    plan = plan_testbed(TWO, "tb", 4.0, 3)
    text = "".join(c.text() + "\n" for c in setup_commands(plan) + queue_rules(plan))
    check_golden("testbed_setup.txt", text)
    assert "hpcps-tb" not in [w for c in setup_commands(plan) for w in (c.input or "").split()]   # no host link


def test_the_host_link_only_when_asked():
    cmds = setup_commands(plan_testbed(TWO, "tb", 4.0, 3, from_host=True))
    text = "".join(c.text() + "\n" for c in cmds)
    assert "link add hpcps-tb type veth peer name host netns hpcps-tb-sw" in text
    assert "addr add 198.18.3.253/24 dev hpcps-tb" in text and "link set host master br0" in text


def test_setup_shapes_every_node_both_ways_and_queues_only_delayed_nodes():
    plan = plan_testbed(HETERO8, "tb", 16.0, 0)
    cmds = setup_commands(plan)
    tc_input = "".join(c.input for c in cmds if c.argv[0] == "tc")
    for n in plan.nodes:
        egress = "".join(c.input for c in cmds if c.argv == ("tc", "-n", n.netns, "-batch", "-"))
        assert f"dev eth0 parent 1: classid 1:1 htb rate {n.rate_bps}bit" in egress
        assert f"dev {n.port} parent 1: classid 1:1 htb rate {n.rate_bps}bit" in tc_input
        others = [m.address for m in plan.nodes if m is not n]
        assert all(f"match ip dst {a}/32" in egress for a in others) and f"match ip dst {n.address}/" not in egress
        assert egress.count("filter add") == 7
    assert cmds[0].argv == ("ip", "-batch", "-") and cmds[0].input.count("netns add") == 9
    assert len(queue_rules(plan)) == 8
    assert len(queue_rules(plan_testbed(TWO, "tb", 4.0, 0))) == 1     # y-2.b has no latency


def test_hosts_argument_keeps_rank_order():
    assert hosts_argument(["n1", "n1", "n3", "n1"]) == "n1:2,n3:1,n1:1"
    assert hosts_argument(["a"]) == "a:1"
    with pytest.raises(ValueError):
        hosts_argument([])


def test_mpiexec_argv():
    plan = plan_testbed(TWO, "tb", 4.0, 3)
    argv = mpiexec_argv(plan, "/v/bin/mpiexec", "/run/x/launch.sh", ["x1", "y-2.b", "y-2.b"], ["python", "-V"])
    assert argv == ["ip", "netns", "exec", "hpcps-tb-sw", "/v/bin/mpiexec", "-localhost", "198.18.3.254",
                    "-launcher", "ssh", "-launcher-exec", "/run/x/launch.sh", "-hosts", "x1:1,y-2.b:2", "-n", "3",
                    "python", "-V"]
    with pytest.raises(ValueError, match="zz"):
        mpiexec_argv(plan, "mpiexec", "l.sh", ["zz"], ["true"])


def test_rank_environment():
    env = rank_environment(plan_testbed(TWO, "tb", 4.0, 3))
    assert env == {"HPCPS_TESTBED": "tb:4", "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp",
                   "FI_TCP_IFACE": "eth0"}
    assert parse_testbed_env("tb:4") == ("tb", 4.0)
    for bad in (None, "", "tb", "tb:x", "TB:4", "tb:0.5", "tb:inf"):
        assert parse_testbed_env(bad) is None


def test_launcher_script_picks_the_namespace_and_passes_the_command(tmp_path):
    """The script run with a stand-in `ip` on PATH: the namespace, host name and command it hands on."""
    plan = plan_testbed(TWO, "tb", 4.0, 3)
    script = tmp_path / "launch.sh"
    script.write_text(launcher_script(plan))
    script.chmod(0o755)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ip").write_text('#!/bin/sh\nfor a in "$@"; do printf "[%s]" "$a"; done\n')
    (fake / "ip").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    r = subprocess.run([str(script), "-x", "-p", "22", "y-2.b", '"/bin/proxy"', "--control-port", "h:1"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("[netns][exec][hpcps-tb-node-y-2.b][unshare][--uts][sh][-c]")
    assert r.stdout.endswith('[sh][y-2.b]["/bin/proxy" --control-port h:1]')
    r = subprocess.run([str(script), "nowhere", "true"], capture_output=True, text=True, env=env)
    assert r.returncode == 255 and "no node named 'nowhere'" in r.stderr
