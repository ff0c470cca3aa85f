/**
 * Ext4FuseFs: Ext4Fs behind the dispatcher's FileSystem interface. FUSE node ids are ext4
 * inode numbers, except that the kernel calls the root 1 (FUSE_ROOT_ID) and ext4 calls it 2;
 * stable node ids make the server nearly stateless, which crash recovery relies on.
 */
import { FsError } from '../util/errors';
import { log } from '../util/log';
import { Ext4Fs, Attr, DirEntry } from './fs';
import { ROOT_INO } from './inode';
import {
  FileSystem, RequestContext, EntryAttr, SetAttrRequest, OpenResult, DirEntryOut, StatfsResult,
} from '../fuse/filesystem';
import { FuseAttr } from '../fuse/structs';
import type { DaxRun, DaxSource } from '../vhost/dax-window';

const FUSE_ROOT = 1;
const O_TRUNC = 0o1000;
const O_ACCMODE = 0o3;
const O_RDONLY = 0;
const O_RDWR = 2;

export const toNode = (ino: number): number => (ino === ROOT_INO ? FUSE_ROOT : ino);
export const toIno = (node: number): number => (node === FUSE_ROOT ? ROOT_INO : node === ROOT_INO ? 0 : node);
/** A listed entry as the dispatcher takes it (FileSystem.readdir). */
const direntOut = (e: DirEntry): DirEntryOut => ({ name: e.name, node: toNode(e.ino), type: e.type, next: e.next });

function fuseAttr(a: Attr): FuseAttr {
  return { ino: a.ino, size: a.size, blocks: a.blocks, atime: a.atime, mtime: a.mtime, ctime: a.ctime, mode: a.mode, nlink: a.nlink, uid: a.uid, gid: a.gid, rdev: a.rdev, blksize: a.blksize };
}

function entry(a: Attr): EntryAttr {
  // Spelled out (not a spread of fuseAttr): one allocation on the lookup and READDIRPLUS path.
  const e: EntryAttr = {
    ino: a.ino, size: a.size, blocks: a.blocks, atime: a.atime, mtime: a.mtime, ctime: a.ctime, mode: a.mode, nlink: a.nlink,
    uid: a.uid, gid: a.gid, rdev: a.rdev, blksize: a.blksize, generation: a.ino === ROOT_INO ? 0 : a.generation,
  };
  // The root (a LOOKUP of ".." in one of its directories, as the kernel's export code sends)
  // is node 1, not a node 2 the kernel would take for another inode.
  if (a.ino === ROOT_INO) e.nodeid = FUSE_ROOT;
  return e;
}

/**
 * What an unprivileged write or truncate leaves of the mode (setattr_should_drop_suidgid):
 * setuid goes; setgid goes when group-executable or when the writer is outside the group
 * (its primary group stands in for the group list FUSE does not pass).
 */
function killSuidgidBits(mode: number, fileGid: number, ctx: RequestContext): number {
  let m = mode & 0o7777 & ~0o4000;
  if (m & 0o2000 && (m & 0o010 || ctx.gid !== fileGid)) m &= ~0o2000;
  return m;
}

interface OpenFile {
  ino: number;
  flags: number;
  /** Opened by a previous server (not counted by ext4.open). */
  adopted?: boolean;
}

export class Ext4FuseFs implements FileSystem, DaxSource {
  readonly posixAcl = true;
  /** FileSystem.noOpen: set before the session's INIT (kfs mount's no_open and kfsd's, the default of both on a writable image). */
  noOpen = false;
  private files = new Map<number, OpenFile>();
  private dirs = new Map<number, { ino: number; handle: number }>();
  private nextFh = 1;
  /**
   * The kernel's lookup count per inode: one for every entry it was sent (LOOKUP, CREATE,
   * MKNOD, MKDIR, SYMLINK, LINK, TMPFILE, READDIRPLUS), less what FORGET gave back. The root
   * is never forgotten and not counted. A server restarted by the supervisor starts from zero:
   * it does not know what its predecessor sent (FORGETs for unknown inodes are ignored).
   */
  private lookups = new Map<number, number>();
  /** Unlinked inodes kept for the kernel (Ext4Fs.keepUnlinked): released at their last FORGET. */
  private keptForKernel = new Set<number>();

