"""abort_on_error with a stand-in communicator: every way out of the body ends the whole job."""

import pytest

from hpcps.comm.abort import abort_on_error, exit_status
from hpcps.config.errors import ConfigError


class FakeComm:
    def __init__(self, size=3, rank=1):
        self.size, self.rank, self.aborted = size, rank, None

    def Get_size(self):
        return self.size

    def Get_rank(self):
        return self.rank

    def Abort(self, status):
        self.aborted = status


@pytest.fixture(autouse=True)
def no_grace(monkeypatch):
    monkeypatch.setattr("hpcps.comm.abort.ABORT_GRACE_S", 0.0)

    def exit_(status):                  # the process must live on for the test to check it
        raise SystemExit(status)
    monkeypatch.setattr("hpcps.comm.abort.os._exit", exit_)


@pytest.mark.parametrize("code, status", [(0, 1), (None, 1), (3, 3), ("stopped", 1), (True, 1), (300, 1)])
def test_a_rank_that_exits_with_any_status_aborts_the_job(code, status, capsys):
    comm = FakeComm()
    with pytest.raises(SystemExit):
        with abort_on_error(comm, "tool"):
            raise SystemExit(code)
    assert comm.aborted == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tool: rank 1" in err and "left the run early" in err


def test_a_single_rank_that_exits_early_ends_with_a_failure_status(capsys):
    with pytest.raises(SystemExit) as e:
        with abort_on_error(FakeComm(size=1, rank=0), "tool"):
            raise SystemExit(0)
    assert e.value.code == 1 and "left the run early" in capsys.readouterr().err


def test_bad_input_on_one_rank_is_one_line_and_status_2(capsys):
    comm = FakeComm()
    with pytest.raises(SystemExit):
        with abort_on_error(comm, "tool"):
            raise ConfigError("job.toml", "training.seed", "must be >= 0, got -1")
    err = capsys.readouterr().err
    assert comm.aborted == 2 and err.count("\n") == 1
    assert "tool: error on rank 1" in err and "job.toml: key 'training.seed': must be >= 0" in err


def test_other_exceptions_abort_with_a_traceback_and_status_1(capsys):
    comm = FakeComm()
    with pytest.raises(SystemExit):
        with abort_on_error(comm, "tool"):
            raise OSError("disk gone")
    err = capsys.readouterr().err
    assert comm.aborted == 1 and "Traceback" in err and err.rstrip().endswith("OSError: disk gone")


def test_a_body_that_finishes_does_not_abort():
    comm = FakeComm()
    with abort_on_error(comm, "tool"):
        pass
    assert comm.aborted is None


def test_exit_status():
    assert [exit_status(c) for c in (0, None, 2, 255, 256, -1, "x")] == [1, 1, 2, 255, 1, 1, 1]
