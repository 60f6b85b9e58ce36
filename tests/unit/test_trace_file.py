"""Trace files: the writer's layout and self-description, reading back, partial files, and bad files."""

import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from hpcps.analyze.__main__ import main as analyze_main
from hpcps.trace import TraceError, open_trace
from hpcps.trace.metadata import RunInfo
from hpcps.trace.schema import DATASETS, DTYPES, SCHEMA_VERSION
from hpcps.trace.writer import TraceWriter
from tests.unit.trace_synth import Model, build

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def write_trace(path, model=None, close=True, blocks=2):
    events, transfers, _rows, shards, ranks = build(model or Model())
    info = RunInfo(run_id="r1", argv=("--job", "j.toml"), job_path="j.toml", job_toml="name = 'j'\n",
                   schedule_effective_toml="servers = [0]\n", cluster_path="c.toml", cluster_toml="name = 'c'\n")
    w = TraceWriter(path, info, ranks=ranks, shards=shards, versions={"hpcps": "0.1.0"}, t0_unix_s=1.5e9,
                    attrs={"job_name": "synthetic", "global_batch": 64})
    its = np.unique(events["iteration"])
    for i, part in enumerate(np.array_split(its, blocks)):
        final = close and i == blocks - 1
        w.append(events[np.isin(events["iteration"], part)], transfers[np.isin(transfers["iteration"], part)], final)
    if close:
        w.close(complete=True, attrs={"wall_s": 1.0})
    return events, transfers


def test_round_trip_keeps_every_row_and_the_inputs(tmp_path):
    path = tmp_path / "t.h5"
    events, transfers = write_trace(path, blocks=3)
    tr = open_trace(path)
    assert tr.complete and tr.run_id == "r1" and tr.attrs["wall_s"] == 1.0
    assert tr.events.size == events.size and tr.transfers.size == transfers.size
    assert np.array_equal(np.sort(tr.events["t_start"]), np.sort(events["t_start"]))
    assert tr.iterations["iteration"].tolist() == list(range(Model().iterations))
    assert np.all(tr.iterations["time_s"] > 0)
    # Summed iteration times span the run from the first start to the last end.
    assert tr.iterations["time_s"].sum() == pytest.approx(tr.iterations["t_end"][-1] - tr.iterations["t_start"][0])
    assert tr.meta["job_toml"] == "name = 'j'\n" and tr.meta["cluster_toml"] == "name = 'c'\n"
    assert tr.meta["argv"] == ["--job", "j.toml"] and tr.versions["hpcps"] == "0.1.0"
    assert tr.ranks["node_name"].tolist() == ["n0", "n1", "n2", "n3"]
    assert tr.rank_field("batch") == {0: 0, 1: 8, 2: 16, 3: 40}


def test_every_field_carries_units_and_meaning_and_enums_are_named(tmp_path):
    path = tmp_path / "t.h5"
    write_trace(path)
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        for name, (description, fields) in DATASETS.items():
            ds = f[name]
            assert ds.attrs["description"] == description
            assert set(ds.dtype.names) == set(fields)
            for field in fields:
                assert f"{field}.units" in ds.attrs and ds.attrs[f"{field}.meaning"]
        assert h5py.check_enum_dtype(f["events"].dtype["phase"])["compute"] == 3
        assert h5py.check_enum_dtype(f["transfers"].dtype["direction"]) == {"send": 0, "recv": 1, "local": 2}
    assert set(DTYPES) <= set(DATASETS)


def test_a_writer_that_dies_leaves_a_readable_partial_file(tmp_path):
    path = tmp_path / "t.h5"
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.unit.test_trace_file import write_trace
        write_trace({str(path)!r}, close=False, blocks=3)
        os._exit(0)     # no close: the file stays marked as open by its SWMR writer
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    tr = open_trace(path)
    assert not tr.complete and tr.attrs["status"] == "running"
    assert tr.iterations.size == Model().iterations - 1     # the last row waits for its successor
    assert analyze_main([str(path)]) == 0


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.h5"
    write_trace(path)
    return path


