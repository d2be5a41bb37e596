#!/usr/bin/env bash
# A non-root course author on this machine, for the tests that run xgrader
# unprivileged (tests/support/unprivileged.py). Debian 12, root, idempotent:
#   1. the user $XGRADER_AUTHOR (default xgrader-author) with subordinate
#      uids/gids (rootless podman maps its containers' users there);
#   2. a venv with xgrader's dependencies at $XGRADER_AUTHOR_VENV (default
#      /var/tmp/xgrader-author-venv), owned by root, readable by the user,
#      built from Debian's python3 (the test process's own Python may live
#      where the user cannot read);
#   3. rootless podman's storage for the user on the overlay driver (with
#      vfs a container's root folder is 0700: uid 65534 could not start).
set -euo pipefail
cd "$(dirname "$0")/.."
USER_NAME=${XGRADER_AUTHOR:-xgrader-author}
VENV=${XGRADER_AUTHOR_VENV:-/var/tmp/xgrader-author-venv}

need=()
for pkg in python3-venv uidmap passwd; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! id "$USER_NAME" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$USER_NAME"
fi
uid=$(id -u "$USER_NAME")
for f in /etc/subuid /etc/subgid; do
  if ! grep -q "^$USER_NAME:" "$f" 2>/dev/null; then
    # A range no other entry uses: after the highest one listed.
    start=$(awk -F: 'BEGIN{m=100000} {e=$2+$3; if (e>m) m=e} END{print m}' "$f" 2>/dev/null || echo 100000)
    echo "$USER_NAME:$start:65536" >> "$f"
  fi
done

# The dependencies of pyproject.toml: the core and what an author's commands
# use (the docker extra: the tests drive the author's rootless podman; images:
# an example assignment compares images); rebuilt when they change.
deps=$(python3 - <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
print("\n".join(project["dependencies"] + [d for name in ("docker", "images") for d in extras.get(name, [])]))
PY
)
stamp="$VENV/.xgrader-deps"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$deps" ]; then
  rm -rf "$VENV"
  /usr/bin/python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  echo "$deps" | "$VENV/bin/pip" install -q --disable-pip-version-check -r /dev/stdin 2>&1 \
    | grep -vE "is ignored: it is neither a file nor a directory" || true
  echo "$deps" > "$stamp"
fi
chmod -R o+rX "$VENV"

home=$(getent passwd "$USER_NAME" | cut -d: -f6)
conf="$home/.config/containers/storage.conf"
if [ ! -f "$conf" ]; then
  runuser -u "$USER_NAME" -- mkdir -p "$home/.config/containers"
  printf '[storage]\ndriver = "overlay"\n' | runuser -u "$USER_NAME" -- tee "$conf" >/dev/null
fi
mkdir -p "/run/user/$uid"
chown "$USER_NAME:" "/run/user/$uid"
chmod 700 "/run/user/$uid"
echo "author $USER_NAME (uid $uid) ready: venv $VENV"
