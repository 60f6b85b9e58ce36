"""A throw-away Slurm on this machine: munged, slurmctld and one slurmd per fake node, all on localhost.

Every file lives in one scratch directory (config, munge key and socket, state, spool, logs, the
jobcomp file); every daemon is started here in the foreground and stopped by its recorded process id.
Nothing under /etc, /run or /var is touched, so it runs beside a real Slurm or munge.

The fake nodes take the names and sizes of a cluster file's nodes (CPUs from ``cores``, memory from
``memory_gb``, GPUs as a counted ``gres/gpu`` without device files, the node type as a feature), so
``scontrol show node`` looks like the cluster the file describes.

On a testbed (``testbed=CLUSTER_FILE``, hpcps.testbed, docs/testbed.md) each slurmd runs in its
node's network namespace, with the node's address and its name as host name, so job steps start their
ranks on the nodes and the ranks talk through the shaped links. slurmctld and munged stay on this
machine's side; the nodes reach slurmctld through the testbed's link to this machine (an address of the
testbed's own subnet), commands here reach it there too.

Needs root and Debian's ``slurm-wlm`` and ``munge`` (``make slurm-deps``). By hand::

    python -m tests.slurm.local_cluster              # start, print SLURM_CONF, stop on Ctrl-C
    python -m tests.slurm.local_cluster --testbed    # the same with every slurmd on a testbed node
    export SLURM_CONF=/tmp/hpcps-slurm-XXXX/slurm.conf MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp
    sinfo; sbatch --nodes=2 --ntasks=4 slurm/train.sh jobs/default.toml
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CLUSTER = ROOT / "jobs" / "clusters" / "hetero8.toml"
DAEMONS = ("munged", "slurmctld", "slurmd")


@dataclass(frozen=True)
class FakeNode:
    name: str
    cpus: int = 2
    memory_mb: int = 4000
    gpus: int = 0
    features: tuple[str, ...] = ()


def nodes_from_cluster_file(path: Path = DEFAULT_CLUSTER) -> list[FakeNode]:
    """Fake nodes named and sized like a cluster file's nodes; n1..n8 with 2 CPUs if it cannot be read."""
    try:
        from hpcps.cluster import load_cluster
        cluster = load_cluster(path)
    except Exception:   # the file or its loader may not exist yet in a partial checkout
        return [FakeNode(f"n{i}") for i in range(1, 9)]
    return [FakeNode(n.name, cpus=n.type.cores,
                     # Slurm counts MiB; cluster files count 10^9 bytes.
                     memory_mb=round(n.type.memory_gb * 1e9 / 2**20) if n.type.memory_gb else 4000,
                     gpus=n.type.gpus, features=(n.type.name,))
            for n in cluster.nodes]