def bad_cases(tmp_path, good):
    text = tmp_path / "notes.h5"
    text.write_text("not a trace\n")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    newer = tmp_path / "newer.h5"
    newer.write_bytes(good.read_bytes())
    with h5py.File(newer, "r+") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    missing = tmp_path / "missing.h5"
    missing.write_bytes(good.read_bytes())
    with h5py.File(missing, "r+") as f:
        del f["transfers"]
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    field = tmp_path / "field.h5"
    with h5py.File(field, "w") as f:
        with h5py.File(good, "r") as g:
            f.attrs.update(g.attrs)
            for name in g:
                g.copy(g[name], f, name)
        data = f["events"][...]
        del f["events"]
        f["events"] = data[["rank", "iteration", "phase", "t_start"]]
    return {
        "not HDF5": (text, "not an HDF5 file"),
        "truncated": (truncated, "truncated HDF5 file"),
        "newer schema": (newer, f"trace schema version {SCHEMA_VERSION + 1}, but this hpcps reads version "
                                f"{SCHEMA_VERSION} (written by a newer hpcps: upgrade)"),
        "missing dataset": (missing, "missing dataset '/transfers'"),
        "not a trace": (foreign, "not an hpcps trace"),
        "missing field": (field, "dataset '/events' lacks field(s) t_end, batch, loss"),
        "no file": (tmp_path / "nothing.h5", "file not found"),
    }


CASES = ["not HDF5", "truncated", "newer schema", "missing dataset", "not a trace", "missing field", "no file"]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_trace_is_one_error_naming_the_file(tmp_path, good, case):
    path, words = bad_cases(tmp_path, good)[case]
    with pytest.raises(TraceError) as err:
        open_trace(path)
    assert str(err.value).startswith(f"{path}: ") and words in str(err.value)


