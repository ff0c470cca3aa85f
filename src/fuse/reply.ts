/**
 * FUSE reply and notification encoding, in the manner of fuser's ll/reply.rs: typed results to
 * bytes. A reply is fuse_out_header {u32 len, i32 error, u64 unique} then the opcode's out
 * struct; a notification is the same header with unique 0 and error = its fuse_notify_code.
 *
 * Fixed-size replies come back as one Buffer; data replies come back as an iovec (header first,
 * then the caller's payload buffers, not copied) for writev or a descriptor chain.
 *
 * The inputs come from kfs itself, so a value that cannot be encoded (a length past u32) is a
 * programming error and throws RangeError. Errors are the exception: replyError never produces a
 * reply the kernel would refuse (fuse_dev_do_write takes error in (-512, 0]), because a refused
 * reply leaves the request, and the process behind it, waiting forever.
 */
import { constants } from 'node:os';
import { ByteCursor } from '../util/cursor';
import { FsError } from '../util/errors';
import { FUSE_KERNEL_MINOR_VERSION, FUSE_NAME_MAX, FuseNotifyCode, SIZE, attrOutSize, direntAlign, entryOutSize, initOutSize, statfsOutSize } from './abi';
import {
  AttrOut, EntryOut, InitOut, Kstatfs, OpenOut, writeAttrOut, writeDirentFixed, writeEntryOut, writeInitOut,
  writeKstatfs, writeNotifyDeleteOut, writeNotifyInvalEntryOut, writeNotifyInvalInodeOut, writeOpenOut, writeOutHeader,
} from './structs';

const U32_MAX = 0xffffffff;
/** The kernel accepts error in (-512, 0] (fs/fuse/dev.c, fuse_dev_do_write). */
const ERRNO_LIMIT = 512;

/** Header plus a zeroed body of `bodySize` bytes; `fill` writes the body through the cursor. */
function reply(unique: bigint, error: number, bodySize: number, fill?: (c: ByteCursor) => void): Buffer {
  // From the pool (a slice of a shared 8 KiB block), zeroed by hand: Buffer.alloc makes a
  // separate backing store per reply, which costs more than the reply's whole encoding.
  const buf = Buffer.allocUnsafe(SIZE.OUT_HEADER + bodySize).fill(0);
  const c = new ByteCursor(buf);
  writeOutHeader(c, buf.length, error, unique);
  fill?.(c);
  return buf;
}

/**
 * Fixed-size body written at full size, then cut to `size`: the FUSE_COMPAT_* forms are
 * prefixes of the current structs, so older minors get the first `size` bytes.
 */
function replySized(unique: bigint, size: number, fullSize: number, fill: (c: ByteCursor) => void): Buffer {
  const buf = reply(unique, 0, fullSize, fill).subarray(0, SIZE.OUT_HEADER + size);
  buf.writeUInt32LE(buf.length, 0);
  return buf;
}

/** An error reply: error = -errno. An errno the kernel would refuse becomes EIO. */
export function replyError(unique: bigint, errno: number): Buffer {
  const e = Number.isInteger(errno) && errno > 0 && errno < ERRNO_LIMIT ? errno : constants.errno.EIO;
  return reply(unique, -e, 0);
}

/** Success with no body: UNLINK, RMDIR, RENAME[2], SETXATTR, REMOVEXATTR, FLUSH, RELEASE, FSYNC, ACCESS, FALLOCATE, SETUPMAPPING, ... */
export function replyEmpty(unique: bigint): Buffer {
  return reply(unique, 0, 0);
}

/** fuse_entry_out: LOOKUP, MKNOD, MKDIR, SYMLINK, LINK. 120 bytes for minor < 9. */
export function replyEntry(unique: bigint, e: EntryOut, minor = FUSE_KERNEL_MINOR_VERSION): Buffer {
  return replySized(unique, entryOutSize(minor), SIZE.ENTRY_OUT, (c) => writeEntryOut(c, e));
}

/** fuse_attr_out: GETATTR, SETATTR. 96 bytes for minor < 9. */
export function replyAttr(unique: bigint, a: AttrOut, minor = FUSE_KERNEL_MINOR_VERSION): Buffer {
  return replySized(unique, attrOutSize(minor), SIZE.ATTR_OUT, (c) => writeAttrOut(c, a));
}

