/**
 * Ext4Fs: the filesystem operations the FUSE layer calls, addressed by inode number, with
 * POSIX semantics. All operations run under one mutex (like fuse2fs's global lock, but only
 * for the in-memory step: data I/O of one request does not stall on another's metadata).
 * Metadata is written to the block cache as it changes and reaches the image at sync():
 * every commit interval, on fsync, when the dirty set grows large, and at close.
 */
import fs from 'node:fs';
import path from 'node:path';
import { FsError, CorruptionError } from '../util/errors';
import { log } from '../util/log';
import { Volume, VolumeOptions } from './volume';
import { InodeStore, InodeState, now, writeTime } from './inode-store';
import { Directory, DirEntryInfo, DIR_NAMES_MAX } from './directory';
import { isDotName } from '../util/dot-names';
import { XattrStore } from './xattr-store';
import { FileIO } from './file-io';
import { ExtentMap } from './extents';
import { daxRuns } from './dax-map';
import type { DaxRun } from '../vhost/dax-window';
import { fileTypeOfMode, packDirBlock, sealDirBlock, entriesEnd, removeDirent } from './dirent';
import {
  Timespec, ROOT_INO, S_IFMT, S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK, INODE_FLAGS,
} from './inode';
import { INCOMPAT, RO_COMPAT, groupBaseMetaBlocks } from './superblock';
import { parseVfsAcl, encodeVfsAcl, aclEquivMode, aclChmod, aclCreateMasq } from './acl';
import { XATTR_CREATE, XATTR_REPLACE } from './xattr-store';

export interface Attr {
  ino: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  size: number;
  /** 512-byte units. */
  blocks: number;
  blksize: number;
  atime: Timespec;
  mtime: Timespec;
  ctime: Timespec;
  crtime: Timespec;
  generation: number;
}

export type TimeSet = Timespec | 'now';
export interface SetAttrIn {
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  atime?: TimeSet;
  mtime?: TimeSet;
  ctime?: Timespec;
}

export interface DirEntry {
  name: Buffer;
  ino: number;
  /** DT_* type (ext4 FT_* mapped). */
  type: number;
  /** Offset to resume after this entry. */
  next: number;
}

export interface StatFs {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  frsize: number;
  namelen: number;
}

export interface Ext4FsOptions extends VolumeOptions {
  /** Commit interval for dirty metadata in ms (0: only on sync/fsync/close). Default 5000. */
  commitIntervalMs?: number;
  /**
   * A server restarted on a live connection (transport/supervisor.ts): the inodes on the orphan
   * list are kept for the client (see keptOrphans) instead of freed as an unclean shutdown's.
   */
  keepOrphans?: boolean;
}

export const RENAME_NOREPLACE = 1;
export const RENAME_EXCHANGE = 2;
const LINK_MAX = 65000;
const NAME_MAX = 255;
const DIRTY_SYNC_BLOCKS = 8192;
const FT_TO_DT = [0, 8, 4, 2, 6, 1, 12, 10];
const EOF_COOKIE = 2 ** 53 - 1;

interface DirSnapshot {
  entries: DirEntry[];
  /** The directory it lists and its change count then (see entryAttrs). */
  dir: Directory;
  changes: number;
}

/** The entries of a listing in cookie order after cookie `offset`, at most `limit` of them. */
function entriesAfter(e: readonly DirEntry[], offset: number, limit: number): DirEntry[] {
  let lo = 0;
  let hi = e.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (e[mid].next <= offset) lo = mid + 1;
    else hi = mid;
  }
  return e.slice(lo, lo + limit);
}

export class Ext4Fs {
  private lock = new OpLock();
  readonly store: InodeStore;
  readonly xattrs: XattrStore;
  readonly files: FileIO;
  private dirHandles = new Map<number, DirSnapshot | null>();
  private nextDirHandle = 1;
  private commitTimer: NodeJS.Timeout | null = null;
  private closed = false;
  private overhead: number | null = null;
  /** Mount option noatime: never update access times. */
  noAtime = false;
  /** With keepOrphans: the unlinked inodes kept at open, each held as one opener until release(). */
  keptOrphans: number[] = [];

  private constructor(readonly vol: Volume) {
    this.store = new InodeStore(vol);
    this.xattrs = new XattrStore(this.store);
    this.store.inlineTail = (st) => this.xattrs.findInInode(st, INLINE_DATA_XATTR);
    this.files = new FileIO(this.store);
    // Large fallocate/truncate/punch: commit between steps before the transaction outgrows the log.
    this.files.step = async () => {
      if (this.pendingBlocks > Math.min(DIRTY_SYNC_BLOCKS, this.vol.maxDirtyBlocks) / 2) await this.syncLocked(false);
    };
  }

  /** Blocks the next commit will hold: dirty now, or inode table blocks dirty states will dirty. */
  private get pendingBlocks(): number {
    return this.vol.dev.dirtyBlocks + this.store.pendingTableBlocks;
  }

  static async open(image: string, opts: Ext4FsOptions = {}): Promise<Ext4Fs> {
    if (!opts.readOnly) refuseKernelMounted(image);
    const vol = await Volume.open(image, opts);
    const fsys = new Ext4Fs(vol);
    try {
      if (!vol.readOnly) {
        if (opts.keepOrphans) {
          fsys.keptOrphans = await fsys.store.adoptOrphans();
          if (fsys.keptOrphans.length) log.info(`${image}: kept ${fsys.keptOrphans.length} unlinked inode(s) the client may still hold open`);
        } else {
          const n = await fsys.store.processOrphans((st) => fsys.xattrs.freeBlockOf(st));
          if (n) log.info(`${image}: cleaned up ${n} orphan inode(s) left by an unclean shutdown`);
        }
        // The orphan list's inode changes go into the mount's commit with its superblock.
        await fsys.store.flushAll();
        await vol.markMounted();
        const interval = opts.commitIntervalMs ?? 5000;
        if (interval > 0) {
          fsys.commitTimer = setInterval(() => {
            fsys.periodicCommit().catch((e) => log.error(`periodic commit failed: ${(e as Error).message}`));
          }, interval);
          fsys.commitTimer.unref();
        }
      }
      await fsys.checkRoot();
    } catch (e) {
      await vol.dev.close().catch(() => undefined);
      throw e;
    }
    return fsys;
  }

  /** The root inode must be an in-use directory, or nothing below it can be reached. */
  private async checkRoot(): Promise<void> {
    let st: InodeState;
    try {
      st = await this.store.get(ROOT_INO);
    } catch (e) {
      if (e instanceof FsError && e.code === 'ESTALE') throw new CorruptionError('root inode 2 is not in use (cleared or damaged)');
      throw e;
    }
    if (!st.inode.isDir()) throw new CorruptionError(`root inode 2 is not a directory (mode 0${st.inode.mode.toString(8)})`);
  }

  get readOnly(): boolean {
    return this.vol.readOnly;
  }

  /**
   * Run one operation under the lock. Damage found while reading answers EIO and the
   * filesystem goes on; damage found half-way through a change makes the filesystem read-only
   * (the in-memory change may be partial), as ext4's errors=remount-ro would.
   */
  private async run<T>(fn: () => Promise<T>, mutating = false): Promise<T> {
    if (this.closed) throw new FsError('EIO', 'filesystem is closed');
    const wait = this.lock.acquire();
    if (wait) await wait;
    try {
      // Again with the lock: a close() that was queued first has run by now.
      if (this.closed) throw new FsError('EIO', 'filesystem is closed');
      const r = await fn();
      if (this.store.trimDue) await this.store.trim();
      if (this.pendingBlocks > Math.min(DIRTY_SYNC_BLOCKS, this.vol.maxDirtyBlocks)) await this.syncLocked(false);
      return r;
    } catch (e) {
      if (e instanceof CorruptionError) {
        log.error(`${this.vol.dev.path}: ${e.message}`);
        if (mutating) this.vol.fallBackToReadOnly(e.message);
      }
      throw e;
    } finally {
      this.lock.release();
    }
  }

