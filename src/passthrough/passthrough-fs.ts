/**
 * PassthroughFs: a host directory behind the dispatcher's FileSystem interface (kfsd
 * --shared-dir), confined to it the way virtiofsd is, without its mount-namespace sandbox:
 *
 * - Every node holds an O_PATH | O_NOFOLLOW descriptor (node-table.ts); every operation works
 *   relative to those descriptors with one path component from the client at a time.
 * - Names are checked here and again in the addon: non-empty, no '/', no NUL. A lookup opens
 *   the name with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) and O_NOFOLLOW, so a symlink
 *   is a node of its own and is never followed by the server (looking up a name "under" it fails
 *   ENOTDIR), whatever a racing host process swaps in.
 * - "." is the node itself; ".." of the root is the root (virtiofsd's lo_do_lookup rule); ".."
 *   elsewhere is answered only after walking up to the root's inode.
 * - Creations (mknod, mkdir, symlink, create, tmpfile) run with the caller's fsuid/fsgid and
 *   umask for the one system call (addon, calling thread): the host kernel then sets owner and
 *   group, applies setgid-directory inheritance and default ACLs itself, as virtiofsd does. A
 *   fchown afterwards would get setgid directories wrong and leave a window with root as owner.
 * - Host errors reach the client unchanged (FsError with the host errno).
 *
 * Metadata calls are synchronous on the main thread; file data goes through Node's async
 * fs.read/fs.write on real descriptors opened from the node's O_PATH one.
 */
import fs from 'node:fs';
import path from 'node:path';
import { constants } from 'node:os';
import { FsError, ErrnoName, errnoName } from '../util/errors';
import { log } from '../util/log';
import { native } from '../native';
import {
  FileSystem, RequestContext, EntryAttr, SetAttrRequest, OpenResult, DirEntryOut, StatfsResult, TimeSet,
} from '../fuse/filesystem';
import { FuseAttr } from '../fuse/structs';
import { HostNode, NodeTable, CookieMap, ROOT_ID, closeQuietly } from './node-table';
import { Stat, parseDirents } from './host-calls';

const H = native.passthrough;
const O = fs.constants;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
/** Largest copy_file_range done in one call: it blocks the event loop. */
const COPY_CHUNK = 64 << 20;
const READDIR_BYTES = 8192;
/**
 * WRITEs up to this size are written on the main thread: a page-cache copy of a few pages costs
 * a fraction of handing the write to a libuv worker (a thread wake-up per request: futex, and an
 * IPI on a VM, some 30-60 µs of CPU measured). Buffered writes cannot be tried without waiting
 * (RWF_NOWAIT is EOPNOTSUPP for them on ext4), so a larger write, which may wait for dirty-page
 * throttling longer, still goes to a worker and does not hold up other requests.
 */
const SYNC_WRITE_MAX = 32 << 10;
const DOT = Buffer.from('.');

export interface PassthroughOptions {
  readOnly?: boolean;
  /** The session negotiates writeback caching: the kernel may read through write-only opens and
   *  does O_APPEND itself, so files open read-write and without O_APPEND (as virtiofsd does). */
  writebackCache?: boolean;
}

interface Handle {
  node: number;
  fd: number;
  dir: boolean;
  /**
   * Directories: what the last getdents64 read (readdir), kept for the calls that continue the
   * listing from inside it (with what was left of the read before it, when that fell short of
   * a reply). A READDIRPLUS reply takes ~25 of the ~200 entries a read brings; a
   * read for each would seek the directory back each time, and on an ext4 htree directory a
   * seek to an earlier hash throws away and rebuilds the kernel's readdir state (~0.4 ms a call
   * on a directory of 2000 files).
   */
  readAhead?: DirEntryOut[];
  /** The offset the first entry of readAhead follows (where it was read from). */
  readAheadFrom?: number;
  /**
   * Directories: the host position the descriptor stands at after our last read (undefined
   * after a failed or empty one), so that reading on needs no lseek (see readHostDir).
   */
  hostPos?: bigint;
}

