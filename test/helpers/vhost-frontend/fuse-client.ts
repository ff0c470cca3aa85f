/**
 * A FUSE client over virtio-fs queues, playing the guest kernel's part (linux fs/fuse/virtio_fs.c):
 * each request is one descriptor chain, fuse_in_header + in-args device-readable, then
 * fuse_out_header + out-args device-writable. Bulk data (WRITE payload, READ/READDIR result)
 * gets its own descriptor, placed in another guest region than the header, so chains cross
 * regions. FORGET goes on the hiprio queue (0) with no writable part; everything else goes to
 * the request queues (1..n) round-robin. Any number of requests may be in flight.
 *
 * Request encoding is the inverse of src/fuse/structs.ts (which decodes what the kernel sends);
 * layouts per /usr/include/linux/fuse.h.
 */
import { constants as fsConstants } from 'node:fs';
import { constants } from 'node:os';
import { FATTR, FuseOpcode, InitFlag, SIZE, opcodeName } from '../../../src/fuse/abi';
import { ByteCursor } from '../../../src/util/cursor';
import { struct, cstr, inHeader, fuseArgs, GUEST_INIT_FLAGS } from '../../../src/fuse/request-encode';
import { FsError, type ErrnoName } from '../../../src/util/errors';
import type { GuestMemory } from './memory';
import type { Segment, SplitVirtqueue } from './virtqueue';

export interface FuseReply {
  /** 0 or a negative errno. */
  error: number;
  unique: bigint;
  /** out_header.len. */
  len: number;
  /** Bytes the device said it wrote (used ring len). */
  usedLen: number;
  /** The reply body (after the out header), out_header.len - 16 bytes. */
  body: Buffer;
}

export interface FuseAttrReply {
  ino: number;
  size: number;
  blocks: number;
  atime: number;
  mtime: number;
  ctime: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  blksize: number;
}

export interface EntryReply {
  nodeid: number;
  generation: number;
  attr: FuseAttrReply;
}

export interface InitReply {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: bigint;
  maxWrite: number;
  maxPages: number;
}

export interface DirentReply {
  ino: number;
  off: number;
  type: number;
  name: string;
}

export interface CallOptions {
  /** Queue index (0 = hiprio); default: the next request queue. */
  queue?: number;
  /** Bulk bytes after the in-args, in their own descriptor. */
  data?: Buffer;
  /** Room for the fixed out-args. */
  replySize?: number;
  /** Room for bulk reply data, in its own descriptor. */
  replyData?: number;
  /** Put the chain in an indirect table. */
  indirect?: boolean;
  /** No reply expected (FORGET, BATCH_FORGET): the chain is device-readable only. */
  noReply?: boolean;
}

const ERRNO_NAMES = new Map<number, ErrnoName>(Object.entries(constants.errno).map(([k, v]) => [v, k as ErrnoName]));

export class FuseReplyError extends FsError {
  constructor(readonly opcode: number, errno: number) {
    super(ERRNO_NAMES.get(errno) ?? 'EIO', `FUSE opcode ${opcode} answered -${errno}`);
  }
}

/** NUL-terminated name bytes. */
export { cstr };


export function readAttr(c: ByteCursor): FuseAttrReply {
  const ino = c.u64();
  const size = c.u64();
  const blocks = c.u64();
  const atime = c.i64();
  const mtime = c.i64();
  const ctime = c.i64();
  c.skip(12); // nsec fields
  const mode = c.u32();
  const nlink = c.u32();
  const uid = c.u32();
  const gid = c.u32();
  const rdev = c.u32();
  const blksize = c.u32();
  c.skip(4); // flags
  return { ino, size, blocks, atime, mtime, ctime, mode, nlink, uid, gid, rdev, blksize };
}

function readEntry(body: Buffer): EntryReply {
  const c = new ByteCursor(body);
  const nodeid = c.u64();
  const generation = c.u64();
  c.skip(8 + 8 + 4 + 4); // entry_valid, attr_valid and their nsec
  return { nodeid, generation, attr: readAttr(c) };
}

export class FuseClient {
  private unique = 0n;
  private rr = 0;
  /** Requests in flight per queue index. */
  readonly inFlight = new Map<number, number>();

  constructor(readonly mem: GuestMemory, readonly queues: SplitVirtqueue[], readonly defaults: { indirect?: boolean } = {}) {}

  private nextQueue(): number {
    const nreq = this.queues.length - 1;
    if (nreq < 1) throw new Error('no request queue');
    const q = 1 + (this.rr++ % nreq);
    return q;
  }

  nextUnique(): bigint {
    this.unique += 2n; // the kernel's uniques are even (odd ones mark interrupts in older kernels)
    return this.unique;
  }

