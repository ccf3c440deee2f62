#!/bin/bash
# Runs the Molecule scenario (molecule/default) on namespace boxes, the way CI does:
#   bash tests/cluster/run-molecule.sh [molecule subcommand, default: test]
# 1. builds the wheelhouse with the boxes' Python (playbooks/wheelhouse.yml -> dist/wheelhouse),
#    unless MN_SKIP_WHEELHOUSE is set (then MN_WHEELHOUSE must already hold it);
# 2. makes a fleet with a fresh prefix: hub + controller namespace (tests/cluster/boxes.py);
# 3. runs molecule inside the controller namespace (boxes are booted by molecule's create);
# 4. always removes the fleet's boxes and namespaces and its ssh control masters, pass or fail,
#    and checks none is left.
# Needs root, ansible-core, molecule, openssh-server and redis-server (tests/cluster/ci-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=${PYTHON:-python3}
export MN_BOXES_PREFIX=${MN_BOXES_PREFIX:-mnm$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')}
export MN_WHEELHOUSE=${MN_WHEELHOUSE:-$ROOT/dist/wheelhouse}
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0 ANSIBLE_NOCOLOR=1
# Own ssh control sockets: other fleets on this machine use the same box addresses, and a
# shared ~/.ansible/cp would hand this run's ssh to another fleet's (or a dead box's) master.
# Own Molecule ephemeral directory: the default one is per project, shared by concurrent runs.
RUN_DIR=$(mktemp -d /tmp/mn-molecule.XXXXXX)
CP_DIR=$RUN_DIR/cp
mkdir "$CP_DIR" "$RUN_DIR/molecule"
export ANSIBLE_SSH_CONTROL_PATH_DIR=$CP_DIR MOLECULE_EPHEMERAL_DIRECTORY=$RUN_DIR/molecule

cleanup() {
  rc=$?
  for s in "$CP_DIR"/*; do
    if [ -S "$s" ]; then ssh -o ControlPath="$s" -O exit mnbox >/dev/null 2>&1 || true; fi
  done
  rm -rf "$RUN_DIR"
  "$PY" -m tests.cluster.boxes --prefix "$MN_BOXES_PREFIX" stop-all --power-cut || rc=1
  left=$(ip netns list | awk '{print $1}' | grep "^$MN_BOXES_PREFIX-" || true)
  if [ -n "$left" ]; then echo "run-molecule: namespaces left behind: $left" >&2; rc=1; fi
  exit $rc
}
trap cleanup EXIT INT TERM

t0=$(date +%s.%N)
if [ -z "${MN_SKIP_WHEELHOUSE:-}" ]; then
  ansible-playbook -i localhost, -c local playbooks/wheelhouse.yml -e "mirror_neuron_wheelhouse=$MN_WHEELHOUSE" >/dev/null
fi
t1=$(date +%s.%N)
"$PY" -m tests.cluster.boxes --prefix "$MN_BOXES_PREFIX" net-up
nsenter --net="/run/netns/$MN_BOXES_PREFIX-ctl" -- molecule "${@:-test}"
t2=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v c="$t2" \
  'BEGIN{printf "run-molecule: wheelhouse %.1fs, molecule %.1fs\n", b-a, c-b}'
