"""Bringing testbeds up and down for real: what exists while one is up, that nothing is left after
`down` (no namespace, link, qdisc, rule, process or cgroup), also after the launcher was killed with
SIGKILL and `down --all`; `run`'s placement of ranks, exit status and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcps.testbed import control
from hpcps.testbed.runner import NetRunner
from tests.conftest import assert_no_leftovers, processes_mentioning
from tests.testbed.conftest import PY, ROOT, bed_cli, namespaces_of

HETERO8 = ROOT / "jobs" / "clusters" / "hetero8.toml"


def tc_show(netns: str, dev: str) -> str:
    return subprocess.run(["tc", "-n", netns, "qdisc", "show", "dev", dev], capture_output=True, text=True).stdout


def iptables_rules(netns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "iptables", "-S"], capture_output=True, text=True).stdout


def hpcps_cgroups() -> list[str]:
    found = []
    for controller in Path("/sys/fs/cgroup").iterdir() if Path("/sys/fs/cgroup").is_dir() else []:
        if controller.is_dir():
            found += [str(p) for p in controller.glob("hpcps*")]
    return found


def start_sleeping_run(tmp_path: Path, name: str, ranks: int, marker: str) -> subprocess.Popen:
    """python -m hpcps.testbed run ... -- sleep MARKER in the background; its stderr in tmp_path/run.err."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(tmp_path / "run.err", "w") as err:
        return subprocess.Popen([PY, "-m", "hpcps.testbed", "run", "--cluster", str(HETERO8), "--name", name,
                                 "-n", str(ranks), "--", "sleep", marker], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)


def sleeping_ranks(marker: str) -> int:
    """How many `sleep MARKER` processes run (the ranks; mpiexec and `run` mention it too)."""
    count = 0
    for pid in processes_mentioning(f"sleep {marker}"):
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        count += argv0.endswith(b"sleep")
    return count


def assert_gone(name: str, pids: list[int]) -> None:
    runner = NetRunner()
    assert namespaces_of(name) == [], runner.netns_list()
    assert f"hpcps-{name}" not in runner.links()
    assert not control.state_dir(name).exists()
    assert not [p for p in pids if runner.alive(p)], "processes of the testbed still running"
    assert hpcps_cgroups() == []
    assert name not in control.names_in_use(runner)


def test_up_builds_shaped_delayed_nodes_and_down_removes_everything(bed_name):
    r = bed_cli("up", "--cluster", str(HETERO8), "--name", bed_name)
    assert r.returncode == 0, r.stderr
    assert f"testbed {bed_name}: 8 nodes of hetero8" in r.stderr and "time dilation 16" in r.stderr
    assert f"down --name {bed_name}" in r.stdout
    spaces = namespaces_of(bed_name)
    assert sorted(spaces) == sorted([f"hpcps-{bed_name}-sw"] + [f"hpcps-{bed_name}-node-n{i}" for i in range(1, 9)])
    runner = NetRunner()
    assert f"hpcps-{bed_name}" not in runner.links()                # this machine's namespace sees nothing of it
    plan = control.load_plan(bed_name)
    for n in plan.nodes:
        eth0 = tc_show(n.netns, "eth0")
        assert "qdisc htb 1: root" in eth0 and "qdisc pfifo 10: parent 1:1" in eth0
        assert "qdisc htb 1: root" in tc_show(plan.switch_netns, n.port)
        assert "NFQUEUE --queue-num 0" in iptables_rules(n.netns)
    # n1 is a 10 Gb/s NIC at dilation 16: 625 Mbit/s; n6 a 1 Gb/s one: 62.5 Mbit/s.
    cls = subprocess.run(["tc", "-n", plan.node("n6").netns, "class", "show", "dev", "eth0"], capture_output=True,
                         text=True).stdout
    assert "rate 62500Kbit ceil 62500Kbit" in cls, cls
    # Nodes reach each other and the machine's end of the switch, and nothing else.
    ping = [PY, "-c", "import socket,sys; s=socket.create_connection((sys.argv[1], 9), timeout=2)"]
    out = subprocess.run(["ip", "netns", "exec", plan.node("n1").netns, *ping, plan.node("n8").address],
                         capture_output=True, text=True, timeout=30)
    assert "ConnectionRefused" in out.stderr, out.stderr          # reached n8, where nothing listens on port 9
    out = subprocess.run(["ip", "netns", "exec", plan.node("n1").netns, *ping, "192.0.2.1"],
                         capture_output=True, text=True, timeout=30)
    assert "Network is unreachable" in out.stderr, out.stderr     # no route out of the testbed
    delay = json.loads((control.state_dir(bed_name) / "delay.ready").read_text())["pid"]
    assert delay in runner.netns_pids(plan.switch_netns)
    # The delay line held those packets, and says so only when asked: working its statistics out holds
    # every packet of every link for milliseconds, so it may not do it on its own while packets pass.
    time.sleep(1.5)
    assert not (control.state_dir(bed_name) / "delay.json").exists()
    stats = control.delay_line_stats(plan, runner)
    assert stats is not None and stats["packets"] >= 4 and stats["late_p50_us"] < 1000, stats
    # A second testbed of the same name is refused, and the first is left as it was.
    again = bed_cli("up", "--cluster", str(HETERO8), "--name", bed_name)
    assert again.returncode == 2 and "is up already" in again.stderr
    assert len(namespaces_of(bed_name)) == 9
    r = bed_cli("down", "--name", bed_name)
    assert r.returncode == 0, r.stderr
    assert_gone(bed_name, [delay])


