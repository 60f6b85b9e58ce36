"""What ran: the inputs as given, software versions, and what each rank was.

RunInfo is filled by the command that starts the run (hpcps.train reads the files, so it knows their
text); rank_info() is filled on every rank. Node name and node type are inputs, because only the
cluster description knows which node a rank stands for: without one, the node is the host itself
and its type is "local".
"""

from __future__ import annotations

import os
import platform
import socket
import time
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    argv: tuple[str, ...] = ()
    job_path: str = ""
    job_toml: str = ""               # the job file's text as given ("" for a job built in code)
    schedule_path: str = ""          # "" when the job's [schedule] or the default schedule was used
    schedule_toml: str = ""          # the schedule file's text as given
    schedule_effective_toml: str = ""  # the schedule that ran, whatever its origin
    cluster_path: str = ""
    cluster_toml: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def to_dict(self) -> dict:
        return asdict(self)


def new_run_id(job_name: str) -> str:
    """Sortable by start time, unique enough for one machine: 20261124-035324-digits-1a2b."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in job_name)[:40] or "run"
    return f"{stamp}-{safe}-{os.getpid() & 0xFFFF:04x}"


def software_versions() -> dict[str, str]:
    import h5py
    import mpi4py
    import numpy
    import torch
    from mpi4py import MPI

    import hpcps
    vendor, (major, minor, micro) = MPI.get_vendor()
    return {
        "hpcps": hpcps.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": numpy.__version__, "mpi4py": mpi4py.__version__, "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version, "mpi_vendor": vendor, "mpi_version": f"{major}.{minor}.{micro}",
        "mpi_standard": "{}.{}".format(*MPI.Get_version()),
        "mpi_library": MPI.Get_library_version().strip().splitlines()[0] if MPI.Get_library_version() else "",
        "platform": platform.platform(),
    }


def role_name(is_server: bool, is_worker: bool) -> str:
    return {(False, False): "idle", (False, True): "worker", (True, False): "server",
            (True, True): "server+worker"}[(is_server, is_worker)]


def describe_device(device: str) -> str:
    if device != "cuda":
        return device
    import torch
    i = torch.cuda.current_device()
    return f"cuda:{i} {torch.cuda.get_device_name(i)}"


def rank_info(rank: int, *, is_server: bool, is_worker: bool, device: str, threads: int, batch: int,
              node_name: str | None = None, node_type: str | None = None) -> dict:
    host = socket.gethostname()
    return {"rank": rank, "host": host, "node_name": node_name or host, "node_type": node_type or "local",
            "role": role_name(is_server, is_worker), "device": describe_device(device), "threads": threads,
            "batch": batch, "pid": os.getpid()}
