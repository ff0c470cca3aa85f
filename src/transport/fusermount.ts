/**
 * Mounting without root: the setuid fusermount3 (fuse3 package) opens /dev/fuse, mounts it
 * on a directory the user owns, and hands the fd back over a unix socket whose number it
 * finds in _FUSE_COMMFD (the protocol of libfuse's fuse_mount_fusermount / fusermount.c
 * send_fd: one byte of data with the fd as SCM_RIGHTS). Unmounting is `fusermount3 -u`.
 * fusermount3 adds fd=, rootmode=, user_id= and group_id= itself; allow_other needs
 * user_allow_other in /etc/fuse.conf.
 */
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { native } from '../native';
import { FsError } from '../util/errors';

const FUSERMOUNT = 'fusermount3';
/** The fd number of the socket in fusermount3 (stdio slot 3). */
const CHILD_COMM_FD = 3;

/** Are we privileged enough to call mount(2) and umount2(2) ourselves? */
export function canMountDirectly(): boolean {
  return (process.geteuid?.() ?? 0) === 0;
}

export interface FusermountOptions {
  readOnly?: boolean;
  allowOther?: boolean;
  defaultPermissions?: boolean;
  noAtime?: boolean;
  /** What the mount table shows as the source (fsname). */
  source?: string;
  subtype?: string;
}

/** Mount `mountpoint` through fusermount3; returns the /dev/fuse fd (non-blocking, close-on-exec). */
export function fusermountMount(mountpoint: string, o: FusermountOptions): number {
  const opts = [o.readOnly ? 'ro' : 'rw', 'nosuid', 'nodev', `subtype=${o.subtype ?? 'kfs'}`];
  // fsname ends at a comma in the option string: a source with one is shown without it.
  if (o.source) opts.push(`fsname=${o.source.replace(/,/g, '_')}`);
  if (o.allowOther) opts.push('allow_other');
  if (o.defaultPermissions !== false) opts.push('default_permissions');
  if (o.noAtime) opts.push('noatime');
  const [ours, theirs] = native.socketPair();
  try {
    const r = spawnSync(FUSERMOUNT, ['-o', opts.join(','), '--', mountpoint], {
      stdio: ['ignore', 'ignore', 'pipe', theirs],
      env: { ...process.env, _FUSE_COMMFD: String(CHILD_COMM_FD) },
      timeout: 30_000,
    });
    fs.closeSync(theirs);
    if (r.error) {
      const code = (r.error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new FsError('ENOENT', `mounting as a user needs ${FUSERMOUNT} (apt install fuse3), or run as root`);
      throw new FsError('EIO', `${FUSERMOUNT} failed: ${r.error.message}`);
    }
    const why = r.stderr.toString().trim().split('\n').pop() ?? '';
    if (r.status !== 0) throw new FsError('EPERM', `${FUSERMOUNT} could not mount ${mountpoint}: ${why || `exit ${r.status}`}`);
    // fusermount3 wrote the fd before exiting: it is queued on our end.
    const got = native.recvMsg(ours, Buffer.alloc(1), 0, 1);
    if (!got || got.fds.length !== 1) {
      for (const fd of got?.fds ?? []) fs.closeSync(fd);
      fusermountUnmount(mountpoint, true);
      throw new FsError('EIO', `${FUSERMOUNT} mounted ${mountpoint} but sent no /dev/fuse descriptor`);
    }
    native.setNonBlocking(got.fds[0]);
    return got.fds[0];
  } finally {
    fs.closeSync(ours);
  }
}

/** `fusermount3 -u [-z]`; EINVAL when nothing (of ours) is mounted there, EBUSY when busy. */
export function fusermountUnmount(mountpoint: string, lazy: boolean): void {
  const r = spawnSync(FUSERMOUNT, ['-u', ...(lazy ? ['-z'] : []), '--', mountpoint], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 });
  if (r.status === 0) return;
  const why = r.stderr?.toString().trim() ?? r.error?.message ?? '';
  const code = /busy/i.test(why) ? 'EBUSY' : /not found|not mounted|entry for .* not found/i.test(why) ? 'EINVAL' : 'EPERM';
  throw new FsError(code, `${FUSERMOUNT} -u ${mountpoint}: ${why}`);
}

/** Unmount as the process may: umount2 as root, fusermount3 otherwise. Lazily when busy. */
export function unmountFuse(mountpoint: string): void {
  if (!canMountDirectly()) {
    try {
      fusermountUnmount(mountpoint, false);
    } catch (e) {
      if ((e as FsError).code === 'EBUSY') fusermountUnmount(mountpoint, true);
      else throw e;
    }
    return;
  }
  try {
    native.umount2(mountpoint, 0);
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'EBUSY') native.umount2(mountpoint, native.MS.MNT_DETACH);
    else throw e;
  }
}
