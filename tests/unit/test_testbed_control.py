"""up, down and the command line against a fake runner: what is built and in which order, that a failed
bring-up and `down` leave nothing, and that bad input or a machine that cannot build a testbed is one
line and exit status 2 with nothing created. The real thing is tests/testbed/."""

import json
import signal
import sys
from pathlib import Path

import pytest

from hpcps.cluster import load_cluster
from hpcps.config.errors import ConfigError
from hpcps.testbed import cli, control
from hpcps.testbed import runner as runner_mod
from hpcps.testbed.plan import Command, name_of_netns
from hpcps.testbed.runner import TestbedError as BedError

ROOT = Path(__file__).resolve().parents[2]
HETERO8 = ROOT / "jobs/clusters/hetero8.toml"
UNIFORM4 = ROOT / "jobs/clusters/uniform4.toml"


class FakeRunner:
    """Keeps the namespaces and links the commands would make; processes are numbers."""

    def __init__(self, fail_on: str | None = None):
        self.commands: list[Command] = []
        self.netns: list[str] = []
        self.host_links: list[str] = ["lo", "eth0"]
        self.pids: dict[str, list[int]] = {}
        self.live: set[int] = set()
        self.signals: list[tuple[int, int]] = []
        self.fail_on = fail_on
        self.spawned: list[list[str]] = []
        self.in_use = ["127.0.0.1/8", "192.0.2.2/24"]
        self.cmdlines: dict[int, str] = {}

    def run(self, cmd, check=True):
        if not isinstance(cmd, Command):
            cmd = Command(tuple(cmd))
        self.commands.append(cmd)
        text = cmd.text()
        if self.fail_on and self.fail_on in text:
            raise BedError(f"{text}: exit status 2: RTNETLINK answers: File exists")
        argv = list(cmd.argv)
        if argv[:3] == ["ip", "-batch", "-"]:
            for line in cmd.input.splitlines():
                words = line.split()
                if words[:2] == ["netns", "add"]:
                    self.netns.append(words[2])
                if words[:2] == ["link", "add"]:
                    self.host_links.append(words[2])
        if argv[:3] == ["ip", "netns", "delete"]:
            self.netns.remove(argv[3])
            if name_of_netns(argv[3]) and argv[3].endswith("-sw"):
                pass      # the host link outlives the switch for a moment: down deletes it too
        if argv[:3] == ["ip", "link", "delete"]:
            self.host_links.remove(argv[3])
        return None

    def netns_list(self):
        return list(self.netns)

    def netns_pids(self, ns):
        return [p for p in self.pids.get(ns, []) if p in self.live]

    def links(self):
        return list(self.host_links)

    def ipv4_in_use(self):
        return list(self.in_use)

    def processes_naming(self, text):
        return [p for p, line in self.cmdlines.items() if text in line and p in self.live]

    def signal(self, pid, sig):
        self.signals.append((pid, sig))
        if sig in (signal.SIGTERM, signal.SIGKILL):
            self.live.discard(pid)
        return True

    def alive(self, pid):
        return pid in self.live

    def spawn(self, argv, log_path, env=None):
        self.spawned.append(list(argv))
        state = Path(argv[-1])
        (state / "delay.ready").write_text(json.dumps({"pid": 4242}))
        self.live.add(4242)
        self.pids.setdefault(argv[3], []).append(4242)
        return 4242


@pytest.fixture(autouse=True)
def state_root(tmp_path, monkeypatch):
    root = tmp_path / "state"
    monkeypatch.setenv(control.STATE_ENV, str(root))
    return root


def test_up_builds_in_order_and_keeps_its_state(state_root):
    fake = FakeRunner()
    plan = control.up(load_cluster(HETERO8), "tb", 12.0, runner=fake, python="/v/bin/python")
    assert plan.network.compressed == "198.18.0.0/24"
    texts = [c.text() for c in fake.commands]
    assert texts[0].startswith("ip -batch - <<EOF\nnetns add hpcps-tb-sw\nnetns add hpcps-tb-node-n1")
    assert sum(t.startswith("tc -n ") for t in texts) == 9                       # 8 nodes and the switch
    # The delay line starts in the switch's namespace before any packet is queued to it.
    assert fake.spawned == [["ip", "netns", "exec", "hpcps-tb-sw", "/v/bin/python", "-m", "hpcps.testbed.delay",
                             str(state_root / "tb")]]
    rules = [i for i, t in enumerate(texts) if "iptables-restore" in t]
    assert len(rules) == 8 and rules[0] > max(i for i, t in enumerate(texts) if t.startswith("tc "))
    assert json.loads((state_root / "tb" / "plan.json").read_text())["dilation"] == 12.0
    script = state_root / "tb" / "launch.sh"
    assert script.stat().st_mode & 0o100 and "hpcps-tb-node-n8" in script.read_text()
    assert control.names_in_use(fake) == {"tb"}


