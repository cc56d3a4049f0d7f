#!/usr/bin/env bash
# TPU VM recipe: request a slice (queued resource), install this checkout on every worker, train on all workers
# at once, stream the log, stop, delete. Multi-slice (--num_slices=N > 1) requests N slices joined over DCN.
#
#   launch/tpu_vm.sh create --name=stiv-a --accelerator=v5p-256 --zone=us-east5-a --project=my-proj
#   launch/tpu_vm.sh status --name=stiv-a --zone=us-east5-a --project=my-proj    # wait for ACTIVE
#   launch/tpu_vm.sh setup  --name=stiv-a --accelerator=v5p-256 --zone=us-east5-a --project=my-proj
#   launch/tpu_vm.sh train  --name=stiv-a --accelerator=v5p-256 --zone=us-east5-a --project=my-proj \
#       --config=experiments/demo.py --workdir=gs://my-bucket/runs/stiv-a -- --config.total_steps=1000
#   launch/tpu_vm.sh logs   --name=stiv-a --zone=us-east5-a --project=my-proj     # worker 0, Ctrl-C to detach
#   launch/tpu_vm.sh stop   --name=stiv-a --accelerator=v5p-256 --zone=us-east5-a --project=my-proj
#   launch/tpu_vm.sh delete --name=stiv-a --zone=us-east5-a --project=my-proj
#
# Every command takes --dry-run: it prints the exact gcloud commands instead of running them.
# Flags for libtpu come from stiv_jax/launch/xla_flags.py (one versioned file), host counts from
# stiv_jax/launch/topology.py. The workdir of a multi-host run must be on shared storage (gs://...); compiled
# steps are cached in WORKDIR/compile_cache (config.compilation_cache_dir), so a restarted job does not recompile.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

[[ $# -ge 1 ]] || usage 2
ACTION=$1
shift
NAME="" ACCELERATOR="" NUM_SLICES=1 PROJECT="" ZONE="" RUNTIME_VERSION="" SPOT=0
CONFIG="experiments/demo.py" WORKDIR="" WORKER=0 TRAIN_ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --name=*) NAME=$(option_value "$1") ;;
    --accelerator=*) ACCELERATOR=$(option_value "$1") ;;
    --num_slices=*) NUM_SLICES=$(option_value "$1") ;;
    --project=*) PROJECT=$(option_value "$1") ;;
    --zone=*) ZONE=$(option_value "$1") ;;
    --runtime_version=*) RUNTIME_VERSION=$(option_value "$1") ;;
    --spot) SPOT=1 ;;
    --config=*) CONFIG=$(option_value "$1") ;;
    --workdir=*) WORKDIR=$(option_value "$1") ;;
    --worker=*) WORKER=$(option_value "$1") ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) die "unknown option $1 (see launch/tpu_vm.sh --help)" ;;
  esac
  shift
done
[[ -n $NAME ]] || die "--name=NAME is required (the queued resource / TPU VM name)"
[[ $NUM_SLICES =~ ^[1-9][0-9]*$ ]] || die "--num_slices must be a positive integer, got '${NUM_SLICES}'"

LOCATION=()
[[ -n $PROJECT ]] && LOCATION+=("--project=${PROJECT}")
[[ -n $ZONE ]] && LOCATION+=("--zone=${ZONE}")

need_accelerator() {
  [[ -n $ACCELERATOR ]] || die "--accelerator=TYPE is required for '${ACTION}' (e.g. v5p-256, v5litepod-256)"
}

# TPU VM names: one slice is NAME; N slices of a queued resource are NAME-0 .. NAME-(N-1).
node_names() {
  if [[ $NUM_SLICES == 1 ]]; then
    echo "$NAME"
  else
    local i
    for ((i = 0; i < NUM_SLICES; i++)); do echo "${NAME}-${i}"; done
  fi
}

# Software image per generation (Cloud TPU "TPU software versions" page).
default_runtime_version() {
  case $ACCELERATOR in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v4-*) echo "tpu-ubuntu2204-base" ;;
    *) die "no default runtime version for '${ACCELERATOR}'; pass --runtime_version=..." ;;
  esac
}

# Runs REMOTE_COMMAND on every worker of every slice (slices in parallel), or on one worker with --worker.
ssh_all_workers() {
  local remote_command=$1 node pid failed=0
  local pids=()
  while read -r node; do
    run_bg gcloud compute tpus tpu-vm ssh "$node" --worker=all "${LOCATION[@]}" "--command=${remote_command}"
    [[ $DRY_RUN == 1 ]] || pids+=("$!")
  done < <(node_names)
  for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
  done
  [[ $failed == 0 ]] || die "the command failed on at least one slice (see the output above)"
}

