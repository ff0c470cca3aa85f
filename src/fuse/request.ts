/**
 * FUSE request decoding: one message (fuse_in_header + the opcode's body, fuse.h) to a typed
 * request, in the manner of fuser's ll/request.rs.
 *
 * Message layout: fuse_in_header (40 bytes) | opcode body | extensions (total_extlen * 8 bytes,
 * 7.38). An opcode body is its fixed struct followed by NUL-terminated names and/or a data
 * payload, in the order the kernel's fuse_args.in_args lists them (fs/fuse/dir.c, file.c).
 *
 * Everything here is untrusted (a guest writes virtio-fs requests), so decodeRequest never
 * throws on bad input: a short or inconsistent message becomes a DecodeError carrying the errno
 * to answer with, and the server keeps serving. Every Buffer in a decoded request (names, data)
 * is a view into the message buffer, not a copy: copy it before the transport reuses the buffer.
 */
import { constants } from 'node:os';
import { ByteCursor, ShortBufferError } from '../util/cursor';
import {
  ENTRY_NAME_MAX, FuseOpcode, InitFlag, PATH_MAX, SIZE, XATTR_NAME_MAX, XATTR_SIZE_MAX, FUSE_KERNEL_MINOR_VERSION,
  createInSize, getattrInSize, mknodInSize, opcodeName, readInSize, releaseInSize, writeInSize,
} from './abi';
import {
  BmapIn, CopyFileRangeIn, CreateIn, FallocateIn, FlushIn, ForgetOne, FsyncIn, FuseInHeader, GetattrIn, InitIn,
  IoctlIn, LkIn, LseekIn, MknodIn, MkdirIn, OpenIn, PollIn, ReadIn, ReleaseIn, RemovemappingOne, SetattrIn,
  SetupmappingIn, SetxattrIn, StatxIn, WriteIn,
  readAccessIn, readBmapIn, readCopyFileRangeIn, readCreateIn, readFallocateIn, readFlushIn, readForgetOne,
  readFsyncIn, readGetattrIn, readGetxattrIn, readInHeader, readInitIn, readIoctlIn, readLkIn, readLseekIn,
  readMkdirIn, readMknodIn, readNotifyRetrieveIn, readOpenIn, readPollIn, readReadIn, readReleaseIn,
  readRemovemappingOne, readRename2In, readSetattrIn, readSetupmappingIn, readSetxattrIn, readStatxIn, readWriteIn,
} from './structs';

const { EINVAL, EIO, ENAMETOOLONG, ERANGE, E2BIG } = constants.errno;

/** What was negotiated at INIT that changes how later requests are laid out. */
export interface DecodeOptions {
  /** Negotiated minor: min(kernel's, the one kfs replied with). Selects FUSE_COMPAT_* body sizes. */
  minor: number;
  /** FUSE_SETXATTR_EXT was negotiated: fuse_setxattr_in is 16 bytes instead of 8. */
  setxattrExt: boolean;
}

export const DEFAULT_DECODE_OPTIONS: Readonly<DecodeOptions> = { minor: FUSE_KERNEL_MINOR_VERSION, setxattrExt: false };

/** Decode options after INIT: `minor` as negotiated, `flags` as kfs replied them. */
export function decodeOptionsFor(minor: number, flags: bigint): DecodeOptions {
  return { minor, setxattrExt: (flags & InitFlag.SETXATTR_EXT) !== 0n };
}

/**
 * A message that could not be decoded. `errno` is what to reply with; `noReply` is set when no
 * reply may be sent (FORGET/BATCH_FORGET/NOTIFY_REPLY take none, and a message too short to
 * hold its unique cannot be answered).
 */
export class DecodeError {
  readonly kind = 'decode_error' as const;
  constructor(
    readonly unique: bigint,
    readonly opcode: number,
    readonly errno: number,
    readonly reason: string,
    readonly noReply: boolean,
    /** The header, when it was read whole. */
    readonly header?: FuseInHeader,
  ) {}
}

/* The operations. Field names are fuse.h's; see ./structs for each struct's fields. */
type Op<K extends string, T = unknown> = { kind: K } & T;
type Named = { name: Buffer };

