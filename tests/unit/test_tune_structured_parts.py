"""Parts of hpcps.tune.models.structured.StructuredModel checked on their own: the update a server
spends on one worker's push under asp."""

from __future__ import annotations

import numpy as np

from hpcps.tune.models.structured import StructuredModel
from hpcps.tune.space import decode_many
from tests.unit.test_tune_models import slownet, spread  # noqa: F401 - slownet is a fixture


def test_one_push_costs_an_update_with_one_worker_and_its_share_of_the_decoding(slownet):  # noqa: F811
    _cluster, _job, _profiles, problem = slownet
    model = StructuredModel(problem)
    for codecs, servers in (([1] * 5, (0, 1)), ([0, 1, 1, 2, 2], (0, 1, 2, 3, 4)), ([0] * 5, (2,))):
        d = decode_many(problem.space, spread(problem, codecs, servers)[None])
        m = d.servers.sum(1)
        w = d.workers.sum(1, keepdims=True)
        update = model.aggregate.predict(problem.model_bytes / m, np.ones(1))
        decode = model.codecs.decode_s(d)
        want = np.where(d.servers, update + decode / w, 0.0)
        got = model._apply_one(d)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert (got[d.servers] > 0).all() and not got[~d.servers].any()
        if any(codecs):
            assert (decode[d.servers] > 0).all()