  constructor(readonly ext4: Ext4Fs) {
    ext4.keepUnlinked = (ino) => {
      // A restarted server does not know what its predecessors sent the kernel: any inode may
      // be held there. The kernel sends a FORGET when it evicts an inode it was sent (with its
      // whole count), and it holds the inode of any name it unlinks, so the FORGET comes.
      if ((!this.lookups.has(ino) && !this.adoptUnknownHandles) || this.keptForKernel.has(ino)) return false;
      this.keptForKernel.add(ino);
      return true;
    };
  }

  /** The kernel is sent an entry for `ino` (not the root): one more lookup reference. */
  private countLookup(ino: number): void {
    this.lookups.set(ino, (this.lookups.get(ino) ?? 0) + 1);
  }

  /** An entry for `a` the kernel is sent: its lookup reference counted, then encoded. */
  private referenced(a: Attr): EntryAttr {
    if (a.ino !== ROOT_INO) this.countLookup(a.ino);
    return entry(a);
  }

  forget(node: number, nlookup: number): void {
    const ino = toIno(node);
    const left = (this.lookups.get(ino) ?? 0) - nlookup;
    if (left > 0) {
      this.lookups.set(ino, left);
      return;
    }
    this.lookups.delete(ino);
    if (this.keptForKernel.delete(ino)) {
      // No reply to wait for: the inode is on the orphan list until this commits.
      this.ext4.release(ino).catch((e) => log.warn(`freeing unlinked inode ${ino} after its last FORGET failed: ${(e as Error).message}`));
    }
  }

  private ino(node: number): number {
    const ino = toIno(node);
    if (!ino) throw new FsError('ESTALE', `node ${node} is not valid`);
    return ino;
  }

  async lookup(_ctx: RequestContext, parent: number, name: Buffer): Promise<EntryAttr> {
    return this.referenced(await this.ext4.lookup(this.ino(parent), name));
  }

  /** lookup with null for ENOENT (see MissPaths in the dispatcher). */
  async lookupOrNull(_ctx: RequestContext, parent: number, name: Buffer): Promise<EntryAttr | null> {
    const a = await this.ext4.lookupOrNull(this.ino(parent), name);
    return a && this.referenced(a);
  }

  /**
   * LOOKUP without I/O (Ext4Fs.lookupCached): a name whose directory blocks and inode are
   * cached, or that the directory is known to hold (made or listed here), or null for one it
   * does not hold (the LOOKUP before a create).
   */
  lookupSync(_ctx: RequestContext, parent: number, name: Buffer): EntryAttr | null | undefined {
    const pino = toIno(parent);
    if (!pino) return undefined;
    const st = this.ext4.lookupCached(pino, name);
    if (!st) return st;
    const ino = st.inode.ino;
    // ext4's Attr is an EntryAttr already, except that the root's generation must read 0.
    const a = this.ext4.toAttr(st);
    if (a.ino === ROOT_INO) return entry(a);
    this.countLookup(ino);
    return a;
  }

  /** GETXATTR shortcut: an inode in memory with no attributes in the inode or a block. */
  noXattrsSync(_ctx: RequestContext, node: number): boolean | undefined {
    const ino = toIno(node);
    const st = ino ? this.ext4.peekCached(ino) : null;
    return st ? this.ext4.hasNoXattrs(st) : undefined;
  }

  async getattr(_ctx: RequestContext, node: number): Promise<FuseAttr> {
    return fuseAttr(await this.ext4.getattr(this.ino(node)));
  }

  /** GETATTR of an inode in memory (ext4's Attr is a FuseAttr with more fields). */
  getattrSync(_ctx: RequestContext, node: number): FuseAttr | undefined {
    const ino = toIno(node);
    const st = ino ? this.ext4.peekCached(ino) : null;
    return st ? this.ext4.toAttr(st) : undefined;
  }

