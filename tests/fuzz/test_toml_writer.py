"""The one TOML writer reads back to what it was given, whatever the keys, strings and nesting."""

import tomllib

import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcps.config.toml_writer import dumps, toml_key, toml_string

scalars = st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.booleans(),
                    st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                      max_leaves=12)
tables = st.dictionaries(st.text(max_size=5), values, max_size=5)


@settings(max_examples=300)
@given(tables, st.text(max_size=30))
def test_round_trip(table, comment):
    text = dumps(table, comment)
    assert tomllib.loads(text) == table
    assert len(tomllib.loads(text)) == len(tomllib.loads(tomli_w.dumps(table)))


@settings(max_examples=200)
@given(st.text(max_size=10), st.text(min_size=0, max_size=10))
def test_strings_and_keys_for_hand_laid_files(key, value):
    assert tomllib.loads(f"{toml_key(key)} = {toml_string(value)}\n") == {key: value}


def test_short_arrays_stay_on_one_line():
    assert dumps({"servers": [0, 3], "rows": [[1, 2], [3, 4]]}) == (
        "servers = [0, 3]\nrows = [\n    [1, 2],\n    [3, 4],\n]\n")
