"""Bringing a testbed up, taking it down and running a command on it, from the pure plan and a runner.

State of a testbed NAME lives in STATE_ROOT/NAME (default /run/hpcps-testbed/NAME): plan.json, the
hydra launcher script launch.sh, the delay line's log and statistics. `down` needs none of it: it finds
a testbed's namespaces and link by their names, ends every process inside those namespaces (ranks,
hydra proxies, slurmd, the delay line) and every process whose command line names the state directory
(mpiexec, whose -launcher-exec is there), then deletes the namespaces, which removes their links,
qdiscs and iptables rules with them.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hpcps.cluster.description import Cluster
from hpcps.config.errors import ConfigError
from hpcps.testbed.plan import (
    TestbedPlan,
    check_name,
    choose_subnet,
    launcher_script,
    mpiexec_argv,
    name_of_link,
    name_of_netns,
    plan_testbed,
    queue_rules,
    rank_environment,
    setup_commands,
)
from hpcps.testbed.runner import NetRunner, TestbedError

STATE_ENV = "HPCPS_TESTBED_STATE"
READY_TIMEOUT_S = 20.0
TERM_GRACE_S = 3.0
STATS_TIMEOUT_S = 2.0       # for the delay line to write its statistics when asked


def state_root() -> Path:
    return Path(os.environ.get(STATE_ENV) or "/run/hpcps-testbed")


def state_dir(name: str) -> Path:
    return state_root() / name


@contextmanager
def _lock():
    """One bring-up at a time: two would pick the same free subnet."""
    root = state_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def names_in_use(runner: NetRunner) -> set[str]:
    """Every testbed with anything left on this machine: a namespace, the host link or a state directory."""
    names = {n for n in (name_of_netns(ns) for ns in runner.netns_list()) if n}
    names |= {n for n in (name_of_link(link) for link in runner.links()) if n}
    root = state_root()
    if root.is_dir():
        names |= {p.name for p in root.iterdir() if p.is_dir() and name_of_link(f"hpcps-{p.name}")}
    return names


def load_plan(name: str) -> TestbedPlan | None:
    path = state_dir(name) / "plan.json"
    try:
        return TestbedPlan.from_json(path.read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def up(cluster: Cluster, name: str, dilation: float, runner: NetRunner | None = None,
       python: str = sys.executable, from_host: bool = False) -> TestbedPlan:
    """Build the testbed (from_host: with a link from this machine's namespace to the switch); on any
    failure take down what was made and raise (TestbedError, ConfigError)."""
    runner = runner or NetRunner()
    check_name(name)
    with _lock():
        if name in names_in_use(runner):
            raise ConfigError("--name", None, f"a testbed named {name!r} is up already; take it down with "
                                              f"'python -m hpcps.testbed down --name {name}' or choose another name")
        plan = plan_testbed(cluster, name, dilation, choose_subnet(runner.ipv4_in_use()), from_host)
        d = state_dir(name)
        try:
            d.mkdir(parents=True)
            (d / "plan.json").write_text(plan.to_json())
            script = d / "launch.sh"
            script.write_text(launcher_script(plan))
            script.chmod(0o755)
            for cmd in setup_commands(plan):
                runner.run(cmd)
            if plan.delayed:
                _start_delay_line(plan, runner, python)
                for cmd in queue_rules(plan):
                    runner.run(cmd)
        except BaseException:
            down(name, runner)
            raise
    return plan


def _start_delay_line(plan: TestbedPlan, runner: NetRunner, python: str) -> None:
    d = state_dir(plan.name)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    pid = runner.spawn(["ip", "netns", "exec", plan.switch_netns, python, "-m", "hpcps.testbed.delay", str(d)],
                       d / "delay.log", env)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (d / "delay.ready").exists():
        if not runner.alive(pid):
            tail = (d / "delay.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise TestbedError("the delay line ended while starting: " + " | ".join(tail))
        if time.monotonic() > deadline:
            raise TestbedError(f"the delay line did not start within {READY_TIMEOUT_S:.0f} s; see {d / 'delay.log'}")
        time.sleep(0.02)


def down(name: str, runner: NetRunner | None = None) -> list[str]:
    """Remove testbed name: end the processes in its namespaces, delete the namespaces, its host link and
    its state directory. Works from names alone (after the launcher was killed). What was removed."""
    runner = runner or NetRunner()
    removed = []
    namespaces = [ns for ns in runner.netns_list() if name_of_netns(ns) == name]
    pids = {p for ns in namespaces for p in runner.netns_pids(ns)}
    pids |= set(runner.processes_naming(f"{state_dir(name)}/"))      # an orphaned mpiexec on this side
    ending = sorted(pids - {os.getpid()})
    if ending:
        _end(ending, runner)
        removed.append(f"{len(ending)} process(es)")
    for ns in namespaces:
        runner.run(["ip", "netns", "delete", ns], check=False)
        removed.append(f"netns {ns}")
    link = f"hpcps-{name}"
    if link in runner.links():              # gone with the switch's namespace, unless something holds it
        runner.run(["ip", "link", "delete", link], check=False)
        removed.append(f"link {link}")
    d = state_dir(name)
    if d.is_dir():
        shutil.rmtree(d, ignore_errors=True)
        removed.append(f"state {d}")
    return removed


def down_all(runner: NetRunner | None = None) -> dict[str, list[str]]:
    runner = runner or NetRunner()
    return {name: down(name, runner) for name in sorted(names_in_use(runner))}


def _end(pids: list[int], runner: NetRunner) -> None:
    """SIGTERM, then SIGKILL after TERM_GRACE_S, then wait a little for them to be gone."""
    for sig, grace in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, 2.0)):
        live = [p for p in pids if runner.alive(p)]
        for p in live:
            runner.signal(p, sig)
        deadline = time.monotonic() + grace
        while any(runner.alive(p) for p in live) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not any(runner.alive(p) for p in pids):
            return


# ---- running a command on the nodes ---------------------------------------------------------------------

def find_mpiexec() -> str | None:
    """MPICH's hydra mpiexec beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec")


def is_hydra(mpiexec: str) -> bool:
    """Whether mpiexec is MPICH's hydra (the only launcher that takes -launcher-exec)."""
    try:
        r = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return "HYDRA" in (r.stdout + r.stderr).upper()


@dataclass
class RunReport:
    returncode: int
    delay: dict | None              # the delay line's statistics (hpcps.testbed.delay.DelayLine.stats)
    warnings: list[str]
    steal_share: float | None = None  # share of the machine's CPU time its host took during the run


def run_on(plan: TestbedPlan, rank_nodes: Sequence[str], command: Sequence[str], *, mpiexec: str,
           env: Mapping[str, str] | None = None, timeout_s: float | None = None,
           runner: NetRunner | None = None, on_start: Callable[[subprocess.Popen], None] | None = None) -> RunReport:
    """Run command as len(rank_nodes) MPI ranks on the testbed (rank r on node rank_nodes[r]) and wait.
    SIGTERM, SIGINT or SIGHUP, or timeout_s, end the command's whole process group (exit status 128+signal,
    124 on timeout)."""
    runner = runner or NetRunner()
    argv = mpiexec_argv(plan, mpiexec, state_dir(plan.name) / "launch.sh", rank_nodes, command)
    full_env = dict(os.environ if env is None else env)
    full_env.update(rank_environment(plan))
    cpu_before = read_cpu_times()
    proc = subprocess.Popen(argv, env=full_env, start_new_session=True)
    if on_start:
        on_start(proc)
    caught: list[int] = []

    def forward(signum, frame):
        caught.append(signum)
        _kill_group(proc, signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    timed_out = False
    try:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline and not timed_out:
                    timed_out = True
                    _kill_group(proc, signal.SIGTERM)
                    deadline = time.monotonic() + TERM_GRACE_S
                elif timed_out and deadline is not None and time.monotonic() > deadline:
                    _kill_group(proc, signal.SIGKILL)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc.poll() is None:
            _kill_group(proc, signal.SIGKILL)
            proc.wait()
    steal = steal_share(cpu_before, read_cpu_times())
    delay = delay_line_stats(plan, runner) if plan.delayed else None
    if timed_out:
        rc = 124
    elif caught:
        rc = 128 + caught[0]
    elif rc < 0:
        rc = 128 - rc
    return RunReport(rc, delay, keep_up_warnings(plan, delay, steal), steal)


def delay_line_stats(plan: TestbedPlan, runner: NetRunner, timeout_s: float = STATS_TIMEOUT_S) -> dict | None:
    """The delay line's statistics as of now (hpcps.testbed.delay.DelayLine.stats), None if it does not
    answer within timeout_s. It writes them only when asked (SIGUSR1), so that nothing holds packets up."""
    d = state_dir(plan.name)
    stats = d / "delay.json"
    try:
        pid = int(json.loads((d / "delay.ready").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    stats.unlink(missing_ok=True)
    if not runner.signal(pid, signal.SIGUSR1):
        return None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stats.is_file():             # written whole (os.replace)
            try:
                return json.loads(stats.read_text())
            except (OSError, ValueError):
                return None
        time.sleep(0.01)
    return None


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


LATE_WARNING = 0.25          # the delay line's median lateness above this share of the shortest delay
# The share of CPU time the machine's host (a virtual machine's hypervisor) took during a run, past which
# it is named. The links run in this machine's kernel, the delay line and the ranks on its cores, and what
# the host takes, it takes at once from all of them. 40 runs of the 1 Gbit/s link test here: with under 1%
# stolen, every run's median message moved at 0.92-0.97 of the link's rate; every run whose median fell
# below 0.85 (0.56-0.83) had 2.6-8.2% stolen. (Two real-time tasks taking every other 10 ms of both cores:
# 0.63-0.76.)
STEAL_WARNING = 0.02


def read_cpu_times(path: str = "/proc/stat") -> tuple[int, ...] | None:
    """The machine's CPU time counters (the first line of /proc/stat), or None where there are none."""
    try:
        with open(path) as f:
            return cpu_times(f.readline())
    except OSError:
        return None


def cpu_times(line: str) -> tuple[int, ...] | None:
    """user, nice, system, idle, iowait, irq, softirq, steal (in ticks) from /proc/stat's "cpu" line."""
    fields = line.split()
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    try:
        return tuple(int(x) for x in fields[1:9])
    except ValueError:
        return None


def steal_share(before: tuple[int, ...] | None, after: tuple[int, ...] | None) -> float | None:
    """The share of all CPU time between two readings that was stolen, or None without both."""
    if before is None or after is None:
        return None
    spent = [b - a for a, b in zip(before, after)]
    total = sum(spent)
    return spent[7] / total if total > 0 else None


def run_summary(report: RunReport) -> str:
    """One line on how the links' machinery fared during a run: the delay line's packets and lateness, and
    the CPU time the machine's host took."""
    parts = []
    d = report.delay
    if d and d.get("packets"):
        parts.append(f"the delay line held {d['packets']} packets, late by a median {d.get('late_p50_us', 0):.0f} us "
                     f"(99th percentile {d.get('late_p99_us', 0):.0f} us)")
    if report.steal_share is not None:
        parts.append(f"the machine's host took {report.steal_share:.1%} of its CPU time (steal)")
    return "; ".join(parts)


def keep_up_warnings(plan: TestbedPlan, delay: dict | None, steal: float | None = None) -> list[str]:
    """Why the links may not have behaved as described during a run. (Compute that could not keep up is
    hpcps.train's to say: it warns when emulated steps overran.)"""
    out = []
    if steal is not None and steal > STEAL_WARNING:
        out.append(f"the machine's host took {steal:.0%} of its CPU time during the run (steal): links may have run "
                   "below their rates and steps long; a quieter machine, or a larger --dilation, gives them room")
    shortest = min((n.hook_delay_s for n in plan.nodes if n.delay_s > 0), default=None)
    if delay and shortest and delay.get("late_p50_us") is not None:
        late = delay["late_p50_us"] * 1e-6
        if late > LATE_WARNING * shortest:
            out.append(f"the delay line let packets go a median {late * 1e6:.0f} us late, against "
                       f"{shortest * 1e6:.0f} us of delay per NIC and direction: latencies ran long; "
                       "a larger --dilation gives it room")
    return out