  async setattr(ctx: RequestContext, node: number, set: SetAttrRequest): Promise<FuseAttr> {
    const ino = this.ino(node);
    let mode = set.mode;
    if (set.killSuidgid || set.ownerChange) {
      const cur = await this.ext4.getattr(ino);
      if ((cur.mode & 0o170000) === 0o100000) {
        const base = mode ?? cur.mode;
        // chown: setuid goes, setgid when group-executable (the kernel flags KILL_SUIDGID on a
        // chown too); an unprivileged truncate: the write rule.
        const killed = set.ownerChange ? base & 0o7777 & ~0o4000 & ~(base & 0o010 ? 0o2000 : 0) : killSuidgidBits(base, cur.gid, ctx);
        if (killed !== (cur.mode & 0o7777) || mode !== undefined) mode = killed;
      }
    }
    return fuseAttr(await this.ext4.setattr(ino, { mode, uid: set.uid, gid: set.gid, size: set.size, atime: set.atime, mtime: set.mtime, ctime: set.ctime }));
  }

  readlink(_ctx: RequestContext, node: number): Promise<Buffer> {
    return this.ext4.readlink(this.ino(node));
  }

  async mknod(ctx: RequestContext, parent: number, name: Buffer, mode: number, rdev: number, umask: number): Promise<EntryAttr> {
    return this.referenced(await this.ext4.mknod(this.ino(parent), name, mode, rdev, ctx.uid, ctx.gid, umask));
  }

  async mkdir(ctx: RequestContext, parent: number, name: Buffer, mode: number, umask: number): Promise<EntryAttr> {
    return this.referenced(await this.ext4.mkdir(this.ino(parent), name, mode, ctx.uid, ctx.gid, umask));
  }

  async symlink(ctx: RequestContext, parent: number, name: Buffer, target: Buffer): Promise<EntryAttr> {
    return this.referenced(await this.ext4.symlink(this.ino(parent), name, target, ctx.uid, ctx.gid));
  }

  unlink(_ctx: RequestContext, parent: number, name: Buffer): Promise<void> {
    return this.ext4.unlink(this.ino(parent), name);
  }

  rmdir(_ctx: RequestContext, parent: number, name: Buffer): Promise<void> {
    return this.ext4.rmdir(this.ino(parent), name);
  }

  rename(_ctx: RequestContext, parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number): Promise<void> {
    return this.ext4.rename(this.ino(parent), name, this.ino(newParent), newName, flags);
  }

  async link(_ctx: RequestContext, node: number, newParent: number, newName: Buffer): Promise<EntryAttr> {
    return this.referenced(await this.ext4.link(this.ino(node), this.ino(newParent), newName));
  }

  private addFile(ino: number, flags: number): number {
    const fh = this.nextFh++;
    this.files.set(fh, { ino, flags });
    return fh;
  }

  async open(ctx: RequestContext, node: number, flags: number, killSuidgid: boolean): Promise<OpenResult> {
    if (this.noOpen) throw new FsError('ENOSYS', 'files are served without handles (no_open)');
    const ino = this.ino(node);
    const attr = await this.ext4.open(ino);
    const a = { ...attr, isReg: (attr.mode & 0o170000) === 0o100000 };
    try {
      // FUSE_ATOMIC_O_TRUNC: the kernel (having checked write permission) leaves O_TRUNC to
      // us; Linux truncates even with O_RDONLY, and stamps mtime/ctime even if already empty.
      if (flags & O_TRUNC && a.isReg) {
        const mode = killSuidgid ? killSuidgidBits(a.mode, a.gid, ctx) : undefined;
        await this.ext4.setattr(ino, { size: 0, mode });
      }
    } catch (e) {
      await this.ext4.release(ino);
      throw e;
    }
    return { fh: this.addFile(ino, flags) };
  }

