"""When a training run counts as on a testbed: the same HPCPS_TESTBED on every rank, one network
namespace per node."""

from hpcps.testbed.ranks import on_testbed, rank_identity

NODES = ["n1", "n1", "n2", "n3"]


def test_ranks_on_distinct_namespaces_per_node_are_on_the_testbed():
    ids = [("tb:12", 10), ("tb:12", 10), ("tb:12", 11), ("tb:12", 12)]
    assert on_testbed(ids, NODES) == ("tb", 12.0)


def test_anything_else_is_not():
    assert on_testbed([], []) is None
    assert on_testbed([("tb:12", 10)], NODES) is None                                        # counts differ
    assert on_testbed([("", 10), ("", 10), ("", 11), ("", 12)], NODES) is None               # no variable
    assert on_testbed([("tb:12", 10), ("tb:12", 10), ("tb:2", 11), ("tb:12", 12)], NODES) is None   # two values
    assert on_testbed([("tb:x", 10), ("tb:x", 10), ("tb:x", 11), ("tb:x", 12)], NODES) is None      # malformed
    # An exported variable on ranks that all share one namespace (mpiexec on one machine): not a testbed.
    assert on_testbed([("tb:12", 10)] * 4, NODES) is None
    # One node's ranks in two namespaces, or an unknown namespace.
    assert on_testbed([("tb:12", 10), ("tb:12", 13), ("tb:12", 11), ("tb:12", 12)], NODES) is None
    assert on_testbed([("tb:12", 0), ("tb:12", 0), ("tb:12", 11), ("tb:12", 12)], NODES) is None


def test_rank_identity_reads_the_variable_and_the_namespace():
    value, inode = rank_identity({"HPCPS_TESTBED": "tb:3"})
    assert value == "tb:3" and inode > 0
    assert rank_identity({}) == ("", inode)
