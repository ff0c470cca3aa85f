/**
 * Resent requests after a server restart (FUSE_NOTIFY_RESEND marks them with bit 63 of
 * unique): a request the dead server read may have taken effect before it died. Requests whose
 * second execution gives the same answer go through unchanged. Those that would not (create,
 * mknod, mkdir, symlink, link: EEXIST; unlink, rmdir, rename: ENOENT) are first checked against
 * the image, and when their effect is there they get the reply they would have got.
 *
 * Why the image's state decides, and not a log of replies stamped with commit numbers: the
 * image after a restart is exactly what was committed (journal replay: all of a transaction or
 * none of it), and the kernel makes the state unambiguous. It sends CREATE, MKNOD, MKDIR,
 * SYMLINK and LINK only for a name it has just looked up as absent, UNLINK, RMDIR and RENAME
 * only for a source it has looked up as present, and it holds the parent directory's lock
 * (i_rwsem, exclusive for these operations; both parents for RENAME) from that lookup until
 * the reply. Every change to this image passes through that kernel. So, with the lock still
 * held while the request is resent:
 *   - a name that was absent and is now present was made by this request;
 *   - a source name that was present and is now absent was removed by this request.
 * The check needs no record written before or after the commit, so there is no window between
 * a commit and a record in which a death could make the two disagree (a reply log stamped with
 * the next commit number has one: a commit by another request can carry the effect before the
 * reply is stamped).
 * The reply is then rebuilt from the image (a LOOKUP for the new entry, plus an OPEN for
 * CREATE), which is what the original reply held: the same inode and generation, attributes
 * as of now.
 *
 * Idempotent on their own: SETATTR, WRITE (FUSE sends an explicit offset, also for O_APPEND:
 * the kernel resolves it against its i_size before sending), FALLOCATE, COPY_FILE_RANGE,
 * SETXATTR without XATTR_CREATE, OPEN. Not covered: RENAME_EXCHANGE (both names exist before
 * and after), SETXATTR with XATTR_CREATE and REMOVEXATTR resent after they took effect (EEXIST
 * / ENODATA), TMPFILE (a second unnamed inode, freed by the next mount's orphan cleanup).
 */
import { constants } from 'node:os';
import { ByteCursor } from '../util/cursor';
import { log } from '../util/log';
import { errnoOf } from '../util/errors';
import { FuseOpcode as Op, FOPEN, FUSE_UNIQUE_RESEND, RENAME } from '../fuse/abi';
import { FuseSession, Reply } from '../fuse/dispatcher';
import { decodeRequest, decodeOptionsFor, DecodeError, FuseRequest } from '../fuse/request';
import { replyEmpty, replyOpen, concatReply } from '../fuse/reply';
import { FileSystem, EntryAttr } from '../fuse/filesystem';

const IN_HEADER = 40;
const OUT_HEADER = 16;
const O_CREAT = 0o100;
const O_EXCL = 0o200;
const O_TRUNC = 0o1000;

const GUARDED = new Set<number>([Op.CREATE, Op.MKNOD, Op.MKDIR, Op.SYMLINK, Op.LINK, Op.UNLINK, Op.RMDIR, Op.RENAME, Op.RENAME2]);

export interface ResendStats {
  /** Resent requests seen. */
  resent: number;
  /** Of those, answered from the image (their effect was already there). */
  alreadyDone: number;
}

export class ResendGuard {
  readonly stats: ResendStats = { resent: 0, alreadyDone: 0 };

  constructor(private readonly session: FuseSession) {}

  /** A reply for `req` if it is a resent non-idempotent request; undefined: handle it normally. */
  check(req: Buffer): Promise<Reply> | undefined {
    if (req.length < IN_HEADER) return undefined;
    const unique = req.readBigUInt64LE(8);
    if (!(unique & FUSE_UNIQUE_RESEND)) return undefined;
    this.stats.resent++;
    const n = this.session.negotiated;
    if (!n || !GUARDED.has(req.readUInt32LE(4))) return undefined;
    const r = decodeRequest(req, decodeOptionsFor(n.minor, n.flags));
    if (r instanceof DecodeError) return undefined;
    return this.resolve(r, req);
  }