  async create(ctx: RequestContext, parent: number, name: Buffer, mode: number, flags: number, umask: number): Promise<EntryAttr & OpenResult> {
    const a = await this.ext4.create(this.ino(parent), name, mode, ctx.uid, ctx.gid, umask, !this.noOpen);
    return { ...this.referenced(a), fh: this.noOpen ? 0 : this.addFile(a.ino, flags) };
  }

  async tmpfile(ctx: RequestContext, parent: number, mode: number, flags: number, umask: number): Promise<EntryAttr & OpenResult> {
    const a = await this.ext4.tmpfile(this.ino(parent), mode & ~(umask & 0o777), ctx.uid, ctx.gid);
    const e = this.referenced(a);
    if (!this.noOpen) return { ...e, fh: this.addFile(a.ino, flags) };
    // No RELEASE will come: the opener tmpfile counted stands for the kernel's reference,
    // given back at its last FORGET (freed then, unless linkat gave it a name).
    this.keptForKernel.add(a.ino);
    return { ...e, fh: 0 };
  }

  private file(fh: number, node: number): OpenFile {
    // no_open: no handle, and the access was checked by the kernel at open(2), as for every
    // WRITE with fh 0 (noOpen is never set on a read-only image); O_RDWR stands for that.
    if (fh === 0 && this.noOpen) return { ino: this.ino(node), flags: O_RDWR, adopted: true };
    let f = this.files.get(fh);
    if (!f && this.adoptUnknownHandles) {
      // A handle a previous server of this mount opened (transport/supervisor.ts). It does not
      // count as open (no ext4.open): the kernel's reference (keepUnlinked) keeps the inode
      // after an unlink until its FORGET, which comes after the last close.
      f = { ino: this.ino(node), flags: 0, adopted: true };
      this.files.set(fh, f);
    }
    if (!f || f.ino !== this.ino(node)) throw new FsError('EBADF', `file handle ${fh} is not open on node ${node}`);
    return f;
  }

  private adoptUnknownHandles = false;

  /**
   * Server number `generation` of one mount (transport/supervisor.ts): its handles are numbered
   * apart from those of earlier servers (2^36 per server), and a restarted one (generation > 0)
   * serves handles it never opened: the kernel still holds those of the dead server.
   */
  handleGeneration(generation: number): void {
    this.nextFh = generation * 2 ** 36 + 1;
    this.adoptUnknownHandles = generation > 0;
    // Files unlinked while open before the restart (Ext4FsOptions.keepOrphans): the kernel
    // still holds them; they are freed at their FORGET, or when the connection ends.
    if (generation > 0) for (const ino of this.ext4.keptOrphans) this.keptForKernel.add(ino);
  }

  read(_ctx: RequestContext, node: number, fh: number, offset: number, size: number): Promise<Buffer> {
    return this.ext4.read(this.file(fh, node).ino, offset, size);
  }

  readInto(_ctx: RequestContext, node: number, fh: number, offset: number, size: number, dest: Buffer[]): Promise<number> {
    return this.ext4.readInto(this.file(fh, node).ino, offset, size, dest);
  }

  readSync(_ctx: RequestContext, node: number, fh: number, offset: number, size: number, dest: Buffer[], mayWait: boolean): number | undefined {
    return this.ext4.readCached(this.file(fh, node).ino, offset, size, dest, mayWait);
  }

  async write(ctx: RequestContext, node: number, fh: number, offset: number, data: Buffer, killSuidgid: boolean): Promise<number> {
    const ino = this.file(fh, node).ino;
    const n = await this.ext4.write(ino, offset, data);
    if (killSuidgid) {
      const a = await this.ext4.getattr(ino);
      const mode = killSuidgidBits(a.mode, a.gid, ctx);
      if (mode !== (a.mode & 0o7777)) await this.ext4.setattr(ino, { mode });
    }
    return n;
  }

  /** OPEN without O_TRUNC of an inode in memory (Ext4Fs.openCached). */
  openSync(_ctx: RequestContext, node: number, flags: number): OpenResult | undefined {
    const ino = toIno(node);
    if (this.noOpen || !ino || !this.ext4.openCached(ino)) return undefined;
    return { fh: this.addFile(ino, flags) };
  }