export type FuseOp =
  | Op<'lookup', Named>
  | Op<'forget', { nlookup: number }>
  | Op<'batch_forget', { items: ForgetOne[] }>
  | Op<'getattr', GetattrIn>
  | Op<'setattr', SetattrIn>
  | Op<'readlink'>
  | Op<'symlink', Named & { target: Buffer }>
  | Op<'mknod', MknodIn & Named>
  | Op<'mkdir', MkdirIn & Named>
  | Op<'unlink', Named>
  | Op<'rmdir', Named>
  | Op<'rename', { newdir: number; name: Buffer; newname: Buffer }>
  | Op<'rename2', { newdir: number; flags: number; name: Buffer; newname: Buffer }>
  | Op<'link', { oldnodeid: number; name: Buffer }>
  | Op<'open', OpenIn>
  | Op<'read', ReadIn>
  | Op<'write', WriteIn & { data: Buffer }>
  | Op<'statfs'>
  | Op<'release', ReleaseIn>
  | Op<'fsync', FsyncIn>
  | Op<'setxattr', SetxattrIn & { name: Buffer; value: Buffer }>
  | Op<'getxattr', { size: number; name: Buffer }>
  | Op<'listxattr', { size: number }>
  | Op<'removexattr', Named>
  | Op<'flush', FlushIn>
  | Op<'init', InitIn>
  | Op<'opendir', OpenIn>
  | Op<'readdir', ReadIn>
  | Op<'releasedir', ReleaseIn>
  | Op<'fsyncdir', FsyncIn>
  | Op<'getlk', LkIn>
  | Op<'setlk', LkIn>
  | Op<'setlkw', LkIn>
  | Op<'access', { mask: number }>
  | Op<'create', CreateIn & Named>
  /** `unique` is the interrupted request's; the INTERRUPT's own header.unique differs. */
  | Op<'interrupt', { unique: bigint }>
  | Op<'bmap', BmapIn>
  | Op<'destroy'>
  | Op<'ioctl', IoctlIn & { in_data: Buffer }>
  | Op<'poll', PollIn>
  /** Answer to a FUSE_NOTIFY_RETRIEVE; header.unique is the notify_unique kfs chose. */
  | Op<'notify_reply', { offset: number; size: number; data: Buffer }>
  | Op<'fallocate', FallocateIn>
  | Op<'readdirplus', ReadIn>
  | Op<'lseek', LseekIn>
  | Op<'copy_file_range', CopyFileRangeIn>
  /** Same body; the reply is fuse_copy_file_range_out (u64) instead of fuse_write_out. */
  | Op<'copy_file_range_64', CopyFileRangeIn>
  | Op<'setupmapping', SetupmappingIn>
  | Op<'removemapping', { items: RemovemappingOne[] }>
  | Op<'syncfs'>
  /** Name is whatever the VFS gave the unnamed dentry ("/" in Linux), not an entry name. */
  | Op<'tmpfile', CreateIn & Named>
  | Op<'statx', StatxIn>
  | Op<'unknown', { opcode: number; body: Buffer }>;

export type FuseOpKind = FuseOp['kind'];

export interface RequestCommon {
  header: FuseInHeader;
  /** The request extensions (security contexts, supplementary groups), raw; usually empty. */
  extensions: Buffer;
}

export type FuseRequest = FuseOp & RequestCommon;
export type FuseRequestOf<K extends FuseOpKind> = Extract<FuseOp, { kind: K }> & RequestCommon;

/** Opcodes the kernel expects no reply to. */
const NO_REPLY = new Set<number>([FuseOpcode.FORGET, FuseOpcode.BATCH_FORGET, FuseOpcode.NOTIFY_REPLY]);

/** Thrown inside the decoder for input that is well framed but invalid; never escapes it. */
class BadRequest {
  constructor(readonly errno: number, readonly reason: string) {}
}

