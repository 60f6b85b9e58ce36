#!/bin/bash
# One hpcps training run as a Slurm batch job, with checkpoints, that requeues itself at its time limit.
#
#   sbatch slurm/train.sh [JOB.toml] [more python -m hpcps.train options]
#   sbatch --nodes=4 --ntasks=16 --time=01:00:00 slurm/train.sh jobs/cifar.toml --iterations 500
#
# Options on the sbatch command line override the #SBATCH values below. Submit from the project
# directory: the job activates $SLURM_SUBMIT_DIR/.venv (HPCPS_VENV names another environment) and
# reads relative paths from there. HPCPS_SRUN_MPI overrides the srun MPI plugin (default: pmi2 for
# MPICH, pmix for Open MPI, from the installed mpi4py).
#
# Checkpoints go to $HPCPS_CHECKPOINT (default results/runs/train-<job id>/checkpoints; see
# docs/checkpoints.md): every training.checkpoint_every iterations and checkpoint_every_s seconds of the
# job, at the end, and when Slurm warns of the time limit: 90 s before it, Slurm sends SIGUSR1 to this
# script, which passes it on to the ranks (through srun); rank 0 has them checkpoint at the next
# iteration boundary and stop (exit status 75), and this script requeues the job, at most
# $HPCPS_MAX_REQUEUES times (default 3). A job requeued by anyone (scontrol requeue: SIGTERM to every
# process, then SIGKILL after the cluster's KillWait) checkpoints the same way if it has the time.
# Whenever the directory holds a checkpoint, the run resumes from the newest good one: a requeued job,
# or a new job given the same HPCPS_CHECKPOINT, goes on where the last one stopped.
#SBATCH --job-name=hpcps-train
#SBATCH --nodes=2
#SBATCH --ntasks=4
#SBATCH --time=00:30:00
#SBATCH --signal=B:USR1@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -uo pipefail

cd "${SLURM_SUBMIT_DIR:-.}" || exit 2
venv="${HPCPS_VENV:-$PWD/.venv}"
if [ ! -f "$venv/bin/activate" ]; then
    echo "slurm/train.sh: error: no Python environment at '$venv' (run 'make venv' in the project, or set HPCPS_VENV)" >&2
    exit 2
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"

job="${1:-jobs/default.toml}"
[ "$#" -gt 0 ] && shift
mpi="${HPCPS_SRUN_MPI:-$(python -m hpcps.slurm.mpi)}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
ckpt="${HPCPS_CHECKPOINT:-results/runs/train-${SLURM_JOB_ID:-local}/checkpoints}"
max_requeues="${HPCPS_MAX_REQUEUES:-3}"
restarts="${SLURM_RESTART_COUNT:-0}"
args=(--job "$job" --checkpoint "$ckpt")
resuming=""
if compgen -G "$ckpt/ckpt-*.h5" >/dev/null; then
    args+=(--resume "$ckpt")
    resuming=", resuming from $ckpt"
fi

echo "hpcps-train: job $job on ${SLURM_JOB_NUM_NODES:-?} node(s) (${SLURM_JOB_NODELIST:-?}), ${SLURM_NTASKS:-?} ranks, srun --mpi=$mpi, checkpoints in $ckpt (start $((restarts + 1))$resuming)"
# srun runs in the background so that this shell can pass signals on at once (bash runs a trap only
# after a foreground command ends); srun forwards them to every rank. A rank that dies ends the step.
signal=""
srun --mpi="$mpi" --kill-on-bad-exit=1 python -m hpcps.train "${args[@]}" "$@" &
step=$!
trap 'signal=USR1; echo "hpcps-train: SIGUSR1 (time limit near): checkpoint and stop" >&2; kill -USR1 "$step" 2>/dev/null' USR1
trap 'signal=TERM; kill -TERM "$step" 2>/dev/null' TERM
# A wait cut short by a trapped signal returns while srun still runs: wait again until it ends.
while kill -0 "$step" 2>/dev/null; do
    wait "$step"
done
wait "$step"   # bash keeps the status of a finished child: this is srun's own
status=$?
# Warned of the time limit and not finished: the ranks stopped at a checkpoint (status 75; or 143 when
# srun ended the last ranks itself, --kill-on-bad-exit taking the first 75 for a failure). Requeued, the
# job resumes from the newest good checkpoint whatever happened.
if [ "$signal" = USR1 ] && [ "$status" -ne 0 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    if [ "$restarts" -lt "$max_requeues" ]; then
        echo "hpcps-train: stopped (status $status); requeueing the job (restart $((restarts + 1)) of at most $max_requeues)"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    echo "hpcps-train: stopped (status $status); not requeued: $restarts restart(s) already (HPCPS_MAX_REQUEUES=$max_requeues); continue with HPCPS_CHECKPOINT=$ckpt sbatch slurm/train.sh ..." >&2
fi
exit "$status"