  private async resolve(r: FuseRequest, raw: Buffer): Promise<Reply> {
    const h = r.header;
    const done = await this.tookEffect(r).catch(() => false);
    if (!done) return this.session.handle(raw);
    this.stats.alreadyDone++;
    log.info(`fuse: resent ${r.kind} (unique ${h.unique & ~FUSE_UNIQUE_RESEND}) had taken effect before the restart; answering from the image`);
    switch (r.kind) {
      case 'unlink': case 'rmdir': case 'rename': case 'rename2':
        return replyEmpty(h.unique);
      case 'mknod': case 'mkdir': case 'symlink':
        return this.session.handle(lookupRequest(raw, h.nodeid, r.name));
      case 'link':
        return this.session.handle(lookupRequest(raw, h.nodeid, r.name));
      case 'create': {
        const entry = concatReply(await this.session.handle(lookupRequest(raw, h.nodeid, r.name)) ?? []);
        if (entry.readInt32LE(4) !== 0) return entry;
        const node = Number(entry.readBigUInt64LE(OUT_HEADER));
        // Without OPEN requests (FileSystem.noOpen) CREATE answers handle 0, as here.
        const open = this.session.fs.noOpen
          ? replyOpen(h.unique, 0, FOPEN.KEEP_CACHE)
          : concatReply(await this.session.handle(openRequest(raw, node, r.flags & ~(O_CREAT | O_EXCL | O_TRUNC))) ?? []);
        if (open.readInt32LE(4) !== 0) return open;
        // fuse_entry_out then fuse_open_out, as FUSE_CREATE answers.
        const out = Buffer.concat([entry, open.subarray(OUT_HEADER)]);
        out.writeUInt32LE(out.length, 0);
        return out;
      }
      default:
        return this.session.handle(raw);
    }
  }

  private async tookEffect(r: FuseRequest): Promise<boolean> {
    const fs = this.session.fs;
    const parent = r.header.nodeid;
    switch (r.kind) {
      case 'create': case 'mknod': case 'mkdir': case 'symlink': case 'link':
        return (await present(fs, r.header, parent, r.name)) !== null;
      case 'unlink': case 'rmdir': case 'rename':
        return (await present(fs, r.header, parent, r.name)) === null;
      case 'rename2':
        if (r.flags & RENAME.EXCHANGE) return false;
        return (await present(fs, r.header, parent, r.name)) === null;
      default:
        return false;
    }
  }
}

async function present(fs: FileSystem, h: { uid: number; gid: number; pid: number }, parent: number, name: Buffer): Promise<EntryAttr | null> {
  const ctx = { uid: h.uid, gid: h.gid, pid: h.pid };
  const f = fs as FileSystem & { lookupOrNull?(c: typeof ctx, p: number, n: Buffer): Promise<EntryAttr | null> };
  if (f.lookupOrNull) return f.lookupOrNull(ctx, parent, name);
  try {
    return await fs.lookup(ctx, parent, name);
  } catch (e) {
    if (errnoOf(e) === constants.errno.ENOENT) return null;
    throw e;
  }
}

/** A request with `raw`'s unique and credentials, another opcode and node, and `body`. */
function synthesize(raw: Buffer, opcode: number, nodeid: number, body: Buffer): Buffer {
  const buf = Buffer.alloc(IN_HEADER + body.length);
  const c = new ByteCursor(buf);
  c.putU32(buf.length).putU32(opcode).putBytes(raw.subarray(8, 16)).putU64(nodeid).putBytes(raw.subarray(24, 36)).putU16(0).putU16(0);
  c.putBytes(body);
  return buf;
}

function lookupRequest(raw: Buffer, parent: number, name: Buffer): Buffer {
  return synthesize(raw, Op.LOOKUP, parent, Buffer.concat([name, Buffer.from([0])]));
}

function openRequest(raw: Buffer, node: number, flags: number): Buffer {
  const body = Buffer.alloc(8); // fuse_open_in {flags, open_flags}
  new ByteCursor(body).putU32(flags >>> 0).putU32(0);
  return synthesize(raw, Op.OPEN, node, body);
}