/** Decode one message. Never throws for malformed input. */
export function decodeRequest(buf: Buffer, opts: Readonly<DecodeOptions> = DEFAULT_DECODE_OPTIONS): FuseRequest | DecodeError {
  if (buf.length < SIZE.IN_HEADER) {
    // Enough for fuse_in_header.unique (offset 8) means the kernel can still be answered.
    const unique = buf.length >= 16 ? buf.readBigUInt64LE(8) : 0n;
    const opcode = buf.length >= 8 ? buf.readUInt32LE(4) : 0;
    const noReply = unique === 0n || NO_REPLY.has(opcode);
    return new DecodeError(unique, opcode, EIO, `short message: ${buf.length} bytes, the header alone is ${SIZE.IN_HEADER}`, noReply);
  }
  const header = readInHeader(new ByteCursor(buf, 0, SIZE.IN_HEADER));
  const { unique, opcode, len } = header;
  const fail = (errno: number, reason: string): DecodeError =>
    new DecodeError(unique, opcode, errno, `${opcodeName(opcode)}: ${reason}`, unique === 0n || NO_REPLY.has(opcode), header);
  if (len < SIZE.IN_HEADER) return fail(EIO, `header len ${len} is smaller than the header`);
  if (len > buf.length) return fail(EIO, `header len ${len} exceeds the ${buf.length} bytes received`);
  const extBytes = header.total_extlen * 8;
  if (extBytes > len - SIZE.IN_HEADER) return fail(EIO, `total_extlen ${header.total_extlen} runs past the message end`);
  const bodyEnd = len - extBytes;
  const extensions = buf.subarray(bodyEnd, len);
  try {
    const op = decodeBody(opcode, new ByteCursor(buf, SIZE.IN_HEADER, bodyEnd), opts);
    return Object.assign(op, { header, extensions });
  } catch (e) {
    if (e instanceof BadRequest) return fail(e.errno, e.reason);
    if (e instanceof ShortBufferError) return fail(EINVAL, `truncated body (${bodyEnd - SIZE.IN_HEADER} bytes): ${e.message}`);
    // A decoder bug, not bad input: still answer (EIO) rather than take the server down.
    return fail(EIO, `decoder failure: ${e instanceof Error ? e.message : String(e)}`);
  }
}