/** An error from the addon or node:fs as FsError with the host errno; argument errors: EINVAL. */
function hostError(e: unknown): FsError {
  if (e instanceof FsError) return e;
  const code = (e as { code?: unknown }).code;
  if (typeof code === 'string' && code in constants.errno) return new FsError(code as ErrnoName, (e as Error).message);
  if (e instanceof TypeError || e instanceof RangeError) return new FsError('EINVAL', e.message);
  return new FsError('EIO', String((e as Error)?.message ?? e));
}

function host<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw hostError(e);
  }
}

function isDot(name: Buffer): boolean {
  return name.length === 1 && name[0] === 0x2e;
}
function isDotDot(name: Buffer): boolean {
  return name.length === 2 && name[0] === 0x2e && name[1] === 0x2e;
}

/** A name from the client: one path component. "." and ".." only where `dots` allows them. */
function checkName(name: Buffer, dots = false): void {
  if (name.length === 0) throw new FsError('EINVAL', 'empty name');
  // One pass for '/' and NUL: names are short, and two Buffer.includes calls cost more than the scan.
  for (let i = 0; i < name.length; i++) {
    const c = name[i];
    if (c === 0x2f || c === 0) throw new FsError('EINVAL', `name ${JSON.stringify(name.toString())} is not a single path component`);
  }
  if (name.length > 255) throw new FsError('ENAMETOOLONG', 'name longer than 255 bytes');
  if (!dots && (isDot(name) || isDotDot(name))) throw new FsError('EINVAL', `"${name.toString()}" cannot be created, removed or renamed`);
}

/** What an unprivileged write or truncate leaves of the mode (the kernel's setattr_should_drop_suidgid). */
function killSuidgidBits(mode: number, fileGid: number, ctx: RequestContext): number {
  let m = mode & 0o7777 & ~0o4000;
  if (m & 0o2000 && (m & 0o010 || ctx.gid !== fileGid)) m &= ~0o2000;
  return m;
}

export class PassthroughFs implements FileSystem {
  /** The host kernel keeps ACLs and the mode in step and inherits default ACLs; the umask is applied by it. */
  readonly posixAcl = true;
  private readonly table: NodeTable;
  private readonly handles = new Map<number, Handle>();
  private nextFh = 1;
  private readonly st = new Float64Array(Stat.LENGTH);

  private constructor(readonly dir: string, rootFd: number, private readonly rootSyncFd: number, private readonly opts: PassthroughOptions) {
    host(() => H.fstatat(rootFd, null, this.st));
    const st = this.st;
    this.table = new NodeTable(rootFd, `${st[Stat.DEV_HI]}:${st[Stat.DEV_LO]}:${st[Stat.INO_HI]}:${st[Stat.INO_LO]}`, `${st[Stat.DEV_HI]}:${st[Stat.DEV_LO]}`);
  }

  /** Serve `dir` (which must be a directory; a symlink to one is resolved once, here). */
  static async open(dir: string, opts: PassthroughOptions = {}): Promise<PassthroughFs> {
    const abs = path.resolve(dir);
    let rootFd: number;
    try {
      rootFd = fs.openSync(abs, H.constants.O_PATH | O.O_DIRECTORY);
    } catch (e) {
      throw new FsError(hostError(e).code, `cannot open shared directory ${abs}: ${(e as Error).message}`);
    }
    const syncFd = host(() => H.reopen(rootFd, O.O_RDONLY | O.O_DIRECTORY));
    const limit = H.raiseFdLimit();
    log.info(`passthrough: serving ${abs} (descriptor limit ${limit})`);
    return new PassthroughFs(abs, rootFd, syncFd, opts);
  }

  /** Nodes held (the root included). */
  get nodeCount(): number {
    return this.table.size;
  }

  private node(id: number): HostNode {
    const n = this.table.get(id);
    if (!n) throw new FsError('ESTALE', `node ${id} is not known`);
    return n;
  }

  private statFd(fd: number): Float64Array {
    // Not host(): no closure on the path of every GETATTR.
    try {
      H.fstatat(fd, null, this.st);
    } catch (e) {
      throw hostError(e);
    }
    return this.st;
  }

  private keyOf(fd: number): string {
    const st = this.statFd(fd);
    return `${st[Stat.DEV_HI]}:${st[Stat.DEV_LO]}:${st[Stat.INO_HI]}:${st[Stat.INO_LO]}`;
  }

