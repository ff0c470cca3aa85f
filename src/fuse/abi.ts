/**
 * FUSE kernel ABI: opcodes, flag bits and struct sizes, after include/uapi/linux/fuse.h.
 *
 * The installed header (/usr/include/linux/fuse.h) is protocol 7.38; the host kernel (6.18)
 * speaks 7.4x, so the few later additions kfs meets are added here with the minor version that
 * introduced them (from the upstream header's changelog): FUSE_STATX (7.39), FUSE_HAS_RESEND and
 * FUSE_NOTIFY_RESEND (7.40), FUSE_COPY_FILE_RANGE_64 (7.45).
 *
 * Plain `as const` objects rather than `const enum`, so the values exist at run time (logging,
 * opcode names in errors, tests).
 *
 * Field names in src/fuse/ follow fuse.h verbatim (`open_flags`, `lock_owner`), so that a struct
 * here can be checked against the header by eye.
 *
 * The struct codecs (interfaces plus ByteCursor read/write functions) live in ./structs.
 */

/** FUSE_KERNEL_VERSION / FUSE_KERNEL_MINOR_VERSION of the installed header. */
export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 38;
/** FUSE_ROOT_ID: the node id the kernel uses for the mount root (ext4's root inode is 2). */
export const FUSE_ROOT_ID = 1;

/** enum fuse_opcode. */
export const FuseOpcode = {
  LOOKUP: 1,
  FORGET: 2, // no reply
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  GETLK: 31,
  SETLK: 32,
  SETLKW: 33,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  BMAP: 37,
  DESTROY: 38,
  IOCTL: 39,
  POLL: 40,
  NOTIFY_REPLY: 41,
  BATCH_FORGET: 42, // no reply
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  LSEEK: 46,
  COPY_FILE_RANGE: 47,
  SETUPMAPPING: 48,
  REMOVEMAPPING: 49,
  SYNCFS: 50,
  TMPFILE: 51,
  STATX: 52, // 7.39
  COPY_FILE_RANGE_64: 53, // 7.45
  CUSE_INIT: 4096,
} as const;
export type FuseOpcode = (typeof FuseOpcode)[keyof typeof FuseOpcode];

const OPCODE_NAMES = new Map<number, string>(Object.entries(FuseOpcode).map(([k, v]) => [v, k]));
/** "LOOKUP", or "opcode 99" for one this table does not know (for logs and error reasons). */
export function opcodeName(opcode: number): string {
  return OPCODE_NAMES.get(opcode) ?? `opcode ${opcode}`;
}

/**
 * INIT flags (fuse_init_in.flags / fuse_init_out.flags), as one 64-bit set: bits 32..63 travel
 * in the flags2 field, and only when FUSE_INIT_EXT is set in flags (7.36). All bigint so that
 * they combine with `|` and `&` without mixing number and bigint.
 */
