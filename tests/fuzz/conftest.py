"""Hypothesis settings of the fuzz tests: derandomized (the same examples on every run, so a failure in
CI is a failure here), no example database, and a deadline per example on top of the hard time bound
each test sets itself (tests/fuzz/harness.py). The deadline is generous: the machine running the
suite may be shared, and the first example of a test pays for imports; a hang is caught by the time
limits of harness.time_limit instead."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "hpcps-fuzz",
    derandomize=True,
    database=None,
    deadline=30000,               # ms per example
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.load_profile("hpcps-fuzz")
