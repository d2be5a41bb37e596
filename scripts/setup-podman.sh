#!/usr/bin/env bash
# Docker backend on podman (Debian 12, root, idempotent):
#   1. podman + runc configured for this kind of host (runc, explicit ulimits),
#   2. the base image xgrader-base:bookworm, debootstrapped locally (no registry
#      is reachable) and cached as .cache/xgrader-base-bookworm.tar,
#   3. the grading image (sandbox/image/build.sh),
#   4. podman's Docker-compatible API socket at $XGRADER_PODMAN_SOCK (default
#      /run/xgrader-podman.sock), started if it does not answer.
# Env: XGRADER_DEBIAN_MIRROR overrides the mirror (default: the one apt uses).
set -euo pipefail
cd "$(dirname "$0")/.."
SOCK=${XGRADER_PODMAN_SOCK:-/run/xgrader-podman.sock}
BASE_IMAGE=xgrader-base:bookworm
CACHE=.cache
t0=$(date +%s)

need=()
for pkg in podman runc uidmap debootstrap curl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# crun fails on cgroup v1 hosts like this one; without explicit default
# ulimits podman uses its own (nofile 1048576), which runc's setrlimit then
# cannot set under a lower hard limit.
mkdir -p /etc/containers/containers.conf.d
# At most this process's hard limits (a container may not raise them); nproc
# above 32768 is refused by runc on this kind of host even below the hard limit.
nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] || [ "$nofile" -gt 1048576 ] && nofile=1048576
[ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
cat > /etc/containers/containers.conf.d/50-xgrader.conf <<CONF
# written by xgrader scripts/setup-podman.sh
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
# The docker backend gives each job its own cgroup parent (accounting, OOM):
# paths, not systemd slices. Also the only choice without systemd.
cgroup_manager = "cgroupfs"
CONF

# --- base image -----------------------------------------------------------
if ! podman image exists "$BASE_IMAGE"; then
  mkdir -p "$CACHE"
  tarball="$CACHE/xgrader-base-bookworm.tar"
  if [ ! -s "$tarball" ]; then
    mirror=${XGRADER_DEBIAN_MIRROR:-$( { grep -rhoE 'https?://[^ ]*/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true; } | head -1 | tr -d ' ')}
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs=$(mktemp -d /var/tmp/xgrader-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    echo "setup-podman: debootstrap bookworm from $mirror"
    debootstrap --variant=minbase --include=python3,python3-pytest bookworm "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    # Slim: no apt lists, docs or caches in the image.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
           "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    tar -C "$rootfs" --numeric-owner -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"; trap - EXIT
  fi
  podman import --change 'CMD ["/usr/bin/python3"]' "$tarball" "$BASE_IMAGE" >/dev/null
fi

# --- grading image --------------------------------------------------------
bash sandbox/image/build.sh

# --- API socket -------------------------------------------------------------
ping() { curl -sf --max-time 5 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }
if ! ping; then
  rm -f "$SOCK"
  # Started from a state folder of its own: conmon writes files such as `oom`
  # into its working directory, which would otherwise be the checkout.
  mkdir -p /run/xgrader-podman
  (cd /run/xgrader-podman && exec setsid nohup podman system service --time=0 "unix://$SOCK") \
    >/var/log/xgrader-podman.log 2>&1 < /dev/null &
  for _ in $(seq 50); do ping && break; sleep 0.2; done
  ping || { echo "setup-podman: API socket $SOCK does not answer (see /var/log/xgrader-podman.log)" >&2; exit 1; }
fi
echo "podman ready: socket unix://$SOCK, images $(podman images --format '{{.Repository}}:{{.Tag}}' | grep xgrader | tr '\n' ' ')($(( $(date +%s) - t0 ))s)"
