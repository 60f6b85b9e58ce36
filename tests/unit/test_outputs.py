"""The output policy (hpcps.io.outputs) and the trace writer's share of it."""

import os
import stat

import pytest

from hpcps.config import ConfigError
from hpcps.io.outputs import atomic_path, check_output, same_file, write_text
from hpcps.trace.errors import TraceWriteError
from tests.unit.test_trace_file import write_trace


def test_same_file_by_path_link_and_hard_link(tmp_path):
    a = tmp_path / "a.toml"
    a.write_text("x")
    (tmp_path / "sub").mkdir()
    os.link(a, tmp_path / "hard.toml")
    os.symlink(a, tmp_path / "soft.toml")
    assert same_file(a, tmp_path / "sub" / ".." / "a.toml")
    assert same_file(a, tmp_path / "hard.toml") and same_file(a, tmp_path / "soft.toml")
    assert not same_file(a, tmp_path / "other.toml")
    assert same_file(tmp_path / "new.toml", tmp_path / "sub" / ".." / "new.toml")   # neither exists yet


@pytest.mark.parametrize("make, kwargs, words", [
    (lambda p: p.write_text("in"), {"inputs": ["{p}"], "replace": True}, "is also an input of this command"),
    (lambda p: p.write_text("old"), {"replace": False}, "is never overwritten"),
    (lambda p: p.mkdir(), {"replace": True}, "is a directory; give a file name"),
    (lambda p: os.mkfifo(p), {"replace": True}, "not a regular file"),
    (lambda p: p.write_text(""), {"replace": True, "directory": True}, "exists and is not a directory"),
])
def test_outputs_that_are_refused(tmp_path, make, kwargs, words):
    p = tmp_path / "out"
    make(p)
    kwargs = dict(kwargs, inputs=[str(x).format(p=p) for x in kwargs.get("inputs", [])])
    with pytest.raises(ConfigError) as e:
        check_output(p, "--flag", **kwargs)
    assert str(e.value).startswith("--flag: ") and words in str(e.value)


def test_outputs_under_a_file_or_a_device_cannot_be_created(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        check_output(tmp_path / "f" / "x.json", "--json", replace=True)
    with pytest.raises(ConfigError, match="not a regular file"):
        check_output("/dev/full", "--json", replace=True)
    assert check_output(tmp_path / "new" / "deeper" / "x.json", "--json", replace=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_folder_without_write_permission(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="not writable"):
        check_output(ro / "x.json", "--json", replace=True)


def test_atomic_write_replaces_whole_keeps_permissions_and_leaves_no_temporary_file(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("old")
    os.chmod(p, 0o640)
    write_text(p, "new")
    assert p.read_text() == "new" and stat.S_IMODE(p.stat().st_mode) == 0o640
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("the writer failed")
    assert p.read_text() == "new" and sorted(x.name for x in tmp_path.iterdir()) == ["x.txt"]


def test_a_write_that_fails_is_a_config_error_naming_the_flag(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=r"^--out: cannot write .*f/x"):
        write_text(tmp_path / "f" / "x", "text", "--out")


def test_the_trace_writer_never_opens_an_existing_file(tmp_path):
    path = tmp_path / "t.h5"
    path.write_bytes(b"another run's trace")
    with pytest.raises(TraceWriteError, match="cannot write the trace: File exists"):
        write_trace(path)
    assert path.read_bytes() == b"another run's trace"
