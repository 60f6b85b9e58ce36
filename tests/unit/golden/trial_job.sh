#!/bin/bash
# Trial job hpcps-trial-7: one srun step of 5 ranks.
#SBATCH --chdir="/scratch/runs/tune 1/trial 'seven' \"7\" 50%"
#SBATCH --error="/scratch/runs/tune 1/trial 'seven' \"7\" 50%%/slurm.out"
#SBATCH --exclusive
#SBATCH --job-name=hpcps-trial-7
#SBATCH --nodelist=n1,n2,n6
#SBATCH --nodes=3
#SBATCH --ntasks=5
#SBATCH --output="/scratch/runs/tune 1/trial 'seven' \"7\" 50%%/slurm.out"
#SBATCH --overcommit
#SBATCH --partition=debug
#SBATCH --time=3
set -u
unset SLURM_CPUS_PER_GPU SLURM_CPUS_PER_TASK SLURM_DISTRIBUTION SLURM_GPUS_PER_NODE SLURM_GPUS_PER_TASK SLURM_HOSTFILE SLURM_MEM_PER_CPU SLURM_MEM_PER_GPU SLURM_MEM_PER_NODE SLURM_NTASKS_PER_CORE SLURM_NTASKS_PER_GPU SLURM_NTASKS_PER_NODE SLURM_NTASKS_PER_SOCKET SLURM_TRES_PER_TASK
export HPCPS_TRACE='/scratch/runs/tune 1/trace "7".h5'
export OMP_NUM_THREADS=1
export SLURM_HOSTFILE='/scratch/runs/tune 1/trial '"'"'seven'"'"' "7" 50%/hostfile'
exec srun --distribution=arbitrary --kill-on-bad-exit --mpi=pmi2 --nodes=3 --ntasks=5 --overcommit '/opt/my env/bin/python' -m hpcps.train --job '/data/it'"'"'s jobs/digits.toml' --schedule 'schedule $1.toml'
