"""What every hpcps command-line tool shares: argument errors from rank 0 only, and agreed exits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpcps.config.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class RankAwareParser(argparse.ArgumentParser):
    """argparse that prints usage and errors on rank 0 only; every rank still exits with status 2."""

    def __init__(self, *args, rank: int = 0, **kwargs):
        self.rank = rank
        super().__init__(*args, **kwargs)

    def _print_message(self, message, file=None):
        if self.rank == 0:
            super()._print_message(message, file)


def default_job_path() -> Path:
    """jobs/default.toml of the working directory if it has one, else the project's own."""
    local = Path("jobs/default.toml")
    return local if local.is_file() else PROJECT_ROOT / "jobs" / "default.toml"


def fail_input(tool: str, error: ConfigError | str, rank: int = 0) -> None:
    if rank == 0:
        sys.stderr.write(f"{tool}: error: {error}\n")
        sys.stderr.flush()
    sys.exit(2)