  /** fuse_in_header followed by the in-args. */
  static header(len: number, opcode: number, unique: bigint, nodeid: number): Buffer {
    return inHeader(len, opcode, unique, nodeid, { uid: 0, gid: 0, pid: process.pid });
  }

  /** Send one request and await its reply; the reply's error is returned, not thrown. */
  async call(opcode: number, nodeid: number, args: Buffer[], opts: CallOptions = {}): Promise<FuseReply> {
    const unique = this.nextUnique();
    const argBytes = Buffer.concat(args);
    const dataLen = opts.data?.length ?? 0;
    const msg = Buffer.concat([FuseClient.header(SIZE.IN_HEADER + argBytes.length + dataLen, opcode, unique, nodeid), argBytes]);
    const queue = opts.queue ?? (opcode === FuseOpcode.FORGET || opcode === FuseOpcode.BATCH_FORGET ? 0 : this.nextQueue());
    const used = await this.submit(queue, msg, opts);
    if (opts.noReply) return { error: 0, unique, len: 0, usedLen: used.usedLen, body: Buffer.alloc(0) };
    const r = used.reply;
    if (r.length < SIZE.OUT_HEADER) throw new Error(`${opcodeName(opcode)}: device wrote ${r.length} bytes, less than a fuse_out_header`);
    const c = new ByteCursor(r);
    const len = c.u32();
    const error = c.i32();
    const gotUnique = c.u64n();
    if (gotUnique !== unique) throw new Error(`reply unique ${gotUnique} for request ${unique}`);
    if (len > r.length || len < SIZE.OUT_HEADER) throw new Error(`out_header.len ${len} but the device wrote ${r.length} bytes`);
    return { error, unique, len, usedLen: used.usedLen, body: r.subarray(SIZE.OUT_HEADER, len) };
  }

  /**
   * Put `msg` (header + args) and optional bulk data on a queue with room for the reply; resolve
   * with the bytes the device wrote (used length, clipped to the writable room).
   */
  async submit(queue: number, msg: Buffer, opts: CallOptions = {}): Promise<{ usedLen: number; reply: Buffer }> {
    const q = this.queues[queue];
    if (!q) throw new Error(`no queue ${queue}`);
    const segs: Segment[] = [];
    const owned: number[] = [];
    const put = (bytes: Buffer | number, writable: boolean): void => {
      const len = typeof bytes === 'number' ? bytes : bytes.length;
      const gpa = this.mem.alloc(len);
      owned.push(gpa);
      if (typeof bytes !== 'number') this.mem.write(gpa, bytes);
      segs.push({ gpa, len, writable });
    };
    put(msg, false);
    if (opts.data && opts.data.length > 0) put(opts.data, false);
    if (!opts.noReply) {
      if (opts.replyData) {
        put(SIZE.OUT_HEADER + (opts.replySize ?? 0), true);
        put(opts.replyData, true);
      } else {
        put(SIZE.OUT_HEADER + (opts.replySize ?? 0), true);
      }
    }
    this.inFlight.set(queue, (this.inFlight.get(queue) ?? 0) + 1);
    try {
      const usedLen = await q.submit(segs, opts.indirect ?? this.defaults.indirect ?? false);
      const parts: Buffer[] = [];
      let left = usedLen;
      for (const s of segs) {
        if (!s.writable || left <= 0) continue;
        const n = Math.min(left, s.len);
        parts.push(Buffer.from(this.mem.view(s.gpa, n)));
        left -= n;
      }
      return { usedLen, reply: Buffer.concat(parts) };
    } finally {
      this.inFlight.set(queue, this.inFlight.get(queue)! - 1);
      for (const g of owned) this.mem.free(g);
    }
  }

  private async ok(opcode: number, nodeid: number, args: Buffer[], opts: CallOptions = {}): Promise<Buffer> {
    const r = await this.call(opcode, nodeid, args, opts);
    if (r.error !== 0) throw new FuseReplyError(opcode, -r.error);
    return r.body;
  }

  async init(flags: bigint = DEFAULT_INIT_FLAGS, minor = 38): Promise<InitReply> {
    const b = await this.ok(FuseOpcode.INIT, 0, [fuseArgs.init(minor, flags)], { replySize: SIZE.INIT_OUT });
    const c = new ByteCursor(b);
    const major = c.u32();
    const gotMinor = c.u32();
    if (b.length < 24) return { major, minor: gotMinor, maxReadahead: 0, flags: 0n, maxWrite: 4096, maxPages: 1 };
    const maxReadahead = c.u32();
    let outFlags = BigInt(c.u32());
    c.skip(4); // max_background, congestion_threshold
    const maxWrite = c.u32();
    let maxPages = 32;
    if (b.length >= SIZE.INIT_OUT) {
      c.skip(4); // time_gran
      maxPages = c.u16() || 32;
      c.skip(2);
      if ((outFlags & InitFlag.INIT_EXT) !== 0n) outFlags |= BigInt(c.u32()) << 32n;
    }
    return { major, minor: gotMinor, maxReadahead, flags: outFlags, maxWrite, maxPages };
  }

