"""hpcps.train on bad input and bad outputs: one line, exit status 2, nothing written, never a traceback.

Most runs are a single process (MPI's singleton start: no mpiexec), since rank 0 alone checks the
inputs; the last one launches three ranks to check that only rank 0 speaks."""

import os
import subprocess
import sys

import pytest

from tests.conftest import mpi_env, run_mpi

JOB = ('name = "t"\nworkload = "digits"\n[optimizer]\nname = "sgd"\nlr = 0.1\n'
       '[training]\nglobal_batch = 16\niterations = 4\n')
TINY_CLUSTER = ('name = "tiny"\n[types.small]\nspeed = 1.0\ncores = 2\nnic_gbps = 1.0\nmemory_gb = 0.1\n'
                '[[nodes]]\nnames = "n[1-3]"\ntype = "small"\n')


def train(tmp_path, *args, env=None, prelude=""):
    """python -m hpcps.train ARGS in tmp_path (prelude: Python run first, after MPI has started)."""
    code = (f"from mpi4py import MPI\n{prelude}\nimport sys\nfrom hpcps.train import main\n"
            f"sys.exit(main({list(args)!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=mpi_env(env))


def one_error_line(out, *words):
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("hpcps.train: error"), lines[0]
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def job(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(JOB)
    return path


def listing(tmp_path):
    return sorted(p.name for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("change, words", [
    (("lr = 0.1", "lr = 1e308"), ["key 'optimizer.lr'", "<= 10000"]),
    (("lr = 0.1", "lr = nan"), ["key 'optimizer.lr'", "finite"]),
    (("iterations = 4", "iterations = 4\nseed = -1"), ["key 'training.seed'", ">= 0"]),
    (("iterations = 4", "epochs = inf"), ["key 'training.epochs'", "finite"]),
    (("global_batch = 16", "global_batch = 5000"), ["key 'training.global_batch'", "must be <= 1438"]),
    (('workload = "digits"', 'workload = "no_such_module:factory"'), ["key 'workload'", "cannot load"]),
])
def test_bad_job_values(tmp_path, job, change, words):
    job.write_text(JOB.replace(*change))
    before = listing(tmp_path)
    one_error_line(train(tmp_path, "--job", str(job)), str(job), *words)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("args, env, words", [
    (["--time-dilation", "inf"], None, ["--time-dilation: must be a finite number >= 1"]),
    (["--trace-flush-s", "nan"], None, ["--trace-flush-s: must be a finite number > 0"]),
    (["--device", "cpu"], {"HPCPS_GPU_TRANSPORT": "bogus"}, ["HPCPS_GPU_TRANSPORT: must be one of auto"]),
])
def test_bad_flags_and_environment(tmp_path, job, args, env, words):
    before = listing(tmp_path)
    one_error_line(train(tmp_path, "--job", str(job), *args, env=env), *words)
    assert listing(tmp_path) == before


def test_the_trace_never_replaces_an_input_or_an_existing_file(tmp_path, job):
    text = job.read_text()
    one_error_line(train(tmp_path, "--job", str(job), "--trace", str(job)), "is also an input of this command")
    assert job.read_text() == text
    link = tmp_path / "link.toml"
    os.link(job, link)
    one_error_line(train(tmp_path, "--job", str(job), "--trace", str(link)), "is also an input")
    old = tmp_path / "old.h5"
    old.write_bytes(b"earlier run")
    one_error_line(train(tmp_path, "--job", str(job), "--trace", str(old)), "is never overwritten")
    assert old.read_bytes() == b"earlier run"
    one_error_line(train(tmp_path, "--job", str(job), "--trace", "/dev/full"), "not a regular file")


def test_a_trace_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path, job):
    # A file size limit stands for a full disk: the trace's first write fails.
    limit = "import resource\nresource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))"
    out = train(tmp_path, "--job", str(job), "--trace", str(tmp_path / "t.h5"), "--quiet", prelude=limit)
    one_error_line(out, "t.h5: cannot write the trace: File too large", "nothing was left behind")
    assert not (tmp_path / "t.h5").exists()


def test_a_missing_or_broken_hpcps_profiles_is_an_error_not_a_skipped_memory_check(tmp_path, job):
    cluster = tmp_path / "tiny.toml"
    cluster.write_text(TINY_CLUSTER)
    one_error_line(train(tmp_path, "--job", str(job), "--cluster", str(cluster), "--no-trace"),
                   "out of memory on node n1")
    one_error_line(train(tmp_path, "--job", str(job), "--cluster", str(cluster), "--no-trace",
                         env={"HPCPS_PROFILES": str(tmp_path / "missing.toml")}),
                   "missing.toml: compute profiles not found (named by HPCPS_PROFILES)")
    broken = tmp_path / "broken.toml"
    broken.write_text("cpus = 2\n")
    one_error_line(train(tmp_path, "--job", str(job), "--cluster", str(cluster), "--no-trace",
                         env={"HPCPS_PROFILES": str(broken)}),
                   "broken.toml", "not a compute profile file (named by HPCPS_PROFILES)")


def test_an_unknown_custom_workload_is_reported_once(tmp_path, job):
    job.write_text(JOB.replace('workload = "digits"', 'workload = "no_such_module:factory"'))
    out = run_mpi(3, ["-m", "hpcps.train", "--job", str(job)], timeout=60)
    assert out.returncode == 2 and out.stderr.count("cannot load 'no_such_module:factory'") == 1, out.stderr


def test_an_unforeseen_failure_while_rank_0_reads_the_inputs_ends_every_rank(tmp_path, job):
    """Rank 0 reads the inputs while the others wait for its verdict: a failure other than bad input
    (here one put in its way) must reach them too. It left them waiting for ever (a checkpoint whose
    identity attribute was a JSON list did that, before checkpoints were checked for it)."""
    code = ("from mpi4py import MPI\nimport sys\nimport hpcps.train as train\n"
            "def failing(*args, **kwargs):\n    raise RuntimeError('put in the way')\n"
            "train.resolve_checkpoints = failing\n"
            f"sys.exit(train.main(['--job', {str(job)!r}, '--no-trace', '--quiet']))\n")
    out = run_mpi(3, ["-c", code], timeout=60)
    assert out.returncode != 0
    assert out.stderr.count("hpcps.train: error on rank 0 while reading the inputs: RuntimeError: put in the way") \
        == 1, out.stderr


def test_bad_step_costs_are_one_line_and_leave_the_file_as_it_was(tmp_path, job):
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(TINY_CLUSTER.replace("memory_gb = 0.1", "memory_gb = 8"))
    sched = tmp_path / "schedule.toml"
    sched.write_text('[[nodes]]\nname = "n1"\nserver = true\nworkers = [{batch = 16}]\n')
    emulated = ["--job", str(job), "--cluster", str(cluster), "--schedule", str(sched), "--placement", "emulate",
                "--no-trace"]
    costs = tmp_path / "costs.json"
    one_error_line(train(tmp_path, "--job", str(job), "--no-trace", "--step-costs", str(costs)),
                   "--step-costs: only an emulated run")
    costs.write_text("[]")
    before = listing(tmp_path)
    one_error_line(train(tmp_path, *emulated, "--step-costs", str(costs)), str(costs), "not a step-costs file")
    one_error_line(train(tmp_path, *emulated, "--step-costs", str(job)), "--step-costs", "is also an input")
    one_error_line(train(tmp_path, *emulated, "--step-costs", str(tmp_path)), "--step-costs", "is a directory")
    measured = ["--emulate-compute", "measured"]
    one_error_line(train(tmp_path, *emulated, *measured, "--step-costs", str(tmp_path / "c.json")),
                   "--step-costs: applies to --emulate-compute reference, not measured")
    assert listing(tmp_path) == before and costs.read_text() == "[]" and job.read_text() == JOB
