"""The delay line: every packet that leaves or enters a node's eth0 is held for half the node's dilated
latency, then let go. This kernel has no netem (CONFIG_NET_SCH_NETEM is not set on these machines),
so the holding happens here: iptables hands each packet to a netfilter queue (NFQUEUE), this process
hears of it over netlink (its id only, never its bytes) and, once it is due, accepts it and every
earlier one of that queue with one batch verdict. Holding is FIFO per queue with one delay per queue,
so the order of packets is kept.

One process serves every queue of a testbed; it lives in the switch's namespace (so that `down` finds
it) and opens one netlink socket in each node's namespace. It runs at real-time priority where it
may: it mostly sleeps, and when a packet is due it should not wait behind a rank's computation.

    python -m hpcps.testbed.delay STATE_DIR      # reads STATE_DIR/plan.json; writes delay.ready, delay.json

It writes its statistics (delay.json) when asked with SIGUSR1 and when it ends, never on its own while
packets pass: working them out takes 2-4 ms, and no packet of any link moves meanwhile.

The netlink encoding and the holding logic are pure (tested without root); serve() does the rest.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

# linux/netfilter/nfnetlink.h, nfnetlink_queue.h
NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO = 1, 4
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
SOL_NETLINK, NETLINK_NO_ENOBUFS = 270, 5
SO_RCVBUFFORCE = 33
CLONE_NEWNET = 0x40000000
PR_SET_TIMERSLACK = 29

QUEUE_MAXLEN = 100_000       # packets one queue may hold; past it the kernel lets them through undelayed
LATE_BINS_US = 10_000        # lateness histogram: 1 us bins, 10 ms each way


# ---- netlink messages (pure) ----------------------------------------------------------------------------

def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def encode(msg: int, queue: int, attrs: list[tuple[int, bytes]], flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    """One nfnetlink queue message: nlmsghdr, nfgenmsg (AF_UNSPEC, version 0, queue number), attributes."""
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(_attr(k, d) for k, d in attrs)
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def bind_message(queue: int) -> bytes:
    return encode(NFQNL_MSG_CONFIG, queue, [(NFQA_CFG_CMD, struct.pack("=BBH", NFQNL_CFG_CMD_BIND, 0,
                                                                       socket.htons(socket.AF_INET)))],
                  NLM_F_REQUEST | NLM_F_ACK)


def params_message(queue: int, maxlen: int = QUEUE_MAXLEN) -> bytes:
    """Copy no packet bytes (ids only); take offloaded packets whole (GSO: no segmenting for us); a full
    queue lets packets through rather than dropping them."""
    flags = NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN
    return encode(NFQNL_MSG_CONFIG, queue, [(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META)),
                                            (NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", maxlen)),
                                            (NFQA_CFG_MASK, struct.pack(">I", flags)),
                                            (NFQA_CFG_FLAGS, struct.pack(">I", flags))],
                  NLM_F_REQUEST | NLM_F_ACK)


def verdict_batch_message(queue: int, packet_id: int) -> bytes:
    """Accept every packet of queue with an id up to packet_id."""
    return encode(NFQNL_MSG_VERDICT_BATCH, queue, [(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, packet_id))])


def parse_packets(buf, n: int) -> list[tuple[int, int]]:
    """(queue, packet id) of every queued-packet message in buf[:n]."""
    out, off = [], 0
    want = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
    while off + 20 <= n:
        length, kind = struct.unpack_from("=IH", buf, off)
        if length < 16 or off + length > n:
            break
        if kind == want:
            queue = struct.unpack_from(">H", buf, off + 18)[0]
            a = off + 20
            while a + 4 <= off + length:
                alen, akind = struct.unpack_from("=HH", buf, a)
                if alen < 4:
                    break
                if akind & 0x7FFF == NFQA_PACKET_HDR:
                    out.append((queue, struct.unpack_from(">I", buf, a + 4)[0]))
                    break
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return out


def parse_error(buf, n: int) -> int | None:
    """The errno of an NLMSG_ERROR answer (0: an acknowledgement), None for any other message."""
    if n < 20:
        return None
    length, kind = struct.unpack_from("=IH", buf, 0)
    if kind != NLMSG_ERROR:
        return None
    return -struct.unpack_from("=i", buf, 16)[0]


# ---- holding (pure) ------------------------------------------------------------------------------------

class DelayLine:
    """FIFO queues, each with its own delay: arrive() records a packet, release(now) says which queues
    may let go of which packets (the last due id of each).

    Waking up takes time (tens of microseconds here), so the line wakes `lead` seconds before packets are
    due, lead following the lateness it sees (an exponential average, never more than a quarter of the
    shortest delay): on average packets then leave when due rather than one wake-up late. The histogram
    of lateness (negative: early) is what stats() reports."""

    def __init__(self, delays: dict, gain: float = 0.02):
        self.delays = dict(delays)
        self.held: dict = {key: collections.deque() for key in delays}
        self.late_hist = [0] * (2 * LATE_BINS_US + 1)      # -10 ms .. +10 ms in 1 us bins
        self.packets = 0
        self.lead = 0.0
        self.gain = gain
        self.max_lead = 0.25 * min(delays.values(), default=0.0)

    def arrive(self, key, packet_id: int, now: float) -> None:
        self.held[key].append((now + self.delays[key], packet_id))

    def next_due(self) -> float | None:
        """When to wake next (the earliest due time, less the lead), None if nothing is held."""
        due = min((q[0][0] for q in self.held.values() if q), default=None)
        return None if due is None else due - self.lead

    def release(self, now: float) -> list[tuple[tuple[str, int], int]]:
        out = []
        for key, q in self.held.items():
            last = None
            while q and q[0][0] - self.lead <= now:
                due, last = q.popleft()
                late = now - due
                self.late_hist[LATE_BINS_US + max(-LATE_BINS_US, min(LATE_BINS_US, round(late * 1e6)))] += 1
                self.packets += 1
                self.lead = min(self.max_lead, max(0.0, self.lead + self.gain * late))
            if last is not None:
                out.append((key, last))
        return out

    def late_quantile_us(self, q: float) -> float | None:
        total = sum(self.late_hist)
        if total == 0:
            return None
        goal, seen = q * total, 0
        for i, count in enumerate(self.late_hist):
            seen += count
            if seen >= goal:
                return float(i - LATE_BINS_US)
        return float(LATE_BINS_US)

    def stats(self) -> dict:
        return {"packets": self.packets, "late_p50_us": self.late_quantile_us(0.5),
                "late_p90_us": self.late_quantile_us(0.9), "late_p99_us": self.late_quantile_us(0.99),
                "lead_us": round(self.lead * 1e6, 1)}


# ---- the process ---------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_queues(netns: str, queues: list[int]) -> socket.socket:
    """A netlink socket in namespace netns, bound to its netfilter queues."""
    here = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(there)
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        finally:
            _setns(here)
    finally:
        os.close(here)
        os.close(there)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    s.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    s.bind((0, 0))
    buf = bytearray(4096)
    for q in queues:
        for msg in (bind_message(q), params_message(q)):
            s.send(msg)
            n = s.recv_into(buf)
            err = parse_error(buf, n)
            if err:
                raise OSError(err, f"netfilter queue {q} in {netns}: {os.strerror(err)}")
    s.setblocking(False)
    return s


def _realtime() -> str:
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
        return "SCHED_RR 1"
    except (OSError, AttributeError):
        try:
            os.nice(-10)
            return "nice -10"
        except OSError:
            return "normal"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def serve(state_dir: Path) -> int:
    from hpcps.testbed.plan import TestbedPlan, delay_lines
    plan = TestbedPlan.from_json((state_dir / "plan.json").read_text())
    lines = delay_lines(plan)
    by_ns: dict[str, list[int]] = {}
    for ns, q, _ in lines:
        by_ns.setdefault(ns, []).append(q)
    socks = {ns: open_queues(ns, qs) for ns, qs in by_ns.items()}
    ns_of = {s.fileno(): ns for ns, s in socks.items()}
    line = DelayLine({(ns, q): d for ns, q, d in lines})
    stopping, asked = [], []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGUSR1, lambda *_: asked.append(True))
    # A signal wakes the select below at once (select itself resumes after a handler, PEP 475).
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    _libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)          # wake when asked, not up to 50 us later
    how = _realtime()
    _write(state_dir / "delay.ready", json.dumps({"pid": os.getpid(), "queues": len(lines), "priority": how}))
    buf = bytearray(1 << 16)
    readable = [*socks.values(), wake_r]
    while not stopping:
        due = line.next_due()
        timeout = None if due is None else max(0.0, due - time.monotonic())
        try:
            ready, _, _ = select.select(readable, [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for s in ready:
            if s is wake_r:
                try:
                    while wake_r.recv(64):
                        pass
                except BlockingIOError:
                    pass
                continue
            ns = ns_of[s.fileno()]
            while True:
                try:
                    n = s.recv_into(buf)
                except BlockingIOError:
                    break
                for q, pid in parse_packets(buf, n):
                    line.arrive((ns, q), pid, now)
        for (ns, q), last in line.release(time.monotonic()):
            socks[ns].send(verdict_batch_message(q, last))
        if asked:
            asked.clear()
            _write(state_dir / "delay.json", json.dumps(line.stats()))
    # Let go of whatever is still held, so that a testbed being taken down does not drop packets.
    for key, held in line.held.items():
        if held:
            socks[key[0]].send(verdict_batch_message(key[1], held[-1][1]))
    _write(state_dir / "delay.json", json.dumps(line.stats()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0] + "\n\nusage: python -m hpcps.testbed.delay STATE_DIR "
              "(started by python -m hpcps.testbed up; reads STATE_DIR/plan.json)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return serve(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
