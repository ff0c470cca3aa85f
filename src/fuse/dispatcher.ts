/**
 * The FUSE dispatcher: decode a request, call the FileSystem, encode the reply. It is shared by
 * every transport (/dev/fuse for host mounts, virtqueues for VMs), which hand it request bytes
 * and write back what it returns. Malformed requests get an error reply; nothing a request
 * contains can throw out of handle().
 */
import { FsError, errnoOf } from '../util/errors';
import { log } from '../util/log';
import { constants } from 'node:os';
import {
  FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION, FUSE_ROOT_ID, InitFlag, FATTR, FOPEN,
  FUSE_WRITE_KILL_SUIDGID, FUSE_OPEN_KILL_SUIDGID, FUSE_FSYNC_FDATASYNC, opcodeName,
} from './abi';
import { decodeRequest, decodeOptionsFor, DecodeError, DecodeOptions, DEFAULT_DECODE_OPTIONS, FuseRequest, FuseRequestOf } from './request';
import {
  replyError, replyEmpty, replyEntry, replyAttr, replyOpen, replyCreate, replyWrite, replyStatfs,
  replyXattrSize, replyInit, replyLseek, replyData, DirentPacker,
} from './reply';
import { EntryOut, FuseAttr } from './structs';
import { FileSystem, RequestContext, EntryAttr, SetAttrRequest } from './filesystem';

export interface SessionOptions {
  /** Seconds the kernel may cache names and attributes (an image kfs owns alone: long). */
  entryTimeout?: number;
  attrTimeout?: number;
  /** Seconds for negative lookups (0: not cached). */
  negativeTimeout?: number;
  /** Largest WRITE payload; also the largest READ. */
  maxWrite?: number;
  writebackCache?: boolean;
  readOnly?: boolean;
}

/** What was agreed at INIT; a restarted server must know it without seeing INIT again. */
export interface Negotiated {
  major: number;
  minor: number;
  flags: bigint;
  maxWrite: number;
  maxPages: number;
}

export type Reply = Buffer | Buffer[] | null;

const PAGE = 4096;
const WANTED_FLAGS =
  InitFlag.ASYNC_READ | InitFlag.ATOMIC_O_TRUNC | InitFlag.EXPORT_SUPPORT | InitFlag.BIG_WRITES |
  InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO | InitFlag.ASYNC_DIO | InitFlag.PARALLEL_DIROPS |
  InitFlag.MAX_PAGES | InitFlag.CACHE_SYMLINKS | InitFlag.INIT_EXT | InitFlag.HANDLE_KILLPRIV_V2;
// HANDLE_KILLPRIV_V2: the filesystem clears setuid/setgid on write, O_TRUNC, truncate and
// chown, with the host's rules (setgid also for writers outside the group), which FUSE's own
// fallback (group-executable only) does not match. POSIX_ACL (and DONT_MASK with it) is added
// when the filesystem implements ACL semantics.

export class FuseSession {
  negotiated: Negotiated | null = null;
  private decodeOpts: DecodeOptions = DEFAULT_DECODE_OPTIONS;
  private readonly entryTimeout: number;
  private readonly attrTimeout: number;
  private readonly negativeTimeout: number;
  private readonly maxWrite: number;
  readonly counts = new Map<string, number>();
  destroyed = false;

  constructor(readonly fs: FileSystem, private opts: SessionOptions = {}) {
    this.entryTimeout = opts.entryTimeout ?? 3600;
    this.attrTimeout = opts.attrTimeout ?? 3600;
    this.negativeTimeout = opts.negativeTimeout ?? 0;
    this.maxWrite = opts.maxWrite ?? 1 << 20;
  }

  /** Size a transport's read buffer must have: the largest WRITE plus headers. */
  get bufferSize(): number {
    return this.maxWrite + PAGE;
  }

  /** Adopt parameters negotiated by an earlier server on the same connection. */
  adopt(n: Negotiated): void {
    this.negotiated = n;
    this.decodeOpts = decodeOptionsFor(n.minor, n.flags);
  }

