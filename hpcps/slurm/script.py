"""Pure rendering of sbatch scripts and srun command lines from frozen parameter sets.

The same parameters always give the same text: options are sorted by name, every value is quoted, and
nothing reads the clock or the environment. Values go to two readers with different rules:

- the shell (command lines, script bodies): ``shlex.quote``;
- sbatch's own ``#SBATCH`` parser, which takes quotes but treats a backslash as an escape everywhere:
  ``directive_quote`` wraps the value in double quotes and escapes backslashes and double quotes.

Output file names are also Slurm filename patterns (``%j`` is the job id): ``literal_filename`` escapes
a path's own ``%`` so a directory named ``50%`` stays as it is.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields

# Values that need no quoting in either reader: keeps the common case readable ("--nodes=2").
_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def directive_quote(value: str) -> str:
    """Quote a value for a ``#SBATCH`` line (sbatch's parser, not the shell's)."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"an #SBATCH value cannot hold a line break: {value!r}")
    if _PLAIN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def shell_quote(value: str) -> str:
    """Quote a value for the shell; plain values stay bare."""
    return value if _PLAIN.fullmatch(value) else shlex.quote(value)


def literal_filename(path: str) -> str:
    """A path for ``--output``/``--error`` that Slurm does not expand: '%' doubled.

    A backslash in the name switches Slurm's pattern expansion off in a way that also drops the
    backslash, so such names are refused.
    """
    if "\\" in path:
        raise ValueError(f"Slurm cannot write output to a path with a backslash: {path!r}")
    return path.replace("%", "%%")


def format_command(argv: Sequence[str]) -> str:
    """A command line as the shell would take it back, every argument quoted where it needs it."""
    return " ".join(shell_quote(str(a)) for a in argv)


def _option_pairs(options: SlurmOptions) -> list[tuple[str, str | None]]:
    """(flag, value) pairs of the options that are set, sorted by flag. None value: a bare flag."""
    pairs: dict[str, str | None] = {}
    for f in fields(options):
        if f.name == "extra":
            continue
        value = getattr(options, f.name)
        if value is None or value is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        if value is True:
            pairs[flag] = None
        elif isinstance(value, tuple):
            if value:
                pairs[flag] = ",".join(value)
        else:
            pairs[flag] = str(value)
    for flag, value in options.extra:
        flag = flag if flag.startswith("-") else "--" + flag
        if flag in pairs:
            raise ValueError(f"option {flag} given twice (once in extra)")
        pairs[flag] = value
    return sorted(pairs.items())


@dataclass(frozen=True)
class SlurmOptions:
    """Options shared by sbatch and srun. Unset (None/False/empty) options are left out.

    ``nodelist`` is a tuple of node names (rendered comma-separated); ``time`` a Slurm duration
    ("5", "00:05:00"); ``output``/``error`` are Slurm filename patterns (see literal_filename);
    ``extra`` holds any other option as (flag, value or None for a bare flag).
    """
    job_name: str | None = None
    nodes: int | None = None
    ntasks: int | None = None
    nodelist: tuple[str, ...] = ()
    time: str | None = None
    output: str | None = None
    error: str | None = None
    chdir: str | None = None
    partition: str | None = None
    account: str | None = None
    exclusive: bool = False
    overcommit: bool = False
    extra: tuple[tuple[str, str | None], ...] = field(default=())

    def pairs(self) -> list[tuple[str, str | None]]:
        return _option_pairs(self)


@dataclass(frozen=True)
class SbatchOptions(SlurmOptions):
    """sbatch options; ``signal`` is e.g. "B:TERM@60" (signal the batch shell 60 s before the limit)."""
    signal: str | None = None
    requeue: bool = False
    parsable: bool = False


@dataclass(frozen=True)
class SrunOptions(SlurmOptions):
    """srun options; ``mpi`` is the PMI plugin ("pmi2", "pmix"); ``distribution="arbitrary"``
    places rank i on the i-th line of the file named by SLURM_HOSTFILE; ``kill_on_bad_exit`` ends the
    whole step when one task fails or is killed (else the other ranks may wait for it forever)."""
    mpi: str | None = None
    distribution: str | None = None
    overlap: bool = False
    kill_on_bad_exit: bool = False


def _as_args(pairs: Iterable[tuple[str, str | None]]) -> list[str]:
    return [flag if value is None else f"{flag}={value}" for flag, value in pairs]


def srun_argv(options: SrunOptions, command: Sequence[str]) -> list[str]:
    """``srun [sorted options] COMMAND...`` as an argument list."""
    if not command:
        raise ValueError("srun needs a command to run")
    return ["srun", *_as_args(options.pairs()), *command]


def sbatch_directives(options: SbatchOptions) -> list[str]:
    """The ``#SBATCH`` header lines for options, values quoted for sbatch's parser."""
    return [f"#SBATCH {flag}" if value is None else f"#SBATCH {flag}={directive_quote(value)}"
            for flag, value in options.pairs()]


def render_sbatch_script(options: SbatchOptions, body: Sequence[str], *, comment: str = "",
                         shell: str = "/bin/bash") -> str:
    """A whole batch script: shebang, optional comment lines, sorted ``#SBATCH`` header, then body lines.

    The body is shell text and is written as given: build it with shell_quote/format_command.
    """
    lines = [f"#!{shell}"]
    lines += [f"# {c}".rstrip() for c in comment.splitlines()] if comment else []
    lines += sbatch_directives(options)
    lines += list(body)
    return "\n".join(lines) + "\n"


