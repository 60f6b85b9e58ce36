"""The step-costs file that emulated runs share (hpcps/emulate/step_costs.py)."""

import json

import pytest

from hpcps.config import ConfigError
from hpcps.emulate import step_costs


def test_a_missing_file_holds_nothing_and_the_first_timing_of_a_step_stands(tmp_path):
    path = tmp_path / "costs.json"
    assert step_costs.read(path) == {}
    assert step_costs.add(path, "w:1", {8: 0.010, 16: 0.018}) == {8: 0.010, 16: 0.018}
    # A later run's timings of the same steps do not replace them; a new batch size is added.
    assert step_costs.add(path, "w:1", {8: 0.007, 4: 0.006}) == {4: 0.006, 8: 0.010, 16: 0.018}
    # Another workload's steps are kept apart.
    step_costs.add(path, "v:2", {8: 0.5})
    assert step_costs.read(path) == {"w:1": {4: 0.006, 8: 0.010, 16: 0.018}, "v:2": {8: 0.5}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["costs.json", "costs.json.lock"]   # no temporary left
    doc = json.loads(path.read_text())
    assert doc["format"] == "hpcps step costs" and doc["version"] == 1


def test_nothing_new_leaves_the_file_untouched(tmp_path):
    path = tmp_path / "costs.json"
    step_costs.add(path, "w:1", {8: 0.01})
    before = path.stat().st_mtime_ns
    path.write_text(path.read_text())           # the same text, a known time
    stamp = path.stat().st_mtime_ns
    step_costs.add(path, "w:1", {8: 0.02})
    assert path.stat().st_mtime_ns == stamp and before <= stamp


def test_the_key_names_the_workload_and_its_options():
    a = step_costs.workload_key("digits", {"hidden": 64}, {"samples": 100})
    assert a == step_costs.workload_key("digits", {"hidden": 64}, {"samples": 100})
    assert a.startswith("digits:")
    assert a != step_costs.workload_key("digits", {"hidden": 128}, {"samples": 100})
    assert a != step_costs.workload_key("digits", {"hidden": 64}, {"samples": 200})
    assert a != step_costs.workload_key("charlm", {"hidden": 64}, {"samples": 100})


@pytest.mark.parametrize("text, words", [
    ("", "not JSON"),
    ("[1, 2]", "no \"format\""),
    ('{"format": "hpcps step costs", "version": 2, "steps": {}}', "key 'version': must be 1"),
    ('{"format": "hpcps step costs", "version": 1, "steps": []}', "key 'steps'"),
    ('{"format": "hpcps step costs", "version": 1, "steps": {"w": 3}}', "key 'steps.w': must be a table"),
    ('{"format": "hpcps step costs", "version": 1, "steps": {"w": {"0": 0.1}}}', "whole number >= 1"),
    ('{"format": "hpcps step costs", "version": 1, "steps": {"w": {"x": 0.1}}}', "whole number >= 1"),
    ('{"format": "hpcps step costs", "version": 1, "steps": {"w": {"8": NaN}}}', "finite number of seconds > 0"),
    ('{"format": "hpcps step costs", "version": 1, "steps": {"w": {"8": -1}}}', "finite number of seconds > 0"),
    ('{"format": "hpcps step costs", "version": 1, "steps": {"w": {"8": "1"}}}', "finite number of seconds > 0"),
    ('{"format": "hpcps step costs", "version": 1, "steps": {"w": {"8": true}}}', "finite number of seconds > 0"),
])
def test_a_file_that_is_not_one_is_refused_naming_it(tmp_path, text, words):
    path = tmp_path / "costs.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words) as e:
        step_costs.read(path)
    assert str(e.value).startswith(str(path))
    with pytest.raises(ConfigError):           # and nothing is added to it
        step_costs.add(path, "w", {8: 0.1})
    assert path.read_text() == text


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        step_costs.read(tmp_path)