  private writable(): void {
    this.vol.assertWritable();
  }

  // ---- attributes ----

  toAttr(st: InodeState): Attr {
    const i = st.inode;
    let rdev = 0;
    if (i.type === S_IFCHR || i.type === S_IFBLK) rdev = decodeDev(i.f.i_block);
    return {
      ino: i.ino, mode: i.mode, nlink: i.links, uid: i.uid, gid: i.gid, rdev, size: i.size,
      blocks: i.getSectors(this.vol.blockSize), blksize: this.vol.blockSize,
      atime: i.atime, mtime: i.mtime, ctime: i.ctime, crtime: i.crtime, generation: i.f.i_generation,
    };
  }

  getattr(ino: number): Promise<Attr> {
    return this.run(async () => this.toAttr(await this.store.get(ino)));
  }

  /**
   * An inode's in-memory state, or null when it is not cached or an operation holds the lock
   * (its change may be half done): the FUSE fast path answers GETATTR and LOOKUP from it
   * without waiting. For reading only.
   */
  peekCached(ino: number): InodeState | null {
    if (this.closed || this.lock.busy) return null;
    const st = this.store.cached(ino);
    if (!st) return null;
    st.ref = true;
    return st;
  }

  /**
   * LOOKUP without I/O, under peekCached's rule: the named inode's state, null when `parent`
   * (a directory in memory) does not hold the name, undefined when only lookup() can tell: a
   * block it needs (directory, index, inode table) is not cached, or the name is "." or "..".
   */
  lookupCached(parent: number, name: Buffer): InodeState | null | undefined {
    const p = this.peekCached(parent);
    if (!p || !p.inode.isDir() || nameProblem(name, true)) return undefined;
    const ino = this.dir(p).lookupCached(name);
    return ino === null || ino === undefined ? ino : this.store.getCached(ino);
  }

  setattr(ino: number, a: SetAttrIn): Promise<Attr> {
    return this.run(async () => {
      this.writable();
      const st = await this.store.get(ino);
      const i = st.inode;
      const t = now();
      if (a.size !== undefined) {
        if (i.isDir()) throw new FsError('EISDIR', 'cannot truncate a directory');
        if (!i.isReg()) throw new FsError('EINVAL', 'only regular files can be truncated');
        await this.uninline(st);
        if (a.size !== i.size) await this.files.truncate(st, a.size);
        // (f)truncate and O_TRUNC stamp the file even when the size does not change.
        i.mtime = t;
      }
      if (a.mode !== undefined) {
        i.f.i_mode = (i.f.i_mode & S_IFMT) | (a.mode & 0o7777);
        await this.chmodAcl(st, a.mode);
      }
      if (a.uid !== undefined) i.uid = a.uid;
      if (a.gid !== undefined) i.gid = a.gid;
      if (a.atime !== undefined) i.atime = a.atime === 'now' ? t : clampTime(a.atime);
      if (a.mtime !== undefined) i.mtime = a.mtime === 'now' ? t : clampTime(a.mtime);
      i.ctime = a.ctime ? clampTime(a.ctime) : t;
      await this.store.write(st);
      return this.toAttr(st);
    }, true);
  }

  /** posix_acl_chmod: an access ACL follows a chmod. */
  private async chmodAcl(st: InodeState, mode: number): Promise<void> {
    const acl = await this.xattrs.find(st, 'system.posix_acl_access');
    if (!acl) return;
    const entries = parseVfsAcl(acl);
    if (!entries.length) return;
    await this.uninline(st); // its xattrs are rewritten (see setxattr)
    await this.xattrs.set(st, 'system.posix_acl_access', encodeVfsAcl(aclChmod(entries, mode)), XATTR_REPLACE);
  }

  // ---- names ----

  /**
   * The file_type byte of a new directory entry: without the filetype feature an entry has none
   * (the byte is the high half of a 16-bit name_len, so 0; e2fsck -fn counts any other value).
   */
  private direntType(mode: number): number {
    return this.vol.hasIncompat(INCOMPAT.filetype) ? fileTypeOfMode(mode) : 0;
  }

  private dir(st: InodeState): Directory {
    if (!st.inode.isDir()) throw new FsError('ENOTDIR', `inode ${st.inode.ino} is not a directory`);
    return (st.dir ??= new Directory(this.store.dirIO(st)));
  }

  async lookup(parent: number, name: Buffer): Promise<Attr> {
    const a = await this.lookupOrNull(parent, name);
    if (!a) throw new FsError('ENOENT', `${name.toString()} not found`);
    return a;
  }

  /** lookup, with null for a missing name: the common miss (before every create) throws nothing. */
  lookupOrNull(parent: number, name: Buffer): Promise<Attr | null> {
    return this.run(() => this.lookupLocked(parent, name));
  }

  private async lookupLocked(parent: number, name: Buffer): Promise<Attr | null> {
    checkName(name, true);
    const p = await this.store.get(parent);
    const ino = await this.dir(p).inodeOf(name);
    return ino === null ? null : this.toAttr(this.store.getCached(ino) ?? (await this.store.get(ino)));
  }

  private async newNode(parent: number, name: Buffer, mode: number, uid: number, gid: number, init: (st: InodeState) => Promise<void>, umask = 0): Promise<Attr> {
    this.writable();
    checkName(name, false);
    const p = await this.store.get(parent);
    await this.uninline(p);
    const d = this.dir(p);
    if (p.inode.links === 0) throw new FsError('ENOENT', 'parent directory was removed');
    if (await d.lookup(name)) throw new FsError('EEXIST', `${name.toString()} exists`);
    const isDir = (mode & S_IFMT) === S_IFDIR;
    // posix_acl_create: a parent's default ACL replaces the umask and seeds the new inode's ACLs.
    const acls = (mode & S_IFMT) === S_IFLNK ? null : await this.inheritedAcls(p, mode);
    if (acls) mode = acls.mode;
    else if ((mode & S_IFMT) !== S_IFLNK) mode &= ~(umask & 0o777);
    if (isDir && p.inode.links >= LINK_MAX && !this.vol.hasRoCompat(RO_COMPAT.dir_nlink)) throw new FsError('EMLINK', 'too many subdirectories');
    // setgid directories hand their group (and, for directories, the bit) down.
    if (p.inode.mode & 0o2000) {
      gid = p.inode.gid;
      if (isDir) mode |= 0o2000;
    }
    const st = await this.store.create(parent, mode, uid, gid);
    try {
      await init(st);
      if (acls?.access) await this.xattrs.set(st, 'system.posix_acl_access', acls.access, 0);
      if (acls?.defaults && isDir) await this.xattrs.set(st, 'system.posix_acl_default', acls.defaults, 0);
      await this.store.write(st);
      await d.add(name, st.inode.ino, this.direntType(mode));
    } catch (e) {
      // ENOSPC part-way (a directory or symlink block, a directory that must grow): give the
      // inode and its blocks back so nothing is left unattached.
      await this.store.destroy(st, (s) => this.xattrs.freeBlockOf(s));
      throw e;
    }
    this.stampDir(p);
    if (isDir) this.incLinks(p);
    await this.store.write(p);
    return this.toAttr(st);
  }

