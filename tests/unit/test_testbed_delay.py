"""The delay line without root: netfilter-queue messages encoded and parsed, and packets held FIFO per
queue for that queue's delay, released in batches, with the lead that makes up for late wake-ups."""

import struct

import pytest

from hpcps.testbed.delay import (
    LATE_BINS_US,
    NFNL_SUBSYS_QUEUE,
    NFQA_CFG_F_FAIL_OPEN,
    NFQA_CFG_F_GSO,
    NFQNL_MSG_PACKET,
    DelayLine,
    bind_message,
    encode,
    params_message,
    parse_error,
    parse_packets,
    verdict_batch_message,
)


def packet_message(queue: int, packet_id: int, extra_first: bool = False) -> bytes:
    """What the kernel sends for a queued packet (the packet header attribute and some others)."""
    attrs = [(9, b"\0" * 4)] if extra_first else []          # e.g. NFQA_IFINDEX_OUTDEV before the header
    attrs.append((1, struct.pack(">IHB", packet_id, 0x0800, 3) + b"\0"))
    attrs.append((3, struct.pack(">I", 7)))                   # NFQA_MARK
    return encode(NFQNL_MSG_PACKET, queue, attrs)


def test_messages_have_netlink_framing():
    for msg in (bind_message(1), params_message(0), verdict_batch_message(1, 42)):
        length, kind = struct.unpack_from("=IH", msg)
        assert length == len(msg) and length % 4 == 0
        assert kind >> 8 == NFNL_SUBSYS_QUEUE
        assert struct.unpack_from(">H", msg, 18)[0] in (0, 1)          # the queue number, big-endian
    v = verdict_batch_message(1, 42)
    assert struct.unpack_from("=HH", v, 20) == (12, 2)                  # NFQA_VERDICT_HDR, 8 bytes
    assert struct.unpack_from(">II", v, 24) == (1, 42)                  # NF_ACCEPT, up to id 42
    p = params_message(0)
    flags = NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN
    assert p.endswith(struct.pack("=HH", 8, 4) + struct.pack(">I", flags) + struct.pack("=HH", 8, 5)
                      + struct.pack(">I", flags))
    assert struct.unpack_from("=HH", p, 20) == (9, 2) and p[24:29] == struct.pack(">IB", 0, 1)   # ids only


def test_parse_packets_reads_every_message_of_a_buffer():
    buf = packet_message(0, 5) + packet_message(1, 9, extra_first=True) + bind_message(0)
    assert parse_packets(buf, len(buf)) == [(0, 5), (1, 9)]
    assert parse_packets(buf, 10) == []                                 # a short read parses nothing
    assert parse_packets(bytearray(64), 64) == []


def test_parse_error():
    ack = struct.pack("=IHHII", 36, 2, 0, 0, 0) + struct.pack("=i", 0) + b"\0" * 16
    err = struct.pack("=IHHII", 36, 2, 0, 0, 0) + struct.pack("=i", -1) + b"\0" * 16
    assert parse_error(ack, len(ack)) == 0 and parse_error(err, len(err)) == 1
    assert parse_error(packet_message(0, 1), 40) is None


def test_packets_are_held_for_their_queue_delay_and_released_in_order():
    line = DelayLine({"a": 0.010, "b": 0.001}, gain=0.0)
    line.arrive("a", 1, 0.0)
    line.arrive("a", 2, 0.002)
    line.arrive("b", 7, 0.002)
    assert line.next_due() == pytest.approx(0.003)
    assert line.release(0.0029) == []
    assert line.release(0.003) == [("b", 7)]
    assert line.release(0.009) == []
    assert line.next_due() == pytest.approx(0.010)
    assert line.release(0.013) == [("a", 2)]                           # one batch verdict covers ids 1 and 2
    assert line.next_due() is None and line.packets == 3
    stats = line.stats()
    assert stats["packets"] == 3 and stats["late_p50_us"] == 1000.0 and stats["late_p99_us"] == 3000.0


def test_the_lead_learns_the_wake_up_lateness_but_stays_under_a_quarter_of_the_delay():
    line = DelayLine({"q": 0.001}, gain=0.5)
    t = 0.0
    for i in range(200):             # every wake-up comes 30 us after it was asked for
        line.arrive("q", i, t)
        wake = line.next_due() + 30e-6
        assert line.release(wake) == [("q", i)]
        t = wake
    assert line.lead == pytest.approx(30e-6, rel=0.05)
    assert abs(line.late_quantile_us(0.5)) <= 1
    capped = DelayLine({"q": 100e-6}, gain=1.0)
    capped.arrive("q", 1, 0.0)
    capped.release(0.001)            # 900 us late
    assert capped.lead == pytest.approx(25e-6)


def test_lateness_is_clipped_to_the_histogram():
    line = DelayLine({"q": 0.0}, gain=0.0)
    line.arrive("q", 1, 0.0)
    line.release(5.0)
    assert line.late_quantile_us(1.0) == LATE_BINS_US
