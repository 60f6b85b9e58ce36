"""The one place that runs Slurm's commands. Everything else in hpcps.slurm is pure.

Unit tests replace SlurmClient by a fake with the same methods (tests/unit/test_slurm_launcher.py).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpcps.slurm.parse import SACCT_FIELDS, SacctRow, parse_job_id, parse_record, parse_records, parse_sacct
from hpcps.slurm.script import format_command

log = logging.getLogger(__name__)


class SlurmError(RuntimeError):
    """A Slurm command failed or could not run; the message has the command line, status and stderr."""

    def __init__(self, argv: Sequence[str], message: str, returncode: int | None = None, stderr: str = ""):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        detail = f" (exit status {returncode})" if returncode is not None else ""
        tail = f": {stderr.strip()}" if stderr.strip() else ""
        super().__init__(f"{format_command(argv)}: {message}{detail}{tail}")


def _invalid_id(stderr: str) -> bool:
    # scontrol and sacct say this of a job or step Slurm no longer (or never) knew.
    s = stderr.lower()
    return "invalid job id" in s or "invalid job step id" in s or "not found" in s


class SlurmClient:
    """Runs sbatch, srun, scontrol, sacct and scancel as subprocesses.

    env: the environment for every command (default: os.environ at call time), e.g. with SLURM_CONF.
    timeout_s: how long one query may take before SlurmError; the controller answering slowly is an error,
    not a hang.
    """

    def __init__(self, env: Mapping[str, str] | None = None, timeout_s: float = 30.0):
        self.env = dict(env) if env is not None else None
        self.timeout_s = timeout_s
        self._accounting: bool | None = None
        self._config: dict[str, str] | None = None

    def _env(self, extra: Mapping[str, str] | None = None, unset: Sequence[str] = ()) -> dict[str, str]:
        env = dict(self.env if self.env is not None else os.environ)
        for name in unset:
            env.pop(name, None)
        env.update(extra or {})
        return env

    def run(self, argv: Sequence[str], *, check: bool = True, timeout_s: float | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess:
        """Run one Slurm command to completion (text output). SlurmError if it cannot start, times out,
        or (with check) exits non-zero."""
        argv = [str(a) for a in argv]
        log.debug("running %s", format_command(argv))
        try:
            r = subprocess.run(argv, capture_output=True, text=True, env=self._env(), cwd=cwd,
                               timeout=timeout_s or self.timeout_s, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise SlurmError(argv, f"{argv[0]} is not installed or not on PATH") from None
        except subprocess.TimeoutExpired:
            raise SlurmError(argv, f"no answer within {timeout_s or self.timeout_s:.0f} s") from None
        if check and r.returncode != 0:
            raise SlurmError(argv, "failed", r.returncode, r.stderr)
        return r

    # ---- jobs ----------------------------------------------------------------------------------------

    def sbatch(self, argv: Sequence[str], cwd: str | None = None) -> str:
        """Submit with an sbatch argument list (``sbatch [options] SCRIPT``); returns the job id."""
        argv = list(argv)
        if "--parsable" not in argv:
            argv.insert(1, "--parsable")
        return parse_job_id(self.run(argv, cwd=cwd).stdout)

    def show_job(self, job_id: str) -> dict[str, str] | None:
        """``scontrol show job -o ID`` as a dict; None once Slurm has forgotten the job."""
        r = self.run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        if r.returncode != 0:
            if _invalid_id(r.stderr):
                return None
            raise SlurmError(r.args, "failed", r.returncode, r.stderr)
        recs = parse_records(r.stdout)
        return recs[0] if recs else None

    def show_steps(self, job_id: str | None = None) -> list[dict[str, str]]:
        """Running steps (of one job, or all) from ``scontrol show step -o``."""
        argv = ["scontrol", "show", "step", "-o"] + ([f"{job_id}"] if job_id else [])
        r = self.run(argv, check=False)
        if r.returncode != 0:
            # "Job step 12. not found" (on stdout) while the job has no step yet.
            if _invalid_id(r.stderr + r.stdout) or "no job steps" in r.stderr.lower():
                return []
            raise SlurmError(argv, "failed", r.returncode, r.stderr)
        if "no job steps" in r.stdout.lower():
            return []
        return parse_records(r.stdout)

    def show_nodes(self) -> str:
        """Raw ``scontrol show node -o`` text (parse with parse.parse_nodes)."""
        return self.run(["scontrol", "show", "node", "-o"]).stdout

    def config(self) -> dict[str, str]:
        """``scontrol show config`` as {name: value} (cached)."""
        if self._config is None:
            out = self.run(["scontrol", "show", "config"]).stdout
            conf = {}
            for line in out.splitlines():
                name, sep, value = line.partition("=")
                if sep and name.strip() and " " not in name.strip():
                    conf[name.strip()] = value.strip()
            self._config = conf
        return self._config

    def has_accounting(self) -> bool:
        """Whether sacct can answer: an accounting storage other than none is configured."""
        if self._accounting is None:
            try:
                storage = self.config().get("AccountingStorageType", "accounting_storage/none")
            except SlurmError:
                storage = "accounting_storage/none"
            self._accounting = not storage.endswith("/none")
        return self._accounting

    def sacct(self, job_id: str) -> list[SacctRow]:
        """The job and its steps from ``sacct``; [] without accounting."""
        if not self.has_accounting():
            return []
        r = self.run(["sacct", "--parsable2", "--noheader", "--duplicates", "--jobs", str(job_id),
                      "--format=" + ",".join(SACCT_FIELDS)], check=False)
        if r.returncode != 0:
            log.warning("sacct failed for job %s: %s", job_id, r.stderr.strip())
            return []
        return parse_sacct(r.stdout)

    def jobcomp_record(self, job_id: str) -> dict[str, str] | None:
        """The job's line in the jobcomp/filetxt file, if that is how this cluster records jobs."""
        try:
            conf = self.config()
        except SlurmError:
            return None
        if not conf.get("JobCompType", "").endswith("/filetxt"):
            return None
        path = Path(conf.get("JobCompLoc", ""))
        if not path.is_file():
            return None
        found = None
        prefix = f"JobId={job_id} "
        with path.open(errors="replace") as f:
            for line in f:
                if line.startswith(prefix):
                    found = line   # the last line wins: a requeued job has several
        return parse_record(found) if found else None

    def scancel(self, job_or_step: str, *, signal: str | None = None, batch_only: bool = False) -> None:
        """Cancel (or signal) a job "12" or a step "12.3". Cancelling a finished job is not an error."""
        argv = ["scancel"]
        if signal:
            argv.append(f"--signal={signal}")
        if batch_only:
            argv.append("--batch")
        argv.append(str(job_or_step))
        r = self.run(argv, check=False)
        if r.returncode != 0 and not (_invalid_id(r.stderr) or "already completing" in r.stderr.lower()
                                      or "already completed" in r.stderr.lower()):
            raise SlurmError(argv, "failed", r.returncode, r.stderr)

    # ---- steps ---------------------------------------------------------------------------------------

    def start_srun(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, unset: Sequence[str] = (),
                   cwd: str | None = None, output: str | None = None) -> subprocess.Popen:
        """Start ``srun ...`` in the background (inside an allocation), with env added to and the
        variables in unset removed from the client's environment. srun's own messages and the step's
        output go to output (a file path, appended) or are dropped. Returns the Popen; its return code
        is the step's."""
        argv = [str(a) for a in argv]
        log.debug("starting %s", format_command(argv))
        out = open(output, "ab") if output else None
        try:
            return subprocess.Popen(argv, env=self._env(env, unset), cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=out or subprocess.DEVNULL,
                                    stderr=subprocess.STDOUT if out else subprocess.DEVNULL, start_new_session=True)
        except FileNotFoundError:
            raise SlurmError(argv, "srun is not installed or not on PATH") from None
        finally:
            if out is not None:
                out.close()
