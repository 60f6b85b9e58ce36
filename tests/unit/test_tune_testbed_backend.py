"""The testbed backend without a testbed: the command a trial runs, its testbed's name, the dilation
shared by all trials, and the refusal on a machine that cannot build a testbed."""

from pathlib import Path

import pytest

from hpcps.cluster import load_cluster
from hpcps.config import load_job
from hpcps.config.errors import ConfigError
from hpcps.testbed import runner as runner_mod
from hpcps.testbed.plan import NAME_PATTERN, default_dilation
from hpcps.tune.backends import BACKENDS
from hpcps.tune.backends.testbed import TestbedBackend as Backend
from hpcps.tune.backends.testbed import _profile, trial_name
from hpcps.tune.cli import BACKEND_NAMES

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "jobs/clusters/hetero8.toml"
JOB = ROOT / "jobs/hetero8.toml"


def backend(**kw):
    return Backend(load_cluster(CLUSTER), load_job(JOB), JOB, CLUSTER, python="/v/bin/python",
                   check_machine=False, **kw)


def test_registered():
    assert "testbed" in BACKENDS and "testbed" in BACKEND_NAMES


def test_a_trial_is_train_under_testbed_run():
    b = backend(iterations=7)
    # the testbed's default for hetero8 with the job's thread model (every node's cores busy)
    assert b.dilation == default_dilation(load_cluster(CLUSTER), _profile(load_job(JOB))) == 32.5
    b._testbed = trial_name(3, pid=12345)
    cmd = b.command(Path("/t/schedule.toml"), Path("/t/trace.h5"), 5)
    assert cmd[:14] == ["/v/bin/python", "-m", "hpcps.testbed", "run", "--cluster", str(CLUSTER.resolve()),
                        "--dilation", "32.5", "--name", "t23450003", "--schedule", "/t/schedule.toml", "--quiet", "--"]
    assert cmd[14:] == ["/v/bin/python", "-m", "hpcps.train", "--job", str(JOB.resolve()), "--cluster",
                        str(CLUSTER.resolve()), "--schedule", "/t/schedule.toml", "--trace", "/t/trace.h5",
                        "--iterations", "7", "--quiet"]
    assert backend(dilation=30).command(Path("s"), Path("t"), 1)[7] == "30"
    # A trial under another synchronisation (tune --syncs) tells hpcps.train so.
    assert b.command(Path("/t/schedule.toml"), Path("/t/trace.h5"), 5, "ssp2")[-3:] == ["--sync", "ssp2", "--quiet"]


def test_trial_names_are_testbed_names():
    for trial in (0, 1, 9999, 123456):
        assert NAME_PATTERN.fullmatch(trial_name(trial))
    assert trial_name(1, pid=7) != trial_name(2, pid=7) != trial_name(1, pid=8)


def test_refused_where_no_testbed_can_be_built(monkeypatch):
    monkeypatch.setattr(runner_mod.os, "geteuid", lambda: 1000)
    with pytest.raises(ConfigError, match="--backend.*testbed: a testbed needs root"):
        Backend(load_cluster(CLUSTER), load_job(JOB), JOB, CLUSTER)


def test_the_command_lines_dilation_reaches_every_trial(monkeypatch):
    from hpcps.tune.cli import Context
    monkeypatch.setattr(runner_mod, "missing_requirements", lambda **kw: None)
    ctx = Context(load_cluster(CLUSTER), load_job(JOB), JOB, CLUSTER, seed=0, iterations=None, timeout_s=60.0,
                  dilation=32.0)
    b = BACKENDS["testbed"](ctx)
    assert b.dilation == 32.0 and b.command(Path("s"), Path("t"), 1)[7] == "32"
    assert BACKENDS["testbed"](Context(**{**ctx.__dict__, "dilation": None})).dilation == 32.5


def test_the_trials_of_a_run_share_its_step_costs(monkeypatch, tmp_path):
    """tune gives the emulated backends RUN_DIR/step_costs.json, and every trial's hpcps.train reads it."""
    from hpcps.tune.cli import build_parser, prepare
    monkeypatch.setattr(runner_mod, "missing_requirements", lambda **kw: None)
    out = tmp_path / "run"
    for name in ("testbed", "local"):
        parts = prepare(build_parser().parse_args(["--job", str(JOB), "--cluster", str(CLUSTER), "--backend", name,
                                                   "--strategy", "random", "--budget", "1", "--out", str(out)]))
        cmd = parts.backend.command(Path("s"), Path("t"), 1)
        assert cmd[-3:] == ["--step-costs", str(out.resolve() / "step_costs.json"), "--quiet"], cmd
    assert not out.exists()                     # prepare writes nothing
    assert "--step-costs" not in backend().command(Path("s"), Path("t"), 1)