  private attr(id: number, st: Float64Array): FuseAttr {
    return {
      ino: id, size: st[Stat.SIZE], blocks: st[Stat.BLOCKS],
      atime: { sec: st[Stat.ATIME], nsec: st[Stat.ATIME_NS] },
      mtime: { sec: st[Stat.MTIME], nsec: st[Stat.MTIME_NS] },
      ctime: { sec: st[Stat.CTIME], nsec: st[Stat.CTIME_NS] },
      mode: st[Stat.MODE], nlink: st[Stat.NLINK], uid: st[Stat.UID], gid: st[Stat.GID], rdev: st[Stat.RDEV], blksize: st[Stat.BLKSIZE],
    };
  }

  private entryOf(node: HostNode, st: Float64Array): EntryAttr {
    // Spelled out, not a spread of attr(): this runs for every LOOKUP.
    return {
      ino: node.id, size: st[Stat.SIZE], blocks: st[Stat.BLOCKS],
      atime: { sec: st[Stat.ATIME], nsec: st[Stat.ATIME_NS] },
      mtime: { sec: st[Stat.MTIME], nsec: st[Stat.MTIME_NS] },
      ctime: { sec: st[Stat.CTIME], nsec: st[Stat.CTIME_NS] },
      mode: st[Stat.MODE], nlink: st[Stat.NLINK], uid: st[Stat.UID], gid: st[Stat.GID], rdev: st[Stat.RDEV], blksize: st[Stat.BLKSIZE],
      generation: 0,
    };
  }