function decodeBody(opcode: number, c: ByteCursor, opts: Readonly<DecodeOptions>): FuseOp {
  const minor = opts.minor;
  switch (opcode) {
    case FuseOpcode.LOOKUP:
      return { kind: 'lookup', name: entryName(c, 'name', true) };
    case FuseOpcode.FORGET:
      return { kind: 'forget', nlookup: c.u64() };
    case FuseOpcode.BATCH_FORGET: {
      const count = c.u32();
      c.skip(4); // dummy
      return { kind: 'batch_forget', items: readArray(c, count, SIZE.FORGET_ONE, readForgetOne, 'fuse_forget_one') };
    }
    case FuseOpcode.GETATTR:
      return { kind: 'getattr', ...(getattrInSize(minor) === 0 ? { getattr_flags: 0, fh: 0 } : readGetattrIn(c)) };
    case FuseOpcode.SETATTR:
      return { kind: 'setattr', ...readSetattrIn(c) };
    case FuseOpcode.READLINK:
      return { kind: 'readlink' };
    case FuseOpcode.SYMLINK: {
      // fuse_symlink: in_args are the new entry's name, then the link target.
      const name = entryName(c, 'name', false);
      const target = cname(c, 'target');
      if (target.length === 0) throw new BadRequest(EINVAL, 'empty symlink target');
      if (target.length >= PATH_MAX) throw new BadRequest(ENAMETOOLONG, `symlink target of ${target.length} bytes`);
      return { kind: 'symlink', name, target };
    }
    case FuseOpcode.MKNOD: {
      const m = readMknodIn(c, mknodInSize(minor));
      return { kind: 'mknod', ...m, name: entryName(c, 'name', false) };
    }
    case FuseOpcode.MKDIR: {
      const m = readMkdirIn(c);
      return { kind: 'mkdir', ...m, name: entryName(c, 'name', false) };
    }
    case FuseOpcode.UNLINK:
      return { kind: 'unlink', name: entryName(c, 'name', false) };
    case FuseOpcode.RMDIR:
      return { kind: 'rmdir', name: entryName(c, 'name', false) };
    case FuseOpcode.RENAME: {
      const newdir = c.u64(); // fuse_rename_in
      return { kind: 'rename', newdir, name: entryName(c, 'oldname', false), newname: entryName(c, 'newname', false) };
    }
    case FuseOpcode.RENAME2: {
      const r = readRename2In(c);
      return { kind: 'rename2', ...r, name: entryName(c, 'oldname', false), newname: entryName(c, 'newname', false) };
    }
    case FuseOpcode.LINK: {
      const oldnodeid = c.u64(); // fuse_link_in
      return { kind: 'link', oldnodeid, name: entryName(c, 'newname', false) };
    }
    case FuseOpcode.OPEN:
      return { kind: 'open', ...readOpenIn(c) };
    case FuseOpcode.OPENDIR:
      return { kind: 'opendir', ...readOpenIn(c) };
    case FuseOpcode.READ:
      return { kind: 'read', ...readReadIn(c, readInSize(minor)) };
    case FuseOpcode.READDIR:
      return { kind: 'readdir', ...readReadIn(c, readInSize(minor)) };
    case FuseOpcode.READDIRPLUS:
      return { kind: 'readdirplus', ...readReadIn(c, readInSize(minor)) };
    case FuseOpcode.WRITE: {
      const w = readWriteIn(c, writeInSize(minor));
      // The payload is exactly `size` bytes (fuse_write_args: in_args[1].size = size).
      if (c.remaining !== w.size) throw new BadRequest(EINVAL, `write size ${w.size} but ${c.remaining} bytes of data`);
      return { kind: 'write', ...w, data: c.bytes(w.size) };
    }
    case FuseOpcode.STATFS:
      return { kind: 'statfs' };
    case FuseOpcode.RELEASE:
      return { kind: 'release', ...readReleaseIn(c, releaseInSize(minor)) };
    case FuseOpcode.RELEASEDIR:
      return { kind: 'releasedir', ...readReleaseIn(c, releaseInSize(minor)) };
    case FuseOpcode.FSYNC:
      return { kind: 'fsync', ...readFsyncIn(c) };
    case FuseOpcode.FSYNCDIR:
      return { kind: 'fsyncdir', ...readFsyncIn(c) };
    case FuseOpcode.SETXATTR: {
      const s = readSetxattrIn(c, opts.setxattrExt);
      const name = xattrName(c);
      if (s.size > XATTR_SIZE_MAX) throw new BadRequest(E2BIG, `xattr value of ${s.size} bytes`);
      if (c.remaining !== s.size) throw new BadRequest(EINVAL, `xattr size ${s.size} but ${c.remaining} bytes of value`);
      return { kind: 'setxattr', ...s, name, value: c.bytes(s.size) };
    }
    case FuseOpcode.GETXATTR: {
      const { size } = readGetxattrIn(c);
      return { kind: 'getxattr', size, name: xattrName(c) };
    }
    case FuseOpcode.LISTXATTR:
      return { kind: 'listxattr', size: readGetxattrIn(c).size };
    case FuseOpcode.REMOVEXATTR:
      return { kind: 'removexattr', name: xattrName(c) };
    case FuseOpcode.FLUSH:
      return { kind: 'flush', ...readFlushIn(c) };
    case FuseOpcode.INIT:
      return { kind: 'init', ...readInitIn(c) };
    case FuseOpcode.GETLK:
      return { kind: 'getlk', ...readLkIn(c) };
    case FuseOpcode.SETLK:
      return { kind: 'setlk', ...readLkIn(c) };
    case FuseOpcode.SETLKW:
      return { kind: 'setlkw', ...readLkIn(c) };
    case FuseOpcode.ACCESS:
      return { kind: 'access', ...readAccessIn(c) };
    case FuseOpcode.CREATE: {
      const cr = readCreateIn(c, createInSize(minor));
      return { kind: 'create', ...cr, name: entryName(c, 'name', false) };
    }
    case FuseOpcode.TMPFILE: {
      const cr = readCreateIn(c, SIZE.CREATE_IN);
      return { kind: 'tmpfile', ...cr, name: cname(c, 'name') };
    }
    case FuseOpcode.INTERRUPT:
      return { kind: 'interrupt', unique: c.u64n() };
    case FuseOpcode.BMAP:
      return { kind: 'bmap', ...readBmapIn(c) };
    case FuseOpcode.DESTROY:
      return { kind: 'destroy' };
    case FuseOpcode.IOCTL: {
      const io = readIoctlIn(c);
      return { kind: 'ioctl', ...io, in_data: c.bytes(Math.min(io.in_size, c.remaining)) };
    }
    case FuseOpcode.POLL:
      return { kind: 'poll', ...readPollIn(c) };
    case FuseOpcode.NOTIFY_REPLY: {
      const r = readNotifyRetrieveIn(c);
      if (c.remaining !== r.size) throw new BadRequest(EINVAL, `retrieve size ${r.size} but ${c.remaining} bytes of data`);
      return { kind: 'notify_reply', ...r, data: c.bytes(r.size) };
    }
    case FuseOpcode.FALLOCATE:
      return { kind: 'fallocate', ...readFallocateIn(c) };
    case FuseOpcode.LSEEK:
      return { kind: 'lseek', ...readLseekIn(c) };
    case FuseOpcode.COPY_FILE_RANGE:
      return { kind: 'copy_file_range', ...readCopyFileRangeIn(c) };
    case FuseOpcode.COPY_FILE_RANGE_64:
      return { kind: 'copy_file_range_64', ...readCopyFileRangeIn(c) };
    case FuseOpcode.SETUPMAPPING:
      return { kind: 'setupmapping', ...readSetupmappingIn(c) };
    case FuseOpcode.REMOVEMAPPING: {
      const count = c.u32(); // fuse_removemapping_in; the entries follow at once (offset 4)
      return { kind: 'removemapping', items: readArray(c, count, SIZE.REMOVEMAPPING_ONE, readRemovemappingOne, 'fuse_removemapping_one') };
    }
    case FuseOpcode.SYNCFS:
      return { kind: 'syncfs' }; // fuse_syncfs_in is only padding
    case FuseOpcode.STATX:
      return { kind: 'statx', ...readStatxIn(c) };
    default:
      return { kind: 'unknown', opcode, body: c.bytes(c.remaining) };
  }
}

