/**
 * FUSE ABI structs (include/uapi/linux/fuse.h) as TypeScript interfaces with ByteCursor codecs:
 * `read*` for what the kernel sends (requests), `write*` for what kfs sends (replies and
 * notifications). Each codec follows its struct's field order in fuse.h; padding is skipped on
 * read and written as zero.
 *
 * Numbers on the wire:
 * - u64 identifiers the kernel generates and compares (unique, lock_owner, poll kh, ioctl arg,
 *   INIT flags) are bigint.
 * - u64 node ids, file handles, offsets, sizes and counts are numbers: exact below 2^53. kfs
 *   hands out node ids (inode numbers) and handles far below that and ext4 files end long before
 *   it (16 TiB with 4 KiB blocks), so a larger value is never a live node or a valid offset, and
 *   its rounding cannot alias one.
 * - Times in fuse_setattr_in / fuse_attr are u64 on the wire but carry a signed time_t (the
 *   kernel stores a pre-1970 tv_sec in two's complement), so they are read and written as i64.
 */
import { ByteCursor } from '../util/cursor';
import { InitFlag, SIZE, initOutSize } from './abi';

// ---------------------------------------------------------------- headers

/** struct fuse_in_header (40 bytes). */
export interface FuseInHeader {
  len: number;
  opcode: number;
  unique: bigint;
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
  /** Length of the request extensions at the end of the message, in 8-byte units (7.38). */
  total_extlen: number;
}

export function readInHeader(c: ByteCursor): FuseInHeader {
  const len = c.u32();
  const opcode = c.u32();
  const unique = c.u64n();
  const nodeid = c.u64();
  const uid = c.u32();
  const gid = c.u32();
  const pid = c.u32();
  const total_extlen = c.u16();
  c.skip(2); // padding
  return { len, opcode, unique, nodeid, uid, gid, pid, total_extlen };
}

/** struct fuse_out_header (16 bytes). `error` is 0, a negative errno, or a notify code. */
export function writeOutHeader(c: ByteCursor, len: number, error: number, unique: bigint): void {
  c.putU32(len).putI32(error).putU64(unique);
}

// ---------------------------------------------------------------- request bodies

/** struct fuse_forget_one. */
export interface ForgetOne {
  nodeid: number;
  nlookup: number;
}
export function readForgetOne(c: ByteCursor): ForgetOne {
  return { nodeid: c.u64(), nlookup: c.u64() };
}

/** struct fuse_getattr_in. */
export interface GetattrIn {
  getattr_flags: number;
  fh: number;
}
export function readGetattrIn(c: ByteCursor): GetattrIn {
  const getattr_flags = c.u32();
  c.skip(4); // dummy
  return { getattr_flags, fh: c.u64() };
}

/** struct fuse_setattr_in (88 bytes). Fields other than `valid` mean something only when their FATTR_* bit is set. */
export interface SetattrIn {
  valid: number;
  fh: number;
  size: number;
  lock_owner: bigint;
  atime: number;
  mtime: number;
  ctime: number;
  atimensec: number;
  mtimensec: number;
  ctimensec: number;
  mode: number;
  uid: number;
  gid: number;
}
export function readSetattrIn(c: ByteCursor): SetattrIn {
  const valid = c.u32();
  c.skip(4); // padding
  const fh = c.u64();
  const size = c.u64();
  const lock_owner = c.u64n();
  const atime = c.i64();
  const mtime = c.i64();
  const ctime = c.i64();
  const atimensec = c.u32();
  const mtimensec = c.u32();
  const ctimensec = c.u32();
  const mode = c.u32();
  c.skip(4); // unused4
  const uid = c.u32();
  const gid = c.u32();
  c.skip(4); // unused5
  return { valid, fh, size, lock_owner, atime, mtime, ctime, atimensec, mtimensec, ctimensec, mode, uid, gid };
}

/** struct fuse_mknod_in; `size` is 8 (FUSE_COMPAT_MKNOD_IN_SIZE, no umask) before 7.12. */
export interface MknodIn {
  mode: number;
  rdev: number;
  umask: number;
}
export function readMknodIn(c: ByteCursor, size: number): MknodIn {
  const mode = c.u32();
  const rdev = c.u32();
  if (size < SIZE.MKNOD_IN) return { mode, rdev, umask: 0 };
  const umask = c.u32();
  c.skip(4); // padding
  return { mode, rdev, umask };
}