export const InitFlag = {
  ASYNC_READ: 1n << 0n,
  POSIX_LOCKS: 1n << 1n,
  FILE_OPS: 1n << 2n,
  ATOMIC_O_TRUNC: 1n << 3n,
  EXPORT_SUPPORT: 1n << 4n,
  BIG_WRITES: 1n << 5n,
  DONT_MASK: 1n << 6n,
  SPLICE_WRITE: 1n << 7n,
  SPLICE_MOVE: 1n << 8n,
  SPLICE_READ: 1n << 9n,
  FLOCK_LOCKS: 1n << 10n,
  HAS_IOCTL_DIR: 1n << 11n,
  AUTO_INVAL_DATA: 1n << 12n,
  DO_READDIRPLUS: 1n << 13n,
  READDIRPLUS_AUTO: 1n << 14n,
  ASYNC_DIO: 1n << 15n,
  WRITEBACK_CACHE: 1n << 16n,
  NO_OPEN_SUPPORT: 1n << 17n,
  PARALLEL_DIROPS: 1n << 18n,
  HANDLE_KILLPRIV: 1n << 19n,
  POSIX_ACL: 1n << 20n,
  ABORT_ERROR: 1n << 21n,
  MAX_PAGES: 1n << 22n,
  CACHE_SYMLINKS: 1n << 23n,
  NO_OPENDIR_SUPPORT: 1n << 24n,
  EXPLICIT_INVAL_DATA: 1n << 25n,
  MAP_ALIGNMENT: 1n << 26n,
  SUBMOUNTS: 1n << 27n,
  HANDLE_KILLPRIV_V2: 1n << 28n,
  SETXATTR_EXT: 1n << 29n,
  INIT_EXT: 1n << 30n,
  INIT_RESERVED: 1n << 31n,
  // flags2 (bit n here is bit n-32 of fuse_init_*.flags2)
  SECURITY_CTX: 1n << 32n,
  HAS_INODE_DAX: 1n << 33n,
  CREATE_SUPP_GROUP: 1n << 34n,
  HAS_EXPIRE_ONLY: 1n << 35n,
  DIRECT_IO_ALLOW_MMAP: 1n << 36n, // 7.39
  PASSTHROUGH: 1n << 37n, // 7.40
  NO_EXPORT_SUPPORT: 1n << 38n, // 7.40
  HAS_RESEND: 1n << 39n, // 7.40: resent requests carry FUSE_UNIQUE_RESEND in unique
  ALLOW_IDMAP: 1n << 40n, // 7.41
  OVER_IO_URING: 1n << 41n, // 7.42
  REQUEST_TIMEOUT: 1n << 42n, // 7.43
} as const;

/**
 * With FUSE_HAS_RESEND, a request the kernel re-queued after FUSE_NOTIFY_RESEND has bit 63 of
 * its unique set. The reply must echo the unique as received (bit included).
 */
export const FUSE_UNIQUE_RESEND = 1n << 63n;

/** fuse_open_out.open_flags (FOPEN_*). */
export const FOPEN = {
  DIRECT_IO: 1 << 0,
  KEEP_CACHE: 1 << 1,
  NONSEEKABLE: 1 << 2,
  CACHE_DIR: 1 << 3,
  STREAM: 1 << 4,
  NOFLUSH: 1 << 5,
  PARALLEL_DIRECT_WRITES: 1 << 6,
  PASSTHROUGH: 1 << 7, // 7.40
} as const;

/** fuse_setattr_in.valid (FATTR_*). */
export const FATTR = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  LOCKOWNER: 1 << 9,
  CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11,
} as const;

/** fuse_rename2_in.flags: renameat2(2)'s RENAME_* (linux/fs.h), passed through unchanged. */
export const RENAME = {
  NOREPLACE: 1 << 0,
  EXCHANGE: 1 << 1,
  WHITEOUT: 1 << 2,
} as const;

/** enum fuse_notify_code: carried in fuse_out_header.error of a notification (unique 0). */
export const FuseNotifyCode = {
  POLL: 1,
  INVAL_INODE: 2,
  INVAL_ENTRY: 3,
  STORE: 4,
  RETRIEVE: 5,
  DELETE: 6,
  RESEND: 7, // 7.40
  INC_EPOCH: 8, // 7.44
} as const;

/** Smaller flag sets from fuse.h, grouped by the field they belong to. */
export const FUSE_RELEASE_FLUSH = 1 << 0; // fuse_release_in.release_flags
export const FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1;
export const FUSE_GETATTR_FH = 1 << 0; // fuse_getattr_in.getattr_flags
export const FUSE_LK_FLOCK = 1 << 0; // fuse_lk_in.lk_flags
export const FUSE_WRITE_CACHE = 1 << 0; // fuse_write_in.write_flags
export const FUSE_WRITE_LOCKOWNER = 1 << 1;
export const FUSE_WRITE_KILL_SUIDGID = 1 << 2;
export const FUSE_READ_LOCKOWNER = 1 << 1; // fuse_read_in.read_flags
export const FUSE_FSYNC_FDATASYNC = 1 << 0; // fuse_fsync_in.fsync_flags
export const FUSE_ATTR_SUBMOUNT = 1 << 0; // fuse_attr.flags
export const FUSE_ATTR_DAX = 1 << 1;
export const FUSE_OPEN_KILL_SUIDGID = 1 << 0; // fuse_open_in.open_flags / fuse_create_in.open_flags
export const FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0; // fuse_setxattr_in.setxattr_flags
export const FUSE_EXPIRE_ONLY = 1 << 0; // fuse_notify_inval_entry_out.flags
export const FUSE_POLL_SCHEDULE_NOTIFY = 1 << 0; // fuse_poll_in.flags
export const FUSE_SETUPMAPPING_FLAG_WRITE = 1 << 0; // fuse_setupmapping_in.flags
export const FUSE_SETUPMAPPING_FLAG_READ = 1 << 1;

