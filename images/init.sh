#!/bin/sh
# kfs guest /init (PID 1, busybox ash). Built into images/out/initrd.gz by images/build.sh.
#
# Kernel command line (parameters with a dot stay out of init's argv and environment, so they
# are read from /proc/cmdline):
#   kfs.tag=TAG      virtio-fs tag to mount on /mnt (default myfs)
#   kfs.opts=OPTS    mount -o OPTS for that mount (e.g. dax, dax=inode)
#   kfs.nomount=1    do not mount virtio-fs (the script mounts what it needs)
#
# The test script arrives as /kfs-test.sh in a cpio archive placed in front of this initrd
# (the kernel unpacks every archive in the initrd image in turn). It runs with `sh` in /mnt
# (in / with kfs.nomount=1). When it ends, processes it left behind are killed, everything
# mounted after boot is unmounted, and its status is reported as the last console line
# `KFS-EXIT <status>`; init-side failures report a word instead (mount-failed, insmod-failed,
# no-script, umount-failed). Then the guest powers off; if that ever fails, init exits, the
# kernel panics, and panic=-1 with QEMU's -no-reboot ends the run.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /mnt
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1

finish() {
  sync
  echo "KFS-EXIT $1"
  # poweroff does not wait for the serial line: output still queued in the tty would be lost
  # or land after the kernel's last words. stty applies settings with TCSADRAIN (tcdrain).
  stty -F /dev/console "$(stty -F /dev/console -g)" || usleep 500000
  poweroff -f
  exit 1
}

# Everything mounted after boot (the script's mounts, then /mnt), innermost first.
unmount_all() {
  failed=0
  for mp in $(awk '{ print $2 }' /proc/mounts | tac); do
    case "$mp" in
      / | /proc | /proc/* | /sys | /sys/* | /dev | /dev/* | /tmp) continue ;;
    esac
    tries=0
    until umount "$mp" 2>/dev/null; do
      tries=$((tries + 1))
      if [ $tries -ge 20 ]; then # a last try that shows umount's error
        umount "$mp" || { echo "kfs-init: umount $mp failed"; failed=1; }
        break
      fi
      usleep 100000 # the processes killed below may not have exited yet
    done
  done
  return $failed
}

while read -r mod; do
  [ -n "$mod" ] || continue
  insmod "/lib/modules/$mod" || { echo "kfs-init: insmod $mod failed"; finish insmod-failed; }
done </lib/modules/load-order

tag=myfs
opts=
nomount=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    kfs.tag=*) tag=${arg#kfs.tag=} ;;
    kfs.opts=*) opts=${arg#kfs.opts=} ;;
    kfs.nomount=1) nomount=1 ;;
  esac
done

workdir=/
if [ "$nomount" != 1 ]; then
  if [ -n "$opts" ]; then
    mount -t virtiofs -o "$opts" "$tag" /mnt || finish mount-failed
  else
    mount -t virtiofs "$tag" /mnt || finish mount-failed
  fi
  workdir=/mnt
fi

if [ -f /kfs-test.sh ]; then
  (cd "$workdir" && KFS_MNT=/mnt exec sh /kfs-test.sh)
  status=$?
else
  echo "kfs-init: no /kfs-test.sh in the initrd"
  status=no-script
fi

cd /
# What the script left running (background jobs) would keep its mounts busy.
kill -KILL -1 2>/dev/null
sync
unmount_all || { [ "$status" = 0 ] && status=umount-failed; }
finish "$status"