/** fuse_open_out: OPEN, OPENDIR. */
export function replyOpen(unique: bigint, fh: number, open_flags: number, backing_id = 0): Buffer {
  return reply(unique, 0, SIZE.OPEN_OUT, (c) => writeOpenOut(c, { fh, open_flags, backing_id }));
}

/** fuse_entry_out then fuse_open_out: CREATE, TMPFILE. */
export function replyCreate(unique: bigint, e: EntryOut, o: OpenOut): Buffer {
  return reply(unique, 0, SIZE.ENTRY_OUT + SIZE.OPEN_OUT, (c) => {
    writeEntryOut(c, e);
    writeOpenOut(c, o);
  });
}

/** fuse_write_out: WRITE, and COPY_FILE_RANGE (bytes copied, at most u32). */
export function replyWrite(unique: bigint, size: number): Buffer {
  if (!(size >= 0 && size <= U32_MAX)) throw new RangeError(`write reply size ${size} outside u32`);
  return reply(unique, 0, SIZE.WRITE_OUT, (c) => c.putU32(size).putU32(0));
}

/** fuse_copy_file_range_out (7.45): COPY_FILE_RANGE_64's reply, a u64 byte count. */
export function replyCopyFileRange64(unique: bigint, bytes_copied: number): Buffer {
  return reply(unique, 0, SIZE.COPY_FILE_RANGE_OUT, (c) => c.putU64(bytes_copied));
}

/** fuse_statfs_out (fuse_kstatfs). 48 bytes for minor < 4. */
export function replyStatfs(unique: bigint, st: Kstatfs, minor = FUSE_KERNEL_MINOR_VERSION): Buffer {
  return replySized(unique, statfsOutSize(minor), SIZE.STATFS_OUT, (c) => writeKstatfs(c, st));
}

/** fuse_getxattr_out: GETXATTR/LISTXATTR asked with size 0, answered with the size needed. */
export function replyXattrSize(unique: bigint, size: number): Buffer {
  return reply(unique, 0, SIZE.GETXATTR_OUT, (c) => c.putU32(size).putU32(0));
}

/** fuse_init_out, sized for out.minor (8, 24 or 64 bytes). */
export function replyInit(unique: bigint, out: InitOut): Buffer {
  return reply(unique, 0, initOutSize(out.minor), (c) => writeInitOut(c, out));
}

/** fuse_lseek_out. */
export function replyLseek(unique: bigint, offset: number): Buffer {
  return reply(unique, 0, SIZE.LSEEK_OUT, (c) => c.putU64(offset));
}

/** fuse_bmap_out. */
export function replyBmap(unique: bigint, block: number): Buffer {
  return reply(unique, 0, SIZE.BMAP_OUT, (c) => c.putU64(block));
}

/**
 * A variable-length reply (READ, READLINK, READDIR[PLUS], GETXATTR/LISTXATTR with a size,
 * IOCTL): the header, then the payload buffers as given. Write them in order (writev); use
 * concatReply when the transport wants one buffer.
 */
export function replyData(unique: bigint, payload: Buffer | readonly Buffer[]): Buffer[] {
  const parts = Buffer.isBuffer(payload) ? [payload] : payload.filter((b) => b.length > 0);
  let len = SIZE.OUT_HEADER;
  for (const p of parts) len += p.length;
  if (len > U32_MAX) throw new RangeError(`reply of ${len} bytes does not fit fuse_out_header.len`);
  const header = Buffer.alloc(SIZE.OUT_HEADER);
  writeOutHeader(new ByteCursor(header), len, 0, unique);
  return [header, ...parts];
}

/**
 * The reply to a READ whose `size` bytes of data the filesystem already put into the
 * transport's buffers right after the header's place (see payloadViews): the out header alone,
 * its len counting the data. The transport writes it in front of the data and reports len.
 */
export function replyDataInPlace(unique: bigint, size: number): Buffer {
  if (!(size >= 0 && size <= U32_MAX - SIZE.OUT_HEADER)) throw new RangeError(`in-place reply of ${size} bytes`);
  const header = Buffer.alloc(SIZE.OUT_HEADER);
  writeOutHeader(new ByteCursor(header), SIZE.OUT_HEADER + size, 0, unique);
  return header;
}

