"""Golden files: rendered text recorded in this directory, compared line by line.

    HPCPS_UPDATE_GOLDEN=1 python -m pytest tests/unit     # record the current output as the new golden
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

GOLDEN_DIR = Path(__file__).resolve().parent


def check_golden(name: str, text: str) -> None:
    path = GOLDEN_DIR / name
    if os.environ.get("HPCPS_UPDATE_GOLDEN") == "1":
        path.write_text(text)
        return
    if not path.is_file():
        raise AssertionError(f"no golden file {path}; record it with: HPCPS_UPDATE_GOLDEN=1 python -m pytest "
                             f"tests/unit (then review and commit it)")
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            fromfile=f"golden/{name}", tofile="rendered now"))
        raise AssertionError(f"rendered text differs from {path}:\n{diff}\nIf the change is meant, refresh the "
                             f"record with: HPCPS_UPDATE_GOLDEN=1 python -m pytest tests/unit (and commit it)")
