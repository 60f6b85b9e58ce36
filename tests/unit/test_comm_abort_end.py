"""How abort_on_error ends a rank: with peers, a pause (so the launcher forwards the message) and
MPI_Abort; alone, no MPI_Abort; either way the process leaves with the status, its streams flushed."""

import pytest

from hpcps.comm import abort


class Comm:
    def __init__(self, size, log):
        self.size, self.log = size, log

    def Get_size(self):
        return self.size

    def Get_rank(self):
        return 0

    def Abort(self, status):
        self.log.append(("abort", status))


@pytest.fixture
def log(monkeypatch):
    got = []
    monkeypatch.setattr(abort.time, "sleep", lambda s: got.append(("sleep", s)))

    def exit_(status):
        got.append(("exit", status))
        raise SystemExit(status)
    monkeypatch.setattr(abort.os, "_exit", exit_)
    return got


@pytest.mark.parametrize("size", [2, 3])
def test_with_peers_a_pause_then_mpi_abort(log, size, capsys):
    with pytest.raises(SystemExit):
        with abort.abort_on_error(Comm(size, log), "tool"):
            raise ValueError("bad")
    assert log == [("sleep", 0.5), ("abort", 1), ("exit", 1)]
    assert abort.ABORT_GRACE_S == 0.5
    host = abort.socket.gethostname()
    assert capsys.readouterr().err.endswith(f"tool: error on rank 0 ({host}): ValueError: bad\n")


def test_alone_no_mpi_abort_and_no_pause(log):
    with pytest.raises(SystemExit):
        with abort.abort_on_error(Comm(1, log), "tool"):
            raise SystemExit(4)
    assert log == [("exit", 4)]
