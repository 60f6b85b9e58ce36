"""hpcps.analyze on traces damaged value by value and in structure, in-process: a summary (exit 0) or one
line and exit 2 with nothing written; never a traceback, never a hang."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcps.analyze.__main__ import main as analyze_main
from tests.fuzz.harness import assert_clean, run_main
from tests.unit.test_trace_file import write_trace
from tests.unit.trace_synth import Model

DATASETS = ("events", "transfers", "iterations", "shards", "ranks")
NUMBERS = [0, -1, 1, 7, 2**31 - 1, -(2**31), 255, 1e300, -1e300, math.nan, math.inf, -math.inf, 1e-300, 0.5, 1e9]
TEXT = st.text(st.characters(blacklist_characters="\x00"), max_size=6)     # HDF5 strings hold no NUL
ATTR_VALUES = st.one_of(st.sampled_from(NUMBERS), TEXT, st.booleans(),
                        st.lists(st.integers(-3, 3), max_size=3).map(np.array))


@pytest.fixture(scope="module")
def good():
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "good.h5"
        write_trace(path, Model(iterations=6))
        yield path


def damage(f: h5py.File, data) -> None:
    how = data.draw(st.sampled_from(["value", "value", "value", "rows", "attr", "drop-attr", "structure"]),
                    label="how")
    name = data.draw(st.sampled_from(DATASETS), label="dataset")
    if how == "attr":
        key = data.draw(st.sampled_from(["schema_version", "n_ranks", "status", "run_id", "created", "t0_unix_s",
                                         "global_batch", "job_name"]), label="attr")
        f.attrs[key] = data.draw(ATTR_VALUES, label="attr value")
        return
    if how == "drop-attr":
        del f.attrs[data.draw(st.sampled_from(sorted(f.attrs)), label="attr")]
        return
    if how == "structure":
        del f[name]
        kind = data.draw(st.sampled_from(["group", "scalar", "text", "matrix"]), label="kind")
        if kind == "group":
            f.create_group(name)
        elif kind == "scalar":
            f[name] = 1.5
        elif kind == "text":
            f[name] = "x"
        else:
            f[name] = np.zeros((2, 3))
        return
    rows = f[name][...]
    if how == "rows":
        keep = data.draw(st.sampled_from(["none", "first", "shuffled"]), label="rows")
        rows = rows[:0] if keep == "none" else rows[:1] if keep == "first" else rows[::-1]
    elif rows.size:
        field = data.draw(st.sampled_from(rows.dtype.names), label="field")
        i = data.draw(st.integers(0, rows.size - 1), label="row")
        col = rows.dtype[field]
        if h5py.check_enum_dtype(col) is not None or col.kind in "iu":
            info = np.iinfo(col if col.kind in "iu" else h5py.check_enum_dtype(col) and np.uint8)
            value = data.draw(st.integers(int(info.min), int(info.max)), label="value")
            rows = rows.astype([(n, "u1" if n == field and col.kind not in "iu" else rows.dtype[n])
                                for n in rows.dtype.names])
        elif col.kind == "f":
            value = data.draw(st.sampled_from(NUMBERS), label="value")
        else:
            value = data.draw(TEXT, label="value")
        rows[field][i] = value
    del f[name]
    f[name] = rows


def run(args, seconds=40):
    outcome = run_main(analyze_main, [str(a) for a in args], seconds=seconds)
    assert_clean(outcome, "hpcps.analyze")
    return outcome


@settings(max_examples=200)
@given(data=st.data())
def test_damaged_traces_summarise_or_fail_in_one_line(good, data):
    with tempfile.TemporaryDirectory() as d:
        bad = Path(d) / "bad.h5"
        shutil.copy(good, bad)
        with h5py.File(bad, "r+") as f:
            damage(f, data)
        compare = data.draw(st.booleans(), label="compare")
        out = run([good, bad, "--json", "-"] if compare else [bad, "--json", "-", "--chrome", Path(d) / "c.json"])
        if out.status == 2:
            assert not (Path(d) / "c.json").exists()


@settings(max_examples=15, deadline=60000)
@given(data=st.data())
def test_damaged_traces_with_figures(good, data):
    with tempfile.TemporaryDirectory() as d:
        bad = Path(d) / "bad.h5"
        shutil.copy(good, bad)
        with h5py.File(bad, "r+") as f:
            damage(f, data)
        out = run([bad, "--plot", Path(d) / "plots"], seconds=60)
        if out.status == 2:
            assert not (Path(d) / "plots").exists()


@settings(max_examples=100)
@given(st.binary(max_size=300))
def test_any_bytes_as_a_trace(blob):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.h5"
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + blob if blob[:1] == b"\x00" else blob)
        assert run([path]).status == 2