def test_a_second_testbed_takes_the_next_subnet_and_a_taken_name_is_refused(state_root):
    fake = FakeRunner()
    a = control.up(load_cluster(UNIFORM4), "a", 10.0, runner=fake, from_host=True)
    assert "hpcps-a" in fake.host_links and a.from_host
    fake.in_use.append("198.18.0.253/24")
    b = control.up(load_cluster(UNIFORM4), "b", 10.0, runner=fake)
    assert b.network.compressed == "198.18.1.0/24" and "hpcps-b" not in fake.host_links
    n = len(fake.commands)
    with pytest.raises(ConfigError, match="a testbed named 'a' is up already"):
        control.up(load_cluster(UNIFORM4), "a", 10.0, runner=fake)
    assert len(fake.commands) == n


def test_a_failed_bring_up_leaves_nothing(state_root):
    fake = FakeRunner(fail_on="tc -n hpcps-tb-sw")
    with pytest.raises(BedError, match="File exists"):
        control.up(load_cluster(HETERO8), "tb", 12.0, runner=fake)
    assert fake.netns == [] and fake.host_links == ["lo", "eth0"]
    assert not (state_root / "tb").exists()
    assert control.names_in_use(fake) == set()


def test_down_ends_the_processes_then_removes_everything_by_name(state_root):
    fake = FakeRunner()
    control.up(load_cluster(UNIFORM4), "tb", 10.0, runner=fake, from_host=True)
    control.up(load_cluster(UNIFORM4), "keep", 10.0, runner=fake)
    fake.pids["hpcps-tb-node-n1"] = [100, 101]
    fake.cmdlines = {102: f"mpiexec -launcher-exec {state_root}/tb/launch.sh -hosts n1:1 sleep 9",
                     103: f"mpiexec -launcher-exec {state_root}/tbx/launch.sh"}
    fake.live |= {100, 101, 102, 103}
    (state_root / "tb" / "plan.json").unlink()                      # works without its state too
    removed = control.down("tb", fake)
    assert {(100, signal.SIGTERM), (101, signal.SIGTERM), (102, signal.SIGTERM), (4242, signal.SIGTERM)} \
        == set(fake.signals)                                         # 103 is another testbed's
    assert not any(name_of_netns(ns) == "tb" for ns in fake.netns)
    assert "hpcps-tb" not in fake.host_links and not (state_root / "tb").exists()
    assert any(r.startswith("4 process") for r in removed)
    assert control.names_in_use(fake) == {"keep"}                   # another testbed is left alone
    assert control.down("tb", fake) == []                          # nothing left to remove


def test_down_all_finds_testbeds_by_namespace_link_or_state(state_root):
    fake = FakeRunner()
    fake.netns = ["hpcps-x-node-n1", "other", "hpcps-Bad-sw"]
    fake.host_links.append("hpcps-y")
    (state_root / "z").mkdir(parents=True)
    done = control.down_all(fake)
    assert sorted(done) == ["x", "y", "z"]
    assert fake.netns == ["other", "hpcps-Bad-sw"] and fake.host_links == ["lo", "eth0"]
    assert not (state_root / "z").exists()


def test_keep_up_warnings_name_a_late_delay_line():
    from hpcps.testbed.plan import plan_testbed
    plan = plan_testbed(load_cluster(UNIFORM4), "tb", 10.0, 0)        # 50 us * 10: 250 us per NIC each way
    assert control.keep_up_warnings(plan, None) == []
    assert control.keep_up_warnings(plan, {"late_p50_us": 20.0}) == []
    [w] = control.keep_up_warnings(plan, {"late_p50_us": 90.0})
    assert "median 90 us late" in w and "250 us" in w


def test_keep_up_warnings_name_cpu_time_the_host_took():
    from hpcps.testbed.plan import plan_testbed
    plan = plan_testbed(load_cluster(UNIFORM4), "tb", 10.0, 0)
    assert control.keep_up_warnings(plan, None, None) == []
    assert control.keep_up_warnings(plan, None, control.STEAL_WARNING) == []
    [w] = control.keep_up_warnings(plan, None, 0.3)
    assert w.startswith("the machine's host took 30% of its CPU time during the run (steal)") and "--dilation" in w


