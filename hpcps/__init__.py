"""hpcps: parameter-server training on heterogeneous clusters, and tuning of its schedule."""

__version__ = "0.1.0"
