"""hpcps.emulate.rank.RankEmulator with stand-in communicators: the fabric templates of the messages that
cross between emulated nodes, the node clock each rank gets, posting a transfer on the fabric, taking
turns to measure a reference step, and clean-up."""

import fcntl
import os
import time

import numpy as np
import pytest

from hpcps.cluster import Cluster, Node, NodeType
from hpcps.cluster.placement import NodePlan, NodeSchedule, NodeWorker
from hpcps.emulate import rank as rank_mod
from hpcps.emulate.fabric import FlowSpec, now
from hpcps.emulate.rank import RankEmulator, _fabric_dir
from hpcps.ps.exchange import Transfer
from hpcps.ps.plan import MessagePlan
from hpcps.sim.profile import WorkloadProfile

FAST = NodeType("fast", speed=2.0, cores=4, nic_gbps=8.0, latency_us=100.0, fixed_ms=3.0)
SLOW = NodeType("slow", speed=0.5, cores=2, nic_gbps=1.6, latency_us=20.0)
CLUSTER = Cluster("c", (FAST, SLOW), (Node("a1", FAST), Node("b1", SLOW), Node("b2", SLOW)))
# rank 0 on a1: the server and a worker of 2 threads; ranks 1 and 2 on b1: workers of 1 and 3 threads
PLACEMENT = NodeSchedule((NodePlan("a1", True, (NodeWorker(8, 2),)),
                          NodePlan("b1", False, (NodeWorker(4, 1), NodeWorker(4, 3))))).to_rank_schedule()
PLAN = MessagePlan.build(1024, [0], [0, 1, 2], bucket_bytes=4 * 512)          # two pieces of 512
PROFILE = WorkloadProfile("toy", 1024, 1e-3, 5e-4, 0.5, 0.9, 0.25, 1e6)


class Req:
    def Test(self):
        return True


class Comm:
    """Rank `rank` of a job whose rank 0's emulator made `path`."""

    def __init__(self, rank, path=None, gathered=()):
        self.rank, self.path, self.gathered = rank, path, list(gathered)
        self.barriers, self.ibarriers, self.sent = 0, 0, []

    def Get_rank(self):
        return self.rank

    def bcast(self, obj, root=0):
        assert root == 0
        if self.rank == 0:
            self.sent.append(obj)
            return obj
        return self.path

    def Barrier(self):
        self.barriers += 1

    def Ibarrier(self):
        self.ibarriers += 1
        return Req()

    def allgather(self, mine):
        return [mine] + self.gathered


@pytest.fixture
def pair():
    """Rank 0's and rank 1's emulators, dilation 2, on the fabric."""
    c0 = Comm(0)
    e0 = RankEmulator(c0, CLUSTER, PLACEMENT, PLAN, PROFILE, 2)
    c1 = Comm(1, c0.sent[0])
    e1 = RankEmulator(c1, CLUSTER, PLACEMENT, PLAN, PROFILE, 2)
    yield e0, e1, c0, c1
    if os.path.isdir(e0._dir):
        e1.close(c1)
        e0.close(c0)


def test_the_templates_are_the_messages_between_two_nodes(pair):
    e0, e1, c0, _ = pair
    assert e0.rank == 0 and e1.rank == 1 and e0.dilation == 2.0 and isinstance(e0.dilation, float)
    assert e0.node_of == [0, 1, 1] and e0.node_name == "a1" and e1.node_name == "b1"
    assert c0.sent == [os.path.join(e0._dir, "fabric")] and c0.barriers == 1
    assert os.path.basename(e0._dir).startswith("hpcps-fabric-")
    # Pulls (piece by piece, to each worker off the server's node), then pushes; rank 0 serves itself.
    assert e0._templates == {("pull", 0, 1): 0, ("pull", 0, 2): 1, ("pull", 1, 1): 2, ("pull", 1, 2): 3,
                             ("push", 1, 1): 4, ("push", 1, 2): 5, ("push", 0, 1): 6, ("push", 0, 2): 7}
    assert e1._templates == e0._templates
    pull, push = FlowSpec(0, 1, 0, 1, 2048), FlowSpec(1, 0, 1, 0, 2048)
    assert e0.fabric.templates[0] == pull and e0.fabric.templates[4] == push
    assert e0.fabric.templates[1] == FlowSpec(0, 2, 0, 1, 2048)
    # The nodes' NICs and latencies, dilated: bandwidth divided by 2, latency multiplied by 2.
    np.testing.assert_allclose(e1.fabric.capacity, [0.5e9, 0.1e9, 0.1e9, 0.5e9, 0.1e9, 0.1e9])
    np.testing.assert_allclose(e1.fabric.latency, [200e-6, 40e-6, 40e-6])
    assert e1.fabric.dilation == 2.0