def test_steal_share_between_two_readings_of_proc_stat(tmp_path):
    before = control.cpu_times("cpu  100 0 50 800 0 0 10 40 0 0\n")
    after = control.cpu_times("cpu  160 0 80 900 0 0 10 70 0 0")
    assert before == (100, 0, 50, 800, 0, 0, 10, 40)
    assert control.steal_share(before, after) == 30 / 220
    assert control.steal_share(before, before) is None                 # no time passed
    assert control.steal_share(None, after) is None
    assert control.cpu_times("cpu0 1 2 3 4 5 6 7 8") is None           # one core's line, not the machine's
    assert control.cpu_times("cpu 1 2 3") is None and control.cpu_times("cpu a b c d e f g h") is None
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 1 1 1 1 1 1 1 1\n")
    assert control.read_cpu_times(str(stat)) == (1, 2, 3, 4, 5, 6, 7, 8)
    assert control.read_cpu_times(str(tmp_path / "missing")) is None
    assert control.read_cpu_times() is not None                         # this machine's


def test_parsers_of_ip_output():
    assert runner_mod.parse_netns_list("hpcps-a-sw (id: 0)\nother\n\n") == ["hpcps-a-sw", "other"]
    assert runner_mod.parse_link_names("1: lo: <LOOPBACK> mtu\n7: hpcps-a@if3: <BROADCAST> mtu\n") == ["lo", "hpcps-a"]
    assert runner_mod.parse_ipv4_networks("2: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\n",
                                          "default via 192.0.2.1 dev eth0\n198.18.0.0/24 dev x\n10.1.1.1 dev y\n") \
        == ["192.0.2.2/24", "198.18.0.0/24", "10.1.1.1/32"]


def test_requirements():
    def finds(*tools):
        return lambda t: f"/usr/sbin/{t}" if t in tools else None
    all_tools = ("ip", "tc", "unshare", "iptables", "iptables-restore")
    assert runner_mod.missing_requirements(euid=0, find=finds(*all_tools)) is None
    assert "needs root" in runner_mod.missing_requirements(euid=1000, find=finds(*all_tools))
    assert "tc not found" in runner_mod.missing_requirements(euid=0, find=finds("ip", "unshare"))
    assert "iptables" in runner_mod.missing_requirements(euid=0, find=finds("ip", "tc", "unshare"))
    assert runner_mod.missing_requirements(delayed=False, euid=0, find=finds("ip", "tc", "unshare")) is None


# ---- the command line ----------------------------------------------------------------------------------