/** struct fuse_mkdir_in (umask was padding before 7.12, and zero there). */
export interface MkdirIn {
  mode: number;
  umask: number;
}
export function readMkdirIn(c: ByteCursor): MkdirIn {
  return { mode: c.u32(), umask: c.u32() };
}

/** struct fuse_rename2_in (fuse_rename_in is its first 8 bytes). */
export interface Rename2In {
  newdir: number;
  flags: number;
}
export function readRename2In(c: ByteCursor): Rename2In {
  const newdir = c.u64();
  const flags = c.u32();
  c.skip(4); // padding
  return { newdir, flags };
}

/** struct fuse_open_in: `flags` are open(2) flags; `open_flags` are FUSE_OPEN_*. */
export interface OpenIn {
  flags: number;
  open_flags: number;
}
export function readOpenIn(c: ByteCursor): OpenIn {
  return { flags: c.u32(), open_flags: c.u32() };
}

/** struct fuse_create_in; before 7.12 CREATE sent the old 8-byte fuse_open_in {flags, mode}. */
export interface CreateIn {
  flags: number;
  mode: number;
  umask: number;
  open_flags: number;
}
export function readCreateIn(c: ByteCursor, size: number): CreateIn {
  const flags = c.u32();
  const mode = c.u32();
  if (size < SIZE.CREATE_IN) return { flags, mode, umask: 0, open_flags: 0 };
  return { flags, mode, umask: c.u32(), open_flags: c.u32() };
}

/** struct fuse_release_in; 16 bytes (no lock_owner) before 7.8. */
export interface ReleaseIn {
  fh: number;
  flags: number;
  release_flags: number;
  lock_owner: bigint;
}
export function readReleaseIn(c: ByteCursor, size: number): ReleaseIn {
  const fh = c.u64();
  const flags = c.u32();
  const release_flags = c.u32();
  const lock_owner = size < SIZE.RELEASE_IN ? 0n : c.u64n();
  return { fh, flags, release_flags, lock_owner };
}

/** struct fuse_flush_in. */
export interface FlushIn {
  fh: number;
  lock_owner: bigint;
}
export function readFlushIn(c: ByteCursor): FlushIn {
  const fh = c.u64();
  c.skip(8); // unused, padding
  return { fh, lock_owner: c.u64n() };
}

/**
 * struct fuse_read_in, also the body of READDIR and READDIRPLUS; before 7.9 it was 24 bytes
 * (no lock_owner, no flags). `size` here is the struct size, not the read size.
 */
export interface ReadIn {
  fh: number;
  offset: number;
  size: number;
  read_flags: number;
  lock_owner: bigint;
  flags: number;
}
export function readReadIn(c: ByteCursor, structSize: number): ReadIn {
  const fh = c.u64();
  const offset = c.u64();
  const size = c.u32();
  const read_flags = c.u32();
  if (structSize < SIZE.READ_IN) return { fh, offset, size, read_flags, lock_owner: 0n, flags: 0 };
  const lock_owner = c.u64n();
  const flags = c.u32();
  c.skip(4); // padding
  return { fh, offset, size, read_flags, lock_owner, flags };
}

/** struct fuse_write_in: same shape as fuse_read_in, 24 bytes (FUSE_COMPAT_WRITE_IN_SIZE) before 7.9. */
export interface WriteIn {
  fh: number;
  offset: number;
  size: number;
  write_flags: number;
  lock_owner: bigint;
  flags: number;
}
export function readWriteIn(c: ByteCursor, structSize: number): WriteIn {
  const r = readReadIn(c, structSize);
  return { fh: r.fh, offset: r.offset, size: r.size, write_flags: r.read_flags, lock_owner: r.lock_owner, flags: r.flags };
}

/** struct fuse_fsync_in (FSYNC and FSYNCDIR). */
export interface FsyncIn {
  fh: number;
  fsync_flags: number;
}
export function readFsyncIn(c: ByteCursor): FsyncIn {
  const fh = c.u64();
  const fsync_flags = c.u32();
  c.skip(4); // padding
  return { fh, fsync_flags };
}

/** struct fuse_setxattr_in: 16 bytes with FUSE_SETXATTR_EXT negotiated, else the first 8. */
export interface SetxattrIn {
  size: number;
  flags: number;
  setxattr_flags: number;
}
export function readSetxattrIn(c: ByteCursor, ext: boolean): SetxattrIn {
  const size = c.u32();
  const flags = c.u32();
  if (!ext) return { size, flags, setxattr_flags: 0 };
  const setxattr_flags = c.u32();
  c.skip(4); // padding
  return { size, flags, setxattr_flags };
}

