"""Facts about the machine a benchmark ran on, for the header of its results file."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mpiexec() -> str:
    """The mpiexec beside this Python (the venv's MPI wheel), else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else "mpiexec"


def mpi_library() -> str:
    out = subprocess.run([sys.executable, "-c", "from mpi4py import MPI; print(MPI.Get_library_version())"],
                         capture_output=True, text=True, timeout=60).stdout
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    return lines[0] if lines else "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def facts() -> dict:
    import mpi4py
    import numpy
    import torch
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        dirty = [ln[3:] for ln in dirty if ln.strip()]
    except OSError:
        commit, dirty = "", []
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "nproc": os.cpu_count(),
            "cpu": cpu_model(), "kernel": platform.release(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__, "mpi4py": mpi4py.__version__,
            "mpi": mpi_library(), "commit": commit, "uncommitted_changes": dirty,
            "load_average_at_start": load_average()}


def facts_markdown(f: dict) -> str:
    rows = [("date", f["date"]), ("cores (nproc)", f["nproc"]), ("CPU", f["cpu"]), ("kernel", f["kernel"]),
            ("MPI", f["mpi"]), ("mpi4py / torch / numpy", f"{f['mpi4py']} / {f['torch']} / {f['numpy']}"),
            ("Python", f["python"]),
            ("git commit", (f["commit"] or "unknown")
             + (f" plus uncommitted changes to {', '.join(f['uncommitted_changes'])}"
                if f.get("uncommitted_changes") else "")),
            ("load average (1/5/15 min) at start / end",
             f"{f['load_average_at_start']} / {f.get('load_average_at_end', '')}")]
    return "\n".join(["| machine | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows])


def command_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
