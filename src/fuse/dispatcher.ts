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
  FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION, FUSE_ROOT_ID, InitFlag, FATTR, FOPEN, FuseOpcode as Op,
  FUSE_WRITE_KILL_SUIDGID, FUSE_OPEN_KILL_SUIDGID, FUSE_FSYNC_FDATASYNC, FUSE_SETUPMAPPING_FLAG_WRITE, opcodeName, SIZE, direntAlign,
} from './abi';
import { decodeRequest, decodeOptionsFor, DecodeError, DecodeOptions, DEFAULT_DECODE_OPTIONS, FuseRequest, FuseRequestOf, FuseOpKind } from './request';
import {
  replyError, replyEmpty, replyEntry, replyAttr, replyOpen, replyCreate, replyWrite, replyStatfs,
  replyXattrSize, replyInit, replyLseek, replyData, replyDataInPlace, payloadViews, DirentPacker, direntsThatFit,
} from './reply';
import { isDotName } from '../util/dot-names';
import { EntryOut, FuseAttr, ZERO_ATTR } from './structs';
import { FileSystem, RequestContext, EntryAttr, SetAttrRequest, DaxMapper, DirEntryOut } from './filesystem';
import { FastPath, NOT_HANDLED } from './fast-path';

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
  /** Not a kernel's session (the JIT warm-up's, fuse/warmup.ts): its INIT is logged at debug level only. */
  internal?: boolean;
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

type Handler<K extends FuseOpKind> = (req: FuseRequestOf<K>, ctx: RequestContext, dest?: readonly Buffer[]) => Promise<Reply> | Reply;
type Handlers = { [K in FuseOpKind]?: Handler<K> };

/**
 * Optional variants of FileSystem calls that answer a routine miss with null instead of an
 * FsError: a negative lookup precedes every create, and the kernel asks for
 * security.capability before every write; an exception (built, thrown through each async
 * frame) costs more than the operation itself.
 */
