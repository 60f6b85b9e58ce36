#!/bin/bash
# A training run.
#SBATCH --chdir="/home/me/my project"
#SBATCH --error=%x-%j.out
#SBATCH --job-name=hpcps-train
#SBATCH --nodes=2
#SBATCH --ntasks=4
#SBATCH --output=%x-%j.out
#SBATCH --signal=B:TERM@60
#SBATCH --time=00:30:00
set -eu
srun --mpi=pmi2 python -m hpcps.train