/** `count` fixed-size records, with the count checked against the bytes present before allocating. */
function readArray<T>(c: ByteCursor, count: number, size: number, read: (c: ByteCursor) => T, what: string): T[] {
  if (count * size > c.remaining) {
    throw new BadRequest(EINVAL, `count ${count} needs ${count * size} bytes of ${what}, ${c.remaining} present`);
  }
  const out = new Array<T>(count);
  for (let i = 0; i < count; i++) out[i] = read(c);
  return out;
}

/** A NUL-terminated byte string within the body (NUL consumed, not included). */
function cname(c: ByteCursor, what: string): Buffer {
  const nul = c.buf.subarray(c.pos, c.end).indexOf(0);
  if (nul < 0) throw new BadRequest(EINVAL, `${what} is not NUL-terminated within the body`);
  const v = c.bytes(nul);
  c.skip(1);
  return v;
}

const SLASH = 0x2f;
const DOT = 0x2e;

/**
 * A directory entry name: 1..255 bytes (EXT4_NAME_LEN; longer is ENAMETOOLONG, as ext4 answers
 * it), no '/'. "." and ".." reach only LOOKUP (FUSE_EXPORT_SUPPORT looks up ".."); the VFS never
 * sends them to operations that create or remove entries, so there they are rejected here
 * rather than trusted to every filesystem.
 */
function entryName(c: ByteCursor, what: string, allowDots: boolean): Buffer {
  const name = cname(c, what);
  if (name.length === 0) throw new BadRequest(EINVAL, `empty ${what}`);
  if (name.length > ENTRY_NAME_MAX) throw new BadRequest(ENAMETOOLONG, `${what} of ${name.length} bytes`);
  if (name.includes(SLASH)) throw new BadRequest(EINVAL, `${what} contains '/'`);
  if (!allowDots && name[0] === DOT && (name.length === 1 || (name.length === 2 && name[1] === DOT))) {
    throw new BadRequest(EINVAL, `${what} is "${name.toString('latin1')}"`);
  }
  return name;
}

/** An xattr name: 1..255 bytes; setxattr(2) answers ERANGE outside that. */
function xattrName(c: ByteCursor): Buffer {
  const name = cname(c, 'xattr name');
  if (name.length === 0 || name.length > XATTR_NAME_MAX) throw new BadRequest(ERANGE, `xattr name of ${name.length} bytes`);
  return name;
}
