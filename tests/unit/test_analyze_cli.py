"""hpcps.analyze against bad traces and bad outputs: one line, exit status 2, and no file written or
replaced; and a comparison with a trace that holds no iteration yet."""

import shutil

import h5py
import numpy as np
import pytest

from hpcps.analyze.__main__ import main as analyze_main
from hpcps.trace import open_trace
from hpcps.trace.metadata import RunInfo
from hpcps.trace.writer import TraceWriter
from tests.unit.test_trace_file import write_trace
from tests.unit.trace_synth import Model, build


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.h5"
    write_trace(path)
    return path


def analyze(capsys, *args):
    try:
        code = analyze_main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code, err, *words):
    assert code == 2 and err.count("\n") == 1 and err.startswith("hpcps.analyze: error: "), err
    for w in words:
        assert w in err, err


def killed_before_its_first_flush(path):
    _events, _transfers, _rows, shards, ranks = build(Model())
    w = TraceWriter(path, RunInfo(run_id="early"), ranks=ranks, shards=shards, versions={}, t0_unix_s=0.0, attrs={})
    w.file.flush()
    w.file.close()


def test_comparing_with_a_trace_that_has_no_iteration(tmp_path, good, capsys):
    early = tmp_path / "early.h5"
    killed_before_its_first_flush(early)
    assert open_trace(early).iterations.size == 0
    code, out, err = analyze(capsys, good, early, "--json", tmp_path / "c.json")
    assert code == 0, err
    assert "early.h5" in out and "good.h5" in out and "best" in out


@pytest.mark.parametrize("flag", ["--json", "--chrome"])
def test_an_output_never_replaces_the_trace_it_reads(tmp_path, good, capsys, flag):
    before = good.read_bytes()
    code, _, err = analyze(capsys, good, flag, good)
    one_line(code, err, flag, "is also an input of this command")
    assert good.read_bytes() == before
    alias = tmp_path / "sub" / ".." / good.name
    (tmp_path / "sub").mkdir()
    code, _, err = analyze(capsys, good, flag, alias)
    one_line(code, err, "is also an input")
    assert good.read_bytes() == before


def test_existing_outputs_are_replaced_whole(tmp_path, good, capsys):
    out = tmp_path / "a.json"
    out.write_text("old")
    code, _, _ = analyze(capsys, good, "--json", out, "--chrome", tmp_path / "c.json")
    assert code == 0 and out.read_text().startswith("{")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _damaged(tmp_path, good, how):
    path = tmp_path / f"{how}.h5"
    shutil.copy(good, path)
    with h5py.File(path, "r+") as f:
        if how == "group":
            del f["events"]
            f.create_group("events")
        elif how == "scalar":
            del f["transfers"]
            f["transfers"] = 3.0
        elif how == "nan":
            ev = f["events"][...]
            ev["t_end"][4] = np.nan
            f["events"][...] = ev
        elif how == "far":
            it = f["iterations"][...]
            it["t_start"][2] = 1e12
            f["iterations"][...] = it
        elif how == "version-text":
            f.attrs["schema_version"] = "1"
        elif how == "ranks-text":
            f.attrs["n_ranks"] = "four"
        elif how == "phase":                    # a plain integer column, no longer an HDF5 enum
            ev = f["events"][...]
            ev = ev.astype([(n, "u1" if n == "phase" else ev.dtype[n]) for n in ev.dtype.names])
            ev["phase"][0] = 200
            del f["events"]
            f["events"] = ev
        elif how == "bytes":
            tr = f["transfers"][...]
            tr["nbytes"][0] = -1
            f["transfers"][...] = tr
        elif how in ("peer", "shard"):          # a rank or a shard the trace does not have
            tr = f["transfers"][...]
            tr[how][0] = 99
            f["transfers"][...] = tr
        elif how == "server":
            sh = f["shards"][...]
            sh["server"][0] = 99
            f["shards"][...] = sh
        elif how == "gap":                      # shards of 100 parameters each, 1000 parameters in all
            sh = f["shards"][...]
            sh["start"] = 100 * np.arange(len(sh))
            sh["stop"] = sh["start"] + 100
            f["shards"][...] = sh
            f.attrs["n_params"] = 1000
        elif how == "batch-attr":
            f.attrs["global_batch"] = np.nan
        elif how == "metrics":
            f.attrs["final_metrics"] = '{"test_accuracy": 0.9'
    return path


@pytest.mark.parametrize("how, words", [
    ("group", "'/events' is a group, not a dataset of records"),
    ("scalar", "dataset '/transfers' is not a table of records"),
    ("nan", "dataset '/events' row 4: t_end is nan, not a finite time"),
    ("far", "dataset '/iterations' row 2: t_start is 1000000000000.0, not a finite time (within 1e+09 s)"),
    ("version-text", "the root attribute 'schema_version' is '1', not an integer"),
    ("ranks-text", "the root attribute 'n_ranks' is 'four'"),
    ("phase", "phase is 200, not one of"),
    ("bytes", "dataset '/transfers': a negative nbytes"),
    ("peer", "dataset '/transfers' row 0: peer 99 is not in /ranks"),
    ("shard", "dataset '/transfers' row 0: shard 99 is not in /shards"),
    ("server", "dataset '/shards' row 0: server 99 is not in /ranks"),
    ("gap", "do not cut the"),
    ("batch-attr", "the root attribute 'global_batch' is nan, not a count"),
    ("metrics", "the root attribute 'final_metrics' is '{\"test_accuracy\": 0.9', not a JSON object of numbers"),
])
def test_damaged_traces_are_one_line_and_nothing_is_written(tmp_path, good, capsys, how, words):
    bad = _damaged(tmp_path, good, how)
    plots, js = tmp_path / "plots", tmp_path / "a.json"
    code, out, err = analyze(capsys, good, bad, "--plot", plots, "--json", js)
    one_line(code, err, str(bad), words)
    assert not plots.exists() and not js.exists()


def test_outputs_that_cannot_be_created_are_refused_first(tmp_path, good, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for flag in ("--json", "--chrome", "--plot"):
        code, out, err = analyze(capsys, good, flag, blocker / "x")
        one_line(code, err, flag, "is not a directory")
        assert out == ""
    code, _, err = analyze(capsys, good, "--plot", blocker)
    one_line(code, err, "--plot", "exists and is not a directory")


def test_figures_of_traces_with_the_same_name_do_not_replace_each_other(tmp_path, capsys):
    a, b = tmp_path / "x" / "run" / "trace.h5", tmp_path / "y" / "run" / "trace.h5"
    for p in (a, b):
        p.parent.mkdir(parents=True)
        write_trace(p)
    code, _, err = analyze(capsys, a, b, "--plot", tmp_path / "p")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["run-trace-1", "run-trace-2"]