/** enum fuse_ext_type: types 0..31 are a fuse_secctx_header (type = nr_secctx). */
export const FUSE_MAX_NR_SECCTX = 31;
export const FUSE_EXT_GROUPS = 32;

/**
 * Limits. FUSE_NAME_MAX is the kernel's own (fs/fuse/fuse_i.h) bound on names in
 * notifications and dirents; ext4 names stop at 255 bytes (EXT4_NAME_LEN), which is what a
 * request's entry name is held to.
 */
export const FUSE_NAME_MAX = 1024;
export const ENTRY_NAME_MAX = 255;
/** XATTR_NAME_MAX / XATTR_SIZE_MAX (linux/limits.h). */
export const XATTR_NAME_MAX = 255;
export const XATTR_SIZE_MAX = 65536;
/** PATH_MAX including the NUL: the longest symlink target the kernel will send. */
export const PATH_MAX = 4096;
/** FUSE_MIN_READ_BUFFER: a /dev/fuse read buffer must be at least this large. */
export const FUSE_MIN_READ_BUFFER = 8192;

/** Struct sizes in bytes (sizeof in fuse.h; FUSE_COMPAT_* are the older, shorter forms). */
export const SIZE = {
  IN_HEADER: 40,
  OUT_HEADER: 16,
  ATTR: 88,
  COMPAT_ATTR: 80, // before 7.9: no blksize, no flags
  KSTATFS: 80,
  FILE_LOCK: 24,
  ENTRY_OUT: 128,
  COMPAT_ENTRY_OUT: 120, // FUSE_COMPAT_ENTRY_OUT_SIZE (minor < 9)
  FORGET_IN: 8,
  FORGET_ONE: 16,
  BATCH_FORGET_IN: 8,
  GETATTR_IN: 16,
  ATTR_OUT: 104,
  COMPAT_ATTR_OUT: 96, // FUSE_COMPAT_ATTR_OUT_SIZE (minor < 9)
  MKNOD_IN: 16,
  COMPAT_MKNOD_IN: 8, // FUSE_COMPAT_MKNOD_IN_SIZE (minor < 12): no umask
  MKDIR_IN: 8,
  RENAME_IN: 8,
  RENAME2_IN: 16,
  LINK_IN: 8,
  SETATTR_IN: 88,
  OPEN_IN: 8,
  CREATE_IN: 16,
  COMPAT_CREATE_IN: 8, // minor < 12: CREATE carried the old fuse_open_in {flags, mode}
  OPEN_OUT: 16,
  RELEASE_IN: 24,
  COMPAT_RELEASE_IN: 16, // minor < 8: no lock_owner
  FLUSH_IN: 24,
  READ_IN: 40,
  COMPAT_READ_IN: 24, // minor < 9: no lock_owner, flags
  WRITE_IN: 40,
  COMPAT_WRITE_IN: 24, // FUSE_COMPAT_WRITE_IN_SIZE (minor < 9)
  WRITE_OUT: 8,
  STATFS_OUT: 80,
  COMPAT_STATFS_OUT: 48, // FUSE_COMPAT_STATFS_SIZE (minor < 4)
  FSYNC_IN: 16,
  SETXATTR_IN: 16, // with FUSE_SETXATTR_EXT negotiated
  COMPAT_SETXATTR_IN: 8, // FUSE_COMPAT_SETXATTR_IN_SIZE
  GETXATTR_IN: 8,
  GETXATTR_OUT: 8,
  LK_IN: 48,
  LK_OUT: 24,
  ACCESS_IN: 8,
  INIT_IN: 64, // 7.36+: flags2 and unused[11]
  COMPAT_INIT_IN: 16, // before 7.36: major, minor, max_readahead, flags
  INIT_IN_V7_5: 8, // before 7.6: major, minor
  INIT_OUT: 64,
  COMPAT_INIT_OUT: 8, // FUSE_COMPAT_INIT_OUT_SIZE (minor < 5)
  COMPAT_22_INIT_OUT: 24, // FUSE_COMPAT_22_INIT_OUT_SIZE (minor < 23)
  INTERRUPT_IN: 8,
  BMAP_IN: 16,
  BMAP_OUT: 8,
  IOCTL_IN: 32,
  IOCTL_OUT: 16,
  POLL_IN: 24,
  POLL_OUT: 8,
  FALLOCATE_IN: 32,
  DIRENT: 24, // FUSE_NAME_OFFSET: the fixed part before name[]
  DIRENTPLUS: 152, // FUSE_NAME_OFFSET_DIRENTPLUS: entry_out + fixed dirent
  NOTIFY_INVAL_INODE_OUT: 24,
  NOTIFY_INVAL_ENTRY_OUT: 16,
  NOTIFY_DELETE_OUT: 24,
  NOTIFY_STORE_OUT: 24,
  NOTIFY_RETRIEVE_OUT: 32,
  NOTIFY_RETRIEVE_IN: 40,
  LSEEK_IN: 24,
  LSEEK_OUT: 8,
  COPY_FILE_RANGE_IN: 56,
  COPY_FILE_RANGE_OUT: 8, // 7.45, reply to COPY_FILE_RANGE_64
  SETUPMAPPING_IN: 40,
  REMOVEMAPPING_IN: 4, // fuse_removemapping_one[] follows at once, not 8-aligned
  REMOVEMAPPING_ONE: 16,
  SYNCFS_IN: 8,
  STATX_IN: 24, // 7.39
  EXT_HEADER: 8,
} as const;