def test_each_rank_gets_its_nodes_clock_and_the_thread_model(pair):
    e0, e1, _, _ = pair
    assert (e0.clock.dilation, e0.clock.speed, e0.clock.fixed_s) == (2.0, 2.0, 0.003)
    assert e0.clock.thread_factor == pytest.approx(PROFILE.step_time(8, 2, 4, 2) / PROFILE.step_time(8, 1, 1, 1))
    assert (e1.clock.speed, e1.clock.fixed_s) == (0.5, 0.0)
    # b1's workers ask for 4 threads on 2 cores between them
    assert e1.clock.thread_factor == pytest.approx(PROFILE.step_time(4, 1, 2, 4) / PROFILE.step_time(4, 1, 1, 1))
    assert e1.clock.thread_factor > 1.0 > e0.clock.thread_factor
    assert e0.clock.reference_cpu_s is None
    t = e0.time()
    assert now() / 2 - 1 < t <= now() / 2


def test_without_a_profile_or_a_worker_threads_change_nothing():
    c0 = Comm(0)
    e0 = RankEmulator(c0, CLUSTER, PLACEMENT, PLAN, None, 1)
    assert e0.clock.thread_factor == 1.0
    server_only = NodeSchedule((NodePlan("a1", True, ()), NodePlan("b1", False, (NodeWorker(4),)))).to_rank_schedule()
    plan = MessagePlan.build(1024, [0], [1])
    c = Comm(0)
    e = RankEmulator(c, CLUSTER, server_only, plan, PROFILE, 1)
    assert e.clock.thread_factor == 1.0 and e.clock.speed == 2.0
    e.close(c)
    e0.close(c0)


def test_on_real_links_no_message_is_delayed():
    c0 = Comm(0)
    e0 = RankEmulator(c0, CLUSTER, PLACEMENT, PLAN, PROFILE, 1.5, network="real")
    assert e0._templates == {} and e0.fabric.templates == []
    assert e0.template(Transfer("pull", "send", 0, 1, 2048, 0), 0) is None
    e0.close(c0)


def test_the_template_of_a_transfer_is_named_by_its_worker(pair):
    e0, _, _, _ = pair
    assert e0.template(Transfer("pull", "send", 0, 2, 2048, 1), 0) == 3        # server 0 to worker 2
    assert e0.template(Transfer("pull", "recv", 0, 0, 2048, 1), 2) == 3        # worker 2 from server 0
    assert e0.template(Transfer("push", "send", 0, 0, 2048, 0), 1) == 6        # worker 1 to server 0
    assert e0.template(Transfer("push", "recv", 0, 1, 2048, 0), 0) == 6        # server 0 from worker 1
    assert e0.template(Transfer("push", "local", 0, 0, 2048, 0), 0) is None    # rank 0 serving itself


def test_a_message_arrives_once_both_ends_posted_it(pair):
    e0, e1, _, _ = pair
    send, recv = Transfer("pull", "send", 0, 1, 2048, 1), Transfer("pull", "recv", 0, 0, 2048, 1)
    e0.post(send, 4, 0)
    time.sleep(0.02)
    assert not e0.arrived(2, 4) and not e1.arrived(2, 4)            # only the sender posted
    row = e0.fabric.slots[2 * 2 + 0]
    assert not np.isnan(row[1]) and np.isnan(row[2])               # posted by the source side only
    e1.post(recv, 4, 1)
    deadline = time.monotonic() + 10
    while not e1.arrived(2, 4) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert e1.arrived(2, 4) and e0.arrived(2, 4) and not e0.arrived(3, 4)
    e0.post(Transfer("push", "local", 0, 0, 2048, 0), 5, 0)         # node-local: nothing on the fabric
    assert (e0.fabric.slots[:, 0] == 5).sum() == 0


def test_close_removes_the_fabric_once_every_rank_closed(pair):
    e0, e1, c0, c1 = pair
    e1.close(c1)
    assert os.path.isdir(e0._dir) and c1.barriers == 2
    e0.close(c0)
    assert not os.path.exists(e0._dir) and c0.barriers == 2


def test_the_fabric_lives_in_shared_memory_when_there_is_some():
    d = _fabric_dir()
    try:
        assert os.path.basename(d).startswith("hpcps-fabric-") and os.path.isdir(d)
        if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            assert os.path.dirname(d) == "/dev/shm"
    finally:
        os.rmdir(d)


