#!/usr/bin/env bash
# Builds the kfs test guest from Debian 12 packages into images/out/:
#   vmlinuz     the kernel of the package that linux-image-amd64 depends on
#   vmlinux     the same kernel unpacked (ELF with a PVH entry note): QEMU boots it directly,
#               which skips the in-guest decompression (3-5 s under TCG)
#   initrd.gz   busybox-static, the virtio-fs (and virtio-blk + ext4) modules, /init (init.sh),
#               /bin/kfs-guest-tool (kfs-guest-tool.c, built static here)
#   VERSION     the kernel release (what `uname -r` says in the guest)
#   BUILDINFO   package versions and the module load order
#   STAMP       hash of the inputs; written last, so its presence means the outputs are complete
# Idempotent: returns at once when STAMP matches the inputs (this script, init.sh and the
# candidate package versions). Builds in out/.tmp.* and moves the results into place with
# STAMP removed first and written last: an interrupted run leaves no STAMP, which the next run
# (and test/helpers/guest.ts) treat as "not built". Runs as root (apt-get update when the
# package lists lack linux-image-amd64); needs network access to Debian mirrors only.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$here/out
# Wanted modules; their dependencies come from modules.dep. crc32c_generic is not a symbol
# dependency of ext4 (ext4 asks the crypto API for "crc32c" at mount), so it is named here.
WANTED_MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci fuse virtiofs
  virtio_blk crc16 crc32c_generic mbcache jbd2 ext4)

log() { echo "images/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
trap 'log "error: command failed at line $LINENO"' ERR

mkdir -p "$out/cache"
exec 9>"$out/.lock"
flock 9 # one build at a time; the lock also makes removing stale temp dirs safe

kernel_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }' || true)
if [ -z "$kernel_pkg" ]; then
  log "apt lists lack linux-image-amd64; running apt-get update"
  apt-get update -qq
  kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  [ -n "$kernel_pkg" ] || die "linux-image-amd64 has no linux-image-<version> dependency in the apt lists"
fi
versions=$(apt-cache show --no-all-versions "$kernel_pkg" busybox-static 2>/dev/null |
  awk '/^Package:/ { p = $2 } /^Version:/ { print p, $2 }' || true)
kernel_ver=$(awk -v p="$kernel_pkg" '$1 == p { print $2; exit }' <<<"$versions")
busybox_ver=$(awk '$1 == "busybox-static" { print $2; exit }' <<<"$versions")
[ -n "$kernel_ver" ] && [ -n "$busybox_ver" ] || die "no candidate version for $kernel_pkg or busybox-static (apt-get update?)"

stamp=$( {
  cat "$here/build.sh" "$here/init.sh" "$here/kfs-guest-tool.c"
  echo "$kernel_pkg=$kernel_ver busybox-static=$busybox_ver"
} | sha256sum | cut -d' ' -f1)

if [ -f "$out/STAMP" ] && [ "$(cat "$out/STAMP")" = "$stamp" ] &&
  [ -s "$out/vmlinuz" ] && [ -s "$out/vmlinux" ] && [ -s "$out/initrd.gz" ] && [ -s "$out/VERSION" ]; then
  log "up to date ($(cat "$out/VERSION"))"
  exit 0
fi

rm -rf "$out"/.tmp.*
tmp=$(mktemp -d "$out/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# A cached .deb is reused when it is the candidate version; otherwise apt-get download
# (which checks it against the signed package lists) replaces it.
fetch_deb() {
  local pkg=$1 ver=$2 f
  for f in "$out/cache/${pkg}"_*.deb; do
    [ -f "$f" ] || continue
    if [ "$(dpkg-deb -f "$f" Package)" = "$pkg" ] && [ "$(dpkg-deb -f "$f" Version)" = "$ver" ]; then
      echo "$f"
      return
    fi
    rm -f "$f"
  done
  mkdir -p "$tmp/dl"
  (cd "$tmp/dl" && apt-get download -qq -o APT::Sandbox::User=root "$pkg=$ver") >&2
  f=$(ls "$tmp/dl/${pkg}"_*.deb)
  mv "$f" "$out/cache/"
  echo "$out/cache/$(basename "$f")"
}

log "fetching $kernel_pkg $kernel_ver and busybox-static $busybox_ver"
kernel_deb=$(fetch_deb "$kernel_pkg" "$kernel_ver")
busybox_deb=$(fetch_deb busybox-static "$busybox_ver")

dpkg-deb -x "$busybox_deb" "$tmp/busybox"
bb=$tmp/busybox/bin/busybox
[ -x "$bb" ] || die "no bin/busybox in $busybox_deb"

log "unpacking $(basename "$kernel_deb")"
dpkg-deb -x "$kernel_deb" "$tmp/kernel"
moddir=
for d in "$tmp"/kernel/lib/modules/* "$tmp"/kernel/usr/lib/modules/*; do
  [ -d "$d" ] && moddir=$d && break
done
[ -n "$moddir" ] || die "no lib/modules/<release> in $kernel_deb"
kver=$(basename "$moddir")
vmlinuz=$tmp/kernel/boot/vmlinuz-$kver
[ -f "$vmlinuz" ] || die "no boot/vmlinuz-$kver in $kernel_deb"

# The package ships no modules.dep (its postinst runs depmod); busybox depmod makes one.
"$bb" depmod -b "${moddir%/lib/modules/*}" "$kver"

# Module names treat - and _ alike, as the kernel does.
modname() { local n=${1##*/}; n=${n%%.ko*}; echo "${n//-/_}"; }
declare -A mod_path mod_deps state
while IFS= read -r line; do
  file=${line%%:*}
  name=$(modname "$file")
  mod_path[$name]=$file
  mod_deps[$name]=${line#*:}
done <"$moddir/modules.dep"

load_order=()
visit() { # depth-first: every module after what it depends on
  local name=$1 dep
  case "${state[$name]:-}" in
    done) return ;;
    active) die "dependency cycle at $name" ;;
  esac
  if [ -z "${mod_path[$name]:-}" ]; then
    grep -q "/$name\.ko" "$moddir/modules.builtin" || die "module $name is neither in modules.dep nor built in"
    state[$name]=done
    return
  fi
  state[$name]=active
  for dep in ${mod_deps[$name]}; do visit "$(modname "$dep")"; done
  state[$name]=done
  load_order+=("$name")
}
for m in "${WANTED_MODULES[@]}"; do visit "$m"; done