  /** ACLs a new inode inherits from its parent's default ACL, or null when it has none. */
  private async inheritedAcls(p: InodeState, mode: number): Promise<{ mode: number; access: Buffer | null; defaults: Buffer } | null> {
    // No xattr block and no in-inode xattr header: no default ACL, without parsing anything.
    if (this.xattrs.none(p)) return null;
    const defaults = await this.xattrs.find(p, 'system.posix_acl_default');
    if (!defaults) return null;
    const entries = parseVfsAcl(defaults);
    if (entries.length === 0) return null;
    const m = aclCreateMasq(entries, mode);
    const { equivalent } = aclEquivMode(m.acl);
    return { mode: m.mode, access: equivalent ? null : encodeVfsAcl(m.acl), defaults };
  }

  /** A directory's entries changed: mtime and ctime. */
  private stampDir(p: InodeState, t = now()): void {
    p.inode.mtime = t;
    p.inode.ctime = t;
  }

  /** The entry `name` of a directory and its inode; ENOENT when absent. */
  private async child(p: InodeState, name: Buffer): Promise<{ d: Directory; st: InodeState }> {
    const d = this.dir(p);
    const e = await d.lookup(name);
    if (!e) throw new FsError('ENOENT', `${name.toString()} not found`);
    return { d, st: await this.store.get(e.inode) };
  }

  private incLinks(dirSt: InodeState): void {
    const i = dirSt.inode;
    // dir_nlink: past the limit a directory's count is pinned to 1 ("many").
    if (i.links === 1 && i.isDir()) return;
    if (i.links + 1 >= LINK_MAX) i.links = 1;
    else i.links++;
  }
  private decLinks(dirSt: InodeState): void {
    const i = dirSt.inode;
    if (i.isDir() && i.links === 1) return;
    if (i.links > 0) i.links--;
  }

  mknod(parent: number, name: Buffer, mode: number, rdev: number, uid: number, gid: number, umask = 0): Promise<Attr> {
    const type = mode & S_IFMT;
    if (![S_IFREG, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK].includes(type)) return Promise.reject(new FsError('EINVAL', 'mknod of an unsupported file type'));
    return this.run(() => this.newNode(parent, name, mode, uid, gid, async (st) => {
      if (type === S_IFCHR || type === S_IFBLK) encodeDev(st.inode.f.i_block, rdev);
      if (type === S_IFREG) this.initExtentRoot(st);
    }, umask), true);
  }

  /** A regular file; with `open`, also opened (as open() would) under the same lock hold. */
  create(parent: number, name: Buffer, mode: number, uid: number, gid: number, umask = 0, open = false): Promise<Attr> {
    if (!open) return this.mknod(parent, name, (mode & 0o7777) | S_IFREG, 0, uid, gid, umask);
    return this.run(async () => {
      const a = await this.newNode(parent, name, (mode & 0o7777) | S_IFREG, uid, gid, async (st) => this.initExtentRoot(st), umask);
      (await this.store.get(a.ino)).openCount++;
      return a;
    }, true);
  }

  private initExtentRoot(st: InodeState): void {
    st.inode.f.i_flags |= INODE_FLAGS.EXTENTS;
    st.extents!.dirty = true;
  }

  /**
   * An inline-data inode (EXT4_INLINE_DATA_FL: bytes in i_block, then the system.data xattr) is
   * stored the usual way before it changes, as ext4 does once inline data no longer fits
   * (ext4_convert_inline_data, ext4_convert_inline_dir): a regular file's bytes go to blocks of an
   * extent tree, a directory's entries to one directory block. kfs reads inline data but writes
   * none (its new inodes are never inline, which the feature allows); converting first keeps
   * every change on the paths that ordinary inodes take. A symlink's target (a slow one's) is
   * stored like a file's bytes before its xattrs change (e2fsck also miscounts the xattr block
   * of an inline symlink). Removing a name from an inline directory needs no conversion
   * (removeInlineEntry).
   */
  private async uninline(st: InodeState): Promise<void> {
    const i = st.inode;
    if (!i.hasFlag(INODE_FLAGS.INLINE_DATA) || !(i.isReg() || i.isDir() || i.isSymlink())) return;
    this.writable();
    const dirBlock = i.isDir() ? await this.store.inlineDirBlock(st) : null;
    const data = dirBlock ? null : (await this.store.inlineData(st)).subarray(0, i.size);
    // Inline data fits in the inode, so in one block (an inode is at most a block); removing
    // system.data may copy a shared xattr block. With two blocks free the conversion cannot
    // fail half-way, after the inline copy is gone.
    if ((dirBlock || data!.length) && this.vol.freeBlockCount < 2) throw new FsError('ENOSPC', `no free block to store inline inode ${i.ino} in`);
    // First, as it may be refused (ENOSPC: see XattrStore.store_) with nothing changed.
    await this.xattrs.remove(st, INLINE_DATA_XATTR);
    i.f.i_block.fill(0);
    i.f.i_flags &= ~INODE_FLAGS.INLINE_DATA;
    this.store.attachMap(st, new ExtentMap());
    this.initExtentRoot(st);
    if (dirBlock) {
      // The Directory read the inline data; the next one reads the block.
      st.dir = null;
      const [r] = await this.store.allocate(st, 0, 1, false);
      i.size = this.vol.blockSize;
      const buf = this.vol.dev.zeroed(r.pblk);
      dirBlock.copy(buf);
      this.vol.dev.markDirty(r.pblk, buf);
    } else if (data!.length) {
      const size = i.size;
      await this.files.write(st, 0, data!);
      i.size = size;
    }
    await this.store.write(st);
  }

  /**
   * Remove a name from an inline directory where it lies, in i_block or in system.data, as
   * ext4_delete_inline_entry does: no block is needed, so deleting works on a full filesystem,
   * where it is how space comes back. The directory stays inline.
   */
  private async removeInlineEntry(p: InodeState, name: Buffer): Promise<void> {
    const where = `inline directory inode ${p.inode.ino}`;
    const raw = await this.store.inlineData(p); // a copy: i_block's 60 bytes, then system.data's
    const head = raw.subarray(4, 60); // after the parent's inode number
    if (removeDirent(head, head.length, where, name)) {
      raw.copy(p.inode.f.i_block, 0, 0, 60);
    } else {
      const tail = raw.subarray(60);
      if (!tail.length || !removeDirent(tail, tail.length, where, name)) throw new FsError('ENOENT', `${name.toString()} not found`);
      this.xattrs.setInlineData(p, tail);
    }
    // The Directory read the old entries; the next one reads these.
    p.dir = null;
    await this.store.write(p);
  }

  mkdir(parent: number, name: Buffer, mode: number, uid: number, gid: number, umask = 0): Promise<Attr> {
    return this.run(() => this.newNode(parent, name, (mode & 0o7777) | S_IFDIR, uid, gid, async (st) => {
      this.initExtentRoot(st);
      st.inode.links = 2;
      const bs = this.vol.blockSize;
      const [r] = await this.store.allocate(st, 0, 1, false);
      st.inode.size = bs;
      const buf = this.vol.dev.zeroed(r.pblk);
      const csumSeed = this.store.csumSeedOf(st.inode);
      packDirBlock(buf, entriesEnd(bs, csumSeed !== null), [
        { inode: st.inode.ino, name: Buffer.from('.'), fileType: this.direntType(S_IFDIR) },
        { inode: parent, name: Buffer.from('..'), fileType: this.direntType(S_IFDIR) },
      ]);
      sealDirBlock(buf, csumSeed);
      // Its names are all known (none): LOOKUPs of names not made yet are answered from memory.
      this.dir(st).madeEmpty();
      this.vol.dev.markDirty(r.pblk, buf);
    }, umask), true);
  }

