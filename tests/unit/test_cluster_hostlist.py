import pytest

from hpcps.cluster.hostlist import MAX_NAMES, HostlistError, expand_hostlist


@pytest.mark.parametrize("text, names", [
    ("n1", ["n1"]),
    ("n[1-2]", ["n1", "n2"]),
    ("gpu[01-04,07]", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]),
    ("a,b", ["a", "b"]),
    (" a , b ", ["a", "b"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("n[3]", ["n3"]),
    ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
    ("n[1-2],gpu[1-2].ib", ["n1", "n2", "gpu1.ib", "gpu2.ib"]),
    ("[1-2]x", ["1x", "2x"]),
])
def test_expansion(text, names):
    assert expand_hostlist(text) == names


@pytest.mark.parametrize("text, words", [
    ("", "empty hostlist"),
    ("   ", "empty hostlist"),
    ("n[1-", "never closed"),
    ("n]", "without '['"),
    ("n[[1]]", "nested"),
    ("n[3-1]", "backwards"),
    ("n[a-b]", "bad range"),
    ("n[]", "bad range"),
    ("n[1-2-3]", "bad range"),
    ("a,,b", "empty name"),
    ("a b", "bad character"),
    ("n[1-2]x y", "bad character"),
    (f"n[1-{MAX_NAMES + 5}]", "more than"),
])
def test_bad_hostlists_say_what_is_wrong(text, words):
    with pytest.raises(HostlistError) as e:
        expand_hostlist(text)
    assert words in str(e.value)


def test_duplicates_are_left_to_the_caller():
    assert expand_hostlist("n1,n[1-2]") == ["n1", "n1", "n2"]