  /** Make `fd` (O_PATH, ours to keep or close) a node with one more lookup reference. */
  private adopt(fd: number): EntryAttr {
    let st: Float64Array;
    try {
      st = this.statFd(fd);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    const node = this.table.adopt(fd, st[Stat.DEV_HI], st[Stat.DEV_LO], st[Stat.INO_HI], st[Stat.INO_LO], st[Stat.MODE] & S_IFMT);
    return this.entryOf(node, st);
  }

  /** Look a name up under a directory node, never following a symlink. */
  private lookupName(parent: HostNode, name: Buffer): EntryAttr {
    const fd = host(() => H.openat2(parent.fd, name, H.constants.O_PATH | O.O_NOFOLLOW, 0));
    return this.adopt(fd);
  }

  private refSelf(node: HostNode): EntryAttr {
    const st = this.statFd(node.fd);
    this.table.ref(node);
    return this.entryOf(node, st);
  }

  /**
   * ".." of a directory other than the root: its parent, if walking up from there reaches the
   * root's inode. (Only a host process can have moved a held directory out of the share.)
   */
  private lookupParent(node: HostNode): EntryAttr {
    if (node.type !== S_IFDIR) throw new FsError('ENOTDIR', 'lookup of ".." under a non-directory');
    const parentFd = host(() => H.openParent(node.fd));
    let cur = parentFd;
    try {
      for (let depth = 0; depth < 4096; depth++) {
        const key = this.keyOf(cur);
        if (key === this.table.root.key) {
          if (cur !== parentFd) fs.closeSync(cur);
          return this.adopt(parentFd);
        }
        const up = host(() => H.openParent(cur));
        if (cur !== parentFd) fs.closeSync(cur);
        cur = up;
        if (this.keyOf(up) === key) break; // the host's "/" is its own parent: the walk left the share
      }
    } catch (e) {
      if (cur !== parentFd) fs.closeSync(cur);
      fs.closeSync(parentFd);
      throw e;
    }
    if (cur !== parentFd) fs.closeSync(cur);
    fs.closeSync(parentFd);
    log.warn(`passthrough: ".." of node ${node.id} lies outside ${this.dir} (moved out by the host?): refused`);
    throw new FsError('EACCES', '".." leads outside the shared directory');
  }

  async lookup(_ctx: RequestContext, parent: number, name: Buffer): Promise<EntryAttr> {
    const e = this.lookupOrMiss(parent, name);
    if (!e) throw new FsError('ENOENT', `no ${JSON.stringify(name.toString())} in node ${parent}`);
    return e;
  }

  /** lookup with a miss as null (the dispatcher's cheap path: a negative lookup precedes every create). */
  async lookupOrNull(_ctx: RequestContext, parent: number, name: Buffer): Promise<EntryAttr | null> {
    return this.lookupOrMiss(parent, name);
  }

  private lookupOrMiss(parent: number, name: Buffer): EntryAttr | null {
    checkName(name, true);
    const p = this.node(parent);
    if (isDot(name)) return this.refSelf(p);
    if (isDotDot(name)) return p.id === ROOT_ID ? this.refSelf(p) : this.lookupParent(p);
    const fd = host(() => H.lookupAt(p.fd, name));
    if (fd === -constants.errno.ENOENT) return null;
    if (fd < 0) throw new FsError(errnoName(-fd), `lookup of ${JSON.stringify(name.toString())} in node ${parent}`);
    return this.adopt(fd);
  }

  forget(node: number, nlookup: number): void {
    this.table.forget(node, nlookup);
  }

  async getattr(_ctx: RequestContext, node: number): Promise<FuseAttr> {
    const n = this.node(node);
    return this.attr(n.id, this.statFd(n.fd));
  }

  // Metadata calls are synchronous here anyway: the dispatcher's fast path takes them as they are.
  getattrSync(_ctx: RequestContext, node: number): FuseAttr {
    const n = this.node(node);
    return this.attr(n.id, this.statFd(n.fd));
  }

  /**
   * LOOKUP of a name whose inode the table already holds: one fstatat(AT_SYMLINK_NOFOLLOW) of
   * the single component instead of open, fstat and close. The answer is the one lookupOrMiss
   * gives (which would find the same (dev, ino) and close its new descriptor); a name that is
   * missing, or whose inode is not held yet, goes the ordinary way.
   */
  lookupSync(_ctx: RequestContext, parent: number, name: Buffer): EntryAttr | undefined {
    if (isDot(name) || isDotDot(name)) return undefined;
    checkName(name, true);
    const p = this.table.get(parent);
    if (!p || p.type !== S_IFDIR) return undefined;
    const st = this.st;
    H.fstatat(p.fd, name, st);
    const node = this.table.find(st[Stat.DEV_HI], st[Stat.DEV_LO], st[Stat.INO_HI], st[Stat.INO_LO]);
    if (!node) return undefined;
    this.table.ref(node);
    return this.entryOf(node, st);
  }

  async setattr(ctx: RequestContext, node: number, set: SetAttrRequest): Promise<FuseAttr> {
    const n = this.node(node);
    // chown first, so that an explicit mode in the same request wins over the bits chown clears.
    if (set.uid !== undefined || set.gid !== undefined || set.ownerChange) host(() => H.fchownat(n.fd, set.uid ?? -1, set.gid ?? -1));
    if (set.mode !== undefined) {
      // Linux cannot change a symlink's mode (fchmodat(AT_SYMLINK_NOFOLLOW)).
      if (n.type === S_IFLNK) throw new FsError('EOPNOTSUPP', 'chmod of a symlink');
      host(() => H.chmod(n.fd, set.mode! & 0o7777));
    }
    if (set.size !== undefined) {
      if (n.type === S_IFDIR) throw new FsError('EISDIR', 'truncate of a directory');
      if (n.type !== S_IFREG) throw new FsError('EINVAL', 'truncate of a special file');
      host(() => H.truncate(n.fd, set.size!));
    }
    if (set.atime !== undefined || set.mtime !== undefined) {
      const t = (v: TimeSet | undefined): [number, number] =>
        v === undefined ? [0, H.constants.UTIME_OMIT] : v === 'now' ? [0, H.constants.UTIME_NOW] : [v.sec, v.nsec];
      const [as, ans] = t(set.atime);
      const [ms, mns] = t(set.mtime);
      host(() => H.utimensat(n.fd, as, ans, ms, mns));
    }
    // ctime cannot be set on the host; the calls above stamp it.
    if (set.killSuidgid && n.type === S_IFREG) this.killSuidgid(ctx, n.fd);
    return this.attr(n.id, this.statFd(n.fd));
  }

  /**
   * The server runs as root, whose writes and truncates keep setuid/setgid (CAP_FSETID); with
   * FUSE_HANDLE_KILLPRIV_V2 clearing them for an unprivileged client is ours to do.
   */
  private killSuidgid(ctx: RequestContext, fd: number): void {
    const st = this.statFd(fd);
    const mode = st[Stat.MODE];
    const killed = killSuidgidBits(mode, st[Stat.GID], ctx);
    if (killed !== (mode & 0o7777)) host(() => H.chmod(fd, killed));
  }

  async readlink(_ctx: RequestContext, node: number): Promise<Buffer> {
    return host(() => H.readlinkat(this.node(node).fd));
  }

  async mknod(ctx: RequestContext, parent: number, name: Buffer, mode: number, rdev: number, umask: number): Promise<EntryAttr> {
    checkName(name);
    const p = this.node(parent);
    host(() => H.mknodat(p.fd, name, mode & 0o177777, rdev >>> 0, ctx.uid, ctx.gid, umask & 0o777));
    return this.lookupName(p, name);
  }

  async mkdir(ctx: RequestContext, parent: number, name: Buffer, mode: number, umask: number): Promise<EntryAttr> {
    checkName(name);
    const p = this.node(parent);
    host(() => H.mkdirat(p.fd, name, mode & 0o7777, ctx.uid, ctx.gid, umask & 0o777));
    return this.lookupName(p, name);
  }

  async symlink(ctx: RequestContext, parent: number, name: Buffer, target: Buffer): Promise<EntryAttr> {
    checkName(name);
    const p = this.node(parent);
    host(() => H.symlinkat(target, p.fd, name, ctx.uid, ctx.gid, -1));
    return this.lookupName(p, name);
  }

  async unlink(_ctx: RequestContext, parent: number, name: Buffer): Promise<void> {
    checkName(name);
    host(() => H.unlinkat(this.node(parent).fd, name, false));
  }

  async rmdir(_ctx: RequestContext, parent: number, name: Buffer): Promise<void> {
    checkName(name);
    host(() => H.unlinkat(this.node(parent).fd, name, true));
  }

  async rename(_ctx: RequestContext, parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number): Promise<void> {
    checkName(name);
    checkName(newName);
    if (flags & ~7) throw new FsError('EINVAL', `unknown rename flags 0x${flags.toString(16)}`);
    const p = this.node(parent);
    const np = this.node(newParent);
    host(() => H.renameat2(p.fd, name, np.fd, newName, flags));
  }

  async link(_ctx: RequestContext, node: number, newParent: number, newName: Buffer): Promise<EntryAttr> {
    checkName(newName);
    const n = this.node(node);
    const np = this.node(newParent);
    host(() => H.linkat(n.fd, np.fd, newName));
    return this.lookupName(np, newName);
  }

  /** Host open flags for client flags: no creation bits, no O_DIRECT (our buffers are not aligned). */
  private hostOpenFlags(flags: number): number {
    let f = flags & ~(O.O_CREAT | O.O_EXCL | O.O_NOCTTY | O.O_DIRECT);
    if (this.opts.writebackCache) {
      if ((f & 3) === O.O_WRONLY) f = (f & ~3) | O.O_RDWR;
      f &= ~O.O_APPEND;
    }
    return f;
  }

  private addHandle(node: number, fd: number, dir: boolean): number {
    const fh = this.nextFh++;
    this.handles.set(fh, dir ? { node, fd, dir, hostPos: 0n } : { node, fd, dir });
    return fh;
  }

  async open(ctx: RequestContext, node: number, flags: number, killSuidgid: boolean): Promise<OpenResult> {
    const n = this.node(node);
    if (n.type === S_IFDIR) throw new FsError('EISDIR', 'open of a directory (OPENDIR expected)');
    if (n.type !== S_IFREG) throw new FsError('EINVAL', 'only regular files are opened by the server');
    if (this.opts.readOnly && flags & O.O_TRUNC) throw new FsError('EROFS', 'served read-only');
    const fd = host(() => H.reopen(n.fd, this.hostOpenFlags(flags)));
    try {
      if (flags & O.O_TRUNC && killSuidgid) this.killSuidgid(ctx, fd);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    return { fh: this.addHandle(n.id, fd, false) };
  }

  async create(ctx: RequestContext, parent: number, name: Buffer, mode: number, flags: number, umask: number): Promise<EntryAttr & OpenResult> {
    checkName(name);
    const p = this.node(parent);
    // Never follow: a symlink put at this name by a racing host process makes this fail ELOOP.
    const hostFlags = this.hostOpenFlags(flags) | O.O_CREAT | (flags & O.O_EXCL) | O.O_NOFOLLOW;
    const fd = host(() => H.openat2(p.fd, name, hostFlags, mode & 0o7777, ctx.uid, ctx.gid, umask & 0o777));
    return this.adoptOpened(fd);
  }

  /** A node and a handle for a file just created open (create, O_TMPFILE); fd is closed on failure. */
  private adoptOpened(fd: number): EntryAttr & OpenResult {
    try {
      const e = this.adopt(host(() => H.reopen(fd, H.constants.O_PATH))) as EntryAttr & OpenResult;
      // Added to the fresh entry rather than spread into a copy (a spread is a generic property copy).
      e.fh = this.addHandle(e.ino, fd, false);
      return e;
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  async tmpfile(ctx: RequestContext, parent: number, mode: number, flags: number, umask: number): Promise<EntryAttr & OpenResult> {
    const p = this.node(parent);
    const hostFlags = (this.hostOpenFlags(flags) & ~O.O_TRUNC) | H.constants.O_TMPFILE;
    const fd = host(() => H.openat2(p.fd, DOT, hostFlags, mode & 0o7777, ctx.uid, ctx.gid, umask & 0o777));
    return this.adoptOpened(fd);
  }

  private handle(fh: number, node: number, dir: boolean): Handle {
    const h = this.handles.get(fh);
    if (!h || h.node !== node || h.dir !== dir) throw new FsError('EBADF', `handle ${fh} is not open on node ${node}`);
    return h;
  }

  async read(_ctx: RequestContext, node: number, fh: number, offset: number, size: number): Promise<Buffer> {
    const fd = this.handle(fh, node, false).fd;
    const buf = Buffer.allocUnsafe(size);
    // One pread: a regular file reads short only at its end, which is what a short FUSE reply says.
    const n = await new Promise<number>((resolve, reject) =>
      fs.read(fd, buf, 0, size, offset, (e, got) => (e ? reject(hostError(e)) : resolve(got))));
    return buf.subarray(0, n);
  }

  /**
   * readInto on the spot: from the page cache without waiting (preadv2 RWF_NOWAIT), or with
   * mayWait a blocking preadv, short only at the end of the file as readInto's. Without mayWait a
   * short read (end of file, or partly cached) goes the ordinary way.
   */
  readSync(_ctx: RequestContext, node: number, fh: number, offset: number, size: number, dest: Buffer[], mayWait: boolean): number | undefined {
    const fd = this.handle(fh, node, false).fd;
    const n = native.preadv(fd, dest, offset, !mayWait);
    return n === size || (mayWait && n >= 0) ? n : undefined;
  }

  /** One preadv into the transport's buffers (short only at the end of the file, as read()). */
  async readInto(_ctx: RequestContext, node: number, fh: number, offset: number, _size: number, dest: Buffer[]): Promise<number> {
    const fd = this.handle(fh, node, false).fd;
    return new Promise<number>((resolve, reject) => fs.readv(fd, dest, offset, (e, got) => (e ? reject(hostError(e)) : resolve(got))));
  }

  async write(ctx: RequestContext, node: number, fh: number, offset: number, data: Buffer, killSuidgid: boolean): Promise<number> {
    const fd = this.handle(fh, node, false).fd;
    const now = data.length <= SYNC_WRITE_MAX;
    let done = 0;
    while (done < data.length) {
      let n: number;
      try {
        n = now
          ? fs.writeSync(fd, data, done, data.length - done, offset + done)
          : await new Promise<number>((resolve, reject) =>
            fs.write(fd, data, done, data.length - done, offset + done, (e, put) => (e ? reject(e) : resolve(put))));
      } catch (e) {
        if (done === 0) throw hostError(e);
        break; // a short write (ENOSPC after some bytes) reports what was written
      }
      if (n === 0) break;
      done += n;
    }
    if (killSuidgid && done > 0) this.killSuidgid(ctx, fd);
    return done;
  }

  async release(_ctx: RequestContext, _node: number, fh: number): Promise<void> {
    const h = this.handles.get(fh);
    if (!h || h.dir) return;
    this.handles.delete(fh);
    // Closed here, as releasedir does: handing close(2) to a libuv worker costs a thread wake-up
    // (futex, and an IPI on a VM) that is several times the close itself. RELEASE has no error
    // to report.
    closeQuietly(h.fd);
  }

  private async syncFd(fd: number, datasync: boolean): Promise<void> {
    await new Promise<void>((resolve, reject) =>
      (datasync ? fs.fdatasync : fs.fsync)(fd, (e) => (e ? reject(hostError(e)) : resolve())));
  }

  async fsync(_ctx: RequestContext, node: number, fh: number, datasync: boolean): Promise<void> {
    const h = this.handles.get(fh);
    if (h && h.node === node) return this.syncFd(h.fd, datasync);
    const n = this.node(node);
    const fd = host(() => H.reopen(n.fd, n.type === S_IFDIR ? O.O_RDONLY | O.O_DIRECTORY : O.O_RDONLY));
    try {
      await this.syncFd(fd, datasync);
    } finally {
      fs.closeSync(fd);
    }
  }

  async fsyncdir(ctx: RequestContext, node: number, fh: number, datasync: boolean): Promise<void> {
    return this.fsync(ctx, node, fh, datasync);
  }

  async opendir(_ctx: RequestContext, node: number): Promise<OpenResult> {
    const n = this.node(node);
    if (n.type !== S_IFDIR) throw new FsError('ENOTDIR', 'opendir of a non-directory');
    const fd = host(() => H.reopen(n.fd, O.O_RDONLY | O.O_DIRECTORY));
    return { fh: this.addHandle(n.id, fd, true) };
  }

  async readdir(_ctx: RequestContext, node: number, fh: number, offset: number, limit = Infinity): Promise<DirEntryOut[]> {
    const h = this.handle(fh, node, true);
    // Continuing inside what the last read brought (as glibc's readdir buffers): those entries
    // may be as stale as a buffered readdir's, which POSIX allows for changes after opendir.
    // Offset 0 (a rewind) always reads afresh.
    const ahead = h.readAhead;
    let kept: DirEntryOut[] = [];
    if (ahead && offset !== 0) {
      let at = -1;
      if (offset === h.readAheadFrom) at = 0;
      else {
        const i = ahead.findIndex((e) => e.next === offset);
        if (i >= 0) at = i + 1;
      }
      if (at >= 0) {
        kept = ahead.slice(at);
        if (kept.length >= limit) return kept.slice(0, limit);
      }
    }
    // Read (on) from the host: after what was kept, the descriptor is already at that offset.
    const from = kept.length ? kept[kept.length - 1].next : offset;
    const list = kept.concat(this.readHostDir(h, node, from));
    h.readAhead = list;
    h.readAheadFrom = offset;
    return list.slice(0, limit);
  }

  /** One getdents64 of a directory handle from `offset`, as entries with client offsets. */
  private readHostDir(h: Handle, node: number, offset: number): DirEntryOut[] {
    const n = this.node(node);
    const cookies = (n.cookies ??= new CookieMap());
    const cookie = cookies.cookieOf(offset);
    if (cookie === undefined) throw new FsError('EINVAL', `directory offset ${offset} was never handed out`);
    // Read on without the lseek when the descriptor already stands there (as virtiofsd reads on
    // from its DIR stream): listing a 2000-name ext4 directory in 8 KiB reads took 0.8-1.1 ms so,
    // against 1.0-2.1 ms with a seek before each read (/tmp/s17/rdseek2.js, scratch).
    const at = h.hostPos;
    h.hostPos = undefined;
    // A buffer per read: the entries' names are views into it, kept with the handle's readAhead.
    const buf = Buffer.allocUnsafe(READDIR_BYTES);
    const raw = parseDirents(buf, host(() => H.readdir(h.fd, at === cookie ? null : cookie, buf)));
    // Where getdents64 leaves the descriptor: the last entry's d_off (fs/readdir.c sets both from
    // one position). At the end nothing says where: seek next time.
    h.hostPos = raw.length ? raw[raw.length - 1].next : undefined;
    // d_ino as the node id the entry has or would get (entries share the directory's device,
    // except mount points, whose d_ino is the covered directory's anyway).
    const [devHi, devLo] = n.key.split(':').map(Number);
    return raw.map((e) => ({
      name: e.name,
      node: this.table.idFor(devHi, devLo, e.inoHi, e.inoLo),
      type: e.type,
      next: cookies.offsetOf(e.next),
    }));
  }

  async releasedir(_ctx: RequestContext, _node: number, fh: number): Promise<void> {
    const h = this.handles.get(fh);
    if (!h || !h.dir) return;
    this.handles.delete(fh);
    fs.closeSync(h.fd);
  }

  async statfs(_ctx: RequestContext, node: number): Promise<StatfsResult> {
    return host(() => H.fstatfs(this.node(node).fd));
  }

  async setxattr(_ctx: RequestContext, node: number, name: string, value: Buffer, flags: number): Promise<void> {
    host(() => H.setxattr(this.node(node).fd, name, value, flags));
  }

  async getxattr(_ctx: RequestContext, node: number, name: string): Promise<Buffer> {
    return host(() => H.getxattr(this.node(node).fd, name));
  }

  /** getxattr with "no such attribute" as null (the kernel asks for security.capability before writes). */
  async getxattrOrNull(_ctx: RequestContext, node: number, name: string): Promise<Buffer | null> {
    return host(() => H.getxattr(this.node(node).fd, name, true));
  }

  async listxattr(ctx: RequestContext, node: number): Promise<string[]> {
    const raw = host(() => H.listxattr(this.node(node).fd));
    const names = raw.toString('utf8').split('\0').filter((s) => s.length > 0);
    // The host lists trusted.* to the server (root); ext4 lists them only to CAP_SYS_ADMIN callers.
    return ctx.uid === 0 ? names : names.filter((s) => !s.startsWith('trusted.'));
  }

  async removexattr(_ctx: RequestContext, node: number, name: string): Promise<void> {
    host(() => H.removexattr(this.node(node).fd, name));
  }

  async access(ctx: RequestContext, node: number, mask: number): Promise<void> {
    host(() => H.access(this.node(node).fd, mask & 7, ctx.uid, ctx.gid));
  }

  async fallocate(_ctx: RequestContext, node: number, fh: number, offset: number, length: number, mode: number): Promise<void> {
    const fd = this.handle(fh, node, false).fd;
    host(() => native.fallocate(fd, mode, offset, length));
  }

  async lseek(_ctx: RequestContext, node: number, fh: number, offset: number, whence: number): Promise<number> {
    if (whence !== SEEK_DATA && whence !== SEEK_HOLE) throw new FsError('EINVAL', 'only SEEK_DATA and SEEK_HOLE reach the filesystem');
    const fd = this.handle(fh, node, false).fd;
    return host(() => H.lseek(fd, offset, whence));
  }

  async copyFileRange(_ctx: RequestContext, nodeIn: number, fhIn: number, offIn: number, nodeOut: number, fhOut: number, offOut: number, len: number): Promise<number> {
    const fin = this.handle(fhIn, nodeIn, false).fd;
    const fout = this.handle(fhOut, nodeOut, false).fd;
    // A short count is a valid answer; the client's copy loop asks for the rest.
    return host(() => H.copyFileRange(fin, offIn, fout, offOut, Math.min(len, COPY_CHUNK)));
  }

  async syncfs(): Promise<void> {
    host(() => H.syncfs(this.rootSyncFd));
  }

  /** The front-end disconnected without DESTROY: the same as DESTROY. */
  releaseAll(): Promise<void> {
    return this.destroy();
  }

  /** destroy() and the root's descriptors too, for a filesystem not served again; `sync`: syncfs first. */
  async close(sync = true): Promise<void> {
    await this.destroy(sync);
    closeQuietly(this.table.root.fd);
    closeQuietly(this.rootSyncFd);
  }

  /** The client is gone (DESTROY, or the daemon stops): drop its nodes and handles, flush (`sync`). The root stays for a reconnect. */
  async destroy(sync = true): Promise<void> {
    for (const h of this.handles.values()) closeQuietly(h.fd);
    this.handles.clear();
    this.table.clear();
    // Nothing of the client's stays open on the host once this returns.
    await this.table.closed();
    if (!sync) return;
    try {
      H.syncfs(this.rootSyncFd);
    } catch (e) {
      log.warn(`passthrough: syncfs of ${this.dir} failed: ${(e as Error).message}`);
    }
  }
}