/** struct fuse_getxattr_in (GETXATTR, LISTXATTR): `size` 0 asks for the needed size. */
export function readGetxattrIn(c: ByteCursor): { size: number } {
  const size = c.u32();
  c.skip(4); // padding
  return { size };
}

/** struct fuse_file_lock. */
export interface FileLock {
  start: number;
  end: number;
  type: number;
  pid: number;
}
/** struct fuse_lk_in (GETLK, SETLK, SETLKW). */
export interface LkIn {
  fh: number;
  owner: bigint;
  lk: FileLock;
  lk_flags: number;
}
export function readLkIn(c: ByteCursor): LkIn {
  const fh = c.u64();
  const owner = c.u64n();
  const lk = { start: c.u64(), end: c.u64(), type: c.u32(), pid: c.u32() };
  const lk_flags = c.u32();
  c.skip(4); // padding
  return { fh, owner, lk, lk_flags };
}

/** struct fuse_access_in. */
export function readAccessIn(c: ByteCursor): { mask: number } {
  const mask = c.u32();
  c.skip(4); // padding
  return { mask };
}

/**
 * struct fuse_init_in. Its size grew with the protocol (8 bytes before 7.6, 16 before 7.36, 64
 * after) and INIT is what negotiates the minor, so it is read by length. `flags` is the 64-bit
 * set: flags2 is folded in as bits 32..63 only when FUSE_INIT_EXT is set, as the kernel does.
 */
export interface InitIn {
  major: number;
  minor: number;
  max_readahead: number;
  flags: bigint;
}
export function readInitIn(c: ByteCursor): InitIn {
  const major = c.u32();
  const minor = c.u32();
  if (c.remaining < 8) return { major, minor, max_readahead: 0, flags: 0n };
  const max_readahead = c.u32();
  let flags = BigInt(c.u32());
  if ((flags & InitFlag.INIT_EXT) !== 0n && c.remaining >= 4) flags |= BigInt(c.u32()) << 32n;
  return { major, minor, max_readahead, flags };
}

/** struct fuse_bmap_in. */
export interface BmapIn {
  block: number;
  blocksize: number;
}
export function readBmapIn(c: ByteCursor): BmapIn {
  const block = c.u64();
  const blocksize = c.u32();
  c.skip(4); // padding
  return { block, blocksize };
}

/** struct fuse_ioctl_in. */
export interface IoctlIn {
  fh: number;
  flags: number;
  cmd: number;
  arg: bigint;
  in_size: number;
  out_size: number;
}
export function readIoctlIn(c: ByteCursor): IoctlIn {
  return { fh: c.u64(), flags: c.u32(), cmd: c.u32(), arg: c.u64n(), in_size: c.u32(), out_size: c.u32() };
}

/** struct fuse_poll_in. */
export interface PollIn {
  fh: number;
  kh: bigint;
  flags: number;
  events: number;
}
export function readPollIn(c: ByteCursor): PollIn {
  return { fh: c.u64(), kh: c.u64n(), flags: c.u32(), events: c.u32() };
}

/** struct fuse_fallocate_in: `mode` is fallocate(2)'s FALLOC_FL_* set. */
export interface FallocateIn {
  fh: number;
  offset: number;
  length: number;
  mode: number;
}
export function readFallocateIn(c: ByteCursor): FallocateIn {
  const fh = c.u64();
  const offset = c.u64();
  const length = c.u64();
  const mode = c.u32();
  c.skip(4); // padding
  return { fh, offset, length, mode };
}

/** struct fuse_lseek_in: `whence` is SEEK_SET..SEEK_HOLE. */
export interface LseekIn {
  fh: number;
  offset: number;
  whence: number;
}
export function readLseekIn(c: ByteCursor): LseekIn {
  const fh = c.u64();
  const offset = c.u64();
  const whence = c.u32();
  c.skip(4); // padding
  return { fh, offset, whence };
}

