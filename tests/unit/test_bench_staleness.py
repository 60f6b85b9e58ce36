"""benchmarks/staleness.py's jobs: every mode of every workload is a job hpcps loads, with the mode's
synchronisation and optimiser settings (a job the runtime refused, or a mode silently running another
learning rate, would make the benchmark compare something else than it says)."""

import sys
import tomllib
from pathlib import Path

import pytest

from hpcps.config.job import parse_job

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import staleness  # noqa: E402


@pytest.mark.parametrize("workload", sorted(staleness.WORKLOADS))
def test_every_mode_is_a_valid_job_with_its_settings(workload):
    w = staleness.WORKLOADS[workload]
    for mode, (sync, s, opt) in w["modes"].items():
        job = parse_job(tomllib.loads(staleness.job_text(w, mode, 3, sync, s, w["lr"], 0.9)), mode)
        assert job.workload == workload
        assert (job.training.sync, job.training.staleness, job.training.seed) == (sync, s, 3)
        assert job.training.global_batch == w["global_batch"] and job.training.iterations == w["iterations"]
        assert job.optimizer.lr == pytest.approx(w["lr"] * opt.get("lr_scale", 1.0))
        if workload == "digits":
            assert job.optimizer.momentum == opt.get("momentum", 0.9)


def test_charlm_lr_variants_and_verdict_modes():
    w = staleness.WORKLOADS["charlm"]
    lr = {m: parse_job(tomllib.loads(staleness.job_text(w, m, 0, "bsp", 0, 0.003, 0.9)), m).optimizer.lr
          for m in ("asp", "asp-lr8", "bsp-tuned-lrx8")}
    assert lr == pytest.approx({"asp": 0.003, "asp-lr8": 0.003 / 8, "bsp-tuned-lrx8": 0.024})
    # bsp at a larger step is a diagnostic, never the baseline nor a stale mode of the verdict
    assert "bsp-tuned-lrx8" not in w["verdict_modes"] and "asp-lr8" in w["verdict_modes"]


def test_reached_follows_the_metric_direction():
    assert staleness.reached(staleness.WORKLOADS["digits"], 0.95)
    assert not staleness.reached(staleness.WORKLOADS["digits"], 0.949)
    assert staleness.reached(staleness.WORKLOADS["charlm"], 3.0)
    assert not staleness.reached(staleness.WORKLOADS["charlm"], 3.01)


def test_verdict_is_the_best_stale_mode_that_reached_on_every_seed():
    w = staleness.WORKLOADS["charlm"]
    rows = ([{"mode": "bsp-tuned", "time_to_target_s": t} for t in (1.0, 1.2, 1.1)]
            + [{"mode": "asp", "time_to_target_s": t} for t in (0.5, None, 0.4)]      # not every seed
            + [{"mode": "ssp1", "time_to_target_s": t} for t in (0.8, 0.9, 0.7)]
            + [{"mode": "bsp-tuned-lrx8", "time_to_target_s": t} for t in (0.1, 0.1, 0.1)])
    text, met = staleness.verdict(w, rows)
    assert text.startswith("best stale mode ssp1: 0.800 s against bsp-tuned 1.100 s = 0.73x") and met is False


def test_charlm_is_the_codecs_benchmark_job():
    """The charlm threshold (3.0 bits per character) is set from results/codecs.md's float32 run, so the
    staleness job must be that job: same model, data and optimiser (only the training table differs)."""
    import importlib.util  # benchmarks/codecs.py by its path: the name is the standard library's codecs
    spec = importlib.util.spec_from_file_location("codecs_benchmark", ROOT / "benchmarks" / "codecs.py")
    codecs_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(codecs_bench)
    theirs = tomllib.loads(codecs_bench.WORKLOADS["charlm"]["job"])
    w = staleness.WORKLOADS["charlm"]
    ours = tomllib.loads(staleness.job_text(w, "bsp", 0, "bsp", 0, w["lr"], 0.9))
    for table in ("model", "data", "optimizer"):
        assert ours[table] == theirs[table], table
    assert ours["workload"] == theirs["workload"]
    assert ours["training"]["global_batch"] == theirs["training"]["global_batch"]
    assert ours["training"]["iterations"] == theirs["training"]["iterations"]