  /** RELEASE without I/O: a handle the filesystem does not count, or a file that stays (Ext4Fs.releaseCached). */
  releaseSync(_ctx: RequestContext, _node: number, fh: number): boolean | undefined {
    // fh 0 with no_open: a file CREATE or TMPFILE answered before the kernel learnt no_open.
    if (fh === 0 && this.noOpen) return true;
    const f = this.files.get(fh);
    if (!f) return undefined;
    if (!f.adopted && !this.ext4.releaseCached(f.ino)) return undefined;
    this.files.delete(fh);
    return true;
  }

  async release(_ctx: RequestContext, node: number, fh: number): Promise<void> {
    const f = this.files.get(fh);
    if (!f) return;
    this.files.delete(fh);
    if (!f.adopted) await this.ext4.release(f.ino);
    void node;
  }

  fsync(_ctx: RequestContext, node: number, _fh: number, datasync: boolean): Promise<void> {
    return this.ext4.fsync(this.ino(node), datasync);
  }

  async opendir(_ctx: RequestContext, node: number): Promise<OpenResult> {
    const ino = this.ino(node);
    const handle = await this.ext4.opendir(ino);
    const fh = this.nextFh++;
    this.dirs.set(fh, { ino, handle });
    return { fh };
  }

  async readdir(_ctx: RequestContext, node: number, fh: number, offset: number, limit?: number): Promise<DirEntryOut[]> {
    const d = this.dirs.get(fh);
    const ino = this.ino(node);
    const list = await this.ext4.readdir(ino, offset, d && d.ino === ino ? d.handle : undefined, limit);
    return list.map(direntOut);
  }

  /** READDIRPLUS's attributes for entries this handle's readdir listed (see MissPaths in the dispatcher). */
  async readdirplusEntries(_ctx: RequestContext, parent: number, fh: number, entries: readonly DirEntryOut[]): Promise<(EntryAttr | null)[]> {
    const d = this.dirs.get(fh);
    const ino = this.ino(parent);
    const attrs = await this.ext4.entryAttrs(ino, d && d.ino === ino ? d.handle : undefined, entries.map((e) => ({ name: e.name, ino: toIno(e.node) })));
    return attrs.map((a) => a && this.referenced(a));
  }

  /** readdir from the snapshot the handle's listing took (Ext4Fs.readdirCached). */
  readdirSync(_ctx: RequestContext, node: number, fh: number, offset: number, limit: number): DirEntryOut[] | undefined {
    const d = this.dirs.get(fh);
    if (!d || d.ino !== toIno(node)) return undefined;
    const list = this.ext4.readdirCached(d.ino, d.handle, offset, limit);
    return list && list.map(direntOut);
  }

  /** readdirplusEntries from memory (Ext4Fs.entryStatesCached): all of them, each counted as a lookup, or none. */
  readdirplusEntriesSync(_ctx: RequestContext, parent: number, fh: number, entries: readonly DirEntryOut[]): EntryAttr[] | undefined {
    const d = this.dirs.get(fh);
    if (!d || d.ino !== toIno(parent)) return undefined;
    const states = this.ext4.entryStatesCached(d.ino, d.handle, entries.map((e) => toIno(e.node)));
    return states && states.map((st) => this.referenced(this.ext4.toAttr(st)));
  }

  // ---- DAX source (virtio-fs: src/vhost/dax-window.ts) ----

  get imageFd(): number {
    return this.ext4.imageFd;
  }

  withDaxRuns(node: number, fh: number, foffset: number, len: number, writable: boolean, use: (runs: DaxRun[]) => Promise<void>): Promise<void> {
    const ino = this.ino(node);
    if (this.dirs.get(fh)?.ino === ino) throw new FsError('EINVAL', 'DAX maps regular files only');
    const f = this.file(fh, node);
    if (writable && (f.flags & O_ACCMODE) === O_RDONLY) throw new FsError('EBADF', 'writable DAX mapping through a read-only handle');
    return this.ext4.withDaxRuns(ino, foffset, len, writable, use);
  }