/** Is `reply` an in-place data reply (replyDataInPlace), and how many bytes does it cover? 0 when not. */
export function inPlaceLength(reply: Buffer | readonly Buffer[] | null): number {
  if (reply === null || !Buffer.isBuffer(reply) || reply.length !== SIZE.OUT_HEADER) return 0;
  const len = reply.readUInt32LE(0);
  return len > SIZE.OUT_HEADER && reply.readInt32LE(4) === 0 ? len : 0;
}

/**
 * Views of the `size` bytes that follow an out header in `dest` (a transport's reply buffers,
 * in order), or null when dest holds less than header + size.
 */
export function payloadViews(dest: readonly Buffer[], size: number): Buffer[] | null {
  let skip: number = SIZE.OUT_HEADER;
  let left = size;
  const out: Buffer[] = [];
  for (const b of dest) {
    if (left === 0) break;
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    const n = Math.min(left, b.length - skip);
    out.push(skip === 0 && n === b.length ? b : b.subarray(skip, skip + n));
    skip = 0;
    left -= n;
  }
  return left === 0 ? out : null;
}

/** One buffer from an iovec (a copy: only for transports that cannot gather). */
export function concatReply(iov: Buffer | readonly Buffer[]): Buffer {
  return Buffer.isBuffer(iov) ? iov : Buffer.concat(iov);
}

// ---------------------------------------------------------------- directory listings

/** One directory entry for READDIR / READDIRPLUS. */
export interface DirentIn {
  ino: number;
  /** Cookie of the *next* entry: a READDIR at this offset resumes right after this one. */
  off: number;
  /** DT_* type ((mode & S_IFMT) >> 12); see direntType. */
  type: number;
  name: Buffer;
}

/** DT_* from a mode, the value fuse_dirent.type carries. */
export const direntType = (mode: number): number => (mode >>> 12) & 0o17;

/**
 * The bytes a fuse_dirent (or with `plus` a fuse_direntplus) record for `name` takes, the name
 * padded to 8. Throws EIO for a name the kernel would refuse: fuse_parse_dirfile /
 * parse_dirplusfile fail the whole listing on an empty name, one over FUSE_NAME_MAX, or one
 * containing '/'; a name like that is damage, not data.
 */
export function direntRecordSize(name: Buffer, plus: boolean): number {
  const n = name.length;
  if (n === 0 || n > FUSE_NAME_MAX || name.includes(0x2f) || name.includes(0)) {
    throw new FsError('EIO', `directory entry name ${JSON.stringify(name.toString('latin1'))} cannot be listed`);
  }
  return direntAlign((plus ? SIZE.DIRENTPLUS : SIZE.DIRENT) + n);
}

/** How many of `entries`, from the first, have records that fit in `room` bytes (direntRecordSize: EIO for a bad name among them). */
export function direntsThatFit(entries: readonly { name: Buffer }[], room: number, plus: boolean): number {
  let fit = 0;
  for (; fit < entries.length; fit++) {
    const n = direntRecordSize(entries[fit].name, plus);
    if (n > room) break;
    room -= n;
  }
  return fit;
}

/**
 * Packs fuse_dirent records (READDIR) or fuse_direntplus records (READDIRPLUS) into at most
 * `limit` bytes (the request's size), each padded to 8 bytes (FUSE_DIRENT_ALIGN). add/addPlus
 * return false, writing nothing, when the record does not fit; the caller stops there and
 * resumes from the last added entry's `off` next time.
 *
 * The buffer grows on demand rather than being allocated at `limit`, since `limit` comes from
 * the request. Bytes are zero-filled (padding never leaks memory to the kernel or guest).
 */
export class DirentPacker {
  private buf: Buffer;
  private used = 0;
  private entries = 0;

  constructor(readonly limit: number, readonly plus: boolean) {
    if (!(Number.isInteger(limit) && limit >= 0)) throw new RangeError(`dirent limit ${limit}`);
    this.buf = Buffer.alloc(Math.min(limit, 4096));
  }

  /** Bytes packed so far. */
  get size(): number {
    return this.used;
  }
  /** Records packed so far. */
  get count(): number {
    return this.entries;
  }

  /** Append a fuse_dirent (READDIR). */
  add(d: DirentIn): boolean {
    if (this.plus) throw new RangeError('DirentPacker: add() on a READDIRPLUS packer; use addPlus()');
    return this.append(d, (c) => writeDirentFixed(c, { ino: d.ino, off: d.off, namelen: d.name.length, type: d.type }));
  }