@pytest.fixture
def no_commands(monkeypatch):
    """Any attempt to run ip, tc or iptables fails the test: bad input must create nothing."""
    def refuse(self, *a, **k):
        raise AssertionError("a command ran")
    monkeypatch.setattr(runner_mod.NetRunner, "run", refuse)
    monkeypatch.setattr(runner_mod.NetRunner, "spawn", refuse)


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcps.testbed: error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.mark.parametrize("argv", [["--help"], ["up", "--help"], ["down", "--help"], ["run", "--help"],
                                  ["list", "--help"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0 and "usage: python -m hpcps.testbed" in capsys.readouterr().out


@pytest.mark.parametrize("argv,fragments", [
    (["up", "--cluster", "nope.toml"], ["nope.toml", "file not found"]),
    (["up", "--cluster", str(ROOT / "jobs")], ["jobs", "is a folder", "cluster TOML file"]),
    (["up", "--cluster", str(HETERO8), "--name", "Bad-Name"], ["--name", "1 to 9 lower-case"]),
    (["up", "--cluster", str(HETERO8), "--dilation", "0.5"], ["--dilation", "number >= 1"]),
    (["up", "--cluster", str(HETERO8), "--dilation", "fast"], ["--dilation", "number >= 1"]),
    (["up"], ["--cluster"]),
    (["down", "--name", "x", "--all"], ["not allowed with"]),
    (["down", "--name", "a/b"], ["--name"]),
    (["run", "--cluster", str(HETERO8)], ["no command"]),
    (["run", "--cluster", str(HETERO8), "-n", "0", "--", "true"], ["-n", "must be >= 1"]),
    (["run", "--cluster", str(HETERO8), "--timeout", "0", "--", "true"], ["--timeout"]),
    (["run", "--cluster", str(HETERO8), "--timeout", "inf", "--", "true"], ["--timeout", "finite number"]),
    (["run", "--cluster", str(HETERO8), "--schedule", "missing.toml", "--", "true"], ["missing.toml", "not found"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_bad_input_is_one_line_and_status_2_with_nothing_created(argv, fragments, capsys, no_commands, state_root):
    with pytest.raises(SystemExit) as e:
        sys.exit(cli.main(argv))
    assert e.value.code == 2
    one_line_error(capsys, *fragments)
    assert not state_root.exists() or not any(state_root.iterdir())


def test_a_schedule_naming_another_cluster_is_refused(tmp_path, capsys, no_commands):
    sched = tmp_path / "s.toml"
    sched.write_text('[[nodes]]\nname = "zz9"\nserver = true\nworkers = [{batch = 4}]\n')
    assert cli.main(["run", "--cluster", str(HETERO8), "--", "python", "-m", "hpcps.train",
                     "--schedule", str(sched)]) == 2
    one_line_error(capsys, "zz9", "not in cluster")


def test_without_root_or_tools_it_says_so_and_creates_nothing(monkeypatch, capsys, no_commands, state_root):
    monkeypatch.setattr(runner_mod.os, "geteuid", lambda: 1000)
    for argv in (["up", "--cluster", str(HETERO8)], ["down", "--all"], ["run", "--cluster", str(HETERO8), "--", "true"],
                 ["list"]):
        assert cli.main(argv) == 2
        one_line_error(capsys, "needs root")
    monkeypatch.setattr(runner_mod.os, "geteuid", lambda: 0)
    monkeypatch.setattr(runner_mod, "which", lambda t: None if t == "tc" else f"/usr/sbin/{t}")
    assert cli.main(["up", "--cluster", str(HETERO8)]) == 2
    one_line_error(capsys, "tc not found", "iproute2")
    monkeypatch.setattr(runner_mod, "which", lambda t: None if t.startswith("iptables") else f"/usr/sbin/{t}")
    assert cli.main(["up", "--cluster", str(HETERO8)]) == 2
    one_line_error(capsys, "iptables not found")
    assert not state_root.exists()


def test_ranks_are_placed_as_the_schedule_says(tmp_path):
    cluster = load_cluster(HETERO8)
    sched = tmp_path / "s.toml"
    sched.write_text('[[nodes]]\nname = "n3"\nserver = true\nworkers = [{batch = 8}, {batch = 8}]\n'
                     '[[nodes]]\nname = "n1"\nworkers = [{batch = 48}]\n')
    args = cli.build_parser().parse_args(["run", "--cluster", str(HETERO8), "--", "python", "-m", "hpcps.train",
                                          f"--schedule={sched}"])
    assert cli.rank_nodes_for(args, cluster) == ["n3", "n3", "n1"]
    args = cli.build_parser().parse_args(["run", "--cluster", str(HETERO8), "-n", "10", "--", "true"])
    assert cli.rank_nodes_for(args, cluster) == [f"n{i}" for i in range(1, 9)] + ["n1", "n2"]
    args = cli.build_parser().parse_args(["run", "--cluster", str(HETERO8), "--", "true"])
    assert cli.rank_nodes_for(args, cluster) == [f"n{i}" for i in range(1, 9)]
    assert cli.schedule_in_command(["x", "--schedule", "a.toml"]) == Path("a.toml")
    assert cli.schedule_in_command(["x", "--schedule"]) is None


def test_run_summary_names_the_delay_lines_lateness_and_the_steal():
    report = control.RunReport(0, {"packets": 2600, "late_p50_us": 6.0, "late_p99_us": 74.0}, [], 0.0031)
    assert control.run_summary(report) == ("the delay line held 2600 packets, late by a median 6 us (99th percentile "
                                           "74 us); the machine's host took 0.3% of its CPU time (steal)")
    assert control.run_summary(control.RunReport(0, None, [], None)) == ""
    assert control.run_summary(control.RunReport(0, {"packets": 0}, [], None)) == ""


def test_the_delay_lines_statistics_are_asked_for_and_not_read_stale(state_root):
    """run_on asks the delay line (SIGUSR1) and waits for its answer; a statistics file from before is
    not taken for it."""
    from hpcps.testbed.plan import plan_testbed
    plan = plan_testbed(load_cluster(UNIFORM4), "tb", 10.0, 0)
    d = control.state_dir("tb")
    d.mkdir(parents=True)
    (d / "delay.ready").write_text(json.dumps({"pid": 4242}))
    (d / "delay.json").write_text(json.dumps({"packets": 1}))          # stale

    class Answering(FakeRunner):
        def signal(self, pid, sig):
            self.signals.append((pid, sig))
            (d / "delay.json").write_text(json.dumps({"packets": 7}))
            return True

    fake = Answering()
    assert control.delay_line_stats(plan, fake) == {"packets": 7}
    assert fake.signals == [(4242, signal.SIGUSR1)]

    class Silent(FakeRunner):
        def signal(self, pid, sig):
            return True

    assert control.delay_line_stats(plan, Silent(), timeout_s=0.05) is None    # the stale file was not taken
