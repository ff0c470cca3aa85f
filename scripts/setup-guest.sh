#!/usr/bin/env bash
# The test guest: QEMU (with the C virtiofsd, /usr/lib/qemu/virtiofsd, in qemu-system-common),
# the tools images/build.sh needs, then the guest kernel + initramfs in images/out/.
# Idempotent and quick when everything is in place; run as root (apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

GUEST_PACKAGES=(qemu-system-x86 cpio xz-utils gzip e2fsprogs)
missing=()
for p in "${GUEST_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-guest: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "setup-guest: guest kernel and initramfs (images/out/)"
bash images/build.sh
