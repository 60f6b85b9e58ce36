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


def _obs(iterations, ranks):
    """Observations of ranks [(rank, node, server)], each iteration, with times that tell them apart."""
    from hpcps.tune.observations import empty
    rows = empty(len(iterations) * len(ranks))
    i = 0
    for it in iterations:
        for rank, node, server in ranks:
            r = rows[i]
            r["iteration"], r["rank"], r["node"], r["server"], r["batch"] = it, rank, node, server, 4
            r["compute_s"] = 1.0 + it + 10 * rank
            r["pull_s"] = 0.1 * (it + 1) + rank
            r["push_s"] = 0.2 * (it + 1) + rank
            r["aggregate_s"] = 0.01 * it if server else 0.0
            i += 1
    return rows


def test_the_network_fit_takes_a_row_per_iteration_or_per_trial_on_big_clusters():
    from hpcps.tune.models.network import _mean_over_iterations, _stack
    servers, workers = np.array([True, False, False]), np.array([False, True, True])
    # ranks 0 and 1 on node 1, rank 2 on node 2; node 0 serves (rank 3)
    obs = _obs([0, 1, 2], [(0, 1, False), (1, 1, False), (2, 2, False), (3, 0, True)])
    mean = _mean_over_iterations(obs)
    assert list(mean["rank"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(mean["compute_s"], [2.0, 12.0, 22.0, 32.0])
    np.testing.assert_allclose(mean["pull_s"], [0.2, 1.2, 2.2, 3.2])
    np.testing.assert_allclose(mean["push_s"], [0.4, 1.4, 2.4, 3.4])
    np.testing.assert_allclose(mean["aggregate_s"], [0.0, 0.0, 0.0, 0.01])
    per_it = _stack([(servers, workers, obs)], 3)
    assert per_it[0].shape == (3, 3) and per_it[6] is None
    # node 1's compute sums its two ranks; pulls and pushes take the slowest rank's
    np.testing.assert_allclose(per_it[2][0], [31.0, 1.0 + 11.0, 21.0])
    np.testing.assert_allclose(per_it[4][0], [3.1, 1.1, 2.1])
    np.testing.assert_allclose(per_it[5][1], [3.4, 1.4, 2.4])
    np.testing.assert_allclose(per_it[3][2], [0.02, 0.0, 0.0])
    per_trial = _stack([(servers, workers, obs)], 3, max_rows=2)        # 3 iterations > 2 rows: averaged
    assert per_trial[0].shape == (1, 3)
    np.testing.assert_allclose(per_trial[2][0], [32.0, 2.0 + 12.0, 22.0])
    np.testing.assert_allclose(per_trial[4][0], [3.2, 1.2, 2.2])
    # more trials than rows: the newest kept
    many = _stack([(servers, workers, _obs([k], [(0, 1, False), (3, 0, True)])) for k in range(4)], 3, max_rows=3)
    assert many[2].shape == (3, 3)
    np.testing.assert_allclose(many[2][:, 1], [2.0, 3.0, 4.0])
    assert _stack([(servers, workers, None), (servers, workers, _obs([], []))], 3) is None
    pb = np.array([0.0, 5.0, 5.0])
    given = _stack([(servers, workers, obs, pb)], 3)
    np.testing.assert_array_equal(given[6], [pb, pb, pb])
    import pytest
    with pytest.raises(ValueError, match=r"^give push bytes for every trial or for none$"):
        _stack([(servers, workers, obs, pb), (servers, workers, obs)], 3)