/** struct fuse_copy_file_range_in (COPY_FILE_RANGE and COPY_FILE_RANGE_64). */
export interface CopyFileRangeIn {
  fh_in: number;
  off_in: number;
  nodeid_out: number;
  fh_out: number;
  off_out: number;
  len: number;
  flags: number;
}
export function readCopyFileRangeIn(c: ByteCursor): CopyFileRangeIn {
  return { fh_in: c.u64(), off_in: c.u64(), nodeid_out: c.u64(), fh_out: c.u64(), off_out: c.u64(), len: c.u64(), flags: c.u64() };
}

/** struct fuse_setupmapping_in (virtio-fs DAX): map [foffset, +len) of fh at moffset in the DAX window. */
export interface SetupmappingIn {
  fh: number;
  foffset: number;
  len: number;
  flags: number;
  moffset: number;
}
export function readSetupmappingIn(c: ByteCursor): SetupmappingIn {
  return { fh: c.u64(), foffset: c.u64(), len: c.u64(), flags: c.u64(), moffset: c.u64() };
}

/** struct fuse_removemapping_one. */
export interface RemovemappingOne {
  moffset: number;
  len: number;
}
export function readRemovemappingOne(c: ByteCursor): RemovemappingOne {
  return { moffset: c.u64(), len: c.u64() };
}

/** struct fuse_statx_in (7.39): `sx_flags` are AT_STATX_*, `sx_mask` STATX_*. */
export interface StatxIn {
  getattr_flags: number;
  fh: number;
  sx_flags: number;
  sx_mask: number;
}
export function readStatxIn(c: ByteCursor): StatxIn {
  const getattr_flags = c.u32();
  c.skip(4); // reserved
  return { getattr_flags, fh: c.u64(), sx_flags: c.u32(), sx_mask: c.u32() };
}

/** struct fuse_notify_retrieve_in (body of NOTIFY_REPLY, before the retrieved data). */
export interface NotifyRetrieveIn {
  offset: number;
  size: number;
}
export function readNotifyRetrieveIn(c: ByteCursor): NotifyRetrieveIn {
  c.skip(8); // dummy1
  const offset = c.u64();
  const size = c.u32();
  c.skip(4 + 8 + 8); // dummy2..dummy4
  return { offset, size };
}

// ---------------------------------------------------------------- reply bodies

/** A time as the kernel's timespec: whole seconds (may be negative) and nanoseconds. */
export interface FuseTime {
  sec: number;
  nsec: number;
}

/**
 * The attributes behind struct fuse_attr. Structurally a subset of ext4's Attr, so an ext4
 * attribute object can be passed as is; `ino` is what stat(2) will show as st_ino.
 */
export interface FuseAttr {
  ino: number;
  size: number;
  /** 512-byte units. */
  blocks: number;
  atime: FuseTime;
  mtime: FuseTime;
  ctime: FuseTime;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  blksize: number;
  /** FUSE_ATTR_* (submount, per-inode DAX). */
  flags?: number;
}

/**
 * A signed 64-bit tv_sec as two 32-bit halves (two's complement, exact below 2^53): the same
 * bytes as putI64, without a BigInt per field on the path of every GETATTR and LOOKUP reply.
 */
function putTimeSec(c: ByteCursor, sec: number): void {
  const hi = Math.floor(sec / 0x100000000);
  c.putU32(sec - hi * 0x100000000).putI32(hi);
}

/** struct fuse_attr (88 bytes): the three u64 times first, then their three nsec fields. */
export function writeAttr(c: ByteCursor, a: FuseAttr): void {
  c.putU64(a.ino).putU64(a.size).putU64(a.blocks);
  putTimeSec(c, a.atime.sec);
  putTimeSec(c, a.mtime.sec);
  putTimeSec(c, a.ctime.sec);
  c.putU32(a.atime.nsec).putU32(a.mtime.nsec).putU32(a.ctime.nsec);
  c.putU32(a.mode).putU32(a.nlink).putU32(a.uid).putU32(a.gid).putU32(a.rdev);
  c.putU32(a.blksize).putU32(a.flags ?? 0);
}

/**
 * struct fuse_entry_out (128 bytes). nodeid 0 with a non-zero entry_valid is a cacheable
 * negative entry (LOOKUP only). Timeouts are in seconds plus nanoseconds.
 */
