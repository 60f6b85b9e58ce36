"""The trace schema is consistent with itself and with what the recorder produces."""

import math

import numpy as np

from hpcps.ps.exchange import Transfer
from hpcps.trace.recorder import REC_FIELDS, iteration_events, next_flush, phase_events, transfer_rows
from hpcps.trace.schema import DATASETS, DIRECTION, DTYPES, PHASE, PHASE_MEANINGS, PHASES, RANK_FIELDS


def test_every_record_field_is_documented_with_units_and_meaning():
    for name, dtype in DTYPES.items():
        assert list(DATASETS[name][1]) == list(dtype.names), name
    assert list(DATASETS["ranks"][1]) == list(RANK_FIELDS)
    for _description, fields in DATASETS.values():
        for units, meaning in fields.values():
            assert isinstance(units, str) and meaning
    assert set(PHASE_MEANINGS) == set(PHASES) and sorted(PHASE.values()) == list(range(len(PHASES)))


def test_iteration_records_become_nested_phase_events():
    rec = np.array([[7, 0.0, 0.1, 0.2, 0.2, 0.3, 0.3, 0.6, 0.61, 0.7, 0.7, 0.8, 2.5]])
    assert rec.shape[1] == len(REC_FIELDS)
    ev = iteration_events(rec, np.array([1.0]), rank=3, batch=16, is_worker=True, is_server=True)
    by_phase = {PHASES[p]: (t0, t1, k) for p, t0, t1, k in zip(ev["phase"], ev["t_start"], ev["t_end"], ev["batch"])}
    assert by_phase == {"iteration": (0.0, 1.0, 16), "pull": (0.1, 0.2, 0), "data": (0.2, 0.3, 16),
                        "compute": (0.3, 0.6, 16), "push": (0.61, 0.7, 0), "aggregate": (0.7, 0.8, 0)}
    assert (ev["rank"] == 3).all() and (ev["iteration"] == 7).all()
    assert ev["loss"][ev["phase"] == PHASE["compute"]][0] == np.float32(2.5)
    assert math.isnan(ev["loss"][ev["phase"] == PHASE["pull"]][0])
    server_only = iteration_events(rec, np.array([1.0]), rank=0, batch=0, is_worker=False, is_server=True)
    assert sorted(PHASES[p] for p in server_only["phase"]) == ["aggregate", "iteration", "pull", "push"]


def test_transfers_and_extra_phases_keep_what_was_recorded():
    rows = transfer_rows([(4, Transfer("push", "local", 1, 2, 64), 0.5, 0.6)], rank=2)
    assert rows[0]["direction"] == DIRECTION["local"] and rows[0]["nbytes"] == 64 and rows[0]["iteration"] == 4
    ev = phase_events([(9, PHASE["report"], 1.0, 1.5)], rank=1)
    assert ev[0]["phase"] == PHASE["report"] and ev[0]["iteration"] == 9


def test_flushes_come_about_every_flush_s_within_bounds():
    assert next_flush(100, seconds=1.0, iterations=100, flush_s=1.0, max_iterations=2000) == 200
    assert next_flush(100, seconds=10.0, iterations=1, flush_s=1.0, max_iterations=2000, min_iterations=2) == 102
    assert next_flush(100, seconds=0.001, iterations=100, flush_s=1.0, max_iterations=2000) == 2100


def test_the_schema_document_names_every_dataset_and_field():
    from pathlib import Path

    from hpcps.trace.schema import SCHEMA_VERSION
    text = (Path(__file__).resolve().parents[2] / "docs" / "trace.md").read_text()
    assert f"schema version {SCHEMA_VERSION}" in text
    for name, (_description, fields) in DATASETS.items():
        assert f"`/{name}`" in text, name
        for field in fields:
            assert f"`{field}`" in text, (name, field)
    for phase in PHASES:
        assert f"| `{phase}` |" in text
