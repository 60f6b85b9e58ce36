"""A real trial's time from its trace (hpcps.tune.backends.common.read_trace): under bsp the mean of the
iteration rows past start-up; under ssp and asp one global batch at the workers' own rates."""

import time

import numpy as np
import pytest

from hpcps.tune.backends import common
from tests.unit.trace_synth import own_rate_trace


@pytest.mark.parametrize("sync", ["asp", "ssp"])
def test_trial_time_of_stale_runs_is_one_global_batch_at_the_workers_own_rates(monkeypatch, tmp_path, sync):
    """8 samples every 1 ms and every 4 ms: 16 samples take 1.6 ms. The iteration rows' median gap says
    1 ms (the fast worker's pace)."""
    tr = own_rate_trace(sync)
    monkeypatch.setattr("hpcps.trace.open_trace", lambda path: tr)
    monkeypatch.setattr("hpcps.tune.observations.from_trace", lambda cluster, trace, skip_iterations: np.zeros(0))
    res = common.read_trace(None, tmp_path / "trace.h5", 2, time.perf_counter())
    assert res.ok
    assert res.iteration_time_s == pytest.approx(1.6e-3, rel=1e-9)
    assert np.median(tr.iterations["time_s"]) == pytest.approx(1e-3)