  symlink(parent: number, name: Buffer, target: Buffer, uid: number, gid: number): Promise<Attr> {
    return this.run(() => this.newNode(parent, name, S_IFLNK | 0o777, uid, gid, async (st) => {
      if (target.length === 0) throw new FsError('ENOENT', 'empty symlink target');
      if (target.length >= this.vol.blockSize || target.length >= 4096) throw new FsError('ENAMETOOLONG', 'symlink target too long');
      if (target.length < 60) {
        // Fast symlink: the target lives in i_block.
        st.inode.f.i_block.fill(0);
        target.copy(st.inode.f.i_block);
        st.inode.size = target.length;
        st.extents = null;
      } else {
        this.initExtentRoot(st);
        const [r] = await this.store.allocate(st, 0, 1, false);
        const buf = Buffer.alloc(this.vol.blockSize);
        target.copy(buf);
        await this.vol.dev.writeAt(buf, r.pblk * this.vol.blockSize);
        st.inode.size = target.length;
      }
    }), true);
  }

  readlink(ino: number): Promise<Buffer> {
    return this.run(async () => {
      const st = await this.store.get(ino);
      const i = st.inode;
      if (!i.isSymlink()) throw new FsError('EINVAL', 'not a symbolic link');
      if (!i.hasFlag(INODE_FLAGS.EXTENTS) && i.size < 60) return Buffer.from(i.f.i_block.subarray(0, i.size));
      if (i.size >= this.vol.blockSize) throw new FsError('EIO', `symlink inode ${ino} has impossible size ${i.size}`);
      return this.files.read(st, 0, i.size);
    });
  }

  /** An unnamed regular file (O_TMPFILE): open, on the orphan list until linked or closed. */
  tmpfile(parent: number, mode: number, uid: number, gid: number): Promise<Attr> {
    return this.run(async () => {
      this.writable();
      const p = await this.store.get(parent);
      this.dir(p);
      const st = await this.store.create(parent, (mode & 0o7777) | S_IFREG, uid, gid);
      this.initExtentRoot(st);
      st.inode.links = 0;
      st.openCount = 1;
      await this.store.addOrphan(st);
      return this.toAttr(st);
    }, true);
  }

  link(ino: number, newParent: number, newName: Buffer): Promise<Attr> {
    return this.run(async () => {
      this.writable();
      checkName(newName, false);
      const st = await this.store.get(ino);
      if (st.inode.isDir()) throw new FsError('EPERM', 'hard links to directories are not allowed');
      if (st.inode.links === 0 && st.openCount === 0) throw new FsError('ENOENT', 'file was deleted');
      if (st.inode.links >= LINK_MAX) throw new FsError('EMLINK', 'too many links');
      const p = await this.store.get(newParent);
      await this.uninline(p);
      const d = this.dir(p);
      if (await d.lookup(newName)) throw new FsError('EEXIST', `${newName.toString()} exists`);
      await d.add(newName, ino, this.direntType(st.inode.mode));
      // linkat() of an O_TMPFILE file: it leaves the orphan list once its name is in place, so a
      // refusal (EEXIST, ENOSPC) leaves it there, to be freed at its last close or after a crash.
      if (st.inode.links === 0) {
        await this.store.removeOrphan(st);
        st.inode.f.i_dtime = 0;
      }
      st.inode.links++;
      const t = now();
      st.inode.ctime = t;
      this.stampDir(p, t);
      await this.store.write(st);
      await this.store.write(p);
      return this.toAttr(st);
    }, true);
  }

  /**
   * Asked when an inode loses its last link: true if a client still refers to it. It is then
   * kept (orphan list, counted as one opener) until the caller releases it with release().
   */
  keepUnlinked: ((ino: number) => boolean) | null = null;

  /** Remove `name` from directory p (Directory d), in place when p is inline. */
  private async removeEntry(p: InodeState, d: Directory, name: Buffer): Promise<void> {
    if (p.inode.hasFlag(INODE_FLAGS.INLINE_DATA)) await this.removeInlineEntry(p, name);
    else await d.remove(name);
  }

  /** Drop one link of st; free it now or, if open or still referred to, at its last release (orphan list). */
  private async dropLink(st: InodeState): Promise<void> {
    const i = st.inode;
    if (i.isDir()) i.links = 0;
    else if (i.links > 0) i.links--;
    i.ctime = now();
    // A client that still knows the inode (FUSE lookup count) may send requests for it after
    // the unlink (the kernel writes back times and pages of an evicted inode): it stays, like
    // an open file, until the client lets go (keepUnlinked's owner calls release()).
    if (i.links === 0 && this.keepUnlinked?.(i.ino)) st.openCount++;
    if (i.links > 0) {
      await this.store.write(st);
    } else if (st.openCount > 0) {
      await this.store.addOrphan(st);
    } else {
      await this.store.destroy(st, (s) => this.xattrs.freeBlockOf(s));
    }
  }

  unlink(parent: number, name: Buffer): Promise<void> {
    return this.run(async () => {
      this.writable();
      checkName(name, false);
      const p = await this.store.get(parent);
      const { d, st } = await this.child(p, name);
      if (st.inode.isDir()) throw new FsError('EISDIR', `${name.toString()} is a directory`);
      await this.removeEntry(p, d, name);
      this.stampDir(p);
      await this.store.write(p);
      await this.dropLink(st);
    }, true);
  }

  rmdir(parent: number, name: Buffer): Promise<void> {
    return this.run(async () => {
      this.writable();
      if (name.equals(Buffer.from('.'))) throw new FsError('EINVAL', 'cannot remove "."');
      if (name.equals(Buffer.from('..'))) throw new FsError('ENOTEMPTY', 'cannot remove ".."');
      checkName(name, false);
      const p = await this.store.get(parent);
      const { d, st } = await this.child(p, name);
      if (!st.inode.isDir()) throw new FsError('ENOTDIR', `${name.toString()} is not a directory`);
      if (!(await this.dir(st).isEmpty())) throw new FsError('ENOTEMPTY', `${name.toString()} is not empty`);
      await this.removeEntry(p, d, name);
      this.decLinks(p);
      this.stampDir(p);
      await this.store.write(p);
      await this.dropLink(st);
    }, true);
  }