@pytest.mark.parametrize("case", CASES)
def test_analyze_exits_2_with_one_line_and_writes_nothing(tmp_path, good, case, capsys):
    path, words = bad_cases(tmp_path, good)[case]
    out_dir, chrome = tmp_path / "plots", tmp_path / "t.json"
    with pytest.raises(SystemExit) as exit_:
        analyze_main([str(good), str(path), "--plot", str(out_dir)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"hpcps.analyze: error: {path}: ") and words in err
    assert not out_dir.exists() and not chrome.exists()


def test_analyze_command_line_usage_errors(good, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        analyze_main([str(good), str(good), "--chrome", str(tmp_path / "x.json")])
    assert exit_.value.code == 2 and "--chrome: exports one trace, got 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        analyze_main([str(good), "--range", "5"])
    assert exit_.value.code == 2 and "--range" in capsys.readouterr().err


def test_analyze_writes_plots_chrome_and_json(good, tmp_path, capsys):
    import json

    from hpcps.analyze.chrome import validate_chrome
    assert analyze_main([str(good), "--plot", str(tmp_path / "p"), "--chrome", str(tmp_path / "c.json"),
                         "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "Straggler: rank 3" in out
    for png in ("timeline", "breakdown", "throughput", "compute_vs_batch"):
        assert (tmp_path / "p" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    assert validate_chrome(json.loads((tmp_path / "c.json").read_text())) == []
    assert json.loads((tmp_path / "s.json").read_text())["straggler"]["rank"] == 3


def test_analyze_compares_several_traces(tmp_path, capsys):
    a, b = tmp_path / "a" / "trace.h5", tmp_path / "b" / "trace.h5"
    a.parent.mkdir(), b.parent.mkdir()
    write_trace(a, Model(compute_b=3e-4))
    write_trace(b)
    assert analyze_main([str(a), str(b), "--plot", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Traces compared") and str(a) in out and str(b) in out
    assert (tmp_path / "p" / "a-trace" / "timeline.png").exists() and (tmp_path / "p" / "b-trace").is_dir()


def test_analyze_json_on_standard_output_is_only_json(good, capsys):
    import json
    assert analyze_main([str(good), "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["run_id"] == "r1" and doc["critical_path"]


def test_staleness_rows_round_trip_and_old_files_without_them_read_as_none(tmp_path):
    from hpcps.analyze import report, stats
    from hpcps.trace.schema import empty
    events, transfers, _rows, shards, ranks = build(Model())
    info = RunInfo(run_id="s1")
    stale = empty("staleness", 6)
    stale["rank"], stale["iteration"] = [1, 1, 1, 2, 2, 2], [0, 1, 2, 0, 1, 2]
    stale["piece"], stale["staleness"] = 0, [0, 1, 2, 0, 0, 1]
    stale["version"] = stale["iteration"] - stale["staleness"]
    path = tmp_path / "s.h5"
    w = TraceWriter(path, info, ranks=ranks, shards=shards, versions={}, t0_unix_s=0.0,
                    attrs={"sync": "ssp", "staleness": 2})
    w.append(events, transfers, final=True, staleness=stale)
    w.close(complete=True)
    tr = open_trace(path)
    assert sorted(tr.staleness["staleness"].tolist()) == [0, 0, 0, 1, 1, 2]
    st = stats.staleness(tr)
    assert st["bound"] == 2 and st["workers"][1]["max"] == 2 and st["workers"][2]["histogram"] == {0: 2 / 3, 1: 1 / 3}
    assert "s = 2" in "\n".join(report.staleness_text(st))
    # A file written before the dataset existed
    old = tmp_path / "old.h5"
    write_trace(old)
    with h5py.File(old, "r+") as f:
        del f["staleness"]
    tr = open_trace(old)
    assert tr.staleness.size == 0
    assert "bsp" in report.staleness_text(stats.staleness(tr))[0]


def test_rows_appended_are_on_disk_for_another_process_while_the_writer_is_open(tmp_path):
    """Each append ends with a flush: a reader in another process (analyze on a running job, or what a
    killed run leaves) sees every row appended so far, not what HDF5 still holds in its caches."""
    path = tmp_path / "t.h5"
    events, transfers, _rows, shards, ranks = build(Model())
    w = TraceWriter(path, RunInfo(run_id="live"), ranks=ranks, shards=shards, versions={}, t0_unix_s=0.0, attrs={})
    try:
        first = np.isin(events["iteration"], [0, 1, 2, 3])
        w.append(events[first], transfers[np.isin(transfers["iteration"], [0, 1, 2, 3])])
        code = textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(ROOT)!r})
            from hpcps.trace import open_trace
            tr = open_trace({str(path)!r})
            print(tr.events.size, tr.transfers.size, tr.iterations.size, tr.attrs["status"])
        """)
        out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True)
        n_events, n_transfers, n_iterations, status = out.stdout.split()
        assert int(n_events) == int(first.sum()) > 0
        assert int(n_transfers) == int(np.isin(transfers["iteration"], [0, 1, 2, 3]).sum()) > 0
        assert int(n_iterations) == 3           # the fourth row waits for the next block's first start
        assert status == "running"
    finally:
        w.close(complete=False)


@pytest.mark.parametrize("value, words", [
    ("abc", "HPCPS_TRACE_CLOCK_SKEW_S: must be a number of seconds, got 'abc'"),
    ("nan", "HPCPS_TRACE_CLOCK_SKEW_S: must be a finite number >= -1000 and <= 1000, got nan"),
    ("1e9", "HPCPS_TRACE_CLOCK_SKEW_S: must be >= -1000 and <= 1000, got 1000000000.0"),
])
def test_a_clock_skew_that_is_no_number_of_seconds_is_refused_before_the_run(tmp_path, monkeypatch, value, words):
    # hpcps.train checks it with the trace's path, before anything is written (every rank reads it
    # when it starts recording: 'abc' was a traceback there, nan made every time of the trace nan).
    from hpcps.config import ConfigError
    from hpcps.train import build_parser, plan_trace, resolve_inputs
    args = build_parser().parse_args(["--trace", str(tmp_path / "t.h5")])
    launch = resolve_inputs(args, 2)
    monkeypatch.setenv("HPCPS_TRACE_CLOCK_SKEW_S", value)
    with pytest.raises(ConfigError) as e:
        plan_trace(args, launch.job, launch.schedule, [])
    assert str(e.value) == words and not (tmp_path / "t.h5").exists()
    monkeypatch.setenv("HPCPS_TRACE_CLOCK_SKEW_S", " 0.5 ")
    assert plan_trace(args, launch.job, launch.schedule, [])[0] == tmp_path / "t.h5"
