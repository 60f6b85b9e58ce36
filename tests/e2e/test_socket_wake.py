"""SocketWake with real MPI over real TCP: a sleeping rank's large message moves when its sockets are
ready, not when the ranks' sleeps end."""

import re

from tests.conftest import ROOT, run_mpi

TCP = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": "lo",
       "MPIR_CVAR_NOLOCAL": "1"}         # the two ranks talk TCP as if on two nodes, not shared memory
POLL_S = 0.5


def seconds(how: str) -> list[float]:
    r = run_mpi(2, [str(ROOT / "tests/e2e/socket_wake_probe.py"), how, str(POLL_S)], env=TCP, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return [float(s) for s in re.findall(r"seconds (\S+)", r.stdout)]


def test_a_rendezvous_between_waking_ranks_takes_no_poll():
    # 8 MiB through loopback takes milliseconds; a sleep of POLL_S on either side would show. Every
    # message: watching sockets alone, the sender of one whose data half fitted in the socket's buffer
    # slept its poll before writing the rest (3 of 5 messages, most runs); the provider's epoll set
    # wakes it when there is room.
    got = seconds("wake")
    assert len(got) == 5 and max(got) < 0.2 * POLL_S, got


def test_between_sleeping_ranks_it_waits_for_their_polls():
    # the same messages, plain sleeps: each handshake waits for the ranks' polls (what SocketWake removes)
    got = seconds("sleep")
    assert len(got) == 5 and min(got) > 0.2 * POLL_S, got
