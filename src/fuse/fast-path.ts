/**
 * The dispatcher's synchronous fast path: the requests a filesystem can answer from memory
 * (GETATTR and LOOKUP of cached inodes, READ of cached data, GETXATTR of an inode without
 * attributes, OPEN without O_TRUNC, RELEASE of a file that stays, READDIRPLUS after the first
 * request of a listing) and those that need no answer (FORGET, BATCH_FORGET),
 * decoded, answered and encoded in one call with no promise, no request object and no reply
 * allocation. It is the bulk of what a guest sends once its working set is known, and the
 * ordinary path's cost there is its promise chain, not the filesystem.
 *
 * It is an optimisation only: anything it does not handle exactly as decodeRequest + the
 * handlers would (a header it does not expect, extensions, a short body, a name the decoder
 * would refuse, a filesystem that cannot answer now) returns NOT_HANDLED and the request takes
 * the ordinary path, which gives the error replies and logs. Layouts are fuse.h's, as in
 * structs.ts: fuse_in_header {u32 len, u32 opcode, u64 unique, u64 nodeid, u32 uid, u32 gid,
 * u32 pid, u16 total_extlen, u16 padding}; fuse_out_header {u32 len, i32 error, u64 unique}.
 */
import { constants as fsConstants } from 'node:fs';
import { constants } from 'node:os';
import { ENTRY_NAME_MAX, FOPEN, FuseOpcode, SIZE, XATTR_NAME_MAX, attrOutSize, direntAlign, entryOutSize, getattrInSize, readInSize, releaseInSize } from './abi';
import { direntsThatFit, payloadViews } from './reply';
import { isDotName } from '../util/dot-names';
import { FileSystem, RequestContext } from './filesystem';
import { ZERO_ATTR, encodeAttrOutAt, encodeEntryOutAt, encodeOpenOutAt, setU64 } from './structs';

/** answer(): the request needs the ordinary path. */
export const NOT_HANDLED = -1;

/**
 * The most READDIRPLUS records the fast path packs into one reply, in bytes (also capped by
 * max_write): a guest's 6.1 kernel asks for a page, this host's 6.18 for 32 KiB. A larger
 * request is answered with this much, which is allowed (the kernel asks again from the last
 * entry's offset).
 */
const READDIRPLUS_SYNC_MAX = 128 << 10;

const { ENODATA, ENOENT } = constants.errno;
const { O_TRUNC, O_RDONLY } = fsConstants;
/** O_ACCMODE (not in node's fs.constants). */
const O_ACCMODE = 3;
const SLASH = 0x2f;
const DOT = 0x2e;

export interface FastPathSettings {
  entryTimeout: number;
  attrTimeout: number;
  /** Seconds the kernel may keep a negative entry (0: a miss is ENOENT, not cached). */
  negativeTimeout: number;
  minor: number;
  /** Negotiated max_write, also the largest READ. */
  maxWrite: number;
  /** Mounted read-only: an OPEN for writing is the ordinary path's (EROFS). */
  readOnly: boolean;
}

export class FastPath {
  /** The last reply, `answer()` bytes long; overwritten by the next call. */
  readonly reply: Buffer;
  /**
   * How much of the last reply is in `reply`: all of it, except after a READ, whose data went
   * straight into `dest` after the header's place and whose header alone is here.
   */
  replyHead = 0;
  private readonly out: DataView;
  /** Reused for every request: the filesystem must not keep it (FileSystem.getattrSync). */
  private readonly ctx: RequestContext = { uid: 0, gid: 0, pid: 0 };

  constructor(private readonly fs: FileSystem, private readonly s: FastPathSettings) {
    this.reply = Buffer.alloc(SIZE.OUT_HEADER + Math.max(SIZE.ENTRY_OUT, Math.min(s.maxWrite, READDIRPLUS_SYNC_MAX)));
    this.out = new DataView(this.reply.buffer, this.reply.byteOffset, this.reply.length);
  }

  /**
   * Answer the request in buf[0, len): the reply's length in `reply` (0: no reply is due), or
   * NOT_HANDLED. `idle`: the transport has no other request in flight, so a READ may wait for
   * the disk here (FileSystem.readSync).
   */
  answer(buf: Buffer, len: number, dest?: readonly Buffer[], idle = false): number {
    // A filesystem's *Sync method throwing means "use the ordinary method" (FileSystem), which
    // then gives the error reply: one catch here for every opcode.
    try {
      return this.dispatch(buf, len, dest, idle);
    } catch {
      return NOT_HANDLED;
    }
  }

