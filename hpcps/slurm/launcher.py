"""Run tuning trials through Slurm: as srun steps inside an allocation, or as their own sbatch jobs.

See the package docstring (hpcps/slurm/__init__.py) for the interface. Every Slurm command goes
through a SlurmClient (or a fake with the same methods), so this module is tested without Slurm.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal as signals
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from hpcps.failure import error_line, first_task_exit_code, output_tail, task_ended
from hpcps.slurm.client import SlurmClient, SlurmError
from hpcps.slurm.mpi import srun_mpi_plugin
from hpcps.slurm.parse import (
    SlurmParseError,
    classify_state,
    format_time_limit,
    normalize_state,
    parse_duration,
    parse_exit_code,
)
from hpcps.slurm.script import ALLOCATION_SHAPE_VARS, TrialJob, format_command, srun_argv

if TYPE_CHECKING:
    from subprocess import Popen  # started by the client; here only followed

log = logging.getLogger(__name__)


def _first_task_code(code: int | None, tail: Sequence[str]) -> int | None:
    """A failed run's exit code: that of the task that exited first with one, where srun's output names
    it (srun's own status, and so the batch job's, is the highest of all tasks', the ones it stopped
    after the first had died included); else code."""
    first = first_task_exit_code(tail)
    return first if code and first else code


class TrialStatus(StrEnum):
    PENDING = "PENDING"        # waiting for nodes
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"    # ended with exit code 0
    FAILED = "FAILED"          # non-zero exit, a signal, a node failure, or Slurm could not start it
    TIMEOUT = "TIMEOUT"        # ran past its time limit (ours or Slurm's) and was stopped
    CANCELLED = "CANCELLED"    # cancel() or someone's scancel

    @property
    def done(self) -> bool:
        return self not in (TrialStatus.PENDING, TrialStatus.RUNNING)


@dataclass(frozen=True)
class TrialState:
    """What poll() says of a trial. exit_code and signal are set once it has ended (when known)."""
    status: TrialStatus
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    slurm_id: str | None = None       # "12" for a batch job, "12.3" for a step
    elapsed_s: float | None = None

    @property
    def done(self) -> bool:
        return self.status.done

    @property
    def ok(self) -> bool:
        return self.status is TrialStatus.COMPLETED


@dataclass
class TrialHandle:
    """A submitted trial. Treat as opaque; the fields are for logs and tests."""
    trial_dir: Path
    mode: str                          # "step" or "job"
    job_name: str
    time_limit_s: float | None
    output: Path                       # the trial's stdout and stderr (and srun's messages)
    submitted_at: float                # launcher clock
    job_id: str | None = None          # the batch job, or the allocation a step runs in
    step_id: str | None = None         # "12.3" once Slurm shows the step
    process: Popen | None = None       # the srun Popen of a step
    started_at: float | None = None    # launcher clock when first seen running
    stop_reason: str | None = None     # why we stopped it: set by cancel() or the time limit
    stop_status: TrialStatus | None = None
    stop_sent_at: float | None = None
    final: TrialState | None = None
    last_status: TrialStatus = TrialStatus.PENDING
    query_failures: int = 0            # Slurm queries that failed in a row

    @property
    def slurm_id(self) -> str | None:
        return self.step_id if self.mode == "step" else self.job_id

    @property
    def job(self) -> str:
        """job_id, which submit() sets: the batch job, or the allocation a step runs in."""
        assert self.job_id is not None, "a submitted trial has a job id"
        return self.job_id

    @property
    def srun(self) -> Popen:
        """The srun process of a step."""
        assert self.process is not None, "a step has its srun process"
        return self.process


_NAME_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class TrialLauncher:
    """Submits trials, follows them, enforces their time limits and cancels them.

    mode: "step" (srun job steps; needs an allocation), "job" (one sbatch job per trial), or "auto":
    steps when SLURM_JOB_ID is set in environ, else jobs.
    mpi: the srun --mpi plugin (default: hpcps.slurm.mpi.srun_mpi_plugin(); "none" leaves it out).
    slurm_margin_s: Slurm's own time limit is ours plus this, rounded up to minutes: a backstop in case
    the launcher itself dies; normally the launcher stops a trial first and says why.
    kill_grace_s: after asking a step's srun to stop, how long before it is killed.
    max_query_failures: a job whose state Slurm fails to report this many polls in a row is FAILED;
    fewer failures leave its last known state (a controller may be busy or restarting).
    """

    def __init__(self, client: SlurmClient | None = None, *, mode: str = "auto", mpi: str | None = None,
                 partition: str | None = None, account: str | None = None, exclusive: bool = True,
                 extra_sbatch: Sequence[tuple[str, str | None]] = (), slurm_margin_s: float = 60.0,
                 kill_grace_s: float = 30.0, max_query_failures: int = 30,
                 environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic):
        self.client = client or SlurmClient()
        environ = dict(os.environ if environ is None else environ)
        if mode == "auto":
            mode = "step" if environ.get("SLURM_JOB_ID") else "job"
        if mode not in ("step", "job"):
            raise ValueError(f"mode must be 'auto', 'step' or 'job', got {mode!r}")
        self.mode = mode
        self.allocation = environ.get("SLURM_JOB_ID") if mode == "step" else None
        if mode == "step" and not self.allocation:
            raise ValueError("mode 'step' needs an allocation (SLURM_JOB_ID is not set): run inside sbatch or salloc, "
                             "or use mode 'job'")
        plugin = mpi if mpi is not None else srun_mpi_plugin(environ)
        self.mpi = None if plugin == "none" else plugin
        self.partition, self.account, self.exclusive = partition, account, exclusive
        self.extra_sbatch = tuple(extra_sbatch)
        self.slurm_margin_s = slurm_margin_s
        self.kill_grace_s = kill_grace_s
        self.max_query_failures = max_query_failures
        self.clock = clock
        self._seq = itertools.count(1)

    # ---- submit --------------------------------------------------------------------------------------

    def submit(self, trial_dir: str | os.PathLike, command: Sequence[str], nodes: Sequence[str], ntasks: int,
               time_limit_s: float | None, env: Mapping[str, str] | None = None, *,
               rank_nodes: Sequence[str] | None = None, job_name: str | None = None) -> TrialHandle:
        """Start command as ntasks MPI ranks on nodes; returns at once with a handle for poll()/cancel().

        trial_dir is created; it receives the output (slurm.out), the host file, and for a job the
        batch script (job.sh). rank_nodes[i] (optional) is the node of rank i. env is added to the
        environment of every rank. time_limit_s counts from when the trial starts running
        (for a job: when Slurm starts it, not while it waits in the queue).
        """
        trial_dir = Path(trial_dir).resolve()
        trial_dir.mkdir(parents=True, exist_ok=True)
        base = _NAME_SAFE.sub("_", job_name or f"hpcps-{trial_dir.name}")[:40]
        name = f"{base}-{os.getpid()}-{next(self._seq)}" if self.mode == "step" else base
        slurm_time = (format_time_limit(time_limit_s + self.slurm_margin_s)
                      if time_limit_s is not None else None)
        trial = TrialJob(
            trial_dir=str(trial_dir), command=tuple(str(c) for c in command), nodes=tuple(nodes),
            ntasks=int(ntasks), time=slurm_time, job_name=name, mpi=self.mpi,
            env=tuple(sorted((str(k), str(v)) for k, v in (env or {}).items())),
            rank_nodes=tuple(rank_nodes or ()), partition=self.partition, account=self.account,
            exclusive=self.exclusive, extra_sbatch=self.extra_sbatch,
        )
        if trial.rank_nodes:
            Path(trial.hostfile_path).write_text(trial.hostfile_text())
        handle = TrialHandle(trial_dir=trial_dir, mode=self.mode, job_name=name, time_limit_s=time_limit_s,
                             output=Path(trial.output_path), submitted_at=self.clock())
        if self.mode == "job":
            script = trial_dir / "job.sh"
            script.write_text(trial.render_script())
            handle.job_id = self.client.sbatch(["sbatch", "--parsable", str(script)], cwd=str(trial_dir))
            log.info("trial %s: batch job %s", trial_dir, handle.job_id)
        else:
            argv = srun_argv(trial.srun_options(in_batch=False), trial.command)
            (trial_dir / "command.txt").write_text(format_command(argv) + "\n")
            handle.job_id = self.allocation
            handle.output.write_bytes(b"")
            handle.process = self.client.start_srun(argv, env=trial.step_env(), unset=ALLOCATION_SHAPE_VARS,
                                                    cwd=str(trial_dir), output=str(handle.output))
            log.info("trial %s: srun step %s in job %s", trial_dir, name, self.allocation)
        return handle

    # ---- poll ----------------------------------------------------------------------------------------

    def poll(self, handle: TrialHandle) -> TrialState:
        """The trial's state now. Also stops a trial that has run past its time limit (status becomes
        TIMEOUT once it has ended). A final state is returned only when the trial's processes are gone."""
        if handle.final is not None:
            return handle.final
        state = self._poll_step(handle) if handle.mode == "step" else self._poll_job(handle)
        if state.done:
            state = self._with_stop_reason(handle, state)
            handle.final = state
            log.info("trial %s: %s %s", handle.trial_dir, state.status.value, state.reason)
        return state

    def _elapsed(self, handle: TrialHandle) -> float | None:
        return None if handle.started_at is None else self.clock() - handle.started_at

    def _enforce_limit(self, handle: TrialHandle) -> None:
        elapsed = self._elapsed(handle)
        if (handle.time_limit_s is not None and elapsed is not None and elapsed > handle.time_limit_s
                and handle.stop_status is None):
            log.info("trial %s: %.1f s past its limit of %.1f s, stopping it", handle.trial_dir,
                     elapsed - handle.time_limit_s, handle.time_limit_s)
            try:
                self._stop(handle, TrialStatus.TIMEOUT, f"exceeded the trial time limit of {handle.time_limit_s:g} s")
            except SlurmError as e:   # try again at the next poll
                log.warning("trial %s: could not stop it: %s", handle.trial_dir, e)
                handle.stop_status = handle.stop_reason = handle.stop_sent_at = None

    def _query_failed(self, handle: TrialHandle, error: SlurmError) -> TrialState:
        """A Slurm query failed (a busy or restarting controller): report the last state seen, not done;
        after max_query_failures in a row, give up on the trial."""
        handle.query_failures += 1
        if handle.query_failures >= self.max_query_failures:
            return TrialState(TrialStatus.FAILED, reason=f"Slurm did not answer {handle.query_failures} times "
                              f"about this trial: {error}", slurm_id=handle.slurm_id, elapsed_s=self._elapsed(handle))
        log.warning("trial %s: %s (will ask again)", handle.trial_dir, error)
        return TrialState(handle.last_status, reason=f"Slurm did not answer: {error}", slurm_id=handle.slurm_id,
                          elapsed_s=self._elapsed(handle))

    def _poll_job(self, handle: TrialHandle) -> TrialState:
        try:
            rec = self.client.show_job(handle.job)
            if rec is None:
                return self._forgotten_job(handle)
        except SlurmError as e:
            return self._query_failed(handle, e)
        handle.query_failures = 0
        status = TrialStatus(classify_state(rec.get("JobState", "")))
        handle.last_status = status if not status.done else handle.last_status
        run_time = parse_duration(rec.get("RunTime", "")) if ":" in rec.get("RunTime", "") else None
        if status is TrialStatus.RUNNING and handle.started_at is None:
            handle.started_at = self.clock() - (run_time or 0.0)
        if not status.done:
            self._enforce_limit(handle)
            reason = rec.get("Reason", "")
            return TrialState(status, reason="" if reason in ("None", "(null)") else reason,
                              slurm_id=handle.job_id, elapsed_s=self._elapsed(handle))
        return self._final_from_record(handle, rec.get("JobState", ""), rec.get("ExitCode", ""),
                                       rec.get("Reason", ""), run_time)

    def _forgotten_job(self, handle: TrialHandle) -> TrialState:
        """The controller no longer shows the job (MinJobAge passed): ask accounting, then the jobcomp file."""
        for row in self.client.sacct(handle.job):
            if row.job_id == handle.job_id:
                return self._final_from_record(handle, row.state, row.exit_code, row.reason,
                                               parse_duration(row.elapsed) if ":" in row.elapsed else None)
        rec = self.client.jobcomp_record(handle.job)
        if rec is not None:
            return self._final_from_record(handle, rec.get("JobState", ""), rec.get("ExitCode", ""), "", None)
        return TrialState(TrialStatus.FAILED, reason=f"Slurm no longer knows job {handle.job_id} and keeps no "
                          "record of how it ended (no accounting, no jobcomp file)", slurm_id=handle.job_id)

    def _final_from_record(self, handle: TrialHandle, state: str, exit_code: str, reason: str,
                           elapsed: float | None) -> TrialState:
        status = TrialStatus(classify_state(state))
        code = sig = None
        try:
            code, sig = parse_exit_code(exit_code)
        except SlurmParseError:
            pass
        word = normalize_state(state)
        if status is TrialStatus.COMPLETED:
            why = ""
        elif status is TrialStatus.TIMEOUT:
            why = "Slurm's time limit" + (f" ({handle.time_limit_s:g} s asked)" if handle.time_limit_s else "")
        elif status is TrialStatus.CANCELLED:
            why = f"cancelled by Slurm ({state.strip()})"
        else:
            tail = output_tail(handle.output)
            code = _first_task_code(code, tail)
            parts = [] if word == "FAILED" else [word]
            if code:
                parts.append(f"exit code {code}")
            if sig:
                parts.append(f"signal {sig}")
            if reason and reason not in ("None", "(null)", "NonZeroExitCode"):
                parts.append(reason)
            detail = error_line(tail)
            why = ", ".join(parts)
            if detail:
                why = f"{why}: {detail}" if why else detail
        if elapsed is None and handle.started_at is not None:
            elapsed = self.clock() - handle.started_at
        return TrialState(status, exit_code=code, signal=sig or None, reason=why, slurm_id=handle.job_id,
                          elapsed_s=elapsed)

    def _find_step(self, handle: TrialHandle) -> None:
        try:
            steps = self.client.show_steps(handle.job_id)
        except SlurmError as e:
            log.warning("cannot list the steps of job %s: %s", handle.job_id, e)
            return
        for rec in steps:
            if rec.get("Name") == handle.job_name and rec.get("StepId"):
                handle.step_id = rec["StepId"]
                return

    def _poll_step(self, handle: TrialHandle) -> TrialState:
        proc = handle.srun
        rc = proc.poll()
        if rc is None:
            if handle.step_id is None:
                self._find_step(handle)
            if handle.started_at is None:
                # The step runs in our own allocation: its clock starts when srun does.
                handle.started_at = handle.submitted_at
            self._enforce_limit(handle)
            if (handle.stop_sent_at is not None and self.clock() - handle.stop_sent_at > self.kill_grace_s):
                log.warning("trial %s: srun still running %.0f s after being stopped; killing it",
                            handle.trial_dir, self.kill_grace_s)
                proc.kill()
            status = TrialStatus.RUNNING if handle.step_id else TrialStatus.PENDING
            return TrialState(status, slurm_id=handle.step_id, elapsed_s=self._elapsed(handle))
        tail = output_tail(handle.output)
        elapsed = self._elapsed(handle)
        sid = handle.step_id
        if rc == 0:
            return TrialState(TrialStatus.COMPLETED, exit_code=0, slurm_id=sid, elapsed_s=elapsed)
        code, sig = (rc, None) if rc > 0 else (None, -rc)
        if any("DUE TO TIME LIMIT" in ln for ln in tail):
            return TrialState(TrialStatus.TIMEOUT, exit_code=code, signal=sig, slurm_id=sid, elapsed_s=elapsed,
                              reason="Slurm's step time limit")
        cancelled = next((i for i, ln in enumerate(tail) if "CANCELLED AT" in ln), None)
        task_died = next((i for i, ln in enumerate(tail) if task_ended(ln)), None)
        # A rank that died first makes srun (--kill-on-bad-exit) cancel the rest: a failure, not a cancel.
        if cancelled is not None and handle.stop_status is None and not (task_died is not None
                                                                          and task_died < cancelled):
            return TrialState(TrialStatus.CANCELLED, exit_code=code, signal=sig, slurm_id=sid, elapsed_s=elapsed,
                              reason=f"cancelled by Slurm: {error_line(tail)}")
        code = _first_task_code(code, tail)
        what = f"exit code {code}" if code is not None else f"srun killed by signal {sig}"
        detail = error_line(tail)
        return TrialState(TrialStatus.FAILED, exit_code=code, signal=sig, slurm_id=sid, elapsed_s=elapsed,
                          reason=what + (f": {detail}" if detail else ""))

    def _with_stop_reason(self, handle: TrialHandle, state: TrialState) -> TrialState:
        """A trial we stopped ends as CANCELLED or FAILED in Slurm's eyes; report why we stopped it."""
        if handle.stop_status is None or state.status is TrialStatus.COMPLETED:
            return state
        return replace(state, status=handle.stop_status, reason=handle.stop_reason or state.reason)

    # ---- cancel and wait -----------------------------------------------------------------------------

    def cancel(self, handle: TrialHandle, reason: str = "cancelled by the tuner") -> None:
        """Stop a trial. It ends as CANCELLED with reason (poll() says so once its processes are gone)."""
        if handle.final is None and handle.stop_status is None:
            self._stop(handle, TrialStatus.CANCELLED, reason)

    def _stop(self, handle: TrialHandle, status: TrialStatus, reason: str) -> None:
        handle.stop_status, handle.stop_reason = status, reason
        handle.stop_sent_at = self.clock()
        if handle.mode == "job":
            self.client.scancel(handle.job)
            return
        if handle.srun.poll() is not None:
            return
        if handle.step_id is None:
            self._find_step(handle)
        if handle.step_id is not None:
            self.client.scancel(handle.step_id)
        else:
            # Not a step yet (srun waits for nodes): srun ends itself and any step it starts on SIGTERM.
            handle.srun.send_signal(signals.SIGTERM)

    def wait(self, handle: TrialHandle, poll_interval_s: float = 1.0, timeout_s: float | None = None,
             stop_requested: Callable[[], str | None] | None = None) -> TrialState:
        """poll() until the trial has ended (or timeout_s has passed: then its current state). While it runs,
        a reason from stop_requested() cancels it with that reason, and the wait goes on until it has ended."""
        deadline = None if timeout_s is None else self.clock() + timeout_s
        delay = min(0.2, poll_interval_s)
        while True:
            state = self.poll(handle)
            if state.done or (deadline is not None and self.clock() >= deadline):
                return state
            why = stop_requested() if stop_requested is not None and handle.stop_status is None else None
            if why:
                try:
                    self.cancel(handle, reason=why)
                except SlurmError as e:               # try again at the next poll
                    log.warning("could not cancel %s: %s", handle.trial_dir, e)
            time.sleep(delay)
            delay = min(delay * 2, poll_interval_s)