  /** LOOKUP; a cacheable negative entry (nodeid 0, as the kernel reads it) is ENOENT too. */
  async lookup(parent: number, name: string): Promise<EntryReply> {
    const e = readEntry(await this.ok(FuseOpcode.LOOKUP, parent, [cstr(name)], { replySize: SIZE.ENTRY_OUT }));
    if (e.nodeid === 0) throw new FuseReplyError(FuseOpcode.LOOKUP, constants.errno.ENOENT);
    return e;
  }

  async getattr(nodeid: number): Promise<FuseAttrReply> {
    const b = await this.ok(FuseOpcode.GETATTR, nodeid, [fuseArgs.getattr()], { replySize: SIZE.ATTR_OUT });
    return readAttr(new ByteCursor(b).skip(16));
  }

  async mkdir(parent: number, name: string, mode = 0o755): Promise<EntryReply> {
    return readEntry(await this.ok(FuseOpcode.MKDIR, parent, [fuseArgs.mkdir(mode), cstr(name)], { replySize: SIZE.ENTRY_OUT }));
  }

  /** CREATE: entry plus an open file handle. */
  async create(parent: number, name: string, mode = 0o644, flags = fsConstants.O_RDWR | 0o100 /* O_CREAT */): Promise<{ entry: EntryReply; fh: number }> {
    const b = await this.ok(FuseOpcode.CREATE, parent, [fuseArgs.create(flags, mode), cstr(name)], { replySize: SIZE.ENTRY_OUT + SIZE.OPEN_OUT });
    return { entry: readEntry(b), fh: new ByteCursor(b, SIZE.ENTRY_OUT).u64() };
  }

  /**
   * The back-end answered OPEN with ENOSYS (no_open): as the kernel does (fc->no_open), files
   * are then opened without a request and with handle 0, and closed without RELEASE.
   */
  noOpen = false;

  async open(nodeid: number, flags = fsConstants.O_RDWR, dir = false): Promise<number> {
    if (!dir && this.noOpen) return 0;
    try {
      const b = await this.ok(dir ? FuseOpcode.OPENDIR : FuseOpcode.OPEN, nodeid, [fuseArgs.open(flags)], { replySize: SIZE.OPEN_OUT });
      return new ByteCursor(b).u64();
    } catch (e) {
      if (dir || !(e instanceof FuseReplyError) || e.code !== 'ENOSYS') throw e;
      this.noOpen = true;
      return 0;
    }
  }

  async read(nodeid: number, fh: number, offset: number, size: number, opts: CallOptions = {}): Promise<Buffer> {
    return this.ok(FuseOpcode.READ, nodeid, [fuseArgs.read(fh, offset, size)], { ...opts, replyData: size });
  }

  async write(nodeid: number, fh: number, offset: number, data: Buffer, opts: CallOptions = {}): Promise<number> {
    const b = await this.ok(FuseOpcode.WRITE, nodeid, [fuseArgs.write(fh, offset, data.length)], { ...opts, data, replySize: SIZE.WRITE_OUT });
    return new ByteCursor(b).u32();
  }

  async release(nodeid: number, fh: number, dir = false): Promise<void> {
    if (!dir && this.noOpen) return;
    await this.ok(dir ? FuseOpcode.RELEASEDIR : FuseOpcode.RELEASE, nodeid, [fuseArgs.release(fh)]);
  }

  async fsync(nodeid: number, fh: number): Promise<void> {
    await this.ok(FuseOpcode.FSYNC, nodeid, [fuseArgs.fsync(fh)]);
  }

  /** One READDIR call: entries from `offset`, as many as fit `size` bytes. */
  async readdir(nodeid: number, fh: number, offset = 0, size = 8192): Promise<DirentReply[]> {
    const b = await this.ok(FuseOpcode.READDIR, nodeid, [fuseArgs.read(fh, offset, size, 0)], { replyData: size });
    const out: DirentReply[] = [];
    const c = new ByteCursor(b);
    while (c.remaining >= SIZE.DIRENT) {
      const ino = c.u64();
      const off = c.u64();
      const namelen = c.u32();
      const type = c.u32();
      const name = c.bytes(namelen).toString();
      c.skip(Math.min(c.remaining, ((namelen + 7) & ~7) - namelen));
      out.push({ ino, off, type, name });
    }
    return out;
  }

