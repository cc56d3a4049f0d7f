#!/usr/bin/env bash
# Multi-slice DCN network tuning, run as root on every TPU host before training (tpu_vm.sh setup and the xpk
# command do it when --num_slices > 1): a 5 ms minimum TCP retransmit timeout on the default route, so a lost
# packet between slices costs milliseconds instead of the 200 ms Linux default. Source: MaxText rto_setup.sh /
# preflight.sh. Never fails the job: where the route cannot be changed (no root, no `ip`), it warns and exits 0.
#
#   sudo bash launch/dcn_tune.sh [--dry-run]
# shellcheck source-path=SCRIPTDIR
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ ${1:-} == --dry-run ]] && DRY_RUN=1

if ! command -v ip > /dev/null; then
  note "dcn_tune: no 'ip' command; skipping (DCN collectives will use the default TCP timeouts)"
  exit 0
fi
read -r -a DEFAULT_ROUTE <<< "$(ip route show default | head -n 1)"
if [[ ${#DEFAULT_ROUTE[@]} -eq 0 ]]; then
  note "dcn_tune: no default route; skipping"
  exit 0
fi
# Re-state the route with rto_min appended (an existing rto_min is replaced).
ROUTE=()
skip_next=0
for word in "${DEFAULT_ROUTE[@]}"; do
  if [[ $skip_next == 1 ]]; then skip_next=0; continue; fi
  if [[ $word == rto_min ]]; then skip_next=1; continue; fi
  ROUTE+=("$word")
done
if ! run ip route change "${ROUTE[@]}" rto_min 5ms; then
  note "dcn_tune: could not change the route (needs root); continuing without it"
fi
exit 0