def test_from_host_joins_this_machine_to_the_switch(bed_name):
    r = bed_cli("up", "--cluster", str(HETERO8), "--name", bed_name, "--from-host", "--dilation", "20")
    assert r.returncode == 0, r.stderr
    plan = control.load_plan(bed_name)
    assert plan.from_host and f"hpcps-{bed_name}" in NetRunner().links()
    # A listener here, reached from a node through the link at the testbed's .253.
    import socket
    srv = socket.create_server((plan.host_address, 0))
    port = srv.getsockname()[1]
    try:
        out = subprocess.run(["ip", "netns", "exec", plan.node("n3").netns, PY, "-c",
                              f"import socket; socket.create_connection(({plan.host_address!r}, {port}), timeout=5)"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    finally:
        srv.close()
    assert bed_cli("down", "--name", bed_name).returncode == 0
    assert_gone(bed_name, [])


def test_after_sigkill_of_the_launcher_down_all_removes_everything(bed_name, tmp_path):
    marker = f"{600 + os.getpid() % 1000}.{time.time_ns() % 1000}"          # sleep's argument, unique
    run = start_sleeping_run(tmp_path, bed_name, 3, marker)
    runner = NetRunner()
    deadline = time.monotonic() + 60
    while sleeping_ranks(marker) < 3:
        assert run.poll() is None, (tmp_path / "run.err").read_text()
        assert time.monotonic() < deadline, "the ranks never started"
        time.sleep(0.2)
    plan = control.load_plan(bed_name)
    pids = sorted({p for ns in plan.netns_names for p in runner.netns_pids(ns)})
    run.send_signal(signal.SIGKILL)
    run.wait()
    time.sleep(1.0)
    assert len(namespaces_of(bed_name)) == 9                       # killed: nothing was taken down
    listed = bed_cli("list")
    assert bed_name in listed.stdout
    r = bed_cli("down", "--all")
    assert r.returncode == 0 and f"testbed {bed_name} removed" in r.stderr, r.stderr
    assert_gone(bed_name, pids)
    assert_no_leftovers(f"sleep {marker}", grace_s=10)                # ranks, proxies and mpiexec


def test_run_places_ranks_and_returns_the_status_of_the_command(bed_name, tmp_path):
    sched = tmp_path / "schedule.toml"
    sched.write_text('[[nodes]]\nname = "n6"\nserver = true\nworkers = [{batch = 8}, {batch = 8}]\n'
                     '[[nodes]]\nname = "n2"\nworkers = [{batch = 48}]\n')
    # Each rank writes what it sees to a file of its own (ranks' printed lines may interleave).
    probe = ("import json, os, socket, sys; from mpi4py import MPI; c = MPI.COMM_WORLD; "
             f"open(os.path.join({str(tmp_path)!r}, f'rank{{c.Get_rank()}}.json'), 'w').write(json.dumps("
             "[c.Get_rank(), socket.gethostname(), os.environ['HPCPS_TESTBED'], os.readlink('/proc/self/ns/net')])); "
             "c.Barrier(); sys.exit(3 if c.Get_rank() == 0 else 0)")
    r = bed_cli("run", "--cluster", str(HETERO8), "--name", bed_name, "--schedule", str(sched), "--dilation", "20",
                "--", PY, "-c", probe, cwd=tmp_path, timeout=200)
    assert r.returncode == 3, r.stdout + r.stderr
    rows = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(3)]
    assert [row[1] for row in rows] == ["n6", "n6", "n2"]                 # node schedule order, node by node
    assert {row[2] for row in rows} == {f"{bed_name}:20"}
    assert rows[0][3] == rows[1][3] != rows[2][3]                         # one network namespace per node
    assert namespaces_of(bed_name) == []


def test_sigterm_ends_the_command_and_takes_the_testbed_down(bed_name, tmp_path):
    marker = f"{700 + os.getpid() % 1000}.{time.time_ns() % 1000}"
    run = start_sleeping_run(tmp_path, bed_name, 2, marker)
    deadline = time.monotonic() + 60
    while sleeping_ranks(marker) < 2:
        assert run.poll() is None and time.monotonic() < deadline, (tmp_path / "run.err").read_text()
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 128 + signal.SIGTERM
    assert namespaces_of(bed_name) == [] and not control.state_dir(bed_name).exists()
    assert_no_leftovers(f"sleep {marker}", grace_s=10)


@pytest.mark.parametrize("argv,fragment", [
    (["up", "--cluster", "/nonexistent.toml"], "file not found"),
    (["run", "--cluster", str(HETERO8), "--dilation", "0", "--", "true"], "--dilation"),
])
def test_bad_input_creates_nothing(argv, fragment, bed_name):
    r = bed_cli(*argv, "--name", bed_name) if argv[0] == "up" else bed_cli(*argv)
    assert r.returncode == 2 and fragment in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert namespaces_of(bed_name) == []


def test_python_m_hpcps_testbed_help():
    r = subprocess.run([sys.executable, "-m", "hpcps.testbed", "run", "--help"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0 and "-- CMD..." in r.stdout