  async handle(buf: Buffer): Promise<Reply> {
    const req = decodeRequest(buf, this.decodeOpts);
    if (req instanceof DecodeError) {
      // ENAMETOOLONG is an ordinary answer (stat of a 256-byte name), not damage.
      if (req.errno === constants.errno.ENAMETOOLONG) log.debug(`fuse: ${req.reason}`);
      else log.warn(`fuse: malformed request (${req.reason})`);
      return req.noReply ? null : replyError(req.unique, req.errno);
    }
    const name = req.kind;
    this.counts.set(name, (this.counts.get(name) ?? 0) + 1);
    const unique = req.header.unique;
    try {
      if (!this.negotiated && req.kind !== 'init') throw new FsError('EIO', `${name} before INIT`);
      return await this.dispatch(req);
    } catch (e) {
      const errno = errnoOf(e);
      if (errno === constants.errno.EIO && !(e instanceof FsError)) log.error(`fuse ${name}: ${(e as Error).stack ?? String(e)}`);
      else if (log.isDebugEnabled()) log.debug(`fuse ${name}: ${(e as Error).message}`);
      if (req.kind === 'forget' || req.kind === 'batch_forget') return null;
      return replyError(unique, errno);
    }
  }

  private ctx(req: FuseRequest): RequestContext {
    return { uid: req.header.uid, gid: req.header.gid, pid: req.header.pid };
  }

  private node(req: FuseRequest): number {
    return req.header.nodeid;
  }

  private entry(a: EntryAttr): EntryOut {
    return { nodeid: a.ino, generation: a.generation, entry_valid: this.entryTimeout, attr_valid: this.attrTimeout, attr: a };
  }

  private attrReply(unique: bigint, a: FuseAttr): Buffer {
    return replyAttr(unique, { attr_valid: this.attrTimeout, attr: a }, this.minor);
  }

  private get minor(): number {
    return this.negotiated?.minor ?? FUSE_KERNEL_MINOR_VERSION;
  }

  private writable(): void {
    if (this.opts.readOnly) throw new FsError('EROFS', 'mounted read-only');
  }

