"""Slurm: batch scripts, parsing Slurm's output, and running tuning trials through Slurm.

Modules
-------
- ``script``   pure rendering of sbatch scripts and srun/sbatch command lines (sorted flags, every value
               quoted; golden-file tested).
- ``parse``    pure parsers: job ids from ``sbatch --parsable``, ``scontrol show job|step|node -o`` records,
               job states, exit codes, ``sacct --parsable2``, GRES.
- ``client``   ``SlurmClient``: the only code that runs sbatch, srun, scontrol, sacct and scancel.
- ``launcher`` ``TrialLauncher``: submit, follow, time-limit and cancel trials.
- ``nodes``    hostlist compression, the starting cluster file from ``scontrol show node``, the
               allocation's nodes (``allocation_nodes(os.environ)``) and ``unknown_nodes`` to check a
               cluster file's names against Slurm's.
- ``mpi``      which ``srun --mpi=`` plugin the installed MPI needs (``python -m hpcps.slurm.mpi``).

Running trials (what the tuner's slurm backend calls)
-----------------------------------------------------
::

    from hpcps.slurm import TrialLauncher, TrialStatus

    launcher = TrialLauncher()            # inside sbatch/salloc: srun steps; outside: one sbatch job each
    handle = launcher.submit(
        trial_dir,                        # created; receives slurm.out, hostfile, job.sh or command.txt
        [sys.executable, "-m", "hpcps.train", "--job", job, "--schedule", sched, "--trace", trace],
        nodes=["n1", "n2", "n6"],         # Slurm node names = the cluster file's node names
        ntasks=5,
        time_limit_s=120,                 # None: no limit of ours
        env={"OMP_NUM_THREADS": "1"},     # added to every rank's environment
        rank_nodes=["n1", "n1", "n2", "n6", "n6"],   # optional: node of each rank, in rank order
    )
    state = launcher.poll(handle)         # never blocks for long; call it every second or so
    state = launcher.wait(handle)         # or block until the trial has ended
    state = launcher.wait(handle, stop_requested=lambda: why_stop)   # ... cancelling it once why_stop is set
    launcher.cancel(handle, reason="...") # ends as CANCELLED with that reason

``TrialLauncher(client=None, *, mode="auto"|"step"|"job", mpi=None, partition=None, account=None,
exclusive=True, extra_sbatch=(), slurm_margin_s=60, kill_grace_s=30, max_query_failures=30, environ=None,
clock=time.monotonic)``. ``submit`` raises ``SlurmError`` when Slurm refuses the trial (bad node name,
sbatch failing); ``poll`` rides out a few failed Slurm queries.

``poll`` returns a frozen ``TrialState``:

- ``status``: ``TrialStatus.PENDING`` (waiting for nodes), ``RUNNING``, ``COMPLETED`` (exit 0),
  ``FAILED`` (non-zero exit, signal, node failure, srun could not start the step), ``TIMEOUT`` (past the
  limit: stopped by the launcher, or by Slurm's backstop limit), ``CANCELLED`` (``cancel()`` or an
  outside ``scancel``); ``status.done`` / ``state.done`` is True for the last four.
- ``exit_code`` and ``signal`` (when known), ``reason`` (one line for trials.csv: e.g.
  "exit code 1: ValueError: ..." taken from the trial's output, "exceeded the trial time limit of
  120 s", the cancel reason), ``slurm_id`` ("12" for a job, "12.3" for a step), ``elapsed_s``.

A final state is reported only when the trial's processes are gone, so its nodes are free again.

Inside an allocation each trial is ``srun --nodes --ntasks [--nodelist | --distribution=arbitrary with
SLURM_HOSTFILE] --mpi=PLUGIN --overcommit --kill-on-bad-exit --time`` run in the background
(``subprocess.Popen``); ``--kill-on-bad-exit`` ends the whole step when one rank dies (the others would
otherwise wait for it in MPI). Its state comes from the srun process and ``scontrol show step``.
Outside, each trial is an ``sbatch`` job (``--exclusive`` on its nodes) whose state comes from
``scontrol show job``, then ``sacct`` where accounting is configured, else the jobcomp/filetxt file.
Slurm counts limits in minutes; the launcher enforces ``time_limit_s`` itself (from when the step
starts, or when Slurm starts the job) with ``scancel`` and sets Slurm's own limit a minute or more later
as a backstop.

Trial steps in one allocation take whole nodes unless they overlap; run concurrent trials on
disjoint node sets.
"""

from hpcps.slurm.client import SlurmClient, SlurmError
from hpcps.slurm.launcher import TrialHandle, TrialLauncher, TrialState, TrialStatus
from hpcps.slurm.mpi import srun_mpi_plugin
from hpcps.slurm.nodes import allocation_nodes, compress_hostlist, render_cluster_toml, unknown_nodes
from hpcps.slurm.parse import SlurmNode, SlurmParseError, parse_nodes

__all__ = ["SlurmClient", "SlurmError", "TrialHandle", "TrialLauncher", "TrialState", "TrialStatus",
           "srun_mpi_plugin", "allocation_nodes", "compress_hostlist", "render_cluster_toml", "unknown_nodes",
           "SlurmNode", "SlurmParseError", "parse_nodes"]
