#!/usr/bin/env bash
# XPK / GKE recipe: build and push the image, submit a (multi-slice) training workload, stream its log, delete.
#
#   launch/xpk.sh build  --image=gcr.io/my-proj/stiv_jax:v1
#   launch/xpk.sh create --cluster=my-cluster --workload=stiv-a --accelerator=v5litepod-256 --num_slices=2 \
#       --image=gcr.io/my-proj/stiv_jax:v1 --project=my-proj --zone=us-west4-a \
#       --config=experiments/demo.py --workdir=gs://my-bucket/runs/stiv-a -- --config.total_steps=1000
#   launch/xpk.sh logs   --cluster=my-cluster --workload=stiv-a --project=my-proj --zone=us-west4-a
#   launch/xpk.sh list   --cluster=my-cluster --project=my-proj --zone=us-west4-a
#   launch/xpk.sh delete --cluster=my-cluster --workload=stiv-a --project=my-proj --zone=us-west4-a
#
# Every command takes --dry-run: it prints the exact docker / xpk / kubectl commands instead of running them.
# A restarted workload (--max_restarts) loads its compiled step from WORKDIR/compile_cache instead of compiling.
# Multi-slice (--num_slices > 1): slices talk over DCN; the command exports the DCN data-parallel libtpu flags
# (stiv_jax/launch/xla_flags.py), runs launch/dcn_tune.sh (TCP rto_min, the pods run privileged), and the
# config must put the slice axis on data (`config.mesh.dcn = dict(data=-1)`). --max_restarts lets the JobSet
# restart the job after a crash or a hang-watchdog exit; training resumes from the newest checkpoint.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

[[ $# -ge 1 ]] || usage 2
ACTION=$1
shift
CLUSTER="" WORKLOAD="" ACCELERATOR="" NUM_SLICES=1 IMAGE="" PROJECT="" ZONE="" MAX_RESTARTS=3
CONFIG="experiments/demo.py" WORKDIR="" TRAIN_ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --cluster=*) CLUSTER=$(option_value "$1") ;;
    --workload=*) WORKLOAD=$(option_value "$1") ;;
    --accelerator=*) ACCELERATOR=$(option_value "$1") ;;
    --num_slices=*) NUM_SLICES=$(option_value "$1") ;;
    --image=*) IMAGE=$(option_value "$1") ;;
    --project=*) PROJECT=$(option_value "$1") ;;
    --zone=*) ZONE=$(option_value "$1") ;;
    --max_restarts=*) MAX_RESTARTS=$(option_value "$1") ;;
    --config=*) CONFIG=$(option_value "$1") ;;
    --workdir=*) WORKDIR=$(option_value "$1") ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) die "unknown option $1 (see launch/xpk.sh --help)" ;;
  esac
  shift
done
[[ $NUM_SLICES =~ ^[1-9][0-9]*$ ]] || die "--num_slices must be a positive integer, got '${NUM_SLICES}'"

LOCATION=()
[[ -n $PROJECT ]] && LOCATION+=("--project=${PROJECT}")
[[ -n $ZONE ]] && LOCATION+=("--zone=${ZONE}")

require() {
  local value=$1 option=$2
  [[ -n $value ]] || die "${option} is required for '${ACTION}'"
}

case $ACTION in
  build)
    require "$IMAGE" "--image=REGISTRY/NAME:TAG"
    run docker build -f "${STIV_REPO_ROOT}/launch/Dockerfile" -t "$IMAGE" "$STIV_REPO_ROOT"
    run docker push "$IMAGE"
    ;;
  create)
    require "$CLUSTER" "--cluster=NAME"
    require "$WORKLOAD" "--workload=NAME"
    require "$ACCELERATOR" "--accelerator=TYPE (e.g. v5p-256, v5litepod-256)"
    require "$IMAGE" "--image=REGISTRY/NAME:TAG"
    require "$WORKDIR" "--workdir=gs://BUCKET/PATH"
    EXPECTED=$(stiv_py stiv_jax.launch.topology "--accelerator=${ACCELERATOR}" "--num_slices=${NUM_SLICES}")
    LIBTPU_ARGS=$(stiv_py stiv_jax.launch.xla_flags "--accelerator=${ACCELERATOR}" "--num_slices=${NUM_SLICES}")
    note "libtpu flags version $(stiv_py stiv_jax.launch.xla_flags --accelerator=x --version); ${EXPECTED} hosts"
    COMMAND="export $(join_cmd "LIBTPU_INIT_ARGS=${LIBTPU_ARGS}" "STIV_EXPECTED_PROCESSES=${EXPECTED}")"
    [[ $NUM_SLICES -gt 1 ]] && COMMAND+=" && bash launch/dcn_tune.sh"
    COMMAND+=" && $(join_cmd python3 -m stiv_jax.train "--config=${CONFIG}" "--workdir=${WORKDIR}" "${TRAIN_ARGS[@]}")"
    run xpk workload create "--cluster=${CLUSTER}" "--workload=${WORKLOAD}" "--tpu-type=${ACCELERATOR}" \
      "--num-slices=${NUM_SLICES}" "--docker-image=${IMAGE}" "--max-restarts=${MAX_RESTARTS}" \
      "${LOCATION[@]}" "--command=${COMMAND}"
    ;;
  logs)
    require "$CLUSTER" "--cluster=NAME"
    require "$WORKLOAD" "--workload=NAME"
    require "$ZONE" "--zone=ZONE"
    CREDENTIALS=(gcloud container clusters get-credentials "$CLUSTER" "--location=${ZONE%-*}")
    [[ -n $PROJECT ]] && CREDENTIALS+=("--project=${PROJECT}")
    run "${CREDENTIALS[@]}"
    # Host 0 of slice 0: JobSet labels its pods by slice (job-index) and host (job-completion-index).
    SELECTOR="jobset.sigs.k8s.io/jobset-name=${WORKLOAD},jobset.sigs.k8s.io/job-index=0"
    SELECTOR+=",batch.kubernetes.io/job-completion-index=0"
    run kubectl logs -f --tail=200 "--selector=${SELECTOR}"
    ;;
  list)
    require "$CLUSTER" "--cluster=NAME"
    run xpk workload list "--cluster=${CLUSTER}" "${LOCATION[@]}"
    ;;
  delete)
    require "$CLUSTER" "--cluster=NAME"
    require "$WORKLOAD" "--workload=NAME"
    run xpk workload delete "--cluster=${CLUSTER}" "--workload=${WORKLOAD}" "${LOCATION[@]}"
    ;;
  -h | --help) usage 0 ;;
  *) die "unknown command '${ACTION}'; expected build|create|logs|list|delete" ;;
esac