def test_reference_steps_are_timed_in_turns_and_alike_workers_share_the_least(pair, monkeypatch):
    e0, e1, c0, c1 = pair
    turns = os.path.join(e0._dir, "turns")
    seen = []

    def timed(step):
        with open(turns) as f:                  # another rank may not take its turn meanwhile
            with pytest.raises(BlockingIOError):
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen.append(step())
        return 0.004

    monkeypatch.setattr(rank_mod, "fastest_cpu_time", timed)
    c1.gathered = [(8, 0.003), (4, 0.001), (8, 0.005), (None, None)]
    assert e1.measure_reference(c1, lambda: "stepped", key=8) == 0.003
    assert seen == ["stepped"] and e1.clock.reference_cpu_s == 0.003 and c1.ibarriers == 2
    with open(turns) as f:                      # the turn is over
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f, fcntl.LOCK_UN)
    c0.gathered = [(8, 0.003)]
    assert e0.measure_reference(c0, None) is None and e0.clock.reference_cpu_s is None and c0.ibarriers == 2
    c1.gathered = [(None, None)]
    assert e1.measure_reference(c1, lambda: None, key=3) == 0.004 and e1.clock.reference_cpu_s == 0.004
    # A batch size an earlier run recorded (--step-costs) is charged as recorded and not timed again,
    # even where this run's alike workers timed less; one not recorded is timed as before.
    seen.clear()
    c1.gathered = [(8, 0.001), (8, None)]
    assert e1.measure_reference(c1, lambda: "stepped", key=8, known={8: 0.007}) == 0.007
    assert seen == [] and e1.clock.reference_cpu_s == 0.007
    c1.gathered = [(3, None)]
    assert e1.measure_reference(c1, lambda: "stepped", key=3, known={8: 0.007}) == 0.004 and seen == ["stepped"]


def test_default_dilation_exactly():
    from hpcps.emulate.rank import default_dilation
    from hpcps.sim.engine import compute_times
    crawl = NodeType("crawl", speed=0.25, cores=2, nic_gbps=1.0)
    cluster = Cluster("s", (crawl,), (Node("s1", crawl), Node("s2", crawl)))
    placement = NodeSchedule((NodePlan("s1", True, (NodeWorker(4),)),)).to_rank_schedule()
    assert default_dilation(cluster, placement) == 1.0                 # 2 x 0.25 is under real time
    assert default_dilation(CLUSTER, PLACEMENT) == 4.0                 # 2 x the fastest node used (speed 2)
    # With the profile: each worker's real step here alone, one thread, over its emulated step, doubled.
    emulated = compute_times(CLUSTER, PLACEMENT, PROFILE)
    ratios = [PROFILE.step_time(w.batch, 1, 1, 1) / e for w, e in zip(PLACEMENT.schedule.workers, emulated)]
    assert default_dilation(CLUSTER, PLACEMENT, PROFILE) == pytest.approx(max(4.0, 2.0 * max(ratios)))
    slow_only = NodeSchedule((NodePlan("b1", True, (NodeWorker(64, 3),)),)).to_rank_schedule()
    emulated = compute_times(CLUSTER, slow_only, PROFILE)
    expected = 2.0 * PROFILE.step_time(64, 1, 1, 1) / emulated[0]
    assert expected > 1.0 and default_dilation(CLUSTER, slow_only, PROFILE) == pytest.approx(expected)


def test_close_does_not_fail_on_a_fabric_already_gone(pair):
    import shutil
    e0, e1, c0, c1 = pair
    e1.close(c1)
    shutil.rmtree(e0._dir)
    e0.close(c0)                                # the clean-up never fails the run
    assert not os.path.exists(e0._dir)


@pytest.mark.parametrize("missing", ["isdir", "access"])
def test_without_writable_shared_memory_the_fabric_goes_to_the_temporary_directory(monkeypatch, missing):
    import tempfile
    real_isdir, real_access = os.path.isdir, os.access
    if missing == "isdir":
        monkeypatch.setattr(rank_mod.os.path, "isdir", lambda p: False if p == "/dev/shm" else real_isdir(p))
    else:
        monkeypatch.setattr(rank_mod.os, "access", lambda p, m: False if p == "/dev/shm" else real_access(p, m))
    d = _fabric_dir()
    try:
        assert os.path.dirname(d) == tempfile.gettempdir() and os.path.basename(d).startswith("hpcps-fabric-")
    finally:
        os.rmdir(d)
