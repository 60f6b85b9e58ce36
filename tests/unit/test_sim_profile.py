import pytest

from hpcps.config import ConfigError
from hpcps.sim.profile import (
    DEFAULT_PROFILES,
    WorkloadProfile,
    _amdahl,
    _parallel_fraction,
    load_profiles,
    profile_for_job,
)
from hpcps.workloads import BUILTIN


def test_bundled_profiles_cover_every_builtin_workload(monkeypatch):
    monkeypatch.delenv("HPCPS_PROFILES", raising=False)
    p = load_profiles()
    assert p.source == str(DEFAULT_PROFILES)
    assert p.command.startswith("python benchmarks/calibrate_compute.py")
    for name in BUILTIN:
        w = p.workload(name)
        assert w.params > 0 and w.fixed_s >= 0 and w.per_sample_s > 0 and w.activation_bytes_per_sample > 0
        assert 0 <= w.fixed_parallel <= 1 and 0 <= w.per_sample_parallel <= 1 and w.oversubscription >= 0
    m = p.machine
    assert m.memcpy_bytes_per_s > 1e8 and m.aggregate_s_per_byte_per_worker > 0 and m.rank_overhead_bytes > 0
    assert m.update_cost("adam") > 0 and m.update_cost("sgd") > 0
    with pytest.raises(ConfigError, match="no compute profile for workload 'mine.module:f'"):
        p.workload("mine.module:f")


def test_digits_parameter_count_matches_the_model():
    p = load_profiles()
    digits = p.workload("digits")
    assert digits.params == 64 * 128 + 128 + 128 * 10 + 10
    assert profile_for_job(p, "digits", {"hidden": 128}, {"test_fraction": 0.3}) is digits
    bigger = profile_for_job(p, "digits", {"hidden": 256}, {"test_fraction": 0.2})
    assert bigger.params == 64 * 256 + 256 + 256 * 10 + 10
    assert bigger.per_sample_s == pytest.approx(digits.per_sample_s * bigger.params / digits.params)
    assert "scaled" in bigger.note


def test_amdahl():
    assert _parallel_fraction(1.0, 0.5) == 1.0
    assert _parallel_fraction(1.0, 1.0) == 0.0
    assert _parallel_fraction(1.0, 1.3) == 0.0          # slower with two threads: no parallel part
    assert _parallel_fraction(1.0, 0.75) == pytest.approx(0.5)
    assert _amdahl(0.5, 2) == pytest.approx(0.75)
    assert _amdahl(1.0, 0.5) == pytest.approx(2.0)      # half a core: twice as long
    assert _amdahl(0.0, 0.5) == pytest.approx(2.0)


def test_step_time_is_linear_in_the_batch():
    w = WorkloadProfile("w", 10, 2e-3, 1e-4, 0.3, 0.8, 0.1, 1.0)
    assert w.step_time(0, 1, 4, 1) == pytest.approx(2e-3)
    assert w.step_time(10, 1, 4, 1) - w.step_time(0, 1, 4, 1) == pytest.approx(1e-3)


@pytest.mark.parametrize("text, words", [
    (None, "not found"),
    ("x = 1\n", "not a compute profile file"),
    ("x = \n", "not a compute profile file"),
])
def test_bad_profile_files(tmp_path, text, words):
    path = tmp_path / "p.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_profiles(path)


def test_hpcps_profiles_names_the_file_read_unless_a_path_is_given(tmp_path, monkeypatch):
    own = tmp_path / "mine.toml"
    own.write_text(DEFAULT_PROFILES.read_text().replace(
        'command = "python benchmarks/calibrate_compute.py"',
        'command = "python benchmarks/calibrate_compute.py --out mine"'))
    monkeypatch.setenv("HPCPS_PROFILES", str(own))
    assert load_profiles().source == str(own) and load_profiles().command.endswith("--out mine")
    assert load_profiles(DEFAULT_PROFILES).source == str(DEFAULT_PROFILES)
    monkeypatch.setenv("HPCPS_PROFILES", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="missing.toml.*compute profiles not found"):
        load_profiles()


def _profile_with(tmp_path, old, new, count=1):
    text = DEFAULT_PROFILES.read_text()
    assert old in text
    path = tmp_path / "p.toml"
    path.write_text(text.replace(old, new, count))
    return path


