/**
 * FUSE requests as the kernel sends them: the inverse of request.ts / structs.ts (which decode
 * them), layouts per /usr/include/linux/fuse.h (protocol 7.38+ sizes). kfsd's JIT warm-up
 * (warmup.ts) serves requests built here to a scratch filesystem, and the tests' FUSE client
 * (test/helpers/vhost-frontend/fuse-client.ts) sends them to kfsd and virtiofsd.
 */
import { constants as fsConstants } from 'node:fs';
import { InitFlag, SIZE } from './abi';
import { ByteCursor } from '../util/cursor';

/** A zeroed struct of `size` bytes filled through a cursor. */
export function struct(size: number, fill: (c: ByteCursor) => void): Buffer {
  const b = Buffer.alloc(size);
  fill(new ByteCursor(b));
  return b;
}

/** A name as FUSE carries it: its bytes and a NUL. */
export const cstr = (s: string | Buffer): Buffer => Buffer.concat([Buffer.from(s), Buffer.from([0])]);

/** The caller's credentials in fuse_in_header. */
export interface Caller {
  uid: number;
  gid: number;
  pid: number;
}

/** fuse_in_header {u32 len, opcode; u64 unique, nodeid; u32 uid, gid, pid; u16 total_extlen, padding}. */
export function inHeader(len: number, opcode: number, unique: bigint, nodeid: number, who: Caller): Buffer {
  return struct(SIZE.IN_HEADER, (c) => c.putU32(len).putU32(opcode).putU64(unique).putU64(nodeid).putU32(who.uid).putU32(who.gid).putU32(who.pid).putU16(0).putU16(0));
}

/** A whole request: header, in-args, then bulk data (a WRITE's). */
export function encodeRequest(opcode: number, unique: bigint, nodeid: number, args: readonly Buffer[], who: Caller, data?: Buffer): Buffer {
  const parts = data ? [...args, data] : [...args];
  const len = parts.reduce((n: number, p) => n + p.length, SIZE.IN_HEADER);
  return Buffer.concat([inHeader(len, opcode, unique, nodeid, who), ...parts], len);
}

/** What a Linux 6.x guest asks for, minus features the tests do not use. */
export const GUEST_INIT_FLAGS =
  InitFlag.ASYNC_READ |
  InitFlag.ATOMIC_O_TRUNC |
  InitFlag.EXPORT_SUPPORT |
  InitFlag.BIG_WRITES |
  InitFlag.DONT_MASK |
  InitFlag.DO_READDIRPLUS |
  InitFlag.READDIRPLUS_AUTO |
  InitFlag.PARALLEL_DIROPS |
  InitFlag.MAX_PAGES |
  InitFlag.INIT_EXT;

/** The in-args of each request (after fuse_in_header). */
export const fuseArgs = {
  /** fuse_init_in {u32 major, minor, max_readahead, flags, flags2, unused[11]}. */
  init: (minor: number, flags: bigint, maxReadahead = 128 * 1024): Buffer => {
    const f = flags | InitFlag.INIT_EXT;
    return struct(SIZE.INIT_IN, (c) => c.putU32(7).putU32(minor).putU32(maxReadahead).putU32(Number(f & 0xffffffffn)).putU32(Number(f >> 32n)));
  },
  /** fuse_getattr_in {u32 getattr_flags, dummy; u64 fh}. */
  getattr: (): Buffer => Buffer.alloc(SIZE.GETATTR_IN),
  /** fuse_mkdir_in {u32 mode, umask}. */
  mkdir: (mode: number, umask = 0o022): Buffer => struct(SIZE.MKDIR_IN, (c) => c.putU32(mode).putU32(umask)),
  /** fuse_create_in {u32 flags, mode, umask, open_flags}; mode with its S_IFREG. */
  create: (flags: number, mode: number, umask = 0o022): Buffer => struct(SIZE.CREATE_IN, (c) => c.putU32(flags).putU32(0o100000 | mode).putU32(umask).putU32(0)),
  /** fuse_open_in {u32 flags, open_flags} (OPEN, OPENDIR). */
  open: (flags: number): Buffer => struct(SIZE.OPEN_IN, (c) => c.putU32(flags).putU32(0)),
  /** fuse_read_in {u64 fh, offset; u32 size, read_flags; u64 lock_owner; u32 flags, padding} (READ, READDIR, READDIRPLUS). */
  read: (fh: number, offset: number, size: number, flags = fsConstants.O_RDWR): Buffer =>
    struct(SIZE.READ_IN, (c) => c.putU64(fh).putU64(offset).putU32(size).putU32(0).putU64(0).putU32(flags).putU32(0)),
  /** fuse_write_in {u64 fh, offset; u32 size, write_flags; u64 lock_owner; u32 flags, padding}; the data follows. */
  write: (fh: number, offset: number, size: number): Buffer =>
    struct(SIZE.WRITE_IN, (c) => c.putU64(fh).putU64(offset).putU32(size).putU32(0).putU64(0).putU32(fsConstants.O_RDWR).putU32(0)),
  /** fuse_release_in {u64 fh; u32 flags, release_flags; u64 lock_owner} (RELEASE, RELEASEDIR). */
  release: (fh: number, flags = fsConstants.O_RDWR): Buffer => struct(SIZE.RELEASE_IN, (c) => c.putU64(fh).putU32(flags).putU32(0).putU64(0)),
  /** fuse_fsync_in {u64 fh; u32 fsync_flags, padding}. */
  fsync: (fh: number): Buffer => struct(SIZE.FSYNC_IN, (c) => c.putU64(fh).putU32(0).putU32(0)),
  /** fuse_forget_in {u64 nlookup}. */
  forget: (nlookup: number): Buffer => struct(SIZE.FORGET_IN, (c) => c.putU64(nlookup)),
  /** fuse_batch_forget_in {u32 count, dummy} then count x fuse_forget_one {u64 nodeid, nlookup}. */
  batchForget: (items: readonly { nodeid: number; nlookup: number }[]): Buffer =>
    struct(SIZE.BATCH_FORGET_IN + items.length * SIZE.FORGET_ONE, (c) => {
      c.putU32(items.length).putU32(0);
      for (const it of items) c.putU64(it.nodeid).putU64(it.nlookup);
    }),
  /** fuse_getxattr_in {u32 size, padding}; the name follows. */
  getxattr: (size: number): Buffer => struct(SIZE.GETXATTR_IN, (c) => c.putU32(size).putU32(0)),
  /** fuse_rename_in {u64 newdir}; the two names follow. */
  rename: (newParent: number): Buffer => struct(SIZE.RENAME_IN, (c) => c.putU64(newParent)),
};