  rename(parent: number, name: Buffer, newParent: number, newName: Buffer, flags = 0): Promise<void> {
    return this.run(async () => {
      this.writable();
      checkName(name, false);
      checkName(newName, false);
      if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) || (flags & RENAME_NOREPLACE && flags & RENAME_EXCHANGE)) {
        throw new FsError('EINVAL', 'bad rename flags');
      }
      const sp = await this.store.get(parent);
      const tp = await this.store.get(newParent);
      await this.uninline(sp);
      await this.uninline(tp);
      const sd = this.dir(sp);
      const td = this.dir(tp);
      const se = await sd.lookup(name);
      if (!se) throw new FsError('ENOENT', `${name.toString()} not found`);
      const te = await td.lookup(newName);
      const src = await this.store.get(se.inode);
      const srcIsDir = src.inode.isDir();
      if (flags & RENAME_NOREPLACE && te) throw new FsError('EEXIST', `${newName.toString()} exists`);
      if (flags & RENAME_EXCHANGE && !te) throw new FsError('ENOENT', `${newName.toString()} not found`);
      if (te && te.inode === se.inode) return; // same file: POSIX says do nothing
      if (srcIsDir && parent !== newParent) {
        // A directory may not move into its own subtree.
        await this.checkNotAncestor(se.inode, newParent);
        // Every directory whose entries change is stored in blocks before the first entry moves
        // (the parents above, a moved directory's ".." here): a conversion that fails (ENOSPC)
        // then leaves all names as they were.
        await this.uninline(src);
      }
      const t = now();
      if (flags & RENAME_EXCHANGE) {
        const dst = await this.store.get(te!.inode);
        const dstIsDir = dst.inode.isDir();
        if (dstIsDir && parent !== newParent) {
          await this.checkNotAncestor(te!.inode, parent);
          await this.uninline(dst);
        }
        await sd.replace(name, dst.inode.ino, this.direntType(dst.inode.mode));
        await td.replace(newName, src.inode.ino, this.direntType(src.inode.mode));
        if (parent !== newParent) {
          if (srcIsDir) await this.dir(src).setDotDot(newParent);
          if (dstIsDir) await this.dir(dst).setDotDot(parent);
          if (srcIsDir && !dstIsDir) { this.incLinks(tp); this.decLinks(sp); }
          if (dstIsDir && !srcIsDir) { this.incLinks(sp); this.decLinks(tp); }
        }
        src.inode.ctime = t;
        dst.inode.ctime = t;
        await this.store.write(src);
        await this.store.write(dst);
      } else {
        let victim: InodeState | null = null;
        if (te) {
          victim = await this.store.get(te.inode);
          const vDir = victim.inode.isDir();
          if (srcIsDir && !vDir) throw new FsError('ENOTDIR', `${newName.toString()} is not a directory`);
          if (!srcIsDir && vDir) throw new FsError('EISDIR', `${newName.toString()} is a directory`);
          if (vDir && !(await this.dir(victim).isEmpty())) throw new FsError('ENOTEMPTY', `${newName.toString()} is not empty`);
          await td.replace(newName, src.inode.ino, this.direntType(src.inode.mode));
        } else {
          await td.add(newName, src.inode.ino, this.direntType(src.inode.mode));
        }
        // Re-read the source directory: the target add may have reorganized a shared directory.
        await this.dir(sp).remove(name);
        if (srcIsDir && parent !== newParent) {
          await this.dir(src).setDotDot(newParent);
          this.decLinks(sp);
          this.incLinks(tp);
        }
        if (victim) {
          if (victim.inode.isDir()) this.decLinks(tp);
          await this.dropLink(victim);
        }
        src.inode.ctime = t;
        await this.store.write(src);
      }
      this.stampDir(sp, t);
      this.stampDir(tp, t);
      await this.store.write(sp);
      if (tp !== sp) await this.store.write(tp);
    }, true);
  }

  private async checkNotAncestor(ancestor: number, start: number): Promise<void> {
    let cur = start;
    for (let guard = 0; guard < 4096; guard++) {
      if (cur === ancestor) throw new FsError('EINVAL', 'cannot move a directory into itself');
      if (cur === ROOT_INO) return;
      const e = await this.dir(await this.store.get(cur)).lookup(Buffer.from('..'));
      if (!e || e.inode === cur) return;
      cur = e.inode;
    }
    throw new FsError('ELOOP', 'directory tree too deep');
  }

  // ---- open files ----

  open(ino: number): Promise<Attr> {
    return this.run(async () => {
      const st = await this.store.get(ino);
      st.openCount++;
      return this.toAttr(st);
    });
  }

  /** open() at once when the inode is in memory and the operation lock is free; false: call open(). */
  openCached(ino: number): boolean {
    const st = this.peekCached(ino);
    if (!st) return false;
    st.openCount++;
    return true;
  }

  /**
   * release() at once when it needs no I/O: the operation lock is free and the file keeps a
   * link or another opener. False: call release().
   */
  releaseCached(ino: number): boolean {
    const st = this.peekCached(ino);
    if (!st || (st.openCount <= 1 && st.inode.links === 0)) return false;
    if (st.openCount > 0) st.openCount--;
    return true;
  }

  release(ino: number): Promise<void> {
    return this.run(async () => {
      const st = this.store.cached(ino);
      if (!st) return;
      if (st.openCount > 0) st.openCount--;
      if (st.openCount === 0 && st.inode.links === 0 && !this.vol.readOnly) {
        await this.store.removeOrphan(st);
        await this.store.destroy(st, (s) => this.xattrs.freeBlockOf(s));
      }
    }, true);
  }

  /**
   * The extents are looked up under the lock; the image is read after it is released, so
   * large reads run in parallel (on the thread pool) instead of one after another. Safe because
   * blocks freed meanwhile (truncate, unlink) stay busy, not reusable, until the transaction
   * commits, and a commit first waits for the reads in flight (syncLocked). Without the journal
   * freed blocks are reusable at once, so the read stays under the lock.
   */
  async read(ino: number, offset: number, length: number): Promise<Buffer> {
    const outside = this.vol.journal !== null;
    const { plan, io } = await this.run(async () => {
      const st = await this.store.get(ino);
      if (st.inode.isDir()) throw new FsError('EISDIR', 'is a directory');
      const p = await this.files.planRead(st, offset, length);
      if (!outside) await this.files.readPlanned(p);
      await this.touchAtime(st);
      return { plan: p, io: outside && p.segments.length > 0 ? this.startRead(this.files.readPlanned(p)) : null };
    });
    return io ? io : plan.out;
  }

  /** read() into `dest` (consecutive views of at least `length` bytes): no buffer of its own, no copy. */
  async readInto(ino: number, offset: number, length: number, dest: readonly Buffer[]): Promise<number> {
    const outside = this.vol.journal !== null;
    const { plan, io } = await this.run(async () => {
      const st = await this.store.get(ino);
      if (st.inode.isDir()) throw new FsError('EISDIR', 'is a directory');
      const p = await this.files.planRead(st, offset, length, false);
      if (!outside) await this.files.readPlannedInto(p, dest);
      await this.touchAtime(st);
      return { plan: p, io: outside ? this.startRead(this.files.readPlannedInto(p, dest)) : null };
    });
    return io ? io : plan.length;
  }

  /** Reads running outside the lock (see read()). */
  private readsInFlight = new Set<Promise<unknown>>();

  /**
   * Track a read of planned extents, started while the lock is still held: a commit or close
   * queued behind the reader then finds it in readsInFlight and waits for it (started after the
   * lock's release, it could begin after a close that had already closed the image).
   */
  private startRead<T>(io: Promise<T>): Promise<T> {
    this.readsInFlight.add(io);
    const done = () => this.readsInFlight.delete(io);
    io.then(done, done);
    return io;
  }

  /**
   * relatime (the kernel's default): update atime when it is not newer than mtime or ctime,
   * or is more than a day old. Skipped on read-only images.
   */
  private async touchAtime(st: InodeState): Promise<void> {
    if (this.atimeDue(st)) {
      st.inode.atime = now();
      await this.store.write(st);
    }
  }

  /** touchAtime without waiting: false, and atime unchanged, when the inode's table block is not cached. */
  private touchAtimeCached(st: InodeState): boolean {
    const was = st.inode.atime;
    st.inode.atime = now();
    if (this.store.markDirty(st) || this.vol.writeInodeCached(st.inode)) return true;
    st.inode.atime = was;
    return false;
  }

  private atimeDue(st: InodeState): boolean {
    if (this.vol.readOnly || this.noAtime) return false;
    const i = st.inode;
    const a = i.atime;
    const older = (x: Timespec, y: Timespec) => x.sec < y.sec || (x.sec === y.sec && x.nsec <= y.nsec);
    return older(a, i.mtime) || older(a, i.ctime) || Date.now() / 1000 - a.sec >= 24 * 3600;
  }

  /**
   * readInto() answered at once, or undefined: the inode and its extent map in memory, no
   * operation holding the lock, an atime update (if due) that the block cache can take, and the
   * data in the host's page cache or, with mayWait, read from the disk right here
   * (FileIO.readPlannedSync). The FUSE fast path tries this before the ordinary read.
   */
  readCached(ino: number, offset: number, length: number, dest: readonly Buffer[], mayWait = false): number | undefined {
    const st = this.peekCached(ino);
    if (!st || st.inode.isDir()) return undefined;
    const plan = this.files.planReadLoaded(st, offset, length);
    if (!plan || (this.atimeDue(st) && !this.touchAtimeCached(st))) return undefined;
    return this.files.readPlannedSync(plan, dest, mayWait) ? plan.length : undefined;
  }

  write(ino: number, offset: number, data: Buffer, opts: { killPriv?: boolean } = {}): Promise<number> {
    return this.run(async () => {
      this.writable();
      const st = await this.store.get(ino);
      if (!st.inode.isReg()) throw new FsError(st.inode.isDir() ? 'EISDIR' : 'EINVAL', 'not a regular file');
      await this.uninline(st);
      const i = st.inode;
      const size = i.size;
      const mode = i.f.i_mode;
      const n = await this.files.write(st, offset, data);
      // Stamped only when the clock has moved a tick past the stamps (writeTime), as ext4 does.
      const t = writeTime();
      const later = (a: Timespec, b: Timespec) => a.sec > b.sec || (a.sec === b.sec && a.nsec > b.nsec);
      const stamp = later(t, i.mtime) || later(t, i.ctime);
      if (stamp) {
        i.mtime = t;
        i.ctime = t;
      }
      if (opts.killPriv) clearSetId(st);
      // New blocks reach the inode through the extent map's flush; size, times and mode here.
      if (stamp || i.size !== size || i.f.i_mode !== mode) await this.store.write(st);
      return n;
    }, true);
  }

  fallocate(ino: number, mode: number, offset: number, length: number): Promise<void> {
    return this.run(async () => {
      this.writable();
      const st = await this.store.get(ino);
      await this.uninline(st);
      await this.files.fallocate(st, mode, offset, length);
      const t = now();
      st.inode.ctime = t;
      if (!(mode & 0x01)) st.inode.mtime = t;
      await this.store.write(st);
    }, true);
  }

  lseek(ino: number, offset: number, whence: number): Promise<number> {
    return this.run(async () => this.files.seek(await this.store.get(ino), offset, whence));
  }

  // ---- directories ----

  opendir(ino: number): Promise<number> {
    return this.run(async () => {
      const st = await this.store.get(ino);
      this.dir(st);
      st.openCount++;
      const h = this.nextDirHandle++;
      this.dirHandles.set(h, null);
      return h;
    });
  }

  releasedir(ino: number, handle: number): Promise<void> {
    this.dirHandles.delete(handle);
    return this.release(ino);
  }

  /**
   * Entries after `offset`, in hash order. Offsets are hash cookies (like ext4's htree
   * readdir), so they stay valid while the directory changes; "." is 1, ".." is 2.
   */
  readdir(ino: number, offset: number, handle?: number, limit = Infinity): Promise<DirEntry[]> {
    return this.run(async () => {
      let snap = handle !== undefined ? this.dirHandles.get(handle) : undefined;
      if (!snap || offset === 0) {
        const st = await this.store.get(ino);
        const d = this.dir(st);
        snap = { entries: await this.orderedListing(d), dir: d, changes: d.changes };
        await this.touchAtime(st);
        if (handle !== undefined && this.dirHandles.has(handle)) this.dirHandles.set(handle, snap);
      }
      return entriesAfter(snap.entries, offset, limit);
    });
  }

  /**
   * readdir without I/O, under peekCached's rule: the entries after `offset` from the snapshot
   * that `handle`'s listing of `dirIno` took at offset 0, or undefined when only readdir can
   * answer (the lock is held, offset 0 starts a listing, the handle has no snapshot yet, or the
   * directory changed since).
   */
  readdirCached(dirIno: number, handle: number, offset: number, limit: number): DirEntry[] | undefined {
    if (this.closed || this.lock.busy || offset === 0) return undefined;
    // Changed since: entryAttrs would look each name up again, which is not done from memory.
    const snap = this.currentSnapshot(dirIno, handle);
    return snap ? entriesAfter(snap.entries, offset, limit) : undefined;
  }

  /**
   * Attributes of entries that readdir (through `handle`) listed as `name` → `ino`: READDIRPLUS
   * answers them for every entry. While the directory is unchanged since the listing, the
   * inode is the entry's, without searching for the name again; otherwise a lookup by name
   * (null when the name is gone); without a handle, always by name. All in one operation: the
   * lock and its checks once for a reply's worth of entries, not per entry.
   */
  entryAttrs(dirIno: number, handle: number | undefined, entries: readonly { name: Buffer; ino: number }[]): Promise<(Attr | null)[]> {
    return this.run(async () => {
      // Under the lock the directory cannot change between the entries.
      const unchanged = !!this.currentSnapshot(dirIno, handle);
      const out: (Attr | null)[] = [];
      for (const e of entries) {
        if (unchanged) out.push(this.toAttr(this.store.getCached(e.ino) ?? (await this.store.get(e.ino))));
        else out.push(await this.lookupLocked(dirIno, e.name));
      }
      return out;
    });
  }

  /**
   * entryAttrs without I/O, under peekCached's rule: the states of inodes `inos` (entries of
   * `handle`'s snapshot of `dirIno`), while the directory is unchanged since the snapshot
   * (entryAttrs's fast case) and all of them are in memory; otherwise undefined.
   */
  entryStatesCached(dirIno: number, handle: number, inos: readonly number[]): InodeState[] | undefined {
    if (this.closed || this.lock.busy || !this.currentSnapshot(dirIno, handle)) return undefined;
    const out: InodeState[] = [];
    for (const ino of inos) {
      const st = this.store.getCached(ino);
      if (!st) return undefined;
      out.push(st);
    }
    return out;
  }

  /** The snapshot `handle`'s listing of `dirIno` took, while that directory is unchanged since; else null. */
  private currentSnapshot(dirIno: number, handle: number | undefined): DirSnapshot | null {
    const snap = handle === undefined ? undefined : this.dirHandles.get(handle);
    const p = this.store.cached(dirIno);
    return snap && p && p.dir === snap.dir && snap.dir.changes === snap.changes ? snap : null;
  }

  /**
   * A directory's entries in cookie order, kept with its Directory while no entry changes
   * (`changes`): listing and hashing every name is most of a READDIR from offset 0 (2,000
   * entries: 4-11 ms), and a guest lists the same directory again after each drop_caches.
   * Shared between listings: read only.
   */
  private async orderedListing(d: Directory): Promise<DirEntry[]> {
    const kept = this.listings.get(d);
    if (kept && kept.changes === d.changes) return kept.entries;
    const changes = d.changes;
    const entries = this.cookieOrder(d, await d.list());
    // Bounded as the names a Directory keeps are: a huge directory's listing is not kept.
    if (d.changes === changes && entries.length - 2 <= DIR_NAMES_MAX) this.listings.set(d, { changes, entries });
    else this.listings.delete(d);
    return entries;
  }
  private readonly listings = new WeakMap<Directory, { changes: number; entries: DirEntry[] }>();

  private cookieOrder(d: Directory, list: DirEntryInfo[]): DirEntry[] {
    const out: DirEntry[] = [];
    const rest: DirEntry[] = [];
    for (const x of list) {
      const type = FT_TO_DT[x.fileType] ?? 0;
      if (isDotName(x.name)) out.push({ name: x.name, ino: x.inode, type, next: x.name.length === 1 ? 1 : 2 });
      else {
        const h = d.hash(x.name);
        // 31 bits of major hash, 21 of minor: ordered like (major, minor), below 2^53.
        rest.push({ name: x.name, ino: x.inode, type, next: 3 + (h.major >>> 1) * 2 ** 21 + (h.minor >>> 11) });
      }
    }
    out.sort((a, b) => a.next - b.next);
    rest.sort((a, b) => a.next - b.next);
    // Equal cookies would make resumption skip entries: nudge duplicates apart.
    for (let i = 1; i < rest.length; i++) if (rest[i].next <= rest[i - 1].next) rest[i].next = rest[i - 1].next + 1;
    return [...out, ...rest];
  }

  // ---- xattrs ----

  getxattr(ino: number, name: string): Promise<Buffer> {
    if (name === INLINE_DATA_XATTR) return Promise.reject(new FsError('EOPNOTSUPP', `${name} is ext4's own`));
    return this.run(async () => this.xattrs.get(await this.store.get(ino), name));
  }
  /** getxattr, with null for an absent attribute (the kernel asks for security.capability on every write). */
  getxattrOrNull(ino: number, name: string): Promise<Buffer | null> {
    if (name === INLINE_DATA_XATTR) return Promise.resolve(null);
    return this.run(async () => this.xattrs.find(await this.store.get(ino), name));
  }
  /** No extended attributes at all (in the inode or a block): getxattr of any name is ENODATA. */
  hasNoXattrs(st: InodeState): boolean {
    return this.xattrs.none(st);
  }
  listxattr(ino: number): Promise<string[]> {
    return this.run(async () => (await this.xattrs.list(await this.store.get(ino))).filter((n) => n !== INLINE_DATA_XATTR));
  }
  setxattr(ino: number, name: string, value: Buffer, flags = 0): Promise<void> {
    return this.run(async () => {
      this.writable();
      const st = await this.store.get(ino);
      // Rewriting the xattrs re-encodes system.data's entry with a computed e_hash, which the
      // kernel's next in-place edit of the inline data leaves stale (e2fsck then aborts; see
      // XattrStore.setInlineData): an inline inode is stored in blocks first.
      await this.uninline(st);
      if (name === 'system.posix_acl_access' || name === 'system.posix_acl_default') return this.setAcl(st, name, value, flags);
      await this.xattrs.set(st, name, value, flags);
    }, true);
  }

  /**
   * ext4_set_acl: an access ACL equivalent to the mode is not stored, only reflected in the
   * mode (posix_acl_update_mode); a default ACL belongs to directories only; an empty ACL
   * removes it.
   */
  private async setAcl(st: InodeState, name: string, value: Buffer, flags: number): Promise<void> {
    const entries = parseVfsAcl(value);
    const remove = async () => {
      try {
        await this.xattrs.remove(st, name);
      } catch (e) {
        if (!(e instanceof FsError && e.code === 'ENODATA')) throw e;
      }
    };
    if (name === 'system.posix_acl_default') {
      if (!st.inode.isDir()) {
        if (entries.length) throw new FsError('EACCES', 'default ACLs apply to directories only');
        return;
      }
      if (entries.length === 0) return remove();
      return this.xattrs.set(st, name, value, flags);
    }
    if (entries.length === 0) return remove();
    const { mode, equivalent } = aclEquivMode(entries);
    st.inode.f.i_mode = (st.inode.f.i_mode & ~0o777) | mode;
    st.inode.ctime = now();
    if (equivalent) {
      await remove();
      await this.store.write(st);
    } else {
      await this.xattrs.set(st, name, value, flags & ~XATTR_CREATE);
    }
  }
  removexattr(ino: number, name: string): Promise<void> {
    return this.run(async () => {
      this.writable();
      const st = await this.store.get(ino);
      await this.uninline(st);
      await this.xattrs.remove(st, name);
    }, true);
  }

  // ---- whole filesystem ----

  statfs(): Promise<StatFs> {
    return this.run(async () => {
      const v = this.vol;
      const overhead = this.metadataOverhead();
      const bfree = v.freeBlockCount;
      return {
        blocks: v.blocksCount - overhead, bfree, bavail: Math.max(0, bfree - v.reservedBlocks),
        files: v.inodesCount, ffree: v.freeInodeCount, bsize: v.blockSize, frsize: v.blockSize, namelen: NAME_MAX,
      };
    });
  }

  private metadataOverhead(): number {
    if (this.overhead !== null) return this.overhead;
    const v = this.vol;
    if (v.sb.s_overhead_clusters) return (this.overhead = v.sb.s_overhead_clusters);
    // Used blocks that belong to no inode: superblocks, descriptors, bitmaps, inode tables.
    const itable = Math.ceil((v.inodesPerGroup * v.inodeSize) / v.blockSize);
    let n = v.firstDataBlock;
    for (let g = 0; g < v.groupCount; g++) n += 2 + itable;
    for (let g = 0; g < v.groupCount; g++) n += groupBaseMetaBlocks(g, v.sb);
    return (this.overhead = n);
  }

  /** Write every dirty inode, extent tree, bitmap, descriptor and the superblock; fsync. */
  sync(fsync = true): Promise<void> {
    return this.lock.run(() => this.syncLocked(fsync));
  }

  /**
   * The commit every commit interval. When nothing changed since the last one, the memory the
   * shared log's records took is given back (SharedSoftLog.releaseIfIdle).
   */
  private periodicCommit(): Promise<void> {
    return this.lock.run(async () => {
      const idle = !this.vol.isDirty && !this.store.hasDirty && !this.vol.journal?.softPending;
      await this.syncLocked(false);
      if (idle && !this.vol.readOnly && !this.closed) this.vol.releaseIdleMemory();
    });
  }

  private async syncLocked(fsync: boolean): Promise<void> {
    if (this.vol.readOnly || this.closed) return;
    // A commit makes freed blocks reusable: reads still using them must end first (see read()).
    if (this.readsInFlight.size) await Promise.allSettled([...this.readsInFlight]);
    await this.store.flushAll();
    await this.vol.sync({ fsync });
  }

  /**
   * Commit the changes to the journal's log without barriers (Volume.sync soft): enough for a
   * server process death to lose nothing; fsync, syncfs and the periodic commit make it durable.
   */
  commitToLog(): Promise<void> {
    return this.lock.run(async () => {
      if (this.vol.readOnly || this.closed) return;
      await this.store.flushAll();
      await this.vol.sync({ soft: true });
    });
  }

  fsync(_ino: number, _datasync = false): Promise<void> {
    return this.sync(true);
  }

  // ---- DAX (src/ext4/dax-map.ts, src/vhost/dax-window.ts) ----

  /** The runs backing a file range, handed to use() while the operation lock is held. */
  withDaxRuns(ino: number, foffset: number, len: number, writable: boolean, use: (runs: DaxRun[]) => Promise<void>): Promise<void> {
    return this.run(async () => {
      const st = await this.store.get(ino);
      if (writable) await this.uninline(st);
      await use(await daxRuns(this.store, this.files, st, foffset, len, writable));
    }, writable);
  }

  /** Run fn under the operation lock (DAX window changes that touch no file). */
  exclusive(fn: () => Promise<void>): Promise<void> {
    return this.run(fn);
  }

  /**
   * Run fn under the operation lock as a journal transaction of its own: what is pending
   * commits first (so the blocks it freed are reusable), fn's changes commit before the lock
   * is released (defrag's extent switch, src/ext4/defrag.ts).
   */
  transaction<T>(fn: () => Promise<T>): Promise<T> {
    return this.run(async () => {
      this.writable();
      await this.syncLocked(false);
      const r = await fn();
      // A journal commit has its own barriers; with nothing to commit none is needed.
      await this.syncLocked(false);
      return r;
    }, true);
  }

  /** Called under the lock before a file's blocks are freed; see InodeStore.beforeRelease. */
  set beforeRelease(hook: ((ino: number, from: number, to: number) => Promise<void>) | null) {
    this.store.beforeRelease = hook;
  }

  /** Run before a snapshot is taken, under the lock (kfsd: drop every DAX window mapping). */
  beforeSnapshot: (() => Promise<void>) | null = null;

  /** Run fn under the lock at a clean point of the image (snapshots; Volume.atCleanPoint). */
  atCleanPoint<T>(fn: () => Promise<T>): Promise<T> {
    return this.lock.run(async () => {
      if (this.closed) throw new FsError('EIO', 'filesystem is closed');
      this.writable();
      if (this.beforeSnapshot) await this.beforeSnapshot();
      if (this.readsInFlight.size) await Promise.allSettled([...this.readsInFlight]);
      await this.store.flushAll();
      return this.vol.atCleanPoint(fn);
    });
  }

  /** Inodes held in memory (the inode cache, bounded). */
  get cachedInodes(): number {
    return this.store.cachedCount;
  }

  /** The image's file descriptor (DAX maps ranges of it into a guest). */
  get imageFd(): number {
    return this.vol.dev.fd;
  }

  /**
   * Close without writing anything, for a filesystem nobody will open again (the JIT warm-up's
   * scratch image, unlinked already): no commit, no checkpoint, just the descriptor.
   */
  discard(): Promise<void> {
    return (this.shutting ??= this.shut(false));
  }

  /**
   * Flush and release the image. The image is closed (and unlocked) even if the flush fails.
   * Every close() (or discard()) after the first waits for that one and shares its outcome.
   */
  close(): Promise<void> {
    return (this.shutting ??= this.shut(true));
  }

  private shutting: Promise<void> | null = null;

  /** close() (`flush`) or discard(), once. */
  private async shut(flush: boolean): Promise<void> {
    if (this.commitTimer) clearInterval(this.commitTimer);
    await this.lock.run(async () => {
      this.closed = true;
      await Promise.allSettled([...this.readsInFlight]);
      if (!flush) return this.vol.dev.closeNoSync();
      try {
        if (!this.vol.readOnly) {
          await this.store.flushAll();
          // Inodes unlinked while open or still known to a client are on the orphan list; no
          // reference outlives the close, so free them now, as the kernel's ext4 does when
          // unmount evicts its inodes: a clean close leaves an empty orphan list.
          const n = await this.store.processOrphans((st) => this.xattrs.freeBlockOf(st));
          if (n) {
            log.debug(`close: freed ${n} unlinked inode(s) still referred to`);
            await this.store.flushAll();
          }
        }
        await this.vol.close();
      } catch (e) {
        await this.vol.dev.closeNoSync();
        throw e;
      }
    });
  }
}

