"""hpcps.train as a user runs it: real mpiexec, real processes, real training."""

import re
import time

import pytest

from tests.conftest import assert_no_leftovers, run_mpi

DIGITS_UNEQUAL = """
name = "digits-unequal"
workload = "digits"
[optimizer]
name = "sgd"
lr = 0.1
momentum = 0.9
[training]
global_batch = 64
epochs = 8
log_every = 20
[schedule]
servers = [0, 3]
[[schedule.workers]]
rank = 1
batch = 8
[[schedule.workers]]
rank = 2
batch = 16
[[schedule.workers]]
rank = 3
batch = 40
"""


def test_digits_converges_with_unequal_batches_on_four_ranks(tmp_path):
    job = tmp_path / "digits.toml"
    job.write_text(DIGITS_UNEQUAL)
    out = run_mpi(4, ["-m", "hpcps.train", "--job", str(job)])
    assert out.returncode == 0, out.stderr
    assert "2 servers, 3 workers" in out.stdout
    assert re.search(r"iter\s+20/\d+ .* loss \d\.\d+ .* samples/s", out.stdout)
    accuracy = float(re.search(r"test_accuracy (\d\.\d+)", out.stdout).group(1))
    assert accuracy >= 0.95, out.stdout


def test_default_job_with_no_arguments(tmp_path):
    out = run_mpi(2, ["-m", "hpcps.train", "--iterations", "30"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "digits: 2 ranks, 1 servers, 2 workers" in out.stdout
    assert "done: 30 iterations" in out.stdout


def test_charlm_trains_and_prints_a_sample(tmp_path):
    job = tmp_path / "charlm.toml"
    job.write_text('name = "lm"\nworkload = "charlm"\n[model]\nhidden = 64\n[data]\ncorpus_chars = 40000\n'
                   'sample_chars = 60\n[optimizer]\nname = "adam"\nlr = 0.01\n'
                   '[training]\nglobal_batch = 32\niterations = 30\nlog_every = 10\n')
    out = run_mpi(3, ["-m", "hpcps.train", "--job", str(job)])
    assert out.returncode == 0, out.stderr
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", out.stdout)]
    assert losses[-1] < losses[0] - 0.5, out.stdout       # it learns the character statistics
    sample = re.search(r"sample: '(.*)'", out.stdout).group(1)
    assert sample.startswith("The ") and len(sample) >= 60


def test_cifar_resnet_runs(tmp_path):
    job = tmp_path / "cifar.toml"
    job.write_text('name = "c"\nworkload = "cifar-resnet"\n[model]\nwidth = 8\n[data]\nsamples = 256\n'
                   'test_samples = 64\n[optimizer]\nname = "sgd"\nlr = 0.05\nmomentum = 0.9\n'
                   '[training]\nglobal_batch = 32\niterations = 6\nlog_every = 3\n')
    out = run_mpi(2, ["-m", "hpcps.train", "--job", str(job)])
    assert out.returncode == 0, out.stderr
    assert "done: 6 iterations" in out.stdout and "test_accuracy" in out.stdout


GOOD_JOB = ('name = "t"\nworkload = "digits"\n[optimizer]\nname = "sgd"\nlr = 0.1\n'
            '[training]\nglobal_batch = 16\niterations = 5\n')


@pytest.mark.parametrize("job_text, schedule_text, file_key, words", [
    (GOOD_JOB.replace('lr = 0.1', 'lr = 0.1\nmomentun = 0.9'), None, ("job", "optimizer.momentun"),
     "Valid keys are: name (required), lr (required), momentum (default 0.0)"),
    (GOOD_JOB.replace('global_batch = 16', 'global_batch = "16"'), None, ("job", "training.global_batch"),
     "must be an integer"),
    (GOOD_JOB, "servers = [0]\n[[workers]]\nrank = 0\nbatch = 8\n[[workers]]\nrank = 9\nbatch = 8\n",
     ("schedule", "workers[1].rank"), "only 3 ranks were launched"),
    (GOOD_JOB, "servers = []\n[[workers]]\nrank = 0\nbatch = 16\n", ("schedule", "servers"), "no parameter server"),
    (GOOD_JOB, "servers = [0]\n[[workers]]\nrank = 0\nbatch = 0\n", ("schedule", "workers[0].batch"), "> 0"),
], ids=["unknown-key", "wrong-type", "too-many-ranks", "no-server", "zero-batch"])
def test_bad_input_ends_every_rank_with_one_message(tmp_path, job_text, schedule_text, file_key, words):
    job = tmp_path / "job.toml"
    job.write_text(job_text)
    args = ["-m", "hpcps.train", "--job", str(job)]
    if schedule_text is not None:
        sched = tmp_path / "schedule.toml"
        sched.write_text(schedule_text)
        args += ["--schedule", str(sched)]
    before = sorted(p.name for p in tmp_path.iterdir())
    out = run_mpi(3, args, timeout=60)
    assert out.returncode == 2, (out.stdout, out.stderr)
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, out.stderr                       # one message, from rank 0 only
    file = job if file_key[0] == "job" else tmp_path / "schedule.toml"
    assert str(file) in errors[0] and f"'{file_key[1]}'" in errors[0] and words in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # nothing written
    assert_no_leftovers(str(tmp_path))


def test_an_exception_on_one_worker_ends_the_whole_job(tmp_path):
    job = tmp_path / "faulty.toml"
    job.write_text('name = "faulty"\nworkload = "tests.fixtures.faulty_workload:factory"\n'
                   '[data]\nfail_rank = 2\nfail_call = 3\n'
                   '[optimizer]\nname = "sgd"\nlr = 0.1\n[training]\nglobal_batch = 24\niterations = 1000\n')
    t0 = time.monotonic()
    out = run_mpi(4, ["-m", "hpcps.train", "--job", str(job)], timeout=120)
    assert out.returncode != 0
    assert "error on rank 2" in out.stderr and "cannot read shard 7 of the training set" in out.stderr
    assert time.monotonic() - t0 < 60
    assert_no_leftovers(str(tmp_path))


@pytest.mark.parametrize("how", ["exit0", "exit-none"])
def test_a_rank_that_exits_early_with_status_0_ends_the_whole_job(tmp_path, how):
    job = tmp_path / "leaves.toml"
    job.write_text('name = "leaves"\nworkload = "tests.fixtures.faulty_workload:factory"\n'
                   f'[data]\nfail_rank = 1\nfail_call = 4\nfail_with = "{how}"\n'
                   '[optimizer]\nname = "sgd"\nlr = 0.1\n[training]\nglobal_batch = 24\niterations = 1000\n')
    t0 = time.monotonic()
    out = run_mpi(3, ["-m", "hpcps.train", "--job", str(job), "--no-trace"], timeout=90)
    assert out.returncode != 0, out.stderr
    assert "rank 1" in out.stderr and "left the run early" in out.stderr
    assert time.monotonic() - t0 < 60
    assert_no_leftovers(str(tmp_path))


def test_help_and_bad_flags():
    out = run_mpi(1, ["-m", "hpcps.train", "--help"], timeout=60)
    assert out.returncode == 0 and "--schedule" in out.stdout and "--iterations" in out.stdout
    out = run_mpi(2, ["-m", "hpcps.train", "--iterations", "many"], timeout=60)
    assert out.returncode == 2 and out.stderr.count("invalid int value") == 1