def export_lines(env: dict[str, str]) -> list[str]:
    """``export NAME=value`` lines, sorted by name, values quoted; names must be shell identifiers."""
    out = []
    for name in sorted(env):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"not a valid environment variable name: {name!r}")
        out.append(f"export {name}={shell_quote(str(env[name]))}")
    return out


# srun reads these from its environment as defaults for options a trial does not set; inside an
# allocation they describe the allocation's shape (sbatch --ntasks-per-node=1 exports
# SLURM_NTASKS_PER_NODE=1), which would squeeze the trial's ranks. A trial's step starts without them.
ALLOCATION_SHAPE_VARS = (
    "SLURM_CPUS_PER_GPU", "SLURM_CPUS_PER_TASK", "SLURM_DISTRIBUTION", "SLURM_GPUS_PER_NODE",
    "SLURM_GPUS_PER_TASK", "SLURM_HOSTFILE", "SLURM_MEM_PER_CPU", "SLURM_MEM_PER_GPU", "SLURM_MEM_PER_NODE",
    "SLURM_NTASKS_PER_CORE", "SLURM_NTASKS_PER_GPU", "SLURM_NTASKS_PER_NODE", "SLURM_NTASKS_PER_SOCKET",
    "SLURM_TRES_PER_TASK",
)


@dataclass(frozen=True)
class TrialJob:
    """Everything a trial's batch script says: where it runs, on which nodes, what it runs.

    ``rank_nodes`` (if set) names the node of each rank in rank order; the script then writes
    nothing but uses the host file ``hostfile`` (written beside it by the launcher) with
    ``--distribution=arbitrary``, so rank i runs on rank_nodes[i].
    """
    trial_dir: str
    command: tuple[str, ...]
    nodes: tuple[str, ...]
    ntasks: int
    time: str | None
    job_name: str
    mpi: str | None = "pmi2"
    env: tuple[tuple[str, str], ...] = ()
    rank_nodes: tuple[str, ...] = ()
    partition: str | None = None
    account: str | None = None
    exclusive: bool = True
    extra_sbatch: tuple[tuple[str, str | None], ...] = ()
    output_name: str = "slurm.out"
    hostfile_name: str = "hostfile"

    def __post_init__(self):
        if not self.command:
            raise ValueError("a trial needs a command")
        if self.ntasks < 1:
            raise ValueError(f"ntasks must be >= 1, got {self.ntasks}")
        if not self.nodes:
            raise ValueError("a trial needs at least one node")
        if self.rank_nodes:
            if len(self.rank_nodes) != self.ntasks:
                raise ValueError(f"rank_nodes names {len(self.rank_nodes)} ranks but ntasks is {self.ntasks}")
            unknown = sorted(set(self.rank_nodes) - set(self.nodes))
            if unknown:
                raise ValueError(f"rank_nodes uses nodes not in nodes: {', '.join(unknown)}")

    @property
    def output_path(self) -> str:
        return self.trial_dir.rstrip("/") + "/" + self.output_name

    @property
    def hostfile_path(self) -> str:
        return self.trial_dir.rstrip("/") + "/" + self.hostfile_name

    def hostfile_text(self) -> str:
        return "".join(n + "\n" for n in self.rank_nodes)

    def srun_options(self, *, in_batch: bool) -> SrunOptions:
        """The step's options. Its output goes where srun's goes (the job's output file in a batch
        script; the file the launcher opens for a step); in a batch script the job has the name and limit."""
        return SrunOptions(
            job_name=None if in_batch else self.job_name,
            # With arbitrary distribution srun takes the node of each rank from the host file; an
            # explicit --nodelist of distinct names would contradict it.
            nodes=len(self.nodes), ntasks=self.ntasks, nodelist=() if self.rank_nodes else self.nodes,
            time=None if in_batch else self.time,
            mpi=self.mpi, distribution="arbitrary" if self.rank_nodes else None,
            overcommit=True,   # more ranks than CPUs on a node is how small nodes are emulated
            kill_on_bad_exit=True,   # a rank that dies ends the trial at once
        )

    def sbatch_options(self) -> SbatchOptions:
        out = literal_filename(self.output_path)
        return SbatchOptions(
            job_name=self.job_name, nodes=len(self.nodes), ntasks=self.ntasks, nodelist=self.nodes,
            time=self.time, output=out, error=out, chdir=self.trial_dir, partition=self.partition,
            account=self.account, exclusive=self.exclusive, overcommit=True, extra=self.extra_sbatch,
        )

    def step_env(self) -> dict[str, str]:
        env = dict(self.env)
        if self.rank_nodes:
            env["SLURM_HOSTFILE"] = self.hostfile_path
        return env

    def render_script(self) -> str:
        body = ["set -u", "unset " + " ".join(ALLOCATION_SHAPE_VARS), *export_lines(self.step_env()),
                "exec " + format_command(srun_argv(self.srun_options(in_batch=True), self.command))]
        return render_sbatch_script(self.sbatch_options(), body,
                                    comment=f"Trial job {self.job_name}: one srun step of {self.ntasks} ranks.")