export interface EntryOut {
  nodeid: number;
  /** nodeid:generation must be unique for the filesystem's life (ext4 i_generation; 0 for the root). */
  generation: number;
  entry_valid: number;
  attr_valid: number;
  entry_valid_nsec?: number;
  attr_valid_nsec?: number;
  attr: FuseAttr;
}
export function writeEntryOut(c: ByteCursor, e: EntryOut): void {
  c.putU64(e.nodeid).putU64(e.generation).putU64(e.entry_valid).putU64(e.attr_valid);
  c.putU32(e.entry_valid_nsec ?? 0).putU32(e.attr_valid_nsec ?? 0);
  writeAttr(c, e.attr);
}

/** struct fuse_attr_out (104 bytes). */
export interface AttrOut {
  attr_valid: number;
  attr_valid_nsec?: number;
  attr: FuseAttr;
}
export function writeAttrOut(c: ByteCursor, a: AttrOut): void {
  c.putU64(a.attr_valid).putU32(a.attr_valid_nsec ?? 0).putU32(0);
  writeAttr(c, a.attr);
}

/**
 * writeAttr's bytes through a DataView at `at`, for the fast path (fast-path.ts), which encodes
 * every GETATTR and LOOKUP reply into one buffer it owns: DataView stores compile to plain
 * stores where the cursor's checked Buffer writes do not. The caller guarantees the room
 * (SIZE.ATTR bytes); the layout is writeAttr's, which test/fuse-fast-path checks byte for byte.
 */
export function encodeAttrAt(v: DataView, at: number, a: FuseAttr): void {
  setU64(v, at, a.ino);
  setU64(v, at + 8, a.size);
  setU64(v, at + 16, a.blocks);
  setI64(v, at + 24, a.atime.sec);
  setI64(v, at + 32, a.mtime.sec);
  setI64(v, at + 40, a.ctime.sec);
  v.setUint32(at + 48, a.atime.nsec, true);
  v.setUint32(at + 52, a.mtime.nsec, true);
  v.setUint32(at + 56, a.ctime.nsec, true);
  v.setUint32(at + 60, a.mode, true);
  v.setUint32(at + 64, a.nlink, true);
  v.setUint32(at + 68, a.uid, true);
  v.setUint32(at + 72, a.gid, true);
  v.setUint32(at + 76, a.rdev, true);
  v.setUint32(at + 80, a.blksize, true);
  v.setUint32(at + 84, a.flags ?? 0, true);
}

/** u64 from a number below 2^53 (as putU64). */
export function setU64(v: DataView, at: number, x: number): void {
  v.setUint32(at, x % 0x100000000, true);
  v.setUint32(at + 4, Math.floor(x / 0x100000000), true);
}

/** i64 from a number, two's complement (as putTimeSec). */
function setI64(v: DataView, at: number, x: number): void {
  const hi = Math.floor(x / 0x100000000);
  v.setUint32(at, x - hi * 0x100000000, true);
  v.setInt32(at + 4, hi, true);
}

/** writeEntryOut's bytes through a DataView at `at` (see encodeAttrAt). */
/** The attributes of a negative entry (fuse_entry_out with nodeid 0): all zero. */
export const ZERO_ATTR: FuseAttr = {
  ino: 0, size: 0, blocks: 0, atime: { sec: 0, nsec: 0 }, mtime: { sec: 0, nsec: 0 }, ctime: { sec: 0, nsec: 0 },
  mode: 0, nlink: 0, uid: 0, gid: 0, rdev: 0, blksize: 0,
};

export function encodeEntryOutAt(v: DataView, at: number, nodeid: number, generation: number, entryValid: number, attrValid: number, a: FuseAttr): void {
  setU64(v, at, nodeid);
  setU64(v, at + 8, generation);
  setU64(v, at + 16, entryValid);
  setU64(v, at + 24, attrValid);
  v.setUint32(at + 32, 0, true);
  v.setUint32(at + 36, 0, true);
  encodeAttrAt(v, at + 40, a);
}

/** writeAttrOut's bytes through a DataView at `at` (see encodeAttrAt). */
export function encodeAttrOutAt(v: DataView, at: number, attrValid: number, a: FuseAttr): void {
  setU64(v, at, attrValid);
  v.setUint32(at + 8, 0, true);
  v.setUint32(at + 12, 0, true);
  encodeAttrAt(v, at + 16, a);
}

/** struct fuse_open_out: `backing_id` (7.40) is only read with FOPEN_PASSTHROUGH. */
export interface OpenOut {
  fh: number;
  open_flags: number;
  backing_id?: number;
}
export function writeOpenOut(c: ByteCursor, o: OpenOut): void {
  c.putU64(o.fh).putU32(o.open_flags).putI32(o.backing_id ?? 0);
}

