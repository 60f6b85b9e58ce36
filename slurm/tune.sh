#!/bin/bash
# An hpcps tuning run as a Slurm batch job: the tuner runs in the batch step (on the first node of
# the allocation) and runs each trial as an srun job step on the nodes the trial's schedule uses.
#
#   sbatch slurm/tune.sh [JOB.toml] [more python -m hpcps.tune options]
#   sbatch slurm/tune.sh                   # jobs/hetero8.toml: its cluster is the 8 nodes n1..n8
#   sbatch --nodes=16 --time=08:00:00 slurm/tune.sh jobs/cifar.toml --cluster site.toml --budget 60
#
# Options on the sbatch command line override the #SBATCH values below. Submit from the project
# directory: the job activates $SLURM_SUBMIT_DIR/.venv (HPCPS_VENV names another environment).
# Defaults the environment can change: HPCPS_STRATEGY (structured), HPCPS_BUDGET (20),
# HPCPS_OUT (results/runs/tune-<job id>). Options given after JOB win over these
# (--iterations, --timeout, --seed, --cluster, --codecs, --syncs, --resume: see python -m hpcps.tune --help).
# The allocation must hold every node of the cluster file (the job's `cluster` key or --cluster):
# give --nodes=N or --nodelist=... to match it.
#
# 120 s before the time limit Slurm sends SIGTERM to this script, which passes it on to the tuner so
# that it cancels its running trial and saves its state; scancel does the same. A requeued job
# (scontrol requeue) starts again with --resume, appending to its log; a new job continues a stopped
# run when given --resume and the same HPCPS_OUT.
#SBATCH --job-name=hpcps-tune
#SBATCH --nodes=8
#SBATCH --exclusive
#SBATCH --time=04:00:00
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
set -uo pipefail

cd "${SLURM_SUBMIT_DIR:-.}" || exit 2
venv="${HPCPS_VENV:-$PWD/.venv}"
if [ ! -f "$venv/bin/activate" ]; then
    echo "slurm/tune.sh: error: no Python environment at '$venv' (run 'make venv' in the project, or set HPCPS_VENV)" >&2
    exit 2
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"

job="${1:-jobs/hetero8.toml}"   # a job with a cluster key (jobs/default.toml has none: give --cluster)
[ "$#" -gt 0 ] && shift
out="${HPCPS_OUT:-results/runs/tune-${SLURM_JOB_ID:-local}}"
args=(--backend slurm --job "$job" --strategy "${HPCPS_STRATEGY:-structured}" --budget "${HPCPS_BUDGET:-20}" --out "$out")
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ -f "$out/state.json" ]; then   # a requeued job goes on
    args+=(--resume)
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

echo "hpcps-tune: job $job on ${SLURM_JOB_NUM_NODES:-?} node(s) (${SLURM_JOB_NODELIST:-?}), results in $out"
# The tuner runs in the background so that this shell can pass SIGTERM on at once (bash runs a trap
# only after a foreground command ends).
python -m hpcps.tune "${args[@]}" "$@" &
tuner=$!
trap 'echo "hpcps-tune: SIGTERM: asking the tuner to save its state and stop" >&2; kill -TERM "$tuner" 2>/dev/null' TERM
trap 'kill -INT "$tuner" 2>/dev/null' INT
# A wait cut short by a trapped signal returns while the tuner still runs: wait again until it ends.
while kill -0 "$tuner" 2>/dev/null; do
    wait "$tuner"
done
wait "$tuner"   # bash keeps the status of a finished child: this is the tuner's own
exit $?
