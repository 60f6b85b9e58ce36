"""hpcps.sim's table (render_table), character for character, and SimResult.to_dict's keys and values:
what a user reads and what --json prints."""

import json
import math
from types import SimpleNamespace

from hpcps.sim.cli import MAX_TABLE_ROWS, render_table
from hpcps.sim.engine import RankStats, SimOptions, SimResult


class Cluster:
    name = "tiny"

    def __len__(self):
        return 3


JOB = SimpleNamespace(name="job1", workload="digits")
PROFILE = SimpleNamespace(params=9610)
HEADER = " rank node         server  batch thr compute_ms  pull_ms  push_ms update_ms  wait_ms"


def ranks():
    return (RankStats(0, "n1", True, 0, 0, 0.0, 0.0005, 0.00025, 0.002, 0.0001, 0.0031),
            RankStats(1, "n2", False, 32, 2, 0.0123456, 0.001, 0.0015, 0.0, 0.0004, 0.0157),
            RankStats(12, "node-long-x", True, 16, 4, 0.5, 0.25, 0.125, 0.0625, 1.0, 2.5))


def result(**kw):
    base = dict(status="ok", iteration_time_s=0.0125, iteration_times_s=(0.0120, 0.0130), ranks=ranks(),
                global_batch=64, n_servers=2, n_workers=2, bytes_per_iteration=2_345_678.0, events=17,
                notes=())
    base.update(kw)
    return SimResult(**base)


def test_the_bsp_table_line_by_line():
    text = render_table(result(notes=("digits: scaled", "other")), JOB, Cluster(), "naive", PROFILE)
    assert text.split("\n") == [
        "cluster tiny (3 nodes), job job1 (workload digits, 9610 parameters), schedule naive: 2 server(s), "
        "2 worker(s), global batch 64",
        "iteration time 12.500 ms (mean of 2), 5120.0 samples/s, 2.346 MB over NICs per iteration",
        "note: compute profile digits: scaled",
        "note: compute profile other",
        HEADER,
        "    0 n1              yes                 0.000    0.500    0.250     2.000    0.100",
        "    1 n2                      32   2     12.346    1.000    1.500     0.000    0.400",
        "   12 node-long-x     yes     16   4    500.000  250.000  125.000    62.500 1000.000",
    ]


def test_bsp_options_print_the_bsp_table():
    plain = render_table(result(), JOB, Cluster(), "naive", PROFILE)
    assert render_table(result(), JOB, Cluster(), "naive", PROFILE, SimOptions(sync="bsp")) == plain
    assert "iter_ms" not in plain and plain.count("\n") == 5


def test_the_ssp_table_has_each_ranks_own_iteration_time():
    text = render_table(result(), JOB, Cluster(), "b.toml", PROFILE, SimOptions(sync="ssp", staleness=3))
    lines = text.split("\n")
    assert lines[0].endswith("schedule b.toml: 2 server(s), 2 worker(s), global batch 64")
    assert lines[1] == ("ssp (staleness 3): iteration time 12.500 ms (a global batch at the workers' own rates, "
                        "over 2 iterations each; iter_ms: each rank's own), 5120.0 samples/s, 2.346 MB over "
                        "NICs per iteration")
    assert lines[2] == HEADER + "  iter_ms"
    assert lines[3] == "    0 n1              yes                 0.000    0.500    0.250     2.000    0.100    3.100"
    assert lines[4] == ("    1 n2                      32   2     12.346    1.000    1.500     0.000    0.400"
                        "   15.700")
    assert lines[5].endswith(" 1000.000 2500.000") and len(lines) == 6


def test_the_asp_table_names_no_staleness():
    text = render_table(result(), JOB, Cluster(), "naive", PROFILE, SimOptions(sync="asp", staleness=0))
    assert text.split("\n")[1].startswith("asp: iteration time 12.500 ms (a global batch")
    assert "staleness" not in text


def test_a_long_table_stops_at_max_table_rows():
    many = tuple(RankStats(i, f"n{i}", False, 1, 1, 0.001, 0.0, 0.0, 0.0, 0.0, 0.001)
                 for i in range(MAX_TABLE_ROWS + 3))
    lines = render_table(result(ranks=many), JOB, Cluster(), "naive", PROFILE).split("\n")
    assert MAX_TABLE_ROWS == 64
    assert len(lines) == 3 + MAX_TABLE_ROWS + 1
    assert lines[-2].startswith("   63 n63 ")
    assert lines[-1] == "... 3 more ranks (--json lists all)"
    exactly = render_table(result(ranks=many[:MAX_TABLE_ROWS]), JOB, Cluster(), "naive", PROFILE).split("\n")
    assert len(exactly) == 3 + MAX_TABLE_ROWS and "more ranks" not in exactly[-1]


def test_to_dict_of_a_feasible_result():
    d = result(notes=("n1",)).to_dict()
    assert set(d) == {"status", "iteration_time_s", "iteration_times_s", "ranks", "global_batch", "n_servers",
                      "n_workers", "bytes_per_iteration", "events", "notes", "feasible", "samples_per_s"}
    assert d["status"] == "ok" and d["feasible"] is True and d["iteration_time_s"] == 0.0125
    assert d["samples_per_s"] == 64 / 0.0125
    assert d["iteration_times_s"] == [0.0120, 0.0130] and d["notes"] == ["n1"]
    assert d["global_batch"] == 64 and d["n_servers"] == 2 and d["n_workers"] == 2 and d["events"] == 17
    assert d["bytes_per_iteration"] == 2_345_678.0
    assert isinstance(d["ranks"], list) and len(d["ranks"]) == 3
    assert d["ranks"][1] == {"rank": 1, "node": "n2", "server": False, "batch": 32, "threads": 2,
                             "compute_s": 0.0123456, "pull_s": 0.001, "push_s": 0.0015, "aggregate_s": 0.0,
                             "wait_s": 0.0004, "iteration_s": 0.0157}
    assert json.loads(json.dumps(d)) == d


def test_to_dict_of_an_infeasible_result_is_valid_json():
    d = SimResult("out of memory on node n6", math.inf, notes=("a", "b")).to_dict()
    assert d["feasible"] is False and d["samples_per_s"] == 0.0 and d["iteration_time_s"] is None
    assert d["status"] == "out of memory on node n6" and d["notes"] == ["a", "b"] and d["ranks"] == []
    assert d["iteration_times_s"] == []
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_bytes_are_shown_in_megabytes_of_a_million_bytes():
    big = result(bytes_per_iteration=1_000_500_000.0)
    assert "5120.0 samples/s, 1000.500 MB over NICs per iteration" in render_table(big, JOB, Cluster(), "n", PROFILE)
    stale = render_table(big, JOB, Cluster(), "n", PROFILE, SimOptions(sync="asp"))
    assert "5120.0 samples/s, 1000.500 MB over NICs per iteration" in stale
