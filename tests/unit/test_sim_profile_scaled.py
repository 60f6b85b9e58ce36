"""WorkloadProfile.scaled's arithmetic (parameters, sequence length) and count_parameters, for built-in
and custom workloads."""

import sys
import types

import pytest

from hpcps.sim.profile import WorkloadProfile, count_parameters, load_profiles, profile_for_job

BASE = WorkloadProfile("w", 100, 2e-3, 1e-4, 0.3, 0.8, 0.1, 1000.0, (("hidden", 8),),
                       (("seq_len", 10), ("x", 1)), "as measured", 0.4)


def test_scaled_by_parameters_and_sequence_length():
    s = BASE.scaled(300, {"hidden": 24, "a": 1}, {"x": 2, "seq_len": 20})      # factor 3 x 2
    assert s.name == "w" and s.params == 300
    assert s.fixed_s == pytest.approx(12e-3) and s.per_sample_s == pytest.approx(6e-4)
    assert s.activation_bytes_per_sample == pytest.approx(6000.0)
    assert (s.fixed_parallel, s.per_sample_parallel, s.oversubscription, s.forward_fraction) == (0.3, 0.8, 0.1, 0.4)
    assert s.model == (("a", 1), ("hidden", 24)) and s.data == (("seq_len", 20), ("x", 2))
    assert s.note == "scaled from the calibrated options (100 parameters) by a factor 6"


@pytest.mark.parametrize("data", [{"x": 2}, {"seq_len": 0}])
def test_without_a_sequence_length_only_the_parameters_count(data):
    s = BASE.scaled(25, {}, data)
    assert s.fixed_s == pytest.approx(0.5e-3) and s.per_sample_s == pytest.approx(0.25e-4)
    assert s.activation_bytes_per_sample == pytest.approx(250.0)
    assert s.note == "scaled from the calibrated options (100 parameters) by a factor 0.25"
    assert s.model == () and s.data == tuple(sorted(data.items()))


def test_a_profile_without_a_sequence_length_ignores_the_jobs():
    plain = WorkloadProfile("w", 100, 2e-3, 1e-4, 0.3, 0.8, 0.1, 1000.0)
    s = plain.scaled(300, {}, {"seq_len": 64})
    assert s.fixed_s == pytest.approx(6e-3) and s.note.endswith("by a factor 3")
    assert plain.scaled(100, {}, {}).note.endswith("by a factor 1") and plain.scaled(100, {}, {}).fixed_s == 2e-3


def test_charlm_scales_with_its_sequence_length():
    p = load_profiles()
    charlm = p.workload("charlm")
    longer = profile_for_job(p, "charlm", dict(charlm.model), {**dict(charlm.data), "seq_len": 128})
    assert longer.params == charlm.params
    assert longer.per_sample_s == pytest.approx(2 * charlm.per_sample_s)


def test_count_parameters_of_a_builtin_is_counted_from_its_architecture():
    assert count_parameters("digits", {"hidden": 32}, {}) == 64 * 32 + 32 + 32 * 10 + 10


def test_count_parameters_of_a_custom_workload_builds_its_model(monkeypatch):
    import torch
    seen = []

    class Tiny:
        def __init__(self, model, data, seed):
            seen.append((dict(model), dict(data)))
            self.width = model["width"]

        def build_model(self):
            m = torch.nn.Sequential(torch.nn.Linear(3, self.width), torch.nn.Linear(self.width, 2))
            m[0].bias.requires_grad_(False)          # frozen: not trained, not exchanged
            return m

    module = types.ModuleType("hpcps_test_tiny_workload")
    module.factory = Tiny
    monkeypatch.setitem(sys.modules, "hpcps_test_tiny_workload", module)
    n = count_parameters("hpcps_test_tiny_workload:factory", {"width": 5}, {"rows": 7})
    assert n == 3 * 5 + 5 * 2 + 2
    assert seen == [({"width": 5}, {"rows": 7})]
