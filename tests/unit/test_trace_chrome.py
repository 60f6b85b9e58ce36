"""The Chrome trace-event export is sound: slices nest within each lane, every flow has both ends."""

import json

from hpcps.analyze.chrome import to_chrome, validate_chrome, write_chrome
from tests.unit.trace_synth import Model, trace


def test_export_of_a_synthetic_run_is_valid_and_complete(tmp_path):
    model = Model(servers=(0, 4), iterations=6)
    tr = trace(model)
    doc = to_chrome(tr)
    assert validate_chrome(doc) == []
    events = doc["traceEvents"]
    slices = [e for e in events if e["ph"] == "X"]
    assert {e["pid"] for e in slices} == set(tr.ranks["rank"].tolist())
    assert len(slices) == tr.events.size + tr.transfers.size
    flows = [e for e in events if e["ph"] in "sf"]
    assert len(flows) == tr.transfers.size          # one arrow per message, one end per row
    path = tmp_path / "t.json"
    write_chrome(doc, path)
    assert json.loads(path.read_text())["traceEvents"][0]["ph"] == "M"


def test_an_iteration_range_keeps_only_its_events():
    doc = to_chrome(trace(Model(iterations=6)), iterations=(2, 3))
    its = {e["args"]["iteration"] for e in doc["traceEvents"] if e["ph"] == "X"}
    assert its == {2, 3} and validate_chrome(doc) == []


def _doc(*events):
    meta = [{"ph": "M", "name": "process_name", "pid": p, "args": {"name": str(p)}} for p in (0, 1)]
    return {"traceEvents": meta + list(events)}


def x(pid, tid, ts, dur, name="a"):
    return {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name}


def test_the_checker_finds_overlapping_slices():
    assert validate_chrome(_doc(x(0, 0, 0, 10), x(0, 0, 2, 3), x(0, 0, 10, 5))) == []
    problems = validate_chrome(_doc(x(0, 0, 0, 10), x(0, 0, 5, 10, "b")))
    assert len(problems) == 1 and "overlaps" in problems[0]
    assert validate_chrome(_doc(x(0, 0, 0, 10), x(0, 1, 5, 10))) == []      # other lane: fine


def test_the_checker_finds_flows_without_both_ends_or_without_a_slice():
    s = {"ph": "s", "id": 1, "cat": "t", "pid": 0, "tid": 0, "ts": 1}
    f = {"ph": "f", "bp": "e", "id": 1, "cat": "t", "pid": 1, "tid": 0, "ts": 2}
    assert validate_chrome(_doc(x(0, 0, 0, 5), x(1, 0, 0, 5), s, f)) == []
    assert "1 start(s) and 0 end(s)" in validate_chrome(_doc(x(0, 0, 0, 5), s))[0]
    assert "lies in no slice" in validate_chrome(_doc(x(0, 0, 0, 5), x(1, 0, 3, 1), s, f))[0]