  private async dispatch(req: FuseRequest): Promise<Reply> {
    const u = req.header.unique;
    const ctx = this.ctx(req);
    const fs = this.fs;
    switch (req.kind) {
      case 'init': return this.init(req);
      case 'destroy':
        this.destroyed = true;
        await fs.destroy();
        return replyEmpty(u);
      case 'lookup': {
        try {
          return replyEntry(u, this.entry(await fs.lookup(ctx, this.node(req), req.name)), this.minor);
        } catch (e) {
          if (this.negativeTimeout > 0 && errnoOf(e) === constants.errno.ENOENT) {
            return replyEntry(u, { nodeid: 0, generation: 0, entry_valid: this.negativeTimeout, attr_valid: 0, attr: ZERO_ATTR }, this.minor);
          }
          throw e;
        }
      }
      case 'forget':
        fs.forget?.(this.node(req), req.nlookup);
        return null;
      case 'batch_forget':
        for (const it of req.items) fs.forget?.(it.nodeid, it.nlookup);
        return null;
      case 'getattr': return this.attrReply(u, await fs.getattr(ctx, this.node(req)));
      case 'setattr': return this.setattr(req, ctx);
      case 'readlink': return replyData(u, await fs.readlink(ctx, this.node(req)));
      case 'symlink':
        this.writable();
        return replyEntry(u, this.entry(await fs.symlink(ctx, this.node(req), req.name, req.target)), this.minor);
      case 'mknod':
        this.writable();
        return replyEntry(u, this.entry(await fs.mknod(ctx, this.node(req), req.name, req.mode, req.rdev, req.umask)), this.minor);
      case 'mkdir':
        this.writable();
        return replyEntry(u, this.entry(await fs.mkdir(ctx, this.node(req), req.name, req.mode, req.umask)), this.minor);
      case 'unlink':
        this.writable();
        await fs.unlink(ctx, this.node(req), req.name);
        return replyEmpty(u);
      case 'rmdir':
        this.writable();
        await fs.rmdir(ctx, this.node(req), req.name);
        return replyEmpty(u);
      case 'rename':
        this.writable();
        await fs.rename(ctx, this.node(req), req.name, req.newdir, req.newname, 0);
        return replyEmpty(u);
      case 'rename2':
        this.writable();
        await fs.rename(ctx, this.node(req), req.name, req.newdir, req.newname, req.flags);
        return replyEmpty(u);
      case 'link':
        this.writable();
        return replyEntry(u, this.entry(await fs.link(ctx, req.oldnodeid, this.node(req), req.name)), this.minor);
      case 'open': {
        if (this.opts.readOnly && (req.flags & 3) !== 0 /* O_RDONLY */) throw new FsError('EROFS', 'mounted read-only');
        const r = await fs.open(ctx, this.node(req), req.flags, (req.open_flags & FUSE_OPEN_KILL_SUIDGID) !== 0);
        return replyOpen(u, r.fh, (r.openFlags ?? 0) | FOPEN.KEEP_CACHE);
      }
      case 'create': {
        this.writable();
        const r = await fs.create(ctx, this.node(req), req.name, req.mode, req.flags, req.umask);
        return replyCreate(u, this.entry(r), { fh: r.fh, open_flags: (r.openFlags ?? 0) | FOPEN.KEEP_CACHE });
      }
      case 'tmpfile': {
        this.writable();
        if (!fs.tmpfile) throw new FsError('ENOSYS', 'tmpfile');
        const r = await fs.tmpfile(ctx, this.node(req), req.mode, req.flags, req.umask);
        return replyCreate(u, this.entry(r), { fh: r.fh, open_flags: r.openFlags ?? 0 });
      }
      case 'read': {
        const size = Math.min(req.size, this.negotiated!.maxWrite);
        return replyData(u, await fs.read(ctx, this.node(req), req.fh, req.offset, size));
      }
      case 'write':
        this.writable();
        return replyWrite(u, await fs.write(ctx, this.node(req), req.fh, req.offset, req.data, (req.write_flags & FUSE_WRITE_KILL_SUIDGID) !== 0));
      case 'statfs': return replyStatfs(u, await fs.statfs(ctx, this.node(req)), this.minor);
      case 'release':
        await fs.release(ctx, this.node(req), req.fh);
        return replyEmpty(u);
      case 'flush':
        // Nothing to do at close(2): ENOSYS makes the kernel stop sending FLUSH (fc->no_flush).
        if (!fs.flush) throw new FsError('ENOSYS', 'flush');
        await fs.flush(ctx, this.node(req), req.fh);
        return replyEmpty(u);
      case 'fsync':
        await fs.fsync(ctx, this.node(req), req.fh, (req.fsync_flags & FUSE_FSYNC_FDATASYNC) !== 0);
        return replyEmpty(u);
      case 'fsyncdir':
        if (fs.fsyncdir) await fs.fsyncdir(ctx, this.node(req), req.fh, (req.fsync_flags & FUSE_FSYNC_FDATASYNC) !== 0);
        else await fs.fsync(ctx, this.node(req), req.fh, false);
        return replyEmpty(u);
      case 'syncfs':
        if (fs.syncfs) await fs.syncfs(ctx);
        return replyEmpty(u);
      case 'opendir': {
        const r = await fs.opendir(ctx, this.node(req));
        return replyOpen(u, r.fh, (r.openFlags ?? 0) | FOPEN.CACHE_DIR | FOPEN.KEEP_CACHE);
      }
      case 'readdir':
      case 'readdirplus': return this.readdir(req, ctx);
      case 'releasedir':
        await fs.releasedir(ctx, this.node(req), req.fh);
        return replyEmpty(u);
      case 'setxattr': {
        this.writable();
        await fs.setxattr(ctx, this.node(req), xattrName(req.name), Buffer.from(req.value), req.flags);
        return replyEmpty(u);
      }
      case 'getxattr': {
        const v = await fs.getxattr(ctx, this.node(req), xattrName(req.name));
        if (req.size === 0) return replyXattrSize(u, v.length);
        if (v.length > req.size) throw new FsError('ERANGE', 'xattr value larger than the buffer');
        return replyData(u, v);
      }
      case 'listxattr': {
        const names = await fs.listxattr(ctx, this.node(req));
        const list = Buffer.concat(names.map((n) => Buffer.from(n + '\0', 'utf8')));
        if (req.size === 0) return replyXattrSize(u, list.length);
        if (list.length > req.size) throw new FsError('ERANGE', 'xattr list larger than the buffer');
        return replyData(u, list);
      }
      case 'removexattr':
        this.writable();
        await fs.removexattr(ctx, this.node(req), xattrName(req.name));
        return replyEmpty(u);
      case 'access':
        if (fs.access) await fs.access(ctx, this.node(req), req.mask);
        else await fs.getattr(ctx, this.node(req));
        return replyEmpty(u);
      case 'fallocate':
        this.writable();
        if (!fs.fallocate) throw new FsError('EOPNOTSUPP', 'fallocate');
        await fs.fallocate(ctx, this.node(req), req.fh, req.offset, req.length, req.mode);
        return replyEmpty(u);
      case 'lseek':
        if (!fs.lseek) throw new FsError('ENOSYS', 'lseek');
        return replyLseek(u, await fs.lseek(ctx, this.node(req), req.fh, req.offset, req.whence));
      case 'copy_file_range': {
        this.writable();
        if (!fs.copyFileRange) throw new FsError('ENOSYS', 'copy_file_range');
        const len = Math.min(req.len, 0xffffffff);
        return replyWrite(u, await fs.copyFileRange(ctx, this.node(req), req.fh_in, req.off_in, req.nodeid_out, req.fh_out, req.off_out, len));
      }
      case 'interrupt':
        // Requests here finish quickly; the kernel gets their normal replies.
        return null;
      default:
        // Locks stay in the kernel (no POSIX_LOCKS/FLOCK_LOCKS); ioctl, poll, bmap, statx, DAX
        // mapping on this transport: not implemented.
        throw new FsError('ENOSYS', `${opcodeName(req.header.opcode)} is not implemented`);
    }
  }

