"""Trials through Slurm, on the nodes of the cluster itself. Each trial runs

    python -m hpcps.train --job J --cluster C --schedule S --trace TRIAL_DIR/trace.h5 --iterations K --quiet

as one MPI rank per schedule rank, placed on the schedule's nodes (rank i on the node of rank i of
NodeSchedule.to_rank_schedule()): inside an allocation (the tuner under sbatch or salloc) as an `srun` job
step, outside one as its own `sbatch` job (hpcps.slurm.TrialLauncher does either, with the MPI plugin the
installed MPI needs). The ranks find their node from Slurm (SLURMD_NODENAME), so a cluster file's node
names must be Slurm's: checked when the backend is made, against the allocation's nodes or, outside one,
against `scontrol show node`.

The trial's time and observations come from its trace, read as the local backend reads it. A trial that
fails, runs past --timeout or is cancelled is recorded with its reason (exit code and the program's last
error line, "timeout: exceeded the trial time limit of 600 s", "cancelled: ..."). Its directory keeps
what Slurm ran and said: slurm.out (every rank's output), command.txt (a step) or job.sh (a job), hostfile,
and slurm.json (the Slurm id of the step or job, its final state and reason).

Stopping: the tuning loop hands the backend a function that says when the tuner has been asked to stop
(SIGTERM from scancel or the job's time limit); the running trial is then cancelled and its result, cut
short, is not recorded. A trial cancelled by Slurm because the tuning job itself is ending stops the run
the same way.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from hpcps.cluster.description import Cluster
from hpcps.cluster.placement import NodeSchedule, write_node_schedule
from hpcps.config.errors import ConfigError
from hpcps.failure import mark_out_of_memory
from hpcps.slurm import SlurmError, TrialLauncher, TrialState, TrialStatus
from hpcps.slurm.launcher import TrialHandle
from hpcps.slurm.nodes import allocation_nodes, compress_hostlist, unknown_nodes
from hpcps.slurm.parse import SlurmParseError, parse_nodes
from hpcps.tune.backends.common import DEFAULT_ITERATIONS, SKIP, rank_env, read_trace, run_warnings, train_argv
from hpcps.tune.trials import Backend, Stop, StopRequested, TrialResult

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
CANCEL_WAIT_S = 120.0       # how long cancel() waits for a cancelled trial's processes to be gone


class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self, cluster: Cluster, job, job_path: Path, cluster_path: Path, *,
                 iterations: int = DEFAULT_ITERATIONS, timeout_s: float = 600.0, launcher: TrialLauncher | None = None,
                 python: str = sys.executable, env: Mapping[str, str] | None = None, skip: int = SKIP,
                 poll_interval_s: float = POLL_INTERVAL_S, environ: Mapping[str, str] | None = None):
        """environ: the environment to read the allocation from (default os.environ). Raises ConfigError when
        the cluster file names nodes Slurm (or this allocation) does not have, or Slurm cannot be asked."""
        self.cluster = cluster
        self.job = job
        self.job_path = Path(job_path).resolve()
        self.cluster_path = Path(cluster_path).resolve()
        self.iterations = iterations
        self.timeout_s = timeout_s
        self.python = python
        self.env = dict(env or {})
        self.skip = min(skip, max(0, iterations - 1))
        self.poll_interval_s = poll_interval_s
        environ = dict(os.environ if environ is None else environ)
        self.launcher = launcher or TrialLauncher(environ=environ)
        self._stop_requested: StopRequested = lambda: None
        self._running: list[TrialHandle] = []
        self.check_nodes(environ)

    # ---- set-up ----------------------------------------------------------------------------------------

    def check_nodes(self, environ: Mapping[str, str]) -> None:
        """Every node of the cluster file must be a node trials can run on."""
        names = list(self.cluster.names)
        if self.launcher.mode == "step":
            known = allocation_nodes(environ) or []
            where = (f"this allocation (job {self.launcher.allocation}, nodes {compress_hostlist(known) or 'none'}); "
                     f"submit the tuning job on the cluster file's nodes, e.g. sbatch --nodelist="
                     f"{compress_hostlist(names)}")
        else:
            try:
                known = [n.name for n in parse_nodes(self.launcher.client.show_nodes())]
            except (SlurmError, SlurmParseError) as e:
                raise ConfigError("--backend", None, f"slurm: cannot ask Slurm for its nodes: {e}") from None
            where = f"Slurm (scontrol show node: {compress_hostlist(known) or 'no nodes'})"
        missing = unknown_nodes(names, known)
        if missing:
            raise ConfigError(str(self.cluster_path), "nodes",
                              f"node(s) {compress_hostlist(missing)} of cluster {self.cluster.name!r} are not in "
                              f"{where}. The cluster file's node names must be Slurm's node names "
                              "(python -m hpcps.cluster --from-slurm writes a starting file)")

    def watch_stop(self, stop_requested: StopRequested) -> None:
        """stop_requested() says why the tuner is stopping, or None: checked at every poll of a trial."""
        self._stop_requested = stop_requested

    # ---- a trial ---------------------------------------------------------------------------------------

    def run_trial(self, trial_dir: Path, schedule: NodeSchedule, trial: int, sync: str | None = None) -> TrialResult:
        t0 = time.perf_counter()
        trial_dir = Path(trial_dir).resolve()
        sched_path = trial_dir / "schedule.toml"
        write_node_schedule(schedule, sched_path)
        trace_path = trial_dir / "trace.h5"
        rank_nodes = list(schedule.to_rank_schedule().rank_nodes)
        nodes = list(dict.fromkeys(rank_nodes))
        cmd = train_argv(self.python, self.job_path, self.cluster_path, sched_path, trace_path, self.iterations, sync)
        full = rank_env(extra=self.env)
        env = {k: full[k] for k in ("PYTHONPATH", "OMP_NUM_THREADS", *self.env)}
        try:
            handle = self.launcher.submit(trial_dir, cmd, nodes, len(rank_nodes), self.timeout_s, env,
                                          rank_nodes=rank_nodes, job_name=f"hpcps-trial-{trial:04d}")
        except SlurmError as e:
            return TrialResult(f"error: Slurm did not take the trial: {e}".splitlines()[0],
                               elapsed_s=time.perf_counter() - t0)
        self._running.append(handle)
        try:
            state = self.launcher.wait(handle, self.poll_interval_s, stop_requested=self._cancel_reason)
        finally:
            if handle.final is None:                 # interrupted (an exception, a signal): end it
                self._end(handle, "the tuner stopped while the trial ran")
            self._running.remove(handle)
        self._write_record(trial_dir, handle, state, nodes, len(rank_nodes))
        notes = (f"slurm {handle.mode} {state.slurm_id}",) if state.slurm_id else ()
        if state.ok:
            result = read_trace(self.cluster, trace_path, self.skip, t0)
            output = handle.output.read_text(errors="replace") if handle.output.exists() else ""
            return replace(result, notes=notes, warnings=run_warnings(output))
        if not self._stop_requested() and handle.stop_status is None and self._allocation_ending():
            raise Stop("the tuning job is ending")   # Slurm is cancelling us too: not the trial's fault
        return TrialResult(self.status_of(state, handle), trace_path=str(trace_path) if trace_path.exists() else None,
                           elapsed_s=time.perf_counter() - t0, notes=notes)

    def _cancel_reason(self) -> str | None:
        why = self._stop_requested()
        return f"the tuner was stopped ({why})" if why else None

    def status_of(self, state: TrialState, handle: TrialHandle) -> str:
        """trials.csv's status of a trial that did not complete."""
        reason = state.reason or state.status.value.lower()
        if state.status is TrialStatus.TIMEOUT:
            return f"timeout: {reason}"
        if state.status is TrialStatus.CANCELLED:
            return f"cancelled: {reason}"
        try:
            output = handle.output.read_text(errors="replace")
        except OSError:
            output = ""
        reason = mark_out_of_memory(reason, output)
        return reason if reason.startswith(("exit code", "out of memory")) else f"failed: {reason}"

    def _allocation_ending(self) -> bool:
        """Inside an allocation: whether Slurm is ending it (cancelled, past its time limit)."""
        if self.launcher.mode != "step" or self.launcher.allocation is None:
            return False
        try:
            rec = self.launcher.client.show_job(self.launcher.allocation)
        except SlurmError:
            return False
        return rec is None or rec.get("JobState", "RUNNING") != "RUNNING"

    def _write_record(self, trial_dir: Path, handle: TrialHandle, state: TrialState, nodes: list[str],
                      ntasks: int) -> None:
        record = {"mode": handle.mode, "job_id": handle.job_id, "slurm_id": state.slurm_id,
                  "job_name": handle.job_name, "nodes": compress_hostlist(nodes), "ntasks": ntasks,
                  "status": state.status.value, "reason": state.reason, "exit_code": state.exit_code,
                  "signal": state.signal, "elapsed_s": state.elapsed_s, "time_limit_s": handle.time_limit_s}
        try:
            (trial_dir / "slurm.json").write_text(json.dumps(record, indent=1) + "\n")
        except OSError as e:
            log.warning("could not write %s: %s", trial_dir / "slurm.json", e)

    # ---- stopping --------------------------------------------------------------------------------------

    def _end(self, handle: TrialHandle, reason: str) -> None:
        """Cancel a trial and wait (bounded) until its processes are gone."""
        try:
            self.launcher.cancel(handle, reason=reason)
        except SlurmError as e:
            log.warning("could not cancel %s: %s", handle.trial_dir, e)
        try:
            self.launcher.wait(handle, poll_interval_s=0.5, timeout_s=CANCEL_WAIT_S)
        except SlurmError as e:
            log.warning("could not follow %s to its end: %s", handle.trial_dir, e)

    def cancel(self) -> None:
        """Stop every trial still running and wait until its processes are gone."""
        for handle in list(self._running):
            if handle.final is None:
                self._end(handle, "the tuner stopped")