/** Where an inline-data inode keeps its bytes past i_block (fs/ext4/inline.c): not a user's xattr, so hidden as the kernel hides it. */
const INLINE_DATA_XATTR = 'system.data';

/** ext4 stores seconds in 34 bits from -2^31 (1901) to 2^34 - 2^31 - 1 (2446); beyond: clamp. */
const TIME_MIN = -(2 ** 31);
const TIME_MAX = 2 ** 34 - 2 ** 31 - 1;
export function clampTime(t: Timespec): Timespec {
  if (t.sec < TIME_MIN) return { sec: TIME_MIN, nsec: 0 };
  if (t.sec > TIME_MAX) return { sec: TIME_MAX, nsec: 0 };
  return t;
}

function checkName(name: Buffer, allowDots: boolean): void {
  const e = nameProblem(name, allowDots);
  if (e) throw e;
}

/** What is wrong with a name for an entry (null: nothing); checkName throws it. */
function nameProblem(name: Buffer, allowDots: boolean): FsError | null {
  if (name.length === 0) return new FsError('ENOENT', 'empty name');
  if (name.length > NAME_MAX) return new FsError('ENAMETOOLONG', `name longer than ${NAME_MAX} bytes`);
  if (name.includes(0) || name.includes(0x2f)) return new FsError('EINVAL', 'name contains "/" or NUL');
  if (!allowDots && isDotName(name)) return new FsError('EEXIST', `"${name.toString()}" is reserved`);
  return null;
}