/** FUSE_REC_ALIGN / FUSE_DIRENT_ALIGN: dirents are padded to 8 bytes. */
export const direntAlign = (n: number): number => (n + 7) & ~7;

/*
 * Sizes that depend on the negotiated minor version. The kernel sends and expects the shorter
 * FUSE_COMPAT_* forms to and from a server that answered INIT with an older minor.
 */

/** fuse_init_out bytes for the minor the server puts in its INIT reply. */
export function initOutSize(minor: number): number {
  if (minor < 5) return SIZE.COMPAT_INIT_OUT;
  if (minor < 23) return SIZE.COMPAT_22_INIT_OUT;
  return SIZE.INIT_OUT;
}
export const entryOutSize = (minor: number): number => (minor < 9 ? SIZE.COMPAT_ENTRY_OUT : SIZE.ENTRY_OUT);
export const attrOutSize = (minor: number): number => (minor < 9 ? SIZE.COMPAT_ATTR_OUT : SIZE.ATTR_OUT);
export const statfsOutSize = (minor: number): number => (minor < 4 ? SIZE.COMPAT_STATFS_OUT : SIZE.STATFS_OUT);
export const writeInSize = (minor: number): number => (minor < 9 ? SIZE.COMPAT_WRITE_IN : SIZE.WRITE_IN);
export const readInSize = (minor: number): number => (minor < 9 ? SIZE.COMPAT_READ_IN : SIZE.READ_IN);
export const mknodInSize = (minor: number): number => (minor < 12 ? SIZE.COMPAT_MKNOD_IN : SIZE.MKNOD_IN);
export const createInSize = (minor: number): number => (minor < 12 ? SIZE.COMPAT_CREATE_IN : SIZE.CREATE_IN);
export const releaseInSize = (minor: number): number => (minor < 8 ? SIZE.COMPAT_RELEASE_IN : SIZE.RELEASE_IN);
/** GETATTR carries fuse_getattr_in from 7.9 on; before that its body is empty. */
export const getattrInSize = (minor: number): number => (minor < 9 ? 0 : SIZE.GETATTR_IN);