  private dispatch(buf: Buffer, len: number, dest: readonly Buffer[] | undefined, idle: boolean): number {
    if (len < SIZE.IN_HEADER) return NOT_HANDLED;
    const msgLen = buf.readUInt32LE(0);
    // Extensions (security contexts, supplementary groups) are for the ordinary decoder.
    if (msgLen !== len || buf.readUInt16LE(36) !== 0) return NOT_HANDLED;
    const opcode = buf.readUInt32LE(4);
    const body = len - SIZE.IN_HEADER;
    switch (opcode) {
      case FuseOpcode.GETATTR:
        return body === getattrInSize(this.s.minor) ? this.getattr(buf) : NOT_HANDLED;
      case FuseOpcode.LOOKUP:
        return this.lookup(buf, len);
      case FuseOpcode.READ:
        return dest && body === readInSize(this.s.minor) ? this.read(buf, dest, idle) : NOT_HANDLED;
      case FuseOpcode.READDIRPLUS:
        return body === readInSize(this.s.minor) ? this.readdirplus(buf) : NOT_HANDLED;
      case FuseOpcode.GETXATTR:
        return this.getxattr(buf, len);
      case FuseOpcode.OPEN:
        return body === SIZE.OPEN_IN ? this.open(buf) : NOT_HANDLED;
      case FuseOpcode.RELEASE:
        return body === releaseInSize(this.s.minor) ? this.release(buf) : NOT_HANDLED;
      case FuseOpcode.FORGET:
        // fuse_forget_in {u64 nlookup}; no reply.
        if (body !== SIZE.FORGET_IN) return NOT_HANDLED;
        this.fs.forget?.(u64(buf, 16), u64(buf, SIZE.IN_HEADER));
        return 0;
      case FuseOpcode.BATCH_FORGET: {
        // fuse_batch_forget_in {u32 count, u32 dummy} then count x fuse_forget_one {u64 nodeid, u64 nlookup}.
        if (body < SIZE.BATCH_FORGET_IN) return NOT_HANDLED;
        const count = buf.readUInt32LE(SIZE.IN_HEADER);
        if (count * SIZE.FORGET_ONE !== body - SIZE.BATCH_FORGET_IN) return NOT_HANDLED;
        const fs = this.fs;
        if (fs.forget) {
          for (let i = 0, at = SIZE.IN_HEADER + SIZE.BATCH_FORGET_IN; i < count; i++, at += SIZE.FORGET_ONE) fs.forget(u64(buf, at), u64(buf, at + 8));
        }
        return 0;
      }
      default:
        return NOT_HANDLED;
    }
  }

  private context(buf: Buffer): RequestContext {
    const ctx = this.ctx;
    ctx.uid = buf.readUInt32LE(24);
    ctx.gid = buf.readUInt32LE(28);
    ctx.pid = buf.readUInt32LE(32);
    return ctx;
  }

  private getattr(buf: Buffer): number {
    if (!this.fs.getattrSync) return NOT_HANDLED;
    const attr = this.fs.getattrSync(this.context(buf), u64(buf, 16));
    if (!attr) return NOT_HANDLED;
    // The full-size body is written and then cut, as replySized does for the FUSE_COMPAT sizes.
    const size = attrOutSize(this.s.minor);
    this.header(buf, size);
    encodeAttrOutAt(this.out, SIZE.OUT_HEADER, this.s.attrTimeout, attr);
    return this.finish(size);
  }

