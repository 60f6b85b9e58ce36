"""Hypothesis settings of the fuzz tests: derandomized (the same examples on every run, so a failure in
CI is a failure here), no example database, and a deadline per example on top of the hard time bound
each test sets itself (tests/fuzz/harness.py)."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "hpcps-fuzz",
    derandomize=True,
    database=None,
    deadline=5000,                # ms per example; a hang is caught sooner by harness.time_limit
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.load_profile("hpcps-fuzz")