  private init(req: FuseRequestOf<'init'>): Reply {
    const u = req.header.unique;
    if (req.major !== FUSE_KERNEL_VERSION) {
      // Answer with our major only; the kernel retries or gives up (fuse.h version negotiation).
      if (req.major > FUSE_KERNEL_VERSION) return replyInit(u, initOut(FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION, 0n, 0, 0, 0));
      throw new FsError('EPROTO', `FUSE protocol ${req.major}.${req.minor} is too old`);
    }
    const minor = Math.min(req.minor, FUSE_KERNEL_MINOR_VERSION);
    let wanted = WANTED_FLAGS;
    // With POSIX_ACL the kernel enforces ACLs and leaves the umask to us (DONT_MASK), since a
    // parent's default ACL replaces it.
    if (this.fs.posixAcl) wanted |= InitFlag.POSIX_ACL | InitFlag.DONT_MASK;
    if (this.opts.writebackCache) wanted |= InitFlag.WRITEBACK_CACHE;
    const flags = req.flags & wanted;
    const maxPages = flags & InitFlag.MAX_PAGES ? Math.ceil(this.maxWrite / PAGE) : 32;
    const maxWrite = flags & InitFlag.MAX_PAGES ? this.maxWrite : Math.min(this.maxWrite, 32 * PAGE);
    this.negotiated = { major: FUSE_KERNEL_VERSION, minor, flags, maxWrite, maxPages };
    this.decodeOpts = decodeOptionsFor(minor, flags);
    log.info(`fuse: INIT ${req.major}.${req.minor} → ${FUSE_KERNEL_VERSION}.${minor}, flags 0x${flags.toString(16)}, max_write ${maxWrite}`);
    return replyInit(u, initOut(FUSE_KERNEL_VERSION, minor, flags, req.max_readahead, maxWrite, maxPages));
  }