case $ACTION in
  create)
    need_accelerator
    RUNTIME_VERSION=${RUNTIME_VERSION:-$(default_runtime_version)}
    CREATE=(gcloud compute tpus queued-resources create "$NAME")
    if [[ $NUM_SLICES == 1 ]]; then
      CREATE+=("--node-id=${NAME}")
    else
      CREATE+=("--node-count=${NUM_SLICES}" "--node-prefix=${NAME}")
    fi
    CREATE+=("--accelerator-type=${ACCELERATOR}" "--runtime-version=${RUNTIME_VERSION}" "${LOCATION[@]}")
    [[ $SPOT == 1 ]] && CREATE+=(--spot)
    run "${CREATE[@]}"
    note "requested; watch with: launch/tpu_vm.sh status --name=${NAME} ... (state ACTIVE = ready)"
    ;;
  status)
    run gcloud compute tpus queued-resources describe "$NAME" "${LOCATION[@]}"
    ;;
  setup)
    need_accelerator
    ARCHIVE="/tmp/stiv_jax-${NAME}.tar.gz"
    if [[ $DRY_RUN != 1 ]] && [[ -n $(git -C "$STIV_REPO_ROOT" status --porcelain) ]]; then
      note "warning: uncommitted changes are not shipped (git archive HEAD); commit them first"
    fi
    run git -C "$STIV_REPO_ROOT" archive --format=tar.gz "--output=${ARCHIVE}" HEAD
    while read -r node; do
      run gcloud compute tpus tpu-vm scp "$ARCHIVE" "${node}:stiv_jax.tar.gz" --worker=all "${LOCATION[@]}"
    done < <(node_names)
    INSTALL="rm -rf stiv_jax && mkdir stiv_jax && tar -xzf stiv_jax.tar.gz -C stiv_jax"
    INSTALL+=" && python3 -m pip install -q -e './stiv_jax[tpu]'"
    # Multi-slice: shorter TCP retransmit timeout on the DCN route (MaxText's rto_setup.sh).
    [[ $NUM_SLICES -gt 1 ]] && INSTALL+=" && sudo bash stiv_jax/launch/dcn_tune.sh"
    ssh_all_workers "$INSTALL"
    ;;
  train)
    need_accelerator
    [[ -n $WORKDIR ]] || die "--workdir=gs://BUCKET/PATH is required for 'train' (shared by all hosts)"
    EXPECTED=$(stiv_py stiv_jax.launch.topology "--accelerator=${ACCELERATOR}" "--num_slices=${NUM_SLICES}")
    LIBTPU_ARGS=$(stiv_py stiv_jax.launch.xla_flags "--accelerator=${ACCELERATOR}" "--num_slices=${NUM_SLICES}")
    FLAGS_VERSION=$(stiv_py stiv_jax.launch.xla_flags --accelerator=x --version)
    note "libtpu flags version ${FLAGS_VERSION}; expecting ${EXPECTED} hosts"
    TRAIN=(python3 -m stiv_jax.train "--config=${CONFIG}" "--workdir=${WORKDIR}" "${TRAIN_ARGS[@]}")
    REMOTE="cd stiv_jax && export $(join_cmd "LIBTPU_INIT_ARGS=${LIBTPU_ARGS}" "STIV_EXPECTED_PROCESSES=${EXPECTED}")"
    REMOTE+=" && (setsid nohup $(join_cmd "${TRAIN[@]}") > ~/stiv_train.log 2>&1 < /dev/null"
    REMOTE+=" & echo \$! > ~/stiv_train.pid)"
    ssh_all_workers "$REMOTE"
    note "started; stream the log with: launch/tpu_vm.sh logs --name=${NAME} ..."
    ;;
  logs)
    FIRST_NODE=$(node_names | head -n 1)
    run gcloud compute tpus tpu-vm ssh "$FIRST_NODE" "--worker=${WORKER}" "${LOCATION[@]}" \
      "--command=tail -n 200 -F ~/stiv_train.log"
    ;;
  stop)
    # shellcheck disable=SC2016  # $(...) is for the remote shell
    ssh_all_workers 'if [ -f ~/stiv_train.pid ]; then kill "$(cat ~/stiv_train.pid)" && rm ~/stiv_train.pid; fi'
    ;;
  delete)
    run gcloud compute tpus queued-resources delete "$NAME" --force --quiet "${LOCATION[@]}"
    ;;
  -h | --help) usage 0 ;;
  *) die "unknown command '${ACTION}'; expected create|status|setup|train|logs|stop|delete" ;;
esac
