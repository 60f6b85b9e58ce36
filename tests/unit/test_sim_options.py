"""hpcps.sim.SimOptions.check: each setting's bounds and the message that names it."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from hpcps.sim.engine import SimOptions

BAD = [
    (dict(iterations=0), "iterations must be >= 1, got 0"),
    (dict(noise_sigma=-0.1), "noise_sigma must be >= 0, got -0.1"),
    (dict(noise_sigma=math.inf), "noise_sigma must be >= 0, got inf"),
    (dict(noise_sigma=math.nan), "noise_sigma must be >= 0, got nan"),
    (dict(straggler_prob=-0.01), "straggler_prob must be in [0, 1], got -0.01"),
    (dict(straggler_prob=1.5), "straggler_prob must be in [0, 1], got 1.5"),
    (dict(straggler_slowdown=0.99), "straggler_slowdown must be >= 1, got 0.99"),
    (dict(straggler_slowdown=math.inf), "straggler_slowdown must be >= 1, got inf"),
    (dict(sharing="fair"), "sharing must be one of maxmin, equal, got 'fair'"),
    (dict(resolution_s=-1e-6), "resolution_s must be >= 0, got -1e-06"),
    (dict(resolution_s=math.nan), "resolution_s must be >= 0, got nan"),
    (dict(bucket_mb=0.0), "bucket_mb must be > 0, got 0.0"),
    (dict(bucket_mb=math.inf), "bucket_mb must be > 0, got inf"),
    (dict(codec="zip"), "codec must be one of none, fp16, bf16, int8, sign, topk, got 'zip'"),
    (dict(pull_codec="int8"), "pull_codec must be one of none, fp16, bf16, got 'int8'"),
    (dict(sync="bulk"), "sync must be one of bsp, ssp, asp, got 'bulk'"),
    (dict(sync="ssp", staleness=1001), "staleness must be an integer from 0 to 1000, got 1001"),
    (dict(sync="ssp", staleness=-1), "staleness must be an integer from 0 to 1000, got -1"),
    (dict(sync="ssp", staleness=2.0), "staleness must be an integer from 0 to 1000, got 2.0"),
    (dict(sync="ssp", staleness=True), "staleness must be an integer from 0 to 1000, got True"),
    (dict(sync="asp", staleness=2), "staleness applies to sync = 'ssp' only, got staleness = 2 with sync = 'asp'"),
    (dict(staleness=1), "staleness applies to sync = 'ssp' only, got staleness = 1 with sync = 'bsp'"),
]


@pytest.mark.parametrize("change, message", BAD, ids=[m.split(" ")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_each_bad_setting_is_named(change, message):
    with pytest.raises(ValueError) as e:
        replace(SimOptions(), **change).check()
    assert str(e.value) == message


@pytest.mark.parametrize("change", [
    dict(), dict(iterations=1), dict(noise_sigma=0.0), dict(straggler_prob=0.0), dict(straggler_prob=1.0),
    dict(straggler_slowdown=1.0), dict(sharing="equal"), dict(resolution_s=0.0), dict(resolution_s=None),
    dict(bucket_mb=1e-9), dict(codec="topk"), dict(pull_codec="bf16"), dict(sync="asp"),
    dict(sync="ssp", staleness=0), dict(sync="ssp", staleness=1000), dict(sync="ssp", staleness=np.int64(3)),
])
def test_the_edges_that_are_allowed(change):
    replace(SimOptions(), **change).check()
