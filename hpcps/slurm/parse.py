"""Pure parsers of what Slurm's commands print: no subprocess, no file access.

- ``sbatch --parsable``: ``"123"`` or ``"123;cluster"``.
- ``scontrol show job|step|node -o``: one record per line of ``Key=Value`` pairs separated by single
  spaces, where values may themselves hold spaces (``WorkDir=/data/my runs``, ``Reason=Not responding``)
  or ``=`` (``TRES=cpu=4,node=2``). The jobcomp/filetxt file uses the same format.
- ``sacct --parsable2 --noheader``: ``|``-separated fields in the order asked for.
- Job states (``COMPLETED``, ``CANCELLED by 0``, ``TIMEOUT`` ...) and exit codes (``"1:0"``, ``"0:9"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A record key: an upper-case word, possibly with ':' or '/' parts ("ReqB:S:C:T", "CPUs/Task",
# "MCS_label"), then '='. Keys start upper case; requiring that keeps "my dir/b=1" inside a value.
_KEY = re.compile(r"(?:^| )([A-Z][A-Za-z0-9_]*(?:[:/][A-Za-z0-9_*]+)*)=")


class SlurmParseError(ValueError):
    """Output of a Slurm command that does not have the expected form; the message quotes it."""


def parse_job_id(sbatch_output: str) -> str:
    """The job id from ``sbatch --parsable`` output ("123" or "123;cluster"); also accepts
    the human form "Submitted batch job 123". Warnings sbatch prints before the id are skipped."""
    for line in reversed(sbatch_output.strip().splitlines()):
        line = line.strip()
        m = (re.fullmatch(r"(\d+)(?:_\d+)?(?:;\S+)?", line)
             or re.fullmatch(r"Submitted batch job (\d+)(?: on cluster \S+)?", line))
        if m:
            return m.group(1)
    raise SlurmParseError(f"no job id in sbatch output: {sbatch_output!r}")


def parse_record(line: str) -> dict[str, str]:
    """One ``Key=Value ...`` line (``scontrol show ... -o``, jobcomp/filetxt) as a dict.

    A value runs until the next `` Key=`` whose key starts upper case, so values with spaces and '='
    survive; surrounding spaces are stripped (scontrol pads some fields). A value that itself
    contains `` Upper=`` cannot be told apart from a new key.
    """
    line = line.rstrip("\n").strip()
    if not line:
        return {}
    matches = list(_KEY.finditer(line))
    if not matches or matches[0].start() != 0:
        raise SlurmParseError(f"not a Key=Value record: {line!r}")
    out: dict[str, str] = {}
    for m, nxt in zip(matches, matches[1:] + [None]):
        end = nxt.start() if nxt is not None else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    return out


def parse_records(text: str) -> list[dict[str, str]]:
    """Every non-empty line of ``scontrol show ... -o`` (or a jobcomp file) as a dict."""
    return [parse_record(line) for line in text.splitlines() if line.strip()]


def parse_exit_code(text: str) -> tuple[int, int]:
    """``"1:0"`` -> (1, 0): the exit status and the signal that ended the process (0 for none)."""
    m = re.fullmatch(r"\s*(-?\d+):(\d+)\s*", text or "")
    if not m:
        raise SlurmParseError(f"exit code must look like 'STATUS:SIGNAL' (e.g. 0:0), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_duration(text: str) -> float | None:
    """Slurm durations ("45", "05:00", "1:02:03", "2-01:00:00") in seconds; None for UNLIMITED or N/A.

    A bare number is minutes, as in ``--time``; RunTime fields always carry a colon.
    """
    text = (text or "").strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "N/A", "NONE", ""):
        return None
    days = 0
    if "-" in text:
        d, _, text = text.partition("-")
        if not d.isdigit():
            raise SlurmParseError(f"bad duration {text!r}")
        days = int(d)
    parts = text.split(":")
    if not all(p.isdigit() for p in parts) or len(parts) > 3:
        raise SlurmParseError(f"bad duration {text!r}")
    nums = [int(p) for p in parts]
    if len(nums) == 1:
        secs = nums[0] * 60
    elif len(nums) == 2:
        secs = nums[0] * 60 + nums[1]
    else:
        secs = nums[0] * 3600 + nums[1] * 60 + nums[2]
    return float(days * 86400 + secs)


def format_time_limit(seconds: float) -> str:
    """A time limit for ``--time`` in whole minutes, rounded up ("1" for 20 s): Slurm counts minutes."""
    if seconds <= 0:
        raise ValueError(f"time limit must be > 0 seconds, got {seconds}")
    minutes = -(-int(seconds + 0.999999) // 60)
    return str(max(1, minutes))


# What a Slurm job state means for someone waiting on it.
PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                            "RESV_DEL_HOLD", "SUSPENDED", "STOPPED", "RESIZING"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "UPDATE_DB", "POWER_UP_NODE"})
FINAL_STATES = {
    "COMPLETED": "COMPLETED",
    "FAILED": "FAILED",
    "NODE_FAIL": "FAILED",
    "BOOT_FAIL": "FAILED",
    "OUT_OF_MEMORY": "FAILED",
    "SPECIAL_EXIT": "FAILED",
    "PREEMPTED": "FAILED",
    "REVOKED": "FAILED",
    "LAUNCH_FAILED": "FAILED",
    "TIMEOUT": "TIMEOUT",
    "DEADLINE": "TIMEOUT",
    "CANCELLED": "CANCELLED",
}


def normalize_state(state: str) -> str:
    """Slurm's job state as one upper-case word: "CANCELLED by 0" -> "CANCELLED", "RUNNING+" -> "RUNNING"."""
    word = (state or "").strip().split(" ")[0].rstrip("+")
    return word.upper()


