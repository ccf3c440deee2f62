#!/bin/bash
# Installs what the deploy tests (tests/cluster: namespace boxes, site.yml, Molecule, lints)
# need on a fresh Debian 12 machine, as root. Idempotent: a second run installs nothing.
#
#   bash tests/cluster/ci-deps.sh            # apt packages + pip tools for $PYTHON (default python3)
#   PYTHON=/path/to/python3 bash tests/cluster/ci-deps.sh
#
# Call it before `python3 -m pytest`, with the same python3 (the tools land next to it).
# - apt: the boxes boot the host's systemd and run its sshd, redis-server and /usr/bin/python3
#   (they have no internet: everything they use must be installed here first). Daemons are
#   not started on this machine (a temporary policy-rc.d denies it when none exists).
# - pip: ansible-core (ansible-playbook), molecule (its default driver boots the boxes),
#   ansible-lint and yamllint. Nothing from Galaxy is needed.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "ci-deps: run as root" >&2; exit 1; }
PY=${PYTHON:-python3}
export DEBIAN_FRONTEND=noninteractive

APT_PACKAGES=(
  systemd systemd-sysv dbus libpam-systemd   # PID 1 of every box, systemctl, systemd-analyze
  openssh-server openssh-client              # sshd per box, ssh/ssh-keygen for Ansible
  redis-server                               # the redis role's packaged unit (box 1)
  python3 python3-venv python3-apt           # node venvs, wheelhouse build venv, ansible's apt module
  iproute2 util-linux procps tar git         # ip/ss, nsenter/unshare, ps, the wheelhouse tar, ansible-lint's file list
  ca-certificates
)
PIP_PACKAGES=(
  "ansible-core>=2.16,<2.20"
  "molecule>=24.2,<27"
  "ansible-lint>=24.2,<27"
  "yamllint>=1.35,<2"
)

"$PY" -m pip --version >/dev/null 2>&1 || APT_PACKAGES+=(python3-pip)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "ci-deps: apt-get install ${missing[*]}"
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  trap 'if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "ci-deps: apt packages present"
fi

# Debian's python3 is "externally managed" (PEP 668); CI machines are throwaway, so install
# next to it like .ci/run does, unless the interpreter is a venv or pip is told already.
pip_flags=(-q)
if "$PY" -c 'import sys, sysconfig, os; sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")) else 1)'; then
  [ -n "${PIP_BREAK_SYSTEM_PACKAGES:-}" ] || pip_flags+=(--break-system-packages)
fi
"$PY" -m pip install "${pip_flags[@]}" "${PIP_PACKAGES[@]}"

for tool in ansible-playbook molecule ansible-lint yamllint sshd; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "ci-deps: $tool not on PATH" >&2; exit 1; }
done
echo "ci-deps: ok ($("$PY" -m pip show ansible-core molecule ansible-lint 2>/dev/null | awk '/^(Name|Version)/{printf "%s ", $2}'))"
