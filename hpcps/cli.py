"""What every hpcps command-line tool shares: one error style (one line, exit status 2, from rank 0
only), argument errors from rank 0 only, and where the job and cluster files are."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from hpcps.config.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXIT_INPUT_ERROR = 2


class RankAwareParser(argparse.ArgumentParser):
    """argparse in the tools' error style: a bad flag is one line 'tool: error: ...' and exit status 2
    (no usage dump); under MPI only rank 0 prints, every rank exits."""

    def __init__(self, *args, rank: int = 0, tool: str | None = None, **kwargs):
        self.rank = rank
        super().__init__(*args, **kwargs)
        self.tool = tool or self.prog.removeprefix("python -m ")

    def _print_message(self, message, file=None):
        if self.rank == 0:
            super()._print_message(message, file)

    def error(self, message):
        report_error(self.tool, f"{message} (--help lists the options)", self.rank)
        sys.exit(EXIT_INPUT_ERROR)


def default_job_path() -> Path:
    """jobs/default.toml of the working directory if it has one, else the project's own."""
    local = Path("jobs/default.toml")
    return local if local.is_file() else PROJECT_ROOT / "jobs" / "default.toml"


def cluster_path(given: Path | None, job, required: bool = False) -> Path | None:
    """The cluster file of a command: --cluster as given, else the job's cluster key (relative to the
    working directory, then to the job file). Without either: None, or a ConfigError when required."""
    if given is not None:
        return Path(given)
    path = job.cluster_path()
    if path is None and required:
        raise ConfigError("--cluster", None,
                          f"no cluster: give --cluster FILE, or set cluster = \"FILE\" in {job.source}")
    return path


def report_error(tool: str, error: ConfigError | str, rank: int = 0) -> None:
    """'tool: error: <what>' on standard error, from rank 0 only."""
    if rank == 0:
        sys.stderr.write(f"{tool}: error: {error}\n")
        sys.stderr.flush()


def fail_input(tool: str, error: ConfigError | str, rank: int = 0) -> NoReturn:
    """Bad input: one line (rank 0), and every rank exits with status 2."""
    report_error(tool, error, rank)
    sys.exit(EXIT_INPUT_ERROR)


def run_tool(tool: str, body: Callable[[], int]) -> int:
    """body()'s exit status; a ConfigError raised anywhere in it is one line and SystemExit(2), as
    argparse does for a bad flag."""
    try:
        return body()
    except ConfigError as e:
        fail_input(tool, e)
    except BrokenPipeError:
        # The reader of our output left (| head): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