def classify_state(state: str) -> str:
    """One of PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED for a Slurm job or step state.

    States Slurm may add later count as RUNNING (not final), so nobody gives up on a live job.
    """
    word = normalize_state(state)
    if word in FINAL_STATES:
        return FINAL_STATES[word]
    if word in PENDING_STATES:
        return "PENDING"
    return "RUNNING"


@dataclass(frozen=True)
class SacctRow:
    job_id: str          # "12", "12.batch", "12.0"
    state: str           # as sacct prints it, e.g. "CANCELLED by 0"
    exit_code: str       # "0:0"
    elapsed: str         # "00:00:03"
    node_list: str
    reason: str


SACCT_FIELDS = ("JobID", "State", "ExitCode", "Elapsed", "NodeList", "Reason")


def parse_sacct(text: str) -> list[SacctRow]:
    """Rows of ``sacct --parsable2 --noheader --format=`` + ",".join(SACCT_FIELDS)."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != len(SACCT_FIELDS):
            raise SlurmParseError(f"sacct line has {len(fields)} fields, expected {len(SACCT_FIELDS)} "
                                  f"({', '.join(SACCT_FIELDS)}): {line!r}")
        rows.append(SacctRow(*fields))
    return rows


def parse_gres(text: str) -> dict[str, int]:
    """GPUs and other generic resources from a node's ``Gres=`` value: "gpu:a100:4(S:0-1),mps:100"
    -> {"gpu": 4, "mps": 100}; "(null)" -> {}."""
    out: dict[str, int] = {}
    text = (text or "").strip()
    if text in ("", "(null)", "N/A"):
        return out
    for item in re.split(r",(?![^()]*\))", text):
        item = re.sub(r"\(.*\)$", "", item.strip())
        parts = item.split(":")
        name = parts[0]
        count = 1
        if len(parts) > 1 and parts[-1].isdigit():
            count = int(parts[-1])
        elif len(parts) > 1 and (m := re.fullmatch(r"(\d+)([KMGT]?)", parts[-1])):
            count = int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[m.group(2)]
        out[name] = out.get(name, 0) + count
    return out


def parse_features(text: str) -> tuple[str, ...]:
    """Node features "gpu,fast" -> ("gpu", "fast"); "(null)" -> ()."""
    text = (text or "").strip()
    if text in ("", "(null)"):
        return ()
    return tuple(f for f in text.split(",") if f)


@dataclass(frozen=True)
class SlurmNode:
    """What ``scontrol show node`` says of one node that matters for a cluster file."""
    name: str
    cpus: int
    memory_mb: int | None        # RealMemory; None when Slurm reports 1 (not configured)
    gres: tuple[tuple[str, int], ...]
    features: tuple[str, ...]
    state: str
    partitions: tuple[str, ...] = ()

    @property
    def gpus(self) -> int:
        return dict(self.gres).get("gpu", 0)


def parse_nodes(text: str) -> list[SlurmNode]:
    """Nodes from ``scontrol show node -o`` (one line per node)."""
    nodes = []
    for rec in parse_records(text):
        if "NodeName" not in rec:
            raise SlurmParseError(f"scontrol node record without NodeName: {rec!r}")
        try:
            cpus = int(rec.get("CPUTot", rec.get("CPUs", "0")) or 0)
            mem = int(rec.get("RealMemory", "0") or 0)
        except ValueError:
            raise SlurmParseError(f"node {rec['NodeName']}: CPUTot and RealMemory must be integers: {rec!r}") from None
        gres = parse_gres(rec.get("Gres", ""))
        nodes.append(SlurmNode(
            name=rec["NodeName"], cpus=cpus, memory_mb=mem if mem > 1 else None,
            gres=tuple(sorted(gres.items())),
            features=parse_features(rec.get("AvailableFeatures", rec.get("Features", ""))),
            state=rec.get("State", ""),
            partitions=parse_features(rec.get("Partitions", "")),
        ))
    return nodes
