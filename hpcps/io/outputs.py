"""The one policy for what commands write (docs/reliability.md), and the one atomic write.

- An output is never one of the command's own inputs: the same file by path (after resolving links)
  or by identity (a hard link) is refused before anything runs.
- A file is written whole under a temporary name in its own directory and renamed over its target,
  so a reader sees the old file or the new one, never a part; a write that fails leaves nothing.
- Whether an existing file may be replaced is each output's documented choice (replace=False
  refuses it), and what is there must be a regular file (a directory, a device such as /dev/full
  or a pipe is refused).

check_output() is called for every output before a command does its work; write_text(),
write_bytes() and atomic_path() do the writing.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from hpcps.config.errors import ConfigError


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether a and b name one file: by identity when both exist (hard and symbolic links), else by
    their resolved paths."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_output(path: str | Path, flag: str, *, inputs: Iterable[str | Path | None] = (), replace: bool,
                 directory: bool = False, example: str = "out") -> Path:
    """Raise ConfigError unless the command may write path (a file, or with directory a folder that
    receives files); return it. replace: whether an existing file may be replaced (atomically);
    example: a file name to suggest when path is a directory."""
    path = Path(path)
    for given in inputs:
        if given is not None and str(given) != "-" and same_file(path, given):
            raise ConfigError(flag, None, f"{path} is also an input of this command ({given}); "
                                          "choose another output")
    if path.exists() or path.is_symlink():
        try:
            mode = path.stat().st_mode
        except OSError as e:
            raise ConfigError(flag, None, f"cannot use {path}: {e.strerror}") from None
        if directory:
            if not stat.S_ISDIR(mode):
                raise ConfigError(flag, None, f"{path} exists and is not a directory")
            if not os.access(path, os.W_OK | os.X_OK):
                raise ConfigError(flag, None, f"cannot write into {path}: not writable")
            return path
        if stat.S_ISDIR(mode):
            raise ConfigError(flag, None, f"{path} is a directory; give a file name such as {path / example}")
        if not stat.S_ISREG(mode):
            raise ConfigError(flag, None, f"{path} exists and is not a regular file; choose another output")
        if not replace:
            raise ConfigError(flag, None, f"{path} exists, and what {flag} names is never overwritten: "
                                          "remove it or choose another")
    parent = path if directory and not path.exists() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(flag, None, f"cannot create {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(flag, None, f"cannot create {path}: {parent} is not writable")
    return path


def _new_file_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)          # a replaced file keeps its permissions
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path, flag: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside path; when the body returns, what it wrote there replaces path.

    Folders are created as needed. On an exception the temporary file is removed and path is left as
    it was; an OSError becomes a ConfigError naming flag (or the file) and the reason."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, _new_file_mode(path))
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise ConfigError(flag or str(path), None, f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes, flag: str | None = None) -> None:
    """Write data to path atomically (see atomic_path)."""
    with atomic_path(path, flag) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str, flag: str | None = None) -> None:
    """Write text (UTF-8) to path atomically (see atomic_path)."""
    write_bytes(path, text.encode("utf-8"), flag)
