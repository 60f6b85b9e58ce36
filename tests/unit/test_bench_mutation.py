"""benchmarks/mutation_sample.py and the sampled estimate of benchmarks/mutation_report.py: the draw, the
Wilson interval, the estimate over a package and the verdict it gives (pure logic; mutmut itself is run by
`make mutation` and `make mutation-sample`, not here)."""

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import mutation_report  # noqa: E402
import mutation_sample  # noqa: E402


def test_the_draw_is_uniform_reproducible_and_independent_of_the_pools_order():
    pool = [f"m{i}" for i in range(1000)]
    a = mutation_sample.draw(pool, 150, seed=3)
    shuffled = pool[:]
    random.Random(9).shuffle(shuffled)
    assert mutation_sample.draw(shuffled, 150, seed=3) == a
    assert len(set(a)) == 150 and set(a) <= set(pool)
    assert mutation_sample.draw(pool, 150, seed=4) != a
    assert sorted(mutation_sample.draw(pool[:20], 150, seed=3)) == sorted(pool[:20])   # all of a small pool
    # Uniform: over many seeds every tenth of the (sorted) pool is drawn about as often.
    counts = [0] * 10
    for seed in range(200):
        for name in mutation_sample.draw(pool, 50, seed):
            counts[int(name[1:]) // 100] += 1
    assert max(counts) < 1.25 * min(counts)


def test_the_wilson_interval_matches_its_formula_and_stays_in_bounds():
    lo, hi = mutation_report.wilson(90, 100)
    assert lo == pytest.approx(0.8256, abs=1e-4) and hi == pytest.approx(0.9448, abs=1e-4)
    assert mutation_report.wilson(0, 10)[0] == 0.0 and mutation_report.wilson(10, 10)[1] == 1.0
    assert mutation_report.wilson(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    assert mutation_report.wilson(0, 0) == (0.0, 1.0)
    # More trials, a narrower interval around the same rate.
    assert mutation_report.wilson(900, 1000)[1] - mutation_report.wilson(900, 1000)[0] < hi - lo


def test_the_estimate_counts_what_ran_and_extrapolates_only_the_rest():
    est, lo, hi = mutation_report.estimate(killed=90, survived=10, not_run=900, sample_killed=135,
                                           sample_judged=150)
    assert est == pytest.approx((90 + 0.9 * 900) / 1000)
    wl, wh = mutation_report.wilson(135, 150)
    assert (lo, hi) == pytest.approx(((90 + wl * 900) / 1000, (90 + wh * 900) / 1000))
    # Nothing left to extrapolate: the census score, whatever the sample said.
    assert mutation_report.estimate(80, 20, 0, 1, 100) == pytest.approx((0.8, 0.8, 0.8))


def sample(killed: int, survived: int, other: int = 0) -> dict:
    status = {f"k{i}": "killed" for i in range(killed)}
    status |= {f"s{i}": "survived" for i in range(survived)}
    status |= {f"n{i}": "not checked" for i in range(other)}
    return {"package": "hpcps.ps", "seed": 0, "pool": 5000, "commit": "abc1234", "status": status}


def row(killed: int, survived: int, not_run: int) -> dict:
    return {"package": "hpcps.ps", "killed": killed, "survived": survived, "not_run": not_run,
            "score": killed / (killed + survived)}


def test_a_verdict_is_given_only_where_the_whole_interval_is_on_one_side_of_the_target():
    met = row(576, 27, 4977)
    assert "(met, estimated;" in mutation_report.estimate_cell(met, sample(145, 5))
    assert met["estimate"]["low"] >= mutation_report.TARGET
    assert "(not met, estimated;" in mutation_report.estimate_cell(row(576, 27, 4977), sample(100, 50))
    # 85% killed in the sample: the interval straddles the target.
    assert "(undecided;" in mutation_report.estimate_cell(row(576, 27, 4977), sample(85, 15))
    # A sample whose run stopped before some of it (the quickly tested run first): a verdict only if it
    # holds whether the missing ones would have been killed or not; none judged: no estimate.
    cell = mutation_report.estimate_cell(row(576, 27, 4977), sample(145, 5, other=40))
    assert "(undecided; 40 of the sample not run" in cell and "estimated over all" in cell
    low_all_survived = mutation_report.estimate(576, 27, 4977, 145, 190)[1]
    assert low_all_survived < mutation_report.TARGET
    cell = mutation_report.estimate_cell(big := row(576, 27, 4977), sample(148, 1, other=1))
    assert "(met, estimated; 1 of the sample not run" in cell
    assert big["estimate"]["low_any"] == pytest.approx(mutation_report.estimate(576, 27, 4977, 148, 150)[1])
    assert "(not met, estimated; 2 of the sample not run" in mutation_report.estimate_cell(
        row(576, 27, 4977), sample(70, 78, other=2))
    plain = row(576, 27, 4977)
    assert "estimated" not in mutation_report.estimate_cell(plain, sample(0, 0, other=40))
    assert "estimate" not in plain
    assert "no verdict from the census" in mutation_report.estimate_cell(row(576, 27, 4977), None)


def test_samples_drawn_at_one_commit_are_pooled_and_older_ones_left_out(tmp_path):
    def record(commit, seed, killed, survived, first):
        status = {f"{commit}-{seed}-k{i}": "killed" for i in range(killed)}
        status |= {f"{commit}-{seed}-s{i}": "survived" for i in range(survived)}
        return {"package": "hpcps.ps", "seed": seed, "pool": first, "commit": commit, "status": status}
    path = tmp_path / "samples.json"
    path.write_text(json.dumps([record("old", 0, 10, 90, 5000), record("new", 0, 140, 10, 4900),
                                record("new", 1, 135, 15, 4750),
                                {**record("new", 0, 3, 0, 900), "package": "hpcps.sim"}]))
    got = mutation_report.latest_samples(path)
    ps = got["hpcps.ps"]
    assert len(ps["status"]) == 300 and ps["pool"] == 4900 and ps["samples"] == 2 and ps["seed"] == "0,1"
    assert sum(v == "killed" for v in ps["status"].values()) == 275
    assert "2 samples of 300 of the 4900 then not run, 275 killed" in mutation_report.estimate_cell(
        row(576, 27, 4750), ps)
    assert got["hpcps.sim"]["samples"] == 1 and len(got["hpcps.sim"]["status"]) == 3
    assert mutation_report.latest_samples(tmp_path / "none.json") == {}
