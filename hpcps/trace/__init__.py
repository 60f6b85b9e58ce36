"""Profiling traces: what each rank did in every iteration, in one HDF5 file per run (docs/trace.md).

Recording (during training): TraceRecorder. Reading (afterwards, or while a run goes on): open_trace,
which returns a Trace whose events, transfers and iterations are NumPy structured arrays.
"""

from hpcps.trace.errors import TraceError
from hpcps.trace.reader import Trace, open_trace
from hpcps.trace.schema import DIRECTIONS, PHASES, SCHEMA_VERSION, TRANSFER_KINDS


def __getattr__(name):
    # The recorder pulls in MPI; readers of traces (the analysis, notebooks) should not need it.
    if name == "TraceRecorder":
        from hpcps.trace.recorder import TraceRecorder
        return TraceRecorder
    raise AttributeError(name)


__all__ = ["TraceError", "Trace", "open_trace", "TraceRecorder", "PHASES", "TRANSFER_KINDS", "DIRECTIONS",
           "SCHEMA_VERSION"]
