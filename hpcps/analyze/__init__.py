"""Offline analysis of traces: python -m hpcps.analyze TRACE.h5 [...] (see docs/trace.md).

stats: the numbers (pure functions of a Trace); report: text tables; chrome: Chrome trace-event export
and its checker; plots: PNG figures.
"""
