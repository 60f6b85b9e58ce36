"""The one place that runs ip, tc and iptables and looks at what exists on the machine (namespaces, links,
addresses, the processes in a namespace). Everything else in hpcps.testbed is pure or goes through this.

Unit tests replace NetRunner by a fake with the same methods (tests/unit/test_testbed_control.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpcps.testbed.plan import Command

log = logging.getLogger(__name__)

TOOLS = ("ip", "tc", "unshare")
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


class TestbedError(RuntimeError):
    """A command failed or could not run; the message has the command, its status and what it said."""


def which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    for d in SBIN:
        p = Path(d, tool)
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def missing_requirements(delayed: bool = True, euid: int | None = None, find=None) -> str | None:
    """Why a testbed cannot be built here, or None. delayed: some link has a latency (needs iptables)."""
    find = find or which
    if (os.geteuid() if euid is None else euid) != 0:
        return "a testbed needs root (network namespaces, tc, iptables): run it as root"
    missing = [t for t in TOOLS if find(t) is None]
    if missing:
        return (f"{', '.join(missing)} not found: a testbed needs iproute2 (ip, tc) and util-linux (unshare); "
                "apt-get install iproute2 util-linux")
    if delayed and (find("iptables-restore") is None or find("iptables") is None):
        return ("iptables not found: links with a latency hand their packets to the delay line through "
                "iptables (apt-get install iptables, or make testbed-deps)")
    return None


def parse_netns_list(text: str) -> list[str]:
    """Names from `ip netns list` ("NAME" or "NAME (id: N)" per line)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def parse_link_names(text: str) -> list[str]:
    """Interface names from `ip -o link show` ("2: eth0@if5: <...> ..." per line)."""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2 and parts[0].strip().isdigit():
            out.append(parts[1].strip().split("@")[0])
    return out


def parse_ipv4_networks(addr_text: str, route_text: str) -> list[str]:
    """Networks in use: every address with its prefix from `ip -4 -o addr show`, every destination of
    `ip -4 route show` (the default route excepted)."""
    out = []
    for line in addr_text.splitlines():
        fields = line.split()
        if "inet" in fields:
            out.append(fields[fields.index("inet") + 1])
    for line in route_text.splitlines():
        fields = line.split()
        if fields and fields[0] != "default":
            out.append(fields[0] if "/" in fields[0] else fields[0] + "/32")
    return out


class NetRunner:
    """Runs the testbed's commands as subprocesses; TestbedError when one fails."""

    def __init__(self, timeout_s: float = 60.0):
        self.timeout_s = timeout_s

    def run(self, cmd: Command | Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
        if not isinstance(cmd, Command):
            cmd = Command(tuple(cmd))
        log.debug("running %s", cmd.text())
        try:
            r = subprocess.run(list(cmd.argv), input=cmd.input, capture_output=True, text=True,
                               timeout=self.timeout_s, stdin=None if cmd.input is not None else subprocess.DEVNULL)
        except FileNotFoundError:
            raise TestbedError(f"{cmd.argv[0]}: not installed or not on PATH") from None
        except subprocess.TimeoutExpired:
            raise TestbedError(f"{cmd.text()}: no answer within {self.timeout_s:.0f} s") from None
        if check and r.returncode != 0:
            said = (r.stderr or r.stdout).strip()
            raise TestbedError(f"{cmd.text()}: exit status {r.returncode}" + (f": {said}" if said else ""))
        return r

    # ---- what exists ---------------------------------------------------------------------------------

    def netns_list(self) -> list[str]:
        return parse_netns_list(self.run(["ip", "netns", "list"]).stdout)

    def netns_pids(self, netns: str) -> list[int]:
        r = self.run(["ip", "netns", "pids", netns], check=False)
        return [int(p) for p in r.stdout.split() if p.isdigit()]

    def links(self) -> list[str]:
        return parse_link_names(self.run(["ip", "-o", "link", "show"]).stdout)

    def ipv4_in_use(self) -> list[str]:
        return parse_ipv4_networks(self.run(["ip", "-4", "-o", "addr", "show"]).stdout,
                                   self.run(["ip", "-4", "route", "show", "table", "all"]).stdout)

    # ---- processes -----------------------------------------------------------------------------------

    def processes_naming(self, text: str) -> list[int]:
        """Processes of this machine whose command line contains text (a testbed's state directory: its
        mpiexec, whose proxies ran in the namespaces, names the launcher script there)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def signal(self, pid: int, sig: int) -> bool:
        """Send sig to pid; False if it is gone."""
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False

    def alive(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(") ", 1)[-1][:1] != "Z"
        except OSError:
            return False

    def spawn(self, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> int:
        """Start a daemon in a session of its own, detached from this process (a shell starts it in the
        background and exits, so init reaps it when it ends), output to log_path; its process id."""
        r = subprocess.run(["sh", "-c", 'log=$1; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!', "sh",
                            str(log_path), *argv], capture_output=True, text=True, start_new_session=True,
                           env=dict(env) if env is not None else None, timeout=self.timeout_s)
        if r.returncode != 0 or not r.stdout.strip().isdigit():
            raise TestbedError(f"could not start {argv[0]}: {r.stderr.strip() or r.stdout.strip()}")
        return int(r.stdout.strip())