root=$tmp/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,mnt,root,etc,lib/modules}
cp "$bb" "$root/bin/busybox"
for applet in $("$bb" --list-full); do
  [ "$applet" = bin/busybox ] || ln -sf /bin/busybox "$root/$applet"
done
install -m 0755 "$here/init.sh" "$root/init"
# xattrs, fsync, pwrite and timed benchmark steps for guest scripts (busybox has none of them).
gcc -static -O2 -Wall -o "$root/bin/kfs-guest-tool" "$here/kfs-guest-tool.c" || die "cannot build kfs-guest-tool (install gcc and libc6-dev)"

# busybox insmod loads plain .ko files only: compressed modules are unpacked here.
: >"$root/lib/modules/load-order"
for name in "${load_order[@]}"; do
  src=$moddir/${mod_path[$name]}
  dst=$root/lib/modules/$name.ko
  case "$src" in
    *.ko) cp "$src" "$dst" ;;
    *.ko.xz) "$bb" unxz -c "$src" >"$dst" ;;
    *.ko.gz) "$bb" gunzip -c "$src" >"$dst" ;;
    *.ko.zst) zstd -q -d -c "$src" >"$dst" || die "cannot unpack $src (install zstd)" ;;
    *) die "unknown module format: $src" ;;
  esac
  echo "$name.ko" >>"$root/lib/modules/load-order"
done

# The kernel's built-in initramfs already provides /dev/console; this is belt and braces.
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true

log "packing initramfs (${#load_order[@]} modules: ${load_order[*]})"
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) |
  gzip -9n >"$tmp/initrd.gz"
cp "$vmlinuz" "$tmp/vmlinuz"

# bzImage = setup code + a compressed ELF kernel followed by its 4-byte size (so the
# decompressor reports trailing garbage); take the first payload that unpacks to an ELF file,
# as the kernel's scripts/extract-vmlinux does.
extract_vmlinux() {
  local pair magic tool off # (bash strings cannot hold the NUL that ends the xz magic)
  for pair in $'\xfd7zXZ:xz -dc' $'\x1f\x8b\x08:gzip -dc'; do
    magic=${pair%%:*} tool=${pair#*:}
    for off in $(LC_ALL=C grep -abo "$magic" "$vmlinuz" | cut -d: -f1); do
      tail -c +$((off + 1)) "$vmlinuz" | $tool >"$tmp/vmlinux" 2>/dev/null || true
      [ "$(head -c 4 "$tmp/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] && return 0
    done
  done
  return 1
}
command -v xz >/dev/null || die "xz not found (apt-get install xz-utils)"
extract_vmlinux || die "could not unpack an ELF kernel from $(basename "$vmlinuz")"
echo "$kver" >"$tmp/VERSION"
{
  echo "kernel_package=$kernel_pkg $kernel_ver"
  echo "busybox_package=busybox-static $busybox_ver"
  echo "modules=${load_order[*]}"
} >"$tmp/BUILDINFO"

rm -f "$out/STAMP"
for f in vmlinuz vmlinux initrd.gz VERSION BUILDINFO; do mv -f "$tmp/$f" "$out/$f"; done
echo "$stamp" >"$tmp/STAMP"
mv -f "$tmp/STAMP" "$out/STAMP"
log "built $kver: $(du -h "$out/vmlinuz" | cut -f1) vmlinuz, $(du -h "$out/vmlinux" | cut -f1) vmlinux, $(du -h "$out/initrd.gz" | cut -f1) initrd.gz"