  private lookup(buf: Buffer, len: number): number {
    if (!this.fs.lookupSync) return NOT_HANDLED;
    // The name: NUL-terminated, 1..255 bytes, no '/' (decodeRequest's entryName for LOOKUP).
    const start = SIZE.IN_HEADER;
    const nul = nameEnd(buf, start, len, ENTRY_NAME_MAX);
    if (nul < 0) return NOT_HANDLED;
    const n = nul - start;
    const name = buf.subarray(start, nul);
    if (name.includes(SLASH) || (name[0] === DOT && (n === 1 || (n === 2 && name[1] === DOT)))) return NOT_HANDLED;
    const found = this.fs.lookupSync(this.context(buf), u64(buf, 16), name);
    if (found === undefined) return NOT_HANDLED;
    const size = entryOutSize(this.s.minor);
    if (found === null) {
      // A known miss, answered as the ordinary path does: ENOENT, or a negative entry (node 0).
      if (this.s.negativeTimeout <= 0) {
        this.header(buf, 0);
        this.out.setInt32(4, -ENOENT, true);
        return this.finish(0);
      }
      this.header(buf, size);
      encodeEntryOutAt(this.out, SIZE.OUT_HEADER, 0, 0, this.s.negativeTimeout, 0, ZERO_ATTR);
      return this.finish(size);
    }
    this.header(buf, size);
    encodeEntryOutAt(this.out, SIZE.OUT_HEADER, found.nodeid ?? found.ino, found.generation, this.s.entryTimeout, this.s.attrTimeout, found);
    return this.finish(size);
  }

  private read(buf: Buffer, dest: readonly Buffer[], idle: boolean): number {
    if (!this.fs.readSync) return NOT_HANDLED;
    // fuse_read_in {u64 fh, u64 offset, u32 size, u32 read_flags, ...}
    const at = SIZE.IN_HEADER;
    const size = Math.min(buf.readUInt32LE(at + 16), this.s.maxWrite);
    if (size === 0) return NOT_HANDLED;
    const views = payloadViews(dest, size);
    if (!views) return NOT_HANDLED;
    const n = this.fs.readSync(this.context(buf), u64(buf, 16), u64(buf, at), u64(buf, at + 8), size, views, idle);
    if (n === undefined) return NOT_HANDLED;
    this.header(buf, n);
    this.replyHead = SIZE.OUT_HEADER;
    return SIZE.OUT_HEADER + n;
  }

  /**
   * READDIRPLUS from memory (FileSystem.readdirSync, readdirplusEntriesSync): the records that
   * fit, packed as the ordinary readdir packs them: fuse_entry_out (zero but for attr.ino and
   * attr.mode for "." and ".."), then fuse_dirent {u64 ino, u64 off, u32 namelen, u32 type}
   * and the name, zero-padded to 8. Lookups are counted for exactly the records that go out.
   */
  private readdirplus(buf: Buffer): number {
    const fs = this.fs;
    if (!fs.readdirSync || !fs.readdirplusEntriesSync) return NOT_HANDLED;
    // fuse_read_in {u64 fh, u64 offset, u32 size, ...}
    const at = SIZE.IN_HEADER;
    const ctx = this.context(buf);
    const node = u64(buf, 16);
    const fh = u64(buf, at);
    const size = Math.min(buf.readUInt32LE(at + 16), this.s.maxWrite, READDIRPLUS_SYNC_MAX);
    // No more entries than the smallest records (a name of up to 8 bytes) could fit.
    const entries = fs.readdirSync(ctx, node, fh, u64(buf, at + 8), Math.floor(size / direntAlign(SIZE.DIRENTPLUS + 1)));
    if (!entries) return NOT_HANDLED;
    // A name the kernel would refuse throws (answer(): the ordinary path then gives its EIO).
    const fit = direntsThatFit(entries, size, true);
    const named = entries.slice(0, fit).filter((e) => !isDotName(e.name));
    const attrs = named.length ? fs.readdirplusEntriesSync(ctx, node, fh, named) : [];
    if (!attrs) return NOT_HANDLED;
    const out = this.out;
    const reply = this.reply;
    let pos: number = SIZE.OUT_HEADER;
    for (let i = 0, k = 0; i < fit; i++) {
      const e = entries[i];
      if (isDotName(e.name)) {
        // fuse_entry_out's attr is at 40: ino (u64) at its 0, mode (u32) at its 60.
        encodeEntryOutAt(out, pos, 0, 0, 0, 0, ZERO_ATTR);
        setU64(out, pos + 40, e.node);
        out.setUint32(pos + 40 + 60, e.type << 12, true);
      } else {
        const a = attrs[k++];
        encodeEntryOutAt(out, pos, a.nodeid ?? a.ino, a.generation, this.s.entryTimeout, this.s.attrTimeout, a);
      }
      const d = pos + SIZE.ENTRY_OUT;
      setU64(out, d, e.node);
      setU64(out, d + 8, e.next);
      out.setUint32(d + 16, e.name.length, true);
      out.setUint32(d + 20, e.type, true);
      reply.set(e.name, d + SIZE.DIRENT);
      const end = pos + direntAlign(SIZE.DIRENTPLUS + e.name.length);
      reply.fill(0, d + SIZE.DIRENT + e.name.length, end);
      pos = end;
    }
    this.header(buf, pos - SIZE.OUT_HEADER);
    return this.finish(pos - SIZE.OUT_HEADER);
  }