def missing_requirements() -> str | None:
    """Why a local Slurm cannot start here, or None when it can."""
    missing = [d for d in DAEMONS + ("sbatch", "srun", "scontrol", "scancel") if shutil.which(d) is None
               and not Path("/usr/sbin", d).exists()]
    if missing:
        return (f"Slurm is not installed (missing {', '.join(missing)}): "
                "run 'make slurm-deps' (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        return "the local test Slurm runs its daemons as root; run the Slurm tests as root"
    return None


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _fake_device(path: Path) -> None:
    """A character device like /dev/null, which is what slurmd wants a GPU's file to be."""
    if path.exists():
        return
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError:   # no CAP_MKNOD: slurmd logs an error but still counts the GPU
        path.touch()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies (a killed test run must
    not leave daemons behind). Linux only; elsewhere a no-op."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _first_job_id() -> int:
    """A job id base that differs between bring-ups (tenths of a second, modulo well under Slurm's
    default MaxJobId of 67043328, leaving room for the jobs of one test session)."""
    return 1000 + int(time.time() * 10) % 60_000_000


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class LocalSlurm:
    """Start with start(), stop with stop() (also as a context manager).

    ``env`` is os.environ plus SLURM_CONF: pass it to every Slurm command and to code under test.
    ``testbed``: a cluster file whose testbed the daemons of the nodes run on (brought up by start(), taken
    down by stop(); its nodes must be the fake nodes), ``testbed_name`` its name.
    """
    nodes: list[FakeNode]
    scratch: Path | None = None
    testbed: Path | None = None
    testbed_name: str = field(default_factory=lambda: f"s{os.getpid() % 10**8}")
    plan: object = None                  # hpcps.testbed.plan.TestbedPlan while the testbed is up
    partition: str = "debug"
    kill_wait_s: int = 2
    env: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    bringup_s: float | None = None
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _own_scratch: bool = False

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    @property
    def conf(self) -> Path:
        return self.scratch / "slurm.conf"

    @property
    def jobcomp(self) -> Path:
        return self.scratch / "jobcomp.txt"

    def log(self, name: str) -> Path:
        return self.scratch / "log" / f"{name}.log"

    # ---- configuration -------------------------------------------------------------------------------

    def write_config(self) -> None:
        s = self.scratch
        for d in ("munge", "state", "log", "spool", "tmp"):
            (s / d).mkdir(parents=True, exist_ok=True)
        (s / "munge").chmod(0o755)   # munged refuses a socket directory others cannot read
        key = s / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for n in self.nodes:
            (s / "spool" / f"slurmd-{n.name}").mkdir(exist_ok=True)
            (s / "tmp" / n.name).mkdir(exist_ok=True)
        ctl_port, *node_ports = _free_ports(1 + len(self.nodes))
        host = socket.gethostname()
        ctl_addr = self.plan.host_address if self.plan is not None else "127.0.0.1"
        lines = [
            "# Written by tests/slurm/local_cluster.py: a throw-away Slurm on localhost.",
            "ClusterName=hpcps-local",
            f"SlurmctldHost={host}({ctl_addr})",
            f"SlurmctldPort={ctl_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={s / 'munge' / 'munge.socket'}",
            f"StateSaveLocation={s / 'state'}",
            # Job ids unique across bring-ups: MPI names its shared-memory segments after the job and
            # step, and a step killed in an earlier bring-up can leave a segment behind in /dev/shm
            # that a new job 1 would collide with ("Shared memory error" at MPI_Init).
            f"FirstJobId={_first_job_id()}",
            f"SlurmdSpoolDir={s / 'spool' / 'slurmd-%n'}",
            f"SlurmctldPidFile={s / 'slurmctld.pid'}",
            f"SlurmdPidFile={s / 'spool' / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.log('slurmctld')}",
            f"SlurmdLogFile={s / 'log' / 'slurmd-%n.log'}",
            # PMI steps across fake nodes sharing one host need a per-node TmpFS.
            f"TmpFS={s / 'tmp' / '%n'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            # Fake nodes claim more CPUs and memory than this machine has: trust the configuration.
            "SlurmdParameters=config_overrides",
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
            "MpiDefault=none",
            "MinJobAge=3600",
            f"KillWait={self.kill_wait_s}",
            "ReturnToService=2",
            "InactiveLimit=0",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp}",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
        ]
        if any(n.gpus for n in self.nodes):
            lines.append("GresTypes=gpu")
        for n, port in zip(self.nodes, node_ports):
            where = (f"NodeHostname={n.name} NodeAddr={self.plan.node(n.name).address}" if self.plan is not None
                     else "NodeHostname=localhost NodeAddr=127.0.0.1")
            spec = f"NodeName={n.name} {where} Port={port} CPUs={n.cpus} RealMemory={n.memory_mb}"
            if n.gpus:
                spec += f" Gres=gpu:{n.gpus}"
            if n.features:
                spec += f" Feature={','.join(n.features)}"
            lines.append(spec)
        lines.append(f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")
        # The gpu plugin drops GPUs without a device file: give each fake GPU an empty file instead.
        gres = []
        for n in self.nodes:
            if n.gpus:
                (s / "dev").mkdir(exist_ok=True)
                for i in range(n.gpus):
                    _fake_device(s / "dev" / f"{n.name}-gpu{i}")
                gres.append(f"NodeName={n.name} Name=gpu File={s / 'dev' / n.name}-gpu[0-{n.gpus - 1}]")
        (s / "gres.conf").write_text("\n".join(gres) + "\n")
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        # Jobs inherit this environment. MPICH's UCX netmod exchanges 4 KB business cards at MPI_Init,
        # which PMI cuts into segments whose requests can overflow the line Slurm's pmi2 plugin reads:
        # for some lengths of the command line (the test's temporary path) every trial of a test failed
        # at MPI_Init ("mpi/pmi2: value not properly terminated in client request", exit 15 or 134),
        # even with UCX limited to self, sm and tcp. OFI exchanges just its address (docs/slurm.md).
        self.env.setdefault("MPIR_CVAR_CH4_NETMOD", "ofi")
        self.env.setdefault("FI_PROVIDER", "tcp")
        self.env.setdefault("UCX_TLS", "self,sm,tcp")        # for an MPI built with UCX only
        if self.plan is not None:
            # Ranks of different nodes over TCP through the links; the training sees the testbed.
            from hpcps.testbed.plan import rank_environment
            self.env.update(rank_environment(self.plan))
        # A Slurm command run inside a test must never fall back to another cluster's config.
        for var in ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_STEP_ID", "SLURM_NODELIST", "SLURM_JOB_NODELIST"):
            self.env.pop(var, None)

    # ---- daemons -------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.log(name + "-stdio"), "ab")
        try:
            p = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            log.close()
        self._procs.append(p)
        self.pids[name] = p.pid

    def _check_alive(self) -> None:
        for p in self._procs:
            if p.poll() is not None:
                name = next(k for k, v in self.pids.items() if v == p.pid)
                raise RuntimeError(f"{name} exited with status {p.returncode} while the local Slurm was starting; "
                                   f"see {self.scratch / 'log'}:\n{self._log_tails()}")

    def _log_tails(self) -> str:
        out = []
        for f in sorted((self.scratch / "log").glob("*.log")):
            tail = f.read_text(errors="replace").splitlines()[-8:]
            out.append(f"--- {f.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def start(self, timeout_s: float = 60.0) -> LocalSlurm:
        why = missing_requirements()
        if why:
            raise RuntimeError(why)
        if self.scratch is None:
            self.scratch = Path(tempfile.mkdtemp(prefix="hpcps-slurm-"))
            self._own_scratch = True
        t0 = time.monotonic()
        if self.testbed is not None:
            from hpcps.cluster import load_cluster
            from hpcps.testbed import control, default_dilation
            cluster = load_cluster(self.testbed)
            missing = sorted(set(self.node_names) - set(cluster.names))
            if missing:
                raise RuntimeError(f"fake nodes {', '.join(missing)} are not nodes of {self.testbed}")
            self.plan = control.up(cluster, self.testbed_name, default_dilation(cluster), from_host=True)
        self.write_config()
        m = self.scratch / "munge"
        try:
            self._spawn("munged", [_which("munged"), "--foreground", "--force", f"--socket={m / 'munge.socket'}",
                                   f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                                   f"--log-file={self.log('munged')}", f"--seed-file={m / 'munged.seed'}",
                                   "--num-threads=2"])
            self._wait(lambda: (m / "munge.socket").exists(), timeout_s, "munged to open its socket")
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._wait(self._controller_answers, timeout_s, "slurmctld to answer")
            for n in self.nodes:
                slurmd = [_which("slurmd"), "-D", "-N", n.name, "-f", str(self.conf)]
                if self.plan is not None:
                    # In the node's network namespace, under the node's name (nsenter, unshare, sh and slurmd
                    # exec each other: one process id, which stop() signals). nsenter rather than `ip netns
                    # exec`, which mounts a /sys of its own without /sys/fs/cgroup, where slurmd will not start.
                    slurmd = ["nsenter", f"--net=/run/netns/{self.plan.node(n.name).netns}", "unshare", "--uts",
                              "sh", "-c", 'hostname "$1" && shift && exec "$@"', "sh", n.name, *slurmd]
                self._spawn(f"slurmd-{n.name}", slurmd)
            self._wait(self._nodes_idle, timeout_s, f"nodes {','.join(self.node_names)} to be idle")
        except BaseException:
            self.stop()
            raise
        self.bringup_s = time.monotonic() - t0
        return self

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while not ready():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}; logs:\n{self._log_tails()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def scontrol(self, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def _controller_answers(self) -> bool:
        return self.scontrol("ping").stdout.count("is UP") > 0

    def _nodes_idle(self) -> bool:
        from hpcps.slurm.parse import parse_nodes
        r = self.scontrol("show", "node", "-o")
        if r.returncode != 0:
            return False
        nodes = {n.name: n for n in parse_nodes(r.stdout)}
        return all(name in nodes and nodes[name].state.upper().startswith("IDLE")
                   and "*" not in nodes[name].state and "DRAIN" not in nodes[name].state.upper()
                   for name in self.node_names)

    # ---- tear-down -----------------------------------------------------------------------------------

    def step_daemon_pids(self) -> list[int]:
        """slurmstepd processes of this cluster (found by the SLURM_CONF in their environment)."""
        found = []
        marker = f"SLURM_CONF={self.conf}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                comm = (entry / "comm").read_text().strip()
                if comm != "slurmstepd":
                    continue
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def stop(self) -> None:
        """Cancel every job, stop every daemon this object started (by pid) and remove the scratch directory."""
        if self.pids.get("slurmctld") and self._procs and all(p.poll() is None for p in self._procs):
            try:
                subprocess.run(["scancel", "--full", "--quiet", "--partition", self.partition], env=self.env,
                               capture_output=True, timeout=10)
                deadline = time.monotonic() + self.kill_wait_s + 8
                while self.step_daemon_pids() and time.monotonic() < deadline:
                    time.sleep(0.1)
            except (OSError, subprocess.SubprocessError):
                pass
        # slurmds first (they are what the step daemons report to), then the controller, then munge.
        controller_and_munge = (self.pids.get("slurmctld"), self.pids.get("munged"))
        order = sorted(self._procs, key=lambda p: 0 if p.pid not in controller_and_munge
                       else (1 if p.pid == self.pids.get("slurmctld") else 2))
        for p in order:
            self._terminate(p)
        if self.scratch is not None:
            for pid in self.step_daemon_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._procs.clear()
        if self.plan is not None or self.testbed is not None:
            from hpcps.testbed import control
            control.down(self.testbed_name)
            self.plan = None
        if self._own_scratch and self.scratch is not None and self.scratch.exists():
            shutil.rmtree(self.scratch, ignore_errors=True)

    @staticmethod
    def _terminate(p: subprocess.Popen, grace_s: float = 5.0) -> None:
        if p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.slurm.local_cluster",
                                description="Start a throw-away Slurm on localhost; "
                                            "Ctrl-C stops it and removes its files.")
    p.add_argument("--cluster", type=Path, default=DEFAULT_CLUSTER,
                   help="cluster file whose nodes become fake Slurm nodes (default: jobs/clusters/hetero8.toml)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs) after stopping")
    p.add_argument("--testbed", action="store_true",
                   help="run every slurmd in its node's namespace on a testbed of the cluster (docs/testbed.md)")
    args = p.parse_args(argv)
    why = missing_requirements()
    if why:
        print(f"local_cluster: error: {why}", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="hpcps-slurm-")) if args.keep else None
    slurm = LocalSlurm(nodes_from_cluster_file(args.cluster), scratch=scratch,
                       testbed=args.cluster if args.testbed else None)
    try:
        slurm.start()
        print(f"Slurm is up in {slurm.bringup_s:.2f} s with nodes {','.join(slurm.node_names)}.\n"
              f"    export SLURM_CONF={slurm.conf} MPIR_CVAR_CH4_NETMOD={slurm.env['MPIR_CVAR_CH4_NETMOD']} "
              f"FI_PROVIDER={slurm.env['FI_PROVIDER']}\n"
              f"Logs and the jobcomp file are under {slurm.scratch}. Ctrl-C stops it.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        slurm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
