"""Before a run: where its trace goes, and the record of its inputs. Checked on rank 0 before anything is
written, so bad input leaves no file behind."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hpcps.config.errors import ConfigError
from hpcps.io.outputs import check_output
from hpcps.trace.metadata import RunInfo, new_run_id

RUNS_DIR = Path("results") / "runs"


def default_trace_path(run_id: str) -> Path:
    return RUNS_DIR / run_id / "trace.h5"


def check_trace_path(path: Path, flag: str = "--trace", inputs: Iterable[str | Path | None] = ()) -> Path:
    """Raise ConfigError unless a trace file can be created at path (its folders may not exist yet).

    A trace is never written over an existing file (a trace is the record of a run; and an input of
    the command given by mistake is never replaced), see hpcps.io.outputs."""
    return check_output(path, flag, inputs=inputs, replace=False, example="trace.h5")


def _read_text(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), None, f"file not found (given with {flag})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), None, f"cannot read it ({flag}): {e}") from None


def build_run_info(*, job, schedule, argv: list[str], job_path: Path, schedule_path: Path | None,
                   cluster_path: Path | None, run_id: str | None = None) -> RunInfo:
    """The inputs as given. job_path and schedule_path are files that have been read successfully."""
    job_toml = _read_text(job_path, "--job")
    schedule_toml = _read_text(schedule_path, "--schedule") if schedule_path else ""
    cluster_toml = _read_text(cluster_path, "--cluster") if cluster_path else ""
    return RunInfo(run_id=run_id or new_run_id(job.name), argv=tuple(argv), job_path=str(job_path),
                   job_toml=job_toml, schedule_path=str(schedule_path or ""), schedule_toml=schedule_toml,
                   schedule_effective_toml=schedule.to_toml(), cluster_path=str(cluster_path or ""),
                   cluster_toml=cluster_toml)
