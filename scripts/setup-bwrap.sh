#!/usr/bin/env bash
# Installs what the bwrap sandbox backend needs on Debian 12 (idempotent, root).
set -euo pipefail
need=()
for pkg in bubblewrap python3 procps; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
# Unprivileged user namespaces: bwrap needs them (as root it runs as uid 65534;
# as any other user, a course author or a User= service, as that user).
if [ -e /proc/sys/kernel/unprivileged_userns_clone ]; then
  sysctl -q -w kernel.unprivileged_userns_clone=1 || true
fi
if [ "$(cat /proc/sys/user/max_user_namespaces)" = "0" ]; then
  sysctl -q -w user.max_user_namespaces=15000 || true
fi
bwrap --help | grep -q -- --disable-userns || { echo "bwrap too old: need --disable-userns (>= 0.8)" >&2; exit 1; }
echo "bwrap sandbox ready: $(bwrap --version)"