  /**
   * OPEN without O_TRUNC of an inode in memory: fuse_open_out {u64 fh, u32 open_flags, i32
   * backing_id} with KEEP_CACHE, as the ordinary path answers (the image is exclusive, so the
   * kernel's cached pages stay valid).
   */
  private open(buf: Buffer): number {
    if (!this.fs.openSync) return NOT_HANDLED;
    // fuse_open_in {u32 flags, u32 open_flags}
    const flags = buf.readUInt32LE(SIZE.IN_HEADER);
    if (flags & O_TRUNC || (this.s.readOnly && (flags & O_ACCMODE) !== O_RDONLY)) return NOT_HANDLED;
    const r = this.fs.openSync(this.context(buf), u64(buf, 16), flags);
    if (!r) return NOT_HANDLED;
    this.header(buf, SIZE.OPEN_OUT);
    encodeOpenOutAt(this.out, SIZE.OUT_HEADER, r.fh, (r.openFlags ?? 0) | FOPEN.KEEP_CACHE);
    return this.finish(SIZE.OPEN_OUT);
  }

  /** RELEASE that needs no I/O: an empty reply (release_flags and lock_owner matter to the ordinary path no more). */
  private release(buf: Buffer): number {
    if (!this.fs.releaseSync) return NOT_HANDLED;
    // fuse_release_in {u64 fh, u32 flags, u32 release_flags, u64 lock_owner}
    const done = this.fs.releaseSync(this.context(buf), u64(buf, 16), u64(buf, SIZE.IN_HEADER));
    if (!done) return NOT_HANDLED;
    this.header(buf, 0);
    return this.finish(0);
  }

  /** GETXATTR of an inode with no extended attributes at all: ENODATA, whatever the name. */
  private getxattr(buf: Buffer, len: number): number {
    if (!this.fs.noXattrsSync) return NOT_HANDLED;
    // fuse_getxattr_in {u32 size, u32 padding}, then the name: NUL-terminated, 1..XATTR_NAME_MAX
    // bytes (decodeRequest's xattrName).
    if (nameEnd(buf, SIZE.IN_HEADER + SIZE.GETXATTR_IN, len, XATTR_NAME_MAX) < 0) return NOT_HANDLED;
    const none = this.fs.noXattrsSync(this.context(buf), u64(buf, 16));
    if (!none) return NOT_HANDLED;
    this.header(buf, 0);
    this.out.setInt32(4, -ENODATA, true);
    return this.finish(0);
  }

  /** fuse_out_header for a reply of `bodySize` (error 0, the request's unique copied as bytes). */
  private header(req: Buffer, bodySize: number): void {
    const out = this.out;
    out.setUint32(0, SIZE.OUT_HEADER + bodySize, true);
    out.setInt32(4, 0, true);
    out.setUint32(8, req.readUInt32LE(8), true);
    out.setUint32(12, req.readUInt32LE(12), true);
  }

  private finish(bodySize: number): number {
    this.replyHead = SIZE.OUT_HEADER + bodySize;
    return this.replyHead;
  }
}

/**
 * Where the NUL ending a name at buf[start..len) is, for a name of 1..max bytes; -1 when there
 * is none within the message or the length is out of range (the ordinary decoder's cases).
 */
function nameEnd(buf: Buffer, start: number, len: number, max: number): number {
  if (start >= len) return -1;
  const nul = buf.indexOf(0, start);
  if (nul < 0 || nul >= len) return -1;
  const n = nul - start;
  return n === 0 || n > max ? -1 : nul;
}

function u64(buf: Buffer, at: number): number {
  return buf.readUInt32LE(at + 4) * 0x100000000 + buf.readUInt32LE(at);
}