  exclusive(fn: () => Promise<void>): Promise<void> {
    return this.ext4.exclusive(fn);
  }

  setReleaseHook(hook: ((node: number, from: number, to: number) => Promise<void>) | null): void {
    this.ext4.beforeRelease = hook && ((ino, from, to) => hook(toNode(ino), from, to));
  }

  setSnapshotHook(hook: (() => Promise<void>) | null): void {
    this.ext4.beforeSnapshot = hook;
  }

  /** The client is gone (unmount, guest disconnect): release its handles and its references. */
  async releaseAll(): Promise<void> {
    this.lookups.clear();
    for (const ino of [...this.keptForKernel]) {
      this.keptForKernel.delete(ino);
      await this.ext4.release(ino);
    }
    for (const [fh, f] of [...this.files]) {
      this.files.delete(fh);
      await this.ext4.release(f.ino);
    }
    for (const [fh, d] of [...this.dirs]) {
      this.dirs.delete(fh);
      await this.ext4.releasedir(d.ino, d.handle);
    }
  }

  async releasedir(_ctx: RequestContext, _node: number, fh: number): Promise<void> {
    const d = this.dirs.get(fh);
    if (!d) return;
    this.dirs.delete(fh);
    await this.ext4.releasedir(d.ino, d.handle);
  }

  statfs(): Promise<StatfsResult> {
    return this.ext4.statfs();
  }

  setxattr(_ctx: RequestContext, node: number, name: string, value: Buffer, flags: number): Promise<void> {
    return this.ext4.setxattr(this.ino(node), name, value, flags);
  }
  getxattr(_ctx: RequestContext, node: number, name: string): Promise<Buffer> {
    return this.ext4.getxattr(this.ino(node), name);
  }
  getxattrOrNull(_ctx: RequestContext, node: number, name: string): Promise<Buffer | null> {
    return this.ext4.getxattrOrNull(this.ino(node), name);
  }
  async listxattr(ctx: RequestContext, node: number): Promise<string[]> {
    const names = await this.ext4.listxattr(this.ino(node));
    // ext4 lists trusted.* only to CAP_SYS_ADMIN (ext4_xattr_trusted_list); uid 0 stands in.
    return ctx.uid === 0 ? names : names.filter((n) => !n.startsWith('trusted.'));
  }
  removexattr(_ctx: RequestContext, node: number, name: string): Promise<void> {
    return this.ext4.removexattr(this.ino(node), name);
  }

  fallocate(_ctx: RequestContext, node: number, fh: number, offset: number, length: number, mode: number): Promise<void> {
    return this.ext4.fallocate(this.file(fh, node).ino, mode, offset, length);
  }

  lseek(_ctx: RequestContext, node: number, fh: number, offset: number, whence: number): Promise<number> {
    if (whence !== 3 && whence !== 4) throw new FsError('EINVAL', 'only SEEK_DATA and SEEK_HOLE reach the filesystem');
    return this.ext4.lseek(this.file(fh, node).ino, offset, whence);
  }

  async copyFileRange(_ctx: RequestContext, nodeIn: number, fhIn: number, offIn: number, nodeOut: number, fhOut: number, offOut: number, len: number): Promise<number> {
    const src = this.file(fhIn, nodeIn).ino;
    const dst = this.file(fhOut, nodeOut).ino;
    const chunk = 1 << 20;
    let done = 0;
    while (done < len) {
      const data = await this.ext4.read(src, offIn + done, Math.min(chunk, len - done));
      if (data.length === 0) break;
      await this.ext4.write(dst, offOut + done, data);
      done += data.length;
    }
    return done;
  }

  syncfs(): Promise<void> {
    return this.ext4.sync(true);
  }

  async destroy(): Promise<void> {
    await this.ext4.sync(true);
  }
}
