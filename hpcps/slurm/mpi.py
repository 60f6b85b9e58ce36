"""Which ``srun --mpi=`` plugin the installed MPI needs.

The MPICH wheel talks PMI-2 to srun (``--mpi=pmi2``); Open MPI 5 needs PMIx (``--mpi=pmix``). The
library is recognised from mpi4py's ``MPI.Get_library_version()``, which MPI allows before MPI_Init.
HPCPS_SRUN_MPI overrides the guess (e.g. ``pmix`` for an MPICH built with PMIx, ``none``).

    python -m hpcps.slurm.mpi      # prints the plugin name; slurm/train.sh uses it
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

ENV_OVERRIDE = "HPCPS_SRUN_MPI"
DEFAULT_PLUGIN = "pmi2"


def plugin_for_library(version: str) -> str:
    """The srun MPI plugin for an MPI library version string (pure)."""
    v = version.lower()
    if "open mpi" in v or "openmpi" in v:
        return "pmix"
    # MPICH and its derivatives (Intel MPI, MVAPICH, Cray MPICH) speak PMI-2 to Slurm.
    return "pmi2"


def library_version() -> str | None:
    """The MPI library's version string, without initialising MPI; None if mpi4py cannot load."""
    try:
        import mpi4py
        mpi4py.rc.initialize = False
        mpi4py.rc.finalize = False
        from mpi4py import MPI
        return MPI.Get_library_version()
    except Exception:   # no mpi4py, or no MPI library behind it: the default plugin is the best guess
        return None


def srun_mpi_plugin(environ: Mapping[str, str] | None = None, version: str | None = None) -> str:
    """HPCPS_SRUN_MPI if set, else the plugin for the installed (or given) MPI library."""
    override = (os.environ if environ is None else environ).get(ENV_OVERRIDE, "").strip()
    if override:
        return override
    version = version if version is not None else library_version()
    return plugin_for_library(version) if version else DEFAULT_PLUGIN


def main() -> int:
    print(srun_mpi_plugin())
    return 0


if __name__ == "__main__":
    sys.exit(main())