  /**
   * Append a fuse_direntplus (READDIRPLUS): entry_out then the dirent. The kernel takes a lookup
   * reference for every record with a non-zero entry.nodeid except "." and ".."
   * (fuse_direntplus_link), so the caller counts one lookup per true return on other names; an
   * entry with nodeid 0 only lists the name.
   */
  addPlus(entry: EntryOut, d: DirentIn): boolean {
    if (!this.plus) throw new RangeError('DirentPacker: addPlus() on a READDIR packer; use add()');
    return this.append(d, (c) => {
      writeEntryOut(c, entry);
      writeDirentFixed(c, { ino: d.ino, off: d.off, namelen: d.name.length, type: d.type });
    });
  }

  /** The packed records: a view, valid until the next add. */
  finish(): Buffer {
    return this.buf.subarray(0, this.used);
  }

  /** The bytes a record for `name` takes (direntRecordSize). */
  recordSize(name: Buffer): number {
    return direntRecordSize(name, this.plus);
  }

  /** Bytes left for records. */
  get room(): number {
    return this.limit - this.used;
  }

  private append(d: DirentIn, writeFixed: (c: ByteCursor) => void): boolean {
    const recLen = this.recordSize(d.name);
    if (this.used + recLen > this.limit) return false;
    this.reserve(this.used + recLen);
    const c = new ByteCursor(this.buf, this.used, this.used + recLen);
    writeFixed(c);
    c.putBytes(d.name);
    c.fill(c.remaining); // padding to 8, zeroed explicitly rather than trusting the allocation
    this.used += recLen;
    this.entries++;
    return true;
  }

  private reserve(need: number): void {
    if (need <= this.buf.length) return;
    const next = Buffer.alloc(Math.min(this.limit, Math.max(need, this.buf.length * 2)));
    this.buf.copy(next, 0, 0, this.used);
    this.buf = next;
  }
}

// ---------------------------------------------------------------- notifications

function notification(code: number, bodySize: number, fill?: (c: ByteCursor) => void): Buffer {
  return reply(0n, code, bodySize, fill);
}

function checkNotifyName(name: Buffer): void {
  // fuse_notify_inval_entry / fuse_notify_delete: ENAMETOOLONG past FUSE_NAME_MAX.
  if (name.length > FUSE_NAME_MAX) throw new RangeError(`notification name of ${name.length} bytes exceeds FUSE_NAME_MAX`);
}

/**
 * FUSE_NOTIFY_INVAL_INODE: drop cached data of `ino` in [off, off+len) (len 0 or negative: to
 * the end), and its attributes; off < 0 drops only the attributes.
 */
export function notifyInvalInode(ino: number, off: number, len: number): Buffer {
  return notification(FuseNotifyCode.INVAL_INODE, SIZE.NOTIFY_INVAL_INODE_OUT, (c) => writeNotifyInvalInodeOut(c, ino, off, len));
}

/**
 * FUSE_NOTIFY_INVAL_ENTRY: drop the dentry `name` in `parent`. The kernel wants exactly
 * header + namelen + 1 bytes (the name is NUL-terminated). flags: FUSE_EXPIRE_ONLY (7.38).
 */
export function notifyInvalEntry(parent: number, name: Buffer, flags = 0): Buffer {
  checkNotifyName(name);
  return notification(FuseNotifyCode.INVAL_ENTRY, SIZE.NOTIFY_INVAL_ENTRY_OUT + name.length + 1, (c) => {
    writeNotifyInvalEntryOut(c, parent, name.length, flags);
    c.putBytes(name).putU8(0);
  });
}

/** FUSE_NOTIFY_DELETE: `name` in `parent`, which was `child`, is gone (also drops it from the dcache). */
export function notifyDelete(parent: number, child: number, name: Buffer): Buffer {
  checkNotifyName(name);
  return notification(FuseNotifyCode.DELETE, SIZE.NOTIFY_DELETE_OUT + name.length + 1, (c) => {
    writeNotifyDeleteOut(c, parent, child, name.length);
    c.putBytes(name).putU8(0);
  });
}

/**
 * FUSE_NOTIFY_RESEND (7.40): ask the kernel to queue every request still awaiting a reply again
 * (with FUSE_UNIQUE_RESEND set in their unique). No body: a 16-byte header.
 */
export function notifyResend(): Buffer {
  return notification(FuseNotifyCode.RESEND, 0);
}