interface MissPaths {
  lookupOrNull?(ctx: RequestContext, parent: number, name: Buffer): Promise<EntryAttr | null>;
  getxattrOrNull?(ctx: RequestContext, node: number, name: string): Promise<Buffer | null>;
  /**
   * READDIRPLUS: the entries that readdir on handle `fh` of `parent` listed, each counted as a
   * lookup, null for one that is gone; one call for a reply's worth. Lets a filesystem skip the
   * name searches while the directory is unchanged since the listing, and pay its per-call
   * costs once.
   */
  readdirplusEntries?(ctx: RequestContext, parent: number, fh: number, entries: readonly DirEntryOut[]): Promise<(EntryAttr | null)[]>;
}

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
  private readonly countsByKind = new Map<string, number>();
  /** handleSync's requests by opcode, added to `counts` when it is read (a Map update per request costs more than the answer). */
  private readonly syncCounts = new Uint32Array(64);

  /** Requests handled, by kind. */
  get counts(): Map<string, number> {
    for (const [op, name] of FAST_KINDS) {
      const n = this.syncCounts[op];
      if (n === 0) continue;
      this.countsByKind.set(name, (this.countsByKind.get(name) ?? 0) + n);
      this.syncCounts[op] = 0;
    }
    return this.countsByKind;
  }
  destroyed = false;
  /** Set by a transport that has a DAX window (virtio-fs with SHMEM). */
  dax: DaxMapper | null = null;

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
    this.fast = new FastPath(this.fs, { entryTimeout: this.entryTimeout, attrTimeout: this.attrTimeout, negativeTimeout: this.negativeTimeout, minor: n.minor, maxWrite: n.maxWrite, readOnly: !!this.opts.readOnly });
  }

  /** Set up once INIT is agreed. */
  private fast: FastPath | null = null;

  /**
   * Answer the request in buf[0, len) at once if it needs no I/O (fast-path.ts): returns the
   * reply's length (0: no reply is due), or -1 when the request must go through handle(). The
   * first `syncReplyHead` bytes of the reply are in `syncReply` until the next call; the rest
   * (a READ's data) is already in `dest`, as handle() describes. `buf` may be reused by the
   * caller as soon as this returns.
   */
  handleSync(buf: Buffer, len: number, dest?: readonly Buffer[], idle = false): number {
    const fast = this.fast;
    if (!fast) return NOT_HANDLED;
    const observe = this.observeSync;
    // One request in SYNC_TIMING_EVERY of each opcode is timed (two clock reads were ~4% of a
    // GETATTR). Per opcode: a client repeating the same few requests per file would otherwise
    // have every sample land on one of them.
    const opcode = len >= 8 ? buf.readUInt32LE(4) : 0;
    const timed = observe !== null && opcode < this.syncCounts.length && this.syncCounts[opcode] % SYNC_TIMING_EVERY === 0;
    const t0 = timed ? performance.now() : 0;
    const n = fast.answer(buf, len, dest, idle);
    if (n !== NOT_HANDLED) {
      // opcode is one of FAST_KINDS' (answer() took no other)
      this.syncCounts[opcode]++;
      observe?.(opcode, timed ? (performance.now() - t0) * 1000 : -1, n >= 16 && fast.reply.readInt32LE(4) < 0);
    }
    return n;
  }

  /** The buffer handleSync's replies are in. */
  get syncReply(): Buffer {
    return this.fast!.reply;
  }

  /** Bytes of handleSync's last reply that are in syncReply. */
  get syncReplyHead(): number {
    return this.fast!.replyHead;
  }

  /**
   * Called for every request handleSync answered (request statistics; handle() is observed by
   * wrapping it), with its duration in µs for one in SYNC_TIMING_EVERY and -1 for the others.
   */
  observeSync: ((opcode: number, us: number, failed: boolean) => void) | null = null;

  /**
   * Decode and answer one request. `dest`, when the transport offers it, is where the reply will
   * be written (a guest's writable descriptors): a READ may then put its data there directly,
   * and its reply is the out header alone (replyDataInPlace), whose len counts that data.
   */
  async handle(buf: Buffer, dest?: readonly Buffer[]): Promise<Reply> {
    const req = decodeRequest(buf, this.decodeOpts);
    if (req instanceof DecodeError) {
      // ENAMETOOLONG is an ordinary answer (stat of a 256-byte name), not damage.
      if (req.errno === constants.errno.ENAMETOOLONG) log.debug(`fuse: ${req.reason}`);
      else log.warn(`fuse: malformed request (${req.reason})`);
      return req.noReply ? null : replyError(req.unique, req.errno);
    }
    const name = req.kind;
    this.countsByKind.set(name, (this.countsByKind.get(name) ?? 0) + 1);
    const unique = req.header.unique;
    try {
      if (!this.negotiated && req.kind !== 'init') throw new FsError('EIO', `${name} before INIT`);
      return await this.dispatch(req, dest);
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
    return { nodeid: a.nodeid ?? a.ino, generation: a.generation, entry_valid: this.entryTimeout, attr_valid: this.attrTimeout, attr: a };
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

  private dispatch(req: FuseRequest, dest?: readonly Buffer[]): Promise<Reply> | Reply {
    const h = this.handlers[req.kind] as Handler<FuseOpKind> | undefined;
    // Locks stay in the kernel (no POSIX_LOCKS/FLOCK_LOCKS); ioctl, poll, bmap, statx, DAX
    // mapping on this transport: not implemented.
    if (!h) throw new FsError('ENOSYS', `${opcodeName(req.header.opcode)} is not implemented`);
    return h(req as FuseRequestOf<FuseOpKind>, this.ctx(req), dest);
  }

  /**
   * One small function per opcode rather than one switch: each compiles (and deoptimizes) on its
   * own, and a first request of a new kind does not throw away the code of all the others.
   */
  private readonly handlers: Handlers = {
    init: (req) => this.init(req),
    destroy: async (req) => {
      this.destroyed = true;
      await this.fs.destroy();
      return replyEmpty(req.header.unique);
    },
    lookup: async (req, ctx) => {
      const u = req.header.unique;
      const a = await this.lookupOrNull(ctx, this.node(req), req.name);
      if (a) return replyEntry(u, this.entry(a), this.minor);
      if (this.negativeTimeout > 0) {
        return replyEntry(u, { nodeid: 0, generation: 0, entry_valid: this.negativeTimeout, attr_valid: 0, attr: ZERO_ATTR }, this.minor);
      }
      return replyError(u, constants.errno.ENOENT);
    },
    forget: (req) => {
      this.fs.forget?.(this.node(req), req.nlookup);
      return null;
    },
    batch_forget: (req) => {
      for (const it of req.items) this.fs.forget?.(it.nodeid, it.nlookup);
      return null;
    },
    getattr: async (req, ctx) => this.attrReply(req.header.unique, await this.fs.getattr(ctx, this.node(req))),
    setattr: (req, ctx) => this.setattr(req, ctx),
    readlink: async (req, ctx) => replyData(req.header.unique, await this.fs.readlink(ctx, this.node(req))),
    symlink: async (req, ctx) => {
      this.writable();
      return replyEntry(req.header.unique, this.entry(await this.fs.symlink(ctx, this.node(req), req.name, req.target)), this.minor);
    },
    mknod: async (req, ctx) => {
      this.writable();
      return replyEntry(req.header.unique, this.entry(await this.fs.mknod(ctx, this.node(req), req.name, req.mode, req.rdev, req.umask)), this.minor);
    },
    mkdir: async (req, ctx) => {
      this.writable();
      return replyEntry(req.header.unique, this.entry(await this.fs.mkdir(ctx, this.node(req), req.name, req.mode, req.umask)), this.minor);
    },
    unlink: async (req, ctx) => {
      this.writable();
      await this.fs.unlink(ctx, this.node(req), req.name);
      return replyEmpty(req.header.unique);
    },
    rmdir: async (req, ctx) => {
      this.writable();
      await this.fs.rmdir(ctx, this.node(req), req.name);
      return replyEmpty(req.header.unique);
    },
    rename: async (req, ctx) => {
      this.writable();
      await this.fs.rename(ctx, this.node(req), req.name, req.newdir, req.newname, 0);
      return replyEmpty(req.header.unique);
    },
    rename2: async (req, ctx) => {
      this.writable();
      await this.fs.rename(ctx, this.node(req), req.name, req.newdir, req.newname, req.flags);
      return replyEmpty(req.header.unique);
    },
    link: async (req, ctx) => {
      this.writable();
      return replyEntry(req.header.unique, this.entry(await this.fs.link(ctx, req.oldnodeid, this.node(req), req.name)), this.minor);
    },
    open: async (req, ctx) => {
      if (this.opts.readOnly && (req.flags & 3) !== 0 /* O_RDONLY */) throw new FsError('EROFS', 'mounted read-only');
      const r = await this.fs.open(ctx, this.node(req), req.flags, (req.open_flags & FUSE_OPEN_KILL_SUIDGID) !== 0);
      return replyOpen(req.header.unique, r.fh, (r.openFlags ?? 0) | FOPEN.KEEP_CACHE);
    },
    create: async (req, ctx) => {
      this.writable();
      const r = await this.fs.create(ctx, this.node(req), req.name, req.mode, req.flags, req.umask);
      return replyCreate(req.header.unique, this.entry(r), { fh: r.fh, open_flags: (r.openFlags ?? 0) | FOPEN.KEEP_CACHE });
    },
    tmpfile: async (req, ctx) => {
      this.writable();
      if (!this.fs.tmpfile) throw new FsError('ENOSYS', 'tmpfile');
      const r = await this.fs.tmpfile(ctx, this.node(req), req.mode, req.flags, req.umask);
      return replyCreate(req.header.unique, this.entry(r), { fh: r.fh, open_flags: r.openFlags ?? 0 });
    },
    read: async (req, ctx, dest) => {
      const size = Math.min(req.size, this.negotiated!.maxWrite);
      // Straight into the transport's buffers (no copy) when they hold the whole reply.
      const into = dest && this.fs.readInto ? payloadViews(dest, size) : null;
      if (into) return replyDataInPlace(req.header.unique, await this.fs.readInto!(ctx, this.node(req), req.fh, req.offset, size, into));
      return replyData(req.header.unique, await this.fs.read(ctx, this.node(req), req.fh, req.offset, size));
    },
    write: async (req, ctx) => {
      this.writable();
      const n = await this.fs.write(ctx, this.node(req), req.fh, req.offset, req.data, (req.write_flags & FUSE_WRITE_KILL_SUIDGID) !== 0);
      return replyWrite(req.header.unique, n);
    },
    statfs: async (req, ctx) => replyStatfs(req.header.unique, await this.fs.statfs(ctx, this.node(req)), this.minor),
    release: async (req, ctx) => {
      await this.fs.release(ctx, this.node(req), req.fh);
      return replyEmpty(req.header.unique);
    },
    flush: async (req, ctx) => {
      // Nothing to do at close(2): ENOSYS makes the kernel stop sending FLUSH (fc->no_flush).
      if (!this.fs.flush) throw new FsError('ENOSYS', 'flush');
      await this.fs.flush(ctx, this.node(req), req.fh);
      return replyEmpty(req.header.unique);
    },
    fsync: async (req, ctx) => {
      await this.fs.fsync(ctx, this.node(req), req.fh, (req.fsync_flags & FUSE_FSYNC_FDATASYNC) !== 0);
      return replyEmpty(req.header.unique);
    },
    fsyncdir: async (req, ctx) => {
      if (this.fs.fsyncdir) await this.fs.fsyncdir(ctx, this.node(req), req.fh, (req.fsync_flags & FUSE_FSYNC_FDATASYNC) !== 0);
      else await this.fs.fsync(ctx, this.node(req), req.fh, false);
      return replyEmpty(req.header.unique);
    },
    syncfs: async (req, ctx) => {
      if (this.fs.syncfs) await this.fs.syncfs(ctx);
      return replyEmpty(req.header.unique);
    },
    opendir: async (req, ctx) => {
      const r = await this.fs.opendir(ctx, this.node(req));
      return replyOpen(req.header.unique, r.fh, (r.openFlags ?? 0) | FOPEN.CACHE_DIR | FOPEN.KEEP_CACHE);
    },
    readdir: (req, ctx) => this.readdir(req, ctx),
    readdirplus: (req, ctx) => this.readdir(req, ctx),
    releasedir: async (req, ctx) => {
      await this.fs.releasedir(ctx, this.node(req), req.fh);
      return replyEmpty(req.header.unique);
    },
    setxattr: async (req, ctx) => {
      this.writable();
      await this.fs.setxattr(ctx, this.node(req), xattrName(req.name), Buffer.from(req.value), req.flags);
      return replyEmpty(req.header.unique);
    },
    getxattr: async (req, ctx) => {
      const u = req.header.unique;
      const f = this.fs as FileSystem & MissPaths;
      const name = xattrName(req.name);
      const v = f.getxattrOrNull ? await f.getxattrOrNull(ctx, this.node(req), name) : await f.getxattr(ctx, this.node(req), name);
      if (!v) return replyError(u, constants.errno.ENODATA);
      if (req.size === 0) return replyXattrSize(u, v.length);
      if (v.length > req.size) throw new FsError('ERANGE', 'xattr value larger than the buffer');
      return replyData(u, v);
    },
    listxattr: async (req, ctx) => {
      const u = req.header.unique;
      const names = await this.fs.listxattr(ctx, this.node(req));
      const list = Buffer.concat(names.map((n) => Buffer.from(n + '\0', 'utf8')));
      if (req.size === 0) return replyXattrSize(u, list.length);
      if (list.length > req.size) throw new FsError('ERANGE', 'xattr list larger than the buffer');
      return replyData(u, list);
    },
    removexattr: async (req, ctx) => {
      this.writable();
      await this.fs.removexattr(ctx, this.node(req), xattrName(req.name));
      return replyEmpty(req.header.unique);
    },
    access: async (req, ctx) => {
      if (this.fs.access) await this.fs.access(ctx, this.node(req), req.mask);
      else await this.fs.getattr(ctx, this.node(req));
      return replyEmpty(req.header.unique);
    },
    fallocate: async (req, ctx) => {
      this.writable();
      if (!this.fs.fallocate) throw new FsError('EOPNOTSUPP', 'fallocate');
      await this.fs.fallocate(ctx, this.node(req), req.fh, req.offset, req.length, req.mode);
      return replyEmpty(req.header.unique);
    },
    lseek: async (req, ctx) => {
      if (!this.fs.lseek) throw new FsError('ENOSYS', 'lseek');
      return replyLseek(req.header.unique, await this.fs.lseek(ctx, this.node(req), req.fh, req.offset, req.whence));
    },
    copy_file_range: async (req, ctx) => {
      this.writable();
      if (!this.fs.copyFileRange) throw new FsError('ENOSYS', 'copy_file_range');
      const len = Math.min(req.len, 0xffffffff);
      return replyWrite(req.header.unique, await this.fs.copyFileRange(ctx, this.node(req), req.fh_in, req.off_in, req.nodeid_out, req.fh_out, req.off_out, len));
    },
    // Requests here finish quickly; the kernel gets their normal replies.
    interrupt: () => null,
    // DAX (virtio-fs only): without a window from the transport, ENOSYS (the guest then reads and writes through requests).
    setupmapping: async (req) => {
      if (!this.dax) throw new FsError('ENOSYS', 'no DAX window');
      if (req.flags & FUSE_SETUPMAPPING_FLAG_WRITE) this.writable();
      await this.dax.setup(this.node(req), req.fh, req.foffset, req.len, req.moffset, (req.flags & FUSE_SETUPMAPPING_FLAG_WRITE) !== 0);
      return replyEmpty(req.header.unique);
    },
    removemapping: async (req) => {
      if (!this.dax) throw new FsError('ENOSYS', 'no DAX window');
      await this.dax.remove(req.items);
      return replyEmpty(req.header.unique);
    },
  };

  private async lookupOrNull(ctx: RequestContext, parent: number, name: Buffer): Promise<EntryAttr | null> {
    const f = this.fs as FileSystem & MissPaths;
    if (f.lookupOrNull) return f.lookupOrNull(ctx, parent, name);
    try {
      return await f.lookup(ctx, parent, name);
    } catch (e) {
      if (errnoOf(e) === constants.errno.ENOENT) return null;
      throw e;
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
    // Without OPEN requests the kernel would take an O_TRUNC as done by an OPEN it never sent.
    if (this.fs.noOpen) wanted &= ~InitFlag.ATOMIC_O_TRUNC;
    const flags = req.flags & wanted;
    const maxPages = flags & InitFlag.MAX_PAGES ? Math.ceil(this.maxWrite / PAGE) : 32;
    const maxWrite = flags & InitFlag.MAX_PAGES ? this.maxWrite : Math.min(this.maxWrite, 32 * PAGE);
    this.adopt({ major: FUSE_KERNEL_VERSION, minor, flags, maxWrite, maxPages });
    const line = `fuse: INIT ${req.major}.${req.minor} → ${FUSE_KERNEL_VERSION}.${minor}, flags 0x${flags.toString(16)}, max_write ${maxWrite}`;
    if (this.opts.internal) log.debug(line);
    else log.info(line);
    // The kernel reads ahead min(its bdi's read-ahead, this): offer what a READ may carry, so
    // that a larger bdi read-ahead (FuseDevice.setReadAhead) is not cut back at INIT.
    return replyInit(u, initOut(FUSE_KERNEL_VERSION, minor, flags, Math.max(req.max_readahead, maxPages * PAGE), maxWrite, maxPages));
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
    const packer = new DirentPacker(size, plus);
    // No more entries than the smallest records (a name of up to 8 bytes) could fit.
    const limit = Math.floor(size / direntAlign((plus ? SIZE.DIRENTPLUS : SIZE.DIRENT) + 1));
    const entries = await this.fs.readdir(ctx, parent, req.fh, req.offset, limit);
    // The entries that fit, by their record sizes (which also refuse a name the kernel would).
    const fit = direntsThatFit(entries, packer.room, plus);
    if (!plus) {
      for (let i = 0; i < fit; i++) {
        const e = entries[i];
        packer.add({ ino: e.node, off: e.next, type: e.type, name: e.name });
      }
      return replyData(req.header.unique, packer.finish());
    }
    // Attributes for exactly the entries that go out: each is a lookup reference the kernel
    // takes (fuse_direntplus_link), so none may be taken for an entry left out.
    const named = entries.slice(0, fit).filter((e) => !isDotName(e.name));
    const attrs = await this.entryAttrs(ctx, parent, req.fh, named);
    let k = 0;
    for (let i = 0; i < fit; i++) {
      const e = entries[i];
      let entry: EntryOut;
      if (isDotName(e.name)) {
        entry = { nodeid: 0, generation: 0, entry_valid: 0, attr_valid: 0, attr: { ...ZERO_ATTR, ino: e.node, mode: e.type << 12 } };
      } else {
        const a = attrs[k++];
        if (!a) continue; // removed meanwhile
        entry = this.entry(a);
      }
      packer.addPlus(entry, { ino: e.node, off: e.next, type: e.type, name: e.name });
    }
    return replyData(req.header.unique, packer.finish());
  }

  /** READDIRPLUS's attributes: in one call where the filesystem offers it, else a lookup each. */
  private async entryAttrs(ctx: RequestContext, parent: number, fh: number, entries: DirEntryOut[]): Promise<(EntryAttr | null)[]> {
    const f = this.fs as FileSystem & MissPaths;
    if (f.readdirplusEntries) return entries.length ? f.readdirplusEntries(ctx, parent, fh, entries) : [];
    const out: (EntryAttr | null)[] = [];
    for (const e of entries) out.push(await this.lookupOrNull(ctx, parent, e.name));
    return out;
  }
}

/** handleSync times one request in this many for observeSync (latency percentiles are sampled). */
const SYNC_TIMING_EVERY = 8;

/** The opcodes the fast path answers, with their request kinds (all below 64: syncCounts). */
const FAST_KINDS: [number, FuseOpKind][] = [
  [Op.LOOKUP, 'lookup'], [Op.FORGET, 'forget'], [Op.GETATTR, 'getattr'], [Op.OPEN, 'open'], [Op.READ, 'read'],
  [Op.RELEASE, 'release'], [Op.GETXATTR, 'getxattr'], [Op.BATCH_FORGET, 'batch_forget'], [Op.READDIRPLUS, 'readdirplus'],
];

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
