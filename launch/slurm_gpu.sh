#!/usr/bin/env bash
# GPU cluster recipe (SLURM): submits launch/slurm_gpu.sbatch, which runs one JAX process per node with srun;
# stiv_jax.launch.distributed initialises jax.distributed from the SLURM environment.
#
#   launch/slurm_gpu.sh --nodes=2 --gpus_per_node=8 --partition=gpu --time=24:00:00 \
#       --config=experiments/demo.py --workdir=/shared/runs/stiv-gpu -- --config.total_steps=1000
#   squeue --me ; tail -F logs/stiv_jax-<JOBID>.out ; scancel <JOBID>
#
# --dry-run prints the sbatch command and the srun command the job would run. The workdir must be on storage
# every node sees (it also holds the compilation cache, WORKDIR/compile_cache, that a requeued job reads).
# Run from anywhere: the job runs in this checkout (sbatch --chdir).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

NODES=2 GPUS_PER_NODE=8 PARTITION="" TIME_LIMIT="" ACCOUNT="" JOB_NAME="stiv_jax"
CONFIG="experiments/demo.py" WORKDIR="" TRAIN_ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --nodes=*) NODES=$(option_value "$1") ;;
    --gpus_per_node=*) GPUS_PER_NODE=$(option_value "$1") ;;
    --partition=*) PARTITION=$(option_value "$1") ;;
    --time=*) TIME_LIMIT=$(option_value "$1") ;;
    --account=*) ACCOUNT=$(option_value "$1") ;;
    --job_name=*) JOB_NAME=$(option_value "$1") ;;
    --config=*) CONFIG=$(option_value "$1") ;;
    --workdir=*) WORKDIR=$(option_value "$1") ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) die "unknown option $1 (see launch/slurm_gpu.sh --help)" ;;
  esac
  shift
done
[[ -n $WORKDIR ]] || die "--workdir=DIR is required (on storage shared by all nodes)"
[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '${NODES}'"

SBATCH=(sbatch "--job-name=${JOB_NAME}" "--nodes=${NODES}" --ntasks-per-node=1 "--gpus-per-node=${GPUS_PER_NODE}"
  --exclusive "--chdir=${STIV_REPO_ROOT}" "--output=logs/%x-%j.out")
[[ -n $PARTITION ]] && SBATCH+=("--partition=${PARTITION}")
[[ -n $TIME_LIMIT ]] && SBATCH+=("--time=${TIME_LIMIT}")
[[ -n $ACCOUNT ]] && SBATCH+=("--account=${ACCOUNT}")
SBATCH+=("${STIV_REPO_ROOT}/launch/slurm_gpu.sbatch" "--config=${CONFIG}" "--workdir=${WORKDIR}" "${TRAIN_ARGS[@]}")

if [[ $DRY_RUN == 1 ]]; then
  run "${SBATCH[@]}"
  # What the job itself runs (its environment as SLURM would set it for this request).
  SLURM_SUBMIT_DIR="$STIV_REPO_ROOT" SLURM_NNODES="$NODES" DRY_RUN=1 \
    bash "${STIV_REPO_ROOT}/launch/slurm_gpu.sbatch" "--config=${CONFIG}" "--workdir=${WORKDIR}" "${TRAIN_ARGS[@]}"
else
  mkdir -p "${STIV_REPO_ROOT}/logs"
  run "${SBATCH[@]}"
fi