@pytest.mark.parametrize("key, value, words", [
    # Each of these made hpcps.sim and the tuner's sim backend run forever.
    ("memcpy_bytes_per_s", "0", "key 'machine.memcpy_bytes_per_s': must be >= 1000000"),
    ("memcpy_bytes_per_s", "nan", "must be a finite number"),
    ("per_sample_s", "[nan, nan, nan]", "key 'workloads.digits.per_sample_s[0]': must be a finite number"),
    ("fixed_s", "[1e300, 1.0, 1.0]", "key 'workloads.digits.fixed_s[0]': must be >= 0 and <= 10000"),
    ("params", "0", "key 'workloads.digits.params': must be > 0"),
    ("threads", "[1, 4, 8]", "must list 1 and 2 threads"),
    ("cpus", "0", "key 'cpus': must be >= 1"),
])
def test_out_of_range_profiles_are_refused(tmp_path, key, value, words):
    import re
    text = DEFAULT_PROFILES.read_text()
    line = re.search(rf"^{key} = .*$", text, re.M).group(0)
    path = _profile_with(tmp_path, line, f"{key} = {value}")
    with pytest.raises(ConfigError) as e:
        load_profiles(path)
    assert str(e.value).startswith(str(path)) and words in str(e.value)
    assert "not a compute profile file" in str(e.value)


def test_a_broken_hpcps_profiles_says_where_it_came_from(tmp_path, monkeypatch):
    path = _profile_with(tmp_path, "[machine]", "[machine]\nbogus = 1")
    monkeypatch.setenv("HPCPS_PROFILES", str(path))
    with pytest.raises(ConfigError, match="named by HPCPS_PROFILES"):
        load_profiles()


def test_codec_costs_are_read_when_calibrated(tmp_path):
    enc, dec = load_profiles(DEFAULT_PROFILES).machine.codec_cost("int8")   # (0, 0) until calibrated
    assert enc >= 0 and dec >= 0
    own = tmp_path / "p.toml"
    own.write_text(DEFAULT_PROFILES.read_text().replace(
        "[machine]", '[machine]\ncodec_s_per_element = {"int8" = [3e-9, 1e-9], "sign" = [4e-9, 2e-9]}'))
    m = load_profiles(own).machine
    assert m.codec_cost("int8") == (3e-9, 1e-9) and m.codec_cost("sign") == (4e-9, 2e-9)
    assert m.codec_cost("none") == (0.0, 0.0)
    bad = tmp_path / "bad.toml"
    bad.write_text(DEFAULT_PROFILES.read_text().replace(
        "[machine]", '[machine]\ncodec_s_per_element = {"int8" = [3e-9]}'))
    with pytest.raises(ConfigError, match="machine.codec_s_per_element.int8"):
        load_profiles(bad)


def test_the_fixed_aggregation_cost_is_read_when_calibrated_and_zero_in_older_profiles(tmp_path):
    import re
    older = tmp_path / "older.toml"
    older.write_text(re.sub(r"^aggregate_fixed_s = .*\n", "", DEFAULT_PROFILES.read_text(), flags=re.M))
    assert load_profiles(older).machine.aggregate_fixed_s == 0.0
    own = _profile_with(tmp_path, "[machine]", "[machine]\naggregate_fixed_s = 7.5e-4")
    assert load_profiles(own).machine.aggregate_fixed_s == 7.5e-4
    for value, words in (("-1e-4", "must be >= 0"), ("nan", "must be a finite number"), ('"1ms"', "")):
        bad = _profile_with(tmp_path, "[machine]", f"[machine]\naggregate_fixed_s = {value}")
        with pytest.raises(ConfigError, match="machine.aggregate_fixed_s") as e:
            load_profiles(bad)
        assert words in str(e.value)


@pytest.mark.parametrize("field,value", [("forward_fraction", float("nan")), ("forward_fraction", 1.5),
                                         ("fixed_s", float("nan")), ("per_sample_s", -1e-3),
                                         ("per_sample_parallel", float("inf")), ("oversubscription", float("nan"))])
def test_a_profile_built_in_code_is_checked_too(field, value):
    """A NaN ready fraction never comes due: the simulator would wait for it for ever, so the profile
    refuses it where it is made."""
    good = dict(name="w", params=10, fixed_s=1e-3, per_sample_s=1e-4, fixed_parallel=0.5, per_sample_parallel=0.5,
                oversubscription=0.1, activation_bytes_per_sample=100.0)
    WorkloadProfile(**good)
    with pytest.raises(ValueError, match=f"workload profile w: {field} must be a finite number"):
        WorkloadProfile(**{**good, field: value})