/** setuid is cleared on write by an unprivileged writer; setgid too when group-executable. */
function clearSetId(st: InodeState): void {
  const m = st.inode.f.i_mode;
  let n = m & ~0o4000;
  if (m & 0o010) n &= ~0o2000;
  st.inode.f.i_mode = n;
}

/** Device numbers in i_block: old 16-bit encoding in [0] when both fit in 8 bits, else new in [1]. */
function encodeDev(iBlock: Buffer, rdev: number): void {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
  iBlock.fill(0);
  if (major < 256 && minor < 256) iBlock.writeUInt32LE((major << 8) | minor, 0);
  else iBlock.writeUInt32LE(((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0, 4);
}

function decodeDev(iBlock: Buffer): number {
  const old = iBlock.readUInt32LE(0);
  let major: number;
  let minor: number;
  if (old) {
    major = (old >>> 8) & 0xff;
    minor = old & 0xff;
  } else {
    const n = iBlock.readUInt32LE(4);
    major = (n & 0xfff00) >>> 8;
    minor = (n & 0xff) | ((n >>> 12) & 0xfff00);
  }
  // Linux userspace dev_t (glibc makedev) limited to what JS numbers carry exactly.
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

/** An image that the kernel has mounted through a loop device must not be opened for writing. */
function refuseKernelMounted(image: string): void {
  let real: string;
  try {
    real = fs.realpathSync(image);
  } catch {
    return;
  }
  let loops: string[] = [];
  try {
    loops = fs.readdirSync('/sys/block').filter((d) => d.startsWith('loop'));
  } catch {
    return;
  }
  let mounts = '';
  try {
    mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return;
  }
  for (const l of loops) {
    let backing: string;
    try {
      backing = fs.readFileSync(path.join('/sys/block', l, 'loop', 'backing_file'), 'utf8').trim();
    } catch {
      continue;
    }
    if (backing === real && mounts.includes(` /dev/${l} `)) {
      throw new FsError('EBUSY', `image ${image} is mounted by the kernel through /dev/${l}; unmount it first`);
    }
  }
}

/**
 * The operation lock: FIFO like util/mutex's Mutex, but taking it when it is free costs no
 * promise. Requests mostly arrive one at a time, and each would otherwise pay several promise
 * hops before doing any work.
 */
class OpLock {
  private held = false;
  private waiters: (() => void)[] = [];

  get busy(): boolean {
    return this.held;
  }

  /** null: the lock was free and is now the caller's; otherwise resolves when it is. */
  acquire(): Promise<void> | null {
    if (!this.held) {
      this.held = true;
      return null;
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Hand the lock to the next waiter (it stays held), or free it. */
  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.held = false;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const wait = this.acquire();
    if (wait) await wait;
    try {
      return await fn();
    } finally {
      this.release();
    }
  }
}
