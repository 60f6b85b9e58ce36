#!/bin/bash
# One hpcps training run as a Slurm batch job.
#
#   sbatch slurm/train.sh [JOB.toml] [more python -m hpcps.train options]
#   sbatch --nodes=4 --ntasks=16 --time=01:00:00 slurm/train.sh jobs/cifar.toml --iterations 500
#
# Options on the sbatch command line override the #SBATCH values below. Submit from the project
# directory: the job activates $SLURM_SUBMIT_DIR/.venv (HPCPS_VENV names another environment) and
# reads relative paths from there. HPCPS_SRUN_MPI overrides the srun MPI plugin (default: pmi2 for
# MPICH, pmix for Open MPI, from the installed mpi4py).
#SBATCH --job-name=hpcps-train
#SBATCH --nodes=2
#SBATCH --ntasks=4
#SBATCH --time=00:30:00
#SBATCH --output=%x-%j.out
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-.}"
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

echo "hpcps-train: job $job on ${SLURM_JOB_NUM_NODES:-?} node(s) (${SLURM_JOB_NODELIST:-?}), ${SLURM_NTASKS:-?} ranks, srun --mpi=$mpi"
exec srun --mpi="$mpi" python -m hpcps.train --job "$job" "$@"