/** fuse_open_out at `at` of a reused reply (the fast path: no cursor, no object per request). */
export function encodeOpenOutAt(v: DataView, at: number, fh: number, openFlags: number): void {
  setU64(v, at, fh);
  v.setUint32(at + 8, openFlags, true);
  v.setInt32(at + 12, 0, true);
}

/** struct fuse_kstatfs (80 bytes), the body of fuse_statfs_out. */
export interface Kstatfs {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  namelen: number;
  frsize: number;
}
export function writeKstatfs(c: ByteCursor, s: Kstatfs): void {
  c.putU64(s.blocks).putU64(s.bfree).putU64(s.bavail).putU64(s.files).putU64(s.ffree);
  c.putU32(s.bsize).putU32(s.namelen).putU32(s.frsize);
  c.fill(4 + 6 * 4); // padding, spare[6]
}

/**
 * struct fuse_init_out. `flags` is the 64-bit set; bits 32..63 go to flags2 (7.36), and the
 * kernel reads flags2 only when FUSE_INIT_EXT is set in flags (process_init_reply), so the
 * writer sets FUSE_INIT_EXT itself whenever any high bit is present.
 */
export interface InitOut {
  major: number;
  minor: number;
  max_readahead: number;
  flags: bigint;
  max_background: number;
  congestion_threshold: number;
  max_write: number;
  /** Timestamp granularity in ns (7.23); 1 for ext4's nanosecond times. */
  time_gran: number;
  /** Pages per request, with FUSE_MAX_PAGES (7.28). */
  max_pages: number;
  /** log2 of the DAX mapping alignment, with FUSE_MAP_ALIGNMENT (7.31). */
  map_alignment: number;
  /** With FUSE_PASSTHROUGH (7.40). */
  max_stack_depth?: number;
  /** Seconds, with FUSE_REQUEST_TIMEOUT (7.43). */
  request_timeout?: number;
}
/** Writes initOutSize(o.minor) bytes: the shorter compat forms for an older negotiated minor. */
export function writeInitOut(c: ByteCursor, o: InitOut): void {
  const size = initOutSize(o.minor);
  const end = c.pos + size;
  let flags = o.flags & 0xffffffffffffffffn;
  if (flags >> 32n !== 0n) flags |= InitFlag.INIT_EXT;
  c.putU32(o.major).putU32(o.minor);
  if (size === SIZE.COMPAT_INIT_OUT) return;
  c.putU32(o.max_readahead).putU32(Number(flags & 0xffffffffn));
  c.putU16(o.max_background).putU16(o.congestion_threshold).putU32(o.max_write);
  if (size === SIZE.COMPAT_22_INIT_OUT) return;
  c.putU32(o.time_gran).putU16(o.max_pages).putU16(o.map_alignment);
  c.putU32(Number(flags >> 32n)).putU32(o.max_stack_depth ?? 0).putU16(o.request_timeout ?? 0);
  c.fill(end - c.pos); // unused
}

/** The fixed part of struct fuse_dirent (24 bytes); the name and its padding follow. */
export interface DirentFixed {
  ino: number;
  /** The offset to resume reading after this entry (the next READDIR's offset). */
  off: number;
  namelen: number;
  /** DT_* type, i.e. (mode & S_IFMT) >> 12. */
  type: number;
}
export function writeDirentFixed(c: ByteCursor, d: DirentFixed): void {
  c.putU64(d.ino).putU64(d.off).putU32(d.namelen).putU32(d.type);
}

// ---------------------------------------------------------------- notification bodies

/** struct fuse_notify_inval_inode_out: off/len are signed; len < 0 means to the end, off < 0 attributes only. */
export function writeNotifyInvalInodeOut(c: ByteCursor, ino: number, off: number, len: number): void {
  c.putU64(ino).putI64(off).putI64(len);
}
/** struct fuse_notify_inval_entry_out; the name and a NUL follow. */
export function writeNotifyInvalEntryOut(c: ByteCursor, parent: number, namelen: number, flags: number): void {
  c.putU64(parent).putU32(namelen).putU32(flags);
}
/** struct fuse_notify_delete_out; the name and a NUL follow. */
export function writeNotifyDeleteOut(c: ByteCursor, parent: number, child: number, namelen: number): void {
  c.putU64(parent).putU64(child).putU32(namelen).putU32(0);
}