  /** Every entry of a directory (OPENDIR, READDIR until empty, RELEASEDIR). */
  async listDir(nodeid: number): Promise<DirentReply[]> {
    const fh = await this.open(nodeid, fsConstants.O_RDONLY, true);
    const all: DirentReply[] = [];
    let off = 0;
    for (;;) {
      const batch = await this.readdir(nodeid, fh, off);
      if (batch.length === 0) break;
      all.push(...batch);
      off = batch[batch.length - 1].off;
    }
    await this.release(nodeid, fh, true);
    return all;
  }

  async unlink(parent: number, name: string): Promise<void> {
    await this.ok(FuseOpcode.UNLINK, parent, [cstr(name)]);
  }

  async rmdir(parent: number, name: string): Promise<void> {
    await this.ok(FuseOpcode.RMDIR, parent, [cstr(name)]);
  }

  async rename(parent: number, name: string, newParent: number, newName: string): Promise<void> {
    await this.ok(FuseOpcode.RENAME, parent, [fuseArgs.rename(newParent), cstr(name), cstr(newName)]);
  }

  /** STATFS: {blocks, bfree, files, ffree, bsize}. */
  async statfs(): Promise<{ blocks: number; bfree: number; files: number; ffree: number; bsize: number }> {
    const c = new ByteCursor(await this.ok(FuseOpcode.STATFS, 1, [], { replySize: SIZE.STATFS_OUT }));
    const blocks = c.u64();
    const bfree = c.u64();
    c.skip(8);
    const files = c.u64();
    const ffree = c.u64();
    return { blocks, bfree, files, ffree, bsize: c.u32() };
  }

  /** FORGET on the hiprio queue: no reply; resolves when the device returns the chain. */
  async forget(nodeid: number, nlookup: number): Promise<void> {
    await this.call(FuseOpcode.FORGET, nodeid, [fuseArgs.forget(nlookup)], { queue: 0, noReply: true });
  }

  /** SETATTR of the size only (truncate or extend), with the file handle when one is given. */
  async truncate(nodeid: number, size: number, fh?: number): Promise<FuseAttrReply> {
    const valid = FATTR.SIZE | (fh !== undefined ? FATTR.FH : 0);
    // fuse_setattr_in {u32 valid, padding; u64 fh, size, lock_owner, atime, mtime, ctime; u32 atimensec, mtimensec, ctimensec, mode, unused4, uid, gid, unused5}
    const arg = struct(SIZE.SETATTR_IN, (c) => c.putU32(valid).putU32(0).putU64(fh ?? 0).putU64(size));
    const b = await this.ok(FuseOpcode.SETATTR, nodeid, [arg], { replySize: SIZE.ATTR_OUT });
    return readAttr(new ByteCursor(b).skip(16));
  }

  /** FALLOCATE: fuse_fallocate_in {u64 fh, offset, length; u32 mode, padding}; mode as fallocate(2) (FALLOC_FL_*). */
  async fallocate(nodeid: number, fh: number, offset: number, length: number, mode = 0): Promise<void> {
    await this.ok(FuseOpcode.FALLOCATE, nodeid, [struct(SIZE.FALLOCATE_IN, (c) => c.putU64(fh).putU64(offset).putU64(length).putU32(mode).putU32(0))]);
  }

  /**
   * SETUPMAPPING (virtio-fs DAX, linux fs/fuse/dax.c): map [foffset, +len) of the open file fh at
   * moffset of the cache window. fuse_setupmapping_in {u64 fh, foffset, len, flags, moffset};
   * flags FUSE_SETUPMAPPING_FLAG_WRITE 1, _READ 2.
   */
  async setupmapping(nodeid: number, fh: number | bigint, foffset: number | bigint, len: number | bigint, moffset: number | bigint, flags: number): Promise<void> {
    const arg = struct(SIZE.SETUPMAPPING_IN, (c) => c.putU64(fh).putU64(foffset).putU64(len).putU64(flags).putU64(moffset));
    await this.ok(FuseOpcode.SETUPMAPPING, nodeid, [arg]);
  }

  /** REMOVEMAPPING: fuse_removemapping_in {u32 count} then count x fuse_removemapping_one {u64 moffset, len}. */
  async removemapping(items: { moffset: number | bigint; len: number | bigint }[], nodeid = 0): Promise<void> {
    const head = struct(SIZE.REMOVEMAPPING_IN, (c) => c.putU32(items.length));
    const ones = items.map((it) => struct(SIZE.REMOVEMAPPING_ONE, (c) => c.putU64(it.moffset).putU64(it.len)));
    await this.ok(FuseOpcode.REMOVEMAPPING, nodeid, [head, ...ones]);
  }

  async destroy(): Promise<void> {
    await this.ok(FuseOpcode.DESTROY, 0, []);
  }
}

/** What a Linux 6.x guest asks for, minus features the tests do not use. */
export const DEFAULT_INIT_FLAGS = GUEST_INIT_FLAGS;
