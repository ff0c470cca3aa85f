/**
 * The addon's host-directory system calls (native/src/passthrough.cc), as `native.passthrough`.
 * Every name argument is one path component (1..255 bytes, no '/' or NUL: TypeError otherwise);
 * openat2 always resolves with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS; nothing follows a
 * symlink. Failures throw errors carrying the host's errno and code. Optional (uid, gid, umask)
 * run the call with that fsuid/fsgid and umask on the calling thread (-1: unchanged).
 */
import { ByteCursor } from '../util/cursor';
import { FsError } from '../util/errors';

export interface HostCalls {
  openat2(dirfd: number, name: Buffer, flags: number, mode: number, uid?: number, gid?: number, umask?: number): number;
  /** openat2(dirfd, name, O_PATH | O_NOFOLLOW) confined beneath dirfd: the fd, or -errno (no exception). */
  lookupAt(dirfd: number, name: Buffer): number;
  /** O_PATH descriptor of dirfd/.. (plain openat: the caller checks where it landed). */
  openParent(dirfd: number): number;
  /** A new descriptor of fd's inode with these flags, via /proc/self/fd (symlinks: ELOOP). */
  reopen(fd: number, flags: number): number;
  /** lstat of dirfd/name, or of fd itself with name null, into out (see STAT_* indexes). */
  fstatat(fd: number, name: Buffer | null, out: Float64Array): void;
  mkdirat(dirfd: number, name: Buffer, mode: number, uid?: number, gid?: number, umask?: number): void;
  /** rdev in FUSE's (the kernel's new_encode_dev) encoding. */
  mknodat(dirfd: number, name: Buffer, mode: number, rdev: number, uid?: number, gid?: number, umask?: number): void;
  symlinkat(target: Buffer, dirfd: number, name: Buffer, uid?: number, gid?: number, umask?: number): void;
  linkat(fd: number, newDirfd: number, newName: Buffer): void;
  renameat2(oldDirfd: number, oldName: Buffer, newDirfd: number, newName: Buffer, flags: number): void;
  unlinkat(dirfd: number, name: Buffer, removeDir: boolean): void;
  readlinkat(fd: number): Buffer;
  fchownat(fd: number, uid: number, gid: number): void;
  chmod(fd: number, mode: number): void;
  truncate(fd: number, size: number): void;
  /** Nanoseconds may be constants.UTIME_NOW or UTIME_OMIT. */
  utimensat(fd: number, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void;
  getxattr(fd: number, name: string): Buffer;
  /** null instead of an ENODATA exception. */
  getxattr(fd: number, name: string, missIsNull: true): Buffer | null;
  listxattr(fd: number): Buffer;
  setxattr(fd: number, name: string, value: Buffer, flags: number): void;
  removexattr(fd: number, name: string): void;
  fstatfs(fd: number): { blocks: number; bfree: number; bavail: number; files: number; ffree: number; bsize: number; namelen: number; frsize: number };
  /**
   * One getdents64 into `buffer` (1 KiB..1 MiB) from position cookie (0 or an earlier `next`;
   * null: from where the descriptor stands, without a seek): the bytes of linux_dirent64 records
   * it holds (parseDirents), 0 at the end.
   */
  readdir(dirfd: number, cookie: bigint | null, buffer: Buffer): number;
  lseek(fd: number, offset: number, whence: number): number;
  copyFileRange(fdIn: number, offIn: number, fdOut: number, offOut: number, len: number): number;
  /** fd must be a real descriptor, not O_PATH. */
  syncfs(fd: number): void;
  /** faccessat2 as (uid, gid). */
  access(fd: number, mask: number, uid: number, gid: number): void;
  /** Raise RLIMIT_NOFILE as far as allowed; returns the new soft limit. */
  raiseFdLimit(): number;
  /** close(2) the descriptors on a libuv worker, in one job; they are the worker's from the call on. Settles when all are closed. */
  closeInBackground(fds: Int32Array): Promise<void>;
  constants: { O_PATH: number; O_TMPFILE: number; O_NOFOLLOW: number; O_DIRECTORY: number; O_CLOEXEC: number; UTIME_NOW: number; UTIME_OMIT: number };
}

export interface HostDirent {
  /** A view into the buffer getdents64 filled. */
  name: Buffer;
  inoHi: number;
  inoLo: number;
  /** DT_* */
  type: number;
  /** The position after this entry (the host's d_off: ext4 hash cookies use 63 bits). */
  next: bigint;
}

/** Where d_name starts in a linux_dirent64. */
const DIRENT64_NAME = 19;

function badDirent(what: string): FsError {
  return new FsError('EIO', `host getdents64 returned ${what}`);
}

/**
 * The first `bytes` of a getdents64 buffer as entries. Each linux_dirent64 (getdents64(2)):
 * d_ino u64, d_off s64, d_reclen u16, d_type u8, d_name NUL-terminated, padded to d_reclen.
 */
export function parseDirents(buf: Buffer, bytes: number): HostDirent[] {
  const out: HostDirent[] = [];
  const c = new ByteCursor(buf, 0, bytes);
  while (c.remaining > 0) {
    const at = c.pos;
    // Never trust a length blindly: a record holds its header and a name ending in NUL.
    if (c.remaining <= DIRENT64_NAME) throw badDirent(`a header cut short at ${at} of ${bytes}`);
    const inoLo = c.u32();
    const inoHi = c.u32();
    const next = c.i64n();
    const reclen = c.u16();
    const type = c.u8();
    const end = at + reclen;
    if (reclen <= DIRENT64_NAME || end > bytes) throw badDirent(`a record of ${reclen} bytes at ${at} of ${bytes}`);
    const nul = buf.indexOf(0, c.pos);
    if (nul < 0 || nul >= end) throw badDirent(`a name without its NUL at ${at}`);
    const name = c.bytes(nul - c.pos);
    c.seek(end);
    out.push({ name, inoHi, inoLo, type, next });
  }
  return out;
}

/** Indexes into the fstatat output array. */
export const enum Stat {
  INO_HI, INO_LO, DEV_HI, DEV_LO, MODE, NLINK, UID, GID, RDEV, SIZE, BLOCKS, BLKSIZE,
  ATIME, ATIME_NS, MTIME, MTIME_NS, CTIME, CTIME_NS, LENGTH,
}
