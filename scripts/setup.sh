#!/usr/bin/env bash
# kfs set-up: everything the project and its tests need on a fresh Debian 12 machine.
# Idempotent; run as root (apt-get, loop mounts and /dev/fuse need it).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(e2fsprogs libext2fs-dev fuse3 fuse2fs util-linux acl attr git rsync sqlite3 fio tar build-essential make gcc g++ linux-libc-dev python3)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "setup: npm dependencies"
npm install --no-audit --no-fund --loglevel=error

echo "setup: native addon and TypeScript"
npm run --silent build

bash scripts/setup-guest.sh
echo "setup: done"