  private async setattr(req: FuseRequestOf<'setattr'>, ctx: RequestContext): Promise<Reply> {
    const v = req.valid;
    const set: SetAttrRequest = {};
    if (v & FATTR.MODE) set.mode = req.mode;
    if (v & FATTR.UID) set.uid = req.uid;
    if (v & FATTR.GID) set.gid = req.gid;
    if (v & FATTR.SIZE) set.size = req.size;
    if (v & FATTR.ATIME) set.atime = v & FATTR.ATIME_NOW ? 'now' : { sec: req.atime, nsec: req.atimensec };
    if (v & FATTR.MTIME) set.mtime = v & FATTR.MTIME_NOW ? 'now' : { sec: req.mtime, nsec: req.mtimensec };
    if (v & FATTR.CTIME) set.ctime = { sec: req.ctime, nsec: req.ctimensec };
    if (v & FATTR.KILL_SUIDGID) set.killSuidgid = true;
    // chown, including chown(-1, -1), which arrives with no attribute to change at all.
    if (v & (FATTR.UID | FATTR.GID) || (v & ~(FATTR.FH | FATTR.LOCKOWNER)) === 0) set.ownerChange = true;
    if (set.size !== undefined || set.mode !== undefined || set.uid !== undefined || set.gid !== undefined ||
        set.atime !== undefined || set.mtime !== undefined || set.ctime !== undefined) this.writable();
    return this.attrReply(req.header.unique, await this.fs.setattr(ctx, this.node(req), set));
  }

  private async readdir(req: FuseRequestOf<'readdir' | 'readdirplus'>, ctx: RequestContext): Promise<Reply> {
    const plus = req.kind === 'readdirplus';
    const size = Math.min(req.size, this.negotiated!.maxWrite);
    const parent = this.node(req);
    const entries = await this.fs.readdir(ctx, parent, req.fh, req.offset);
    const packer = new DirentPacker(size, plus);
    for (const e of entries) {
      if (!plus) {
        if (!packer.add({ ino: e.node, off: e.next, type: e.type, name: e.name })) break;
        continue;
      }
      const dot = e.name.length <= 2 && (e.name.equals(DOT) || e.name.equals(DOTDOT));
      let entry: EntryOut;
      if (dot) {
        entry = { nodeid: 0, generation: 0, entry_valid: 0, attr_valid: 0, attr: { ...ZERO_ATTR, ino: e.node, mode: e.type << 12 } };
      } else {
        let a: EntryAttr;
        try {
          a = await this.fs.lookup(ctx, parent, e.name);
        } catch (err) {
          if (errnoOf(err) === constants.errno.ENOENT) continue; // removed meanwhile
          throw err;
        }
        entry = this.entry(a);
      }
      if (!packer.addPlus(entry, { ino: e.node, off: e.next, type: e.type, name: e.name })) {
        // The kernel never saw this entry: give back the reference lookup took.
        if (!dot) this.fs.forget?.(entry.nodeid, 1);
        break;
      }
    }
    return replyData(req.header.unique, packer.finish());
  }
}

const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');
const ZERO_ATTR: FuseAttr = {
  ino: 0, size: 0, blocks: 0, atime: { sec: 0, nsec: 0 }, mtime: { sec: 0, nsec: 0 }, ctime: { sec: 0, nsec: 0 },
  mode: 0, nlink: 0, uid: 0, gid: 0, rdev: 0, blksize: 0,
};

function xattrName(b: Buffer): string {
  return b.toString('utf8');
}

function initOut(major: number, minor: number, flags: bigint, maxReadahead: number, maxWrite: number, maxPages: number) {
  return {
    major, minor, max_readahead: maxReadahead, flags, max_background: 64, congestion_threshold: 48,
    max_write: maxWrite, time_gran: 1, max_pages: maxPages, map_alignment: 0,
  };
}

export { FUSE_ROOT_ID };
