/**
 * InodeStore: in-memory state of inodes in use (decoded inode, lazily loaded extent map, open
 * count), file block allocation and release with i_blocks accounting, and the orphan list
 * (s_last_orphan chained through i_dtime) for files unlinked while open.
 *
 * Inodes are serialized into the inode table (in the block cache) whenever they change; extent
 * maps are written back to their tree when the inode is flushed (sync, fsync, eviction).
 */
import { CorruptionError, FsError } from '../util/errors';
import { Volume } from './volume';
import { Inode, INODE_FLAGS, S_IFDIR, Timespec } from './inode';
import { ExtentMap, ExtentTreeIO } from './extents';
import { hasBlockMap, holdsBlockMap, loadIndirectMap } from './indirect';
import { DirIO, Directory } from './directory';
import { FT, direntSize, entriesEnd, packDirBlock, parseDirBlock, sealDirBlock } from './dirent';
import { INCOMPAT, COMPAT } from './superblock';

export interface InodeState {
  inode: Inode;
  extents: ExtentMap | null;
  /** Open file handles (FUSE open/opendir); an unlinked inode is freed at the last release. */
  openCount: number;
  /** Used since the trim scan last passed it (second-chance LRU). */
  ref: boolean;
  /** Directory view of a directory inode, built on first use and kept with the state. */
  dir: Directory | null;
}

/** Flags no inode may carry together: ext4_iget refuses inline data with extents (EUCLEAN). */
function inlineWithExtents(inode: Inode): boolean {
  return inode.hasFlag(INODE_FLAGS.INLINE_DATA) && inode.hasFlag(INODE_FLAGS.EXTENTS);
}

/** Every state has the same shape (one hidden class keeps property loads monomorphic). */
function newState(inode: Inode, extents: ExtentMap | null): InodeState {
  return { inode, extents, openCount: 0, ref: false, dir: null };
}

const MAX_CACHED = 20000;

export function now(): Timespec {
  const ms = Date.now();
  const ns = process.hrtime.bigint() % 1000000n;
  return { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1000000 + Number(ns) };
}

/**
 * The time a data write stamps: the kernel's current_time() granularity (a jiffy, 4 ms at
 * HZ=250), so that a run of writes to a file within one tick changes its inode once, not per
 * write (with commit_before_reply each inode change is a log commit).
 */
export function writeTime(): Timespec {
  const t = Date.now();
  const ms = t - (t % 4);
  return { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1000000 };
}

export class InodeStore {
  private states = new Map<number, InodeState>();
  /**
   * States with changes not yet in the block cache: an inode changed (write()) or its extent map
   * (ExtentMap.onDirty). What flushAll writes.
   */
  private dirty = new Set<InodeState>();
  readonly sectorsPerBlock: number;

  constructor(readonly vol: Volume) {
    this.sectorsPerBlock = vol.blockSize / 512;
    this.extentIO = {
      blockSize: vol.blockSize,
      blocksCount: vol.blocksCount,
      read: (b) => vol.dev.read(b),
      zeroed: (b) => vol.dev.zeroed(b),
      markDirty: (b, buf) => vol.dev.markDirty(b, buf),
      allocMeta: async (goal) => (await vol.allocBlocks(goal, 1)).start,
      freeMeta: (b) => vol.freeBlocks(b, 1),
    };
  }

  get blockSize(): number {
    return this.vol.blockSize;
  }

  /** State of an inode in use; ESTALE for a free or deleted inode that nobody holds open. */
  async get(ino: number): Promise<InodeState> {
    let st = this.states.get(ino);
    if (st) {
      st.ref = true;
      return st;
    }
    if (!Number.isInteger(ino) || ino < 1 || ino > this.vol.inodesCount) throw new FsError('ESTALE', `inode ${ino} does not exist`);
    const inode = await this.vol.readInode(ino);
    if (inode.links === 0 || inode.mode === 0) throw new FsError('ESTALE', `inode ${ino} is not in use`);
    if (inlineWithExtents(inode)) throw new CorruptionError(`inode ${ino} has both inline data and extents flags`);
    st = newState(inode, null);
    this.states.set(ino, st);
    return st;
  }

  cached(ino: number): InodeState | undefined {
    return this.states.get(ino);
  }

  /**
   * get() without I/O: the state in memory, or made from the inode's table block when that is
   * cached. Undefined when only get() can tell (the block is not cached, the inode is not in use,
   * or it is damaged: get() then gives the error), and when the cache is due a trim (which runs
   * after an ordinary operation: this path must not grow it without bound).
   */
  getCached(ino: number): InodeState | undefined {
    let st = this.states.get(ino);
    if (!st) {
      if (!Number.isInteger(ino) || ino < 1 || ino > this.vol.inodesCount || this.trimDue) return undefined;
      let inode: Inode | null;
      try {
        inode = this.vol.readInodeCached(ino);
      } catch {
        return undefined;
      }
      if (!inode || inode.links === 0 || inode.mode === 0) return undefined;
      if (inlineWithExtents(inode)) return undefined; // get() says why
      st = newState(inode, null);
      this.states.set(ino, st);
    }
    st.ref = true;
    return st;
  }

  /** The extent code's view of the volume (built once: extent maps load and store often). */
  readonly extentIO: ExtentTreeIO;

  csumSeedOf(inode: Inode): number | null {
    return this.vol.metadataCsum ? this.vol.inodeCsumSeed(inode) : null;
  }

  async extents(st: InodeState): Promise<ExtentMap> {
    if (st.extents) return st.extents;
    const inode = st.inode;
    if (!inode.hasFlag(INODE_FLAGS.EXTENTS)) {
      if (inode.hasFlag(INODE_FLAGS.INLINE_DATA)) throw new FsError('EOPNOTSUPP', `inode ${inode.ino} keeps its data inline: it has no blocks to map`);
      // Block-mapped (ext2/3 style): read into the same map; a change stores it as an extent
      // tree (indirect.ts). A device node's or fast symlink's i_block holds no blocks.
      if (!hasBlockMap(inode)) return this.attachMap(st, new ExtentMap());
      return this.attachMap(st, await loadIndirectMap(inode.ino, inode.f.i_block, this.extentIO));
    }
    return this.attachMap(st, await ExtentMap.load(inode.ino, inode.f.i_block, this.extentIO, this.csumSeedOf(inode)));
  }

  /**
   * extents() when it needs no block read: the loaded map, or the tree parsed from i_block when
   * it lies wholly there (ExtentMap.loadInline); null otherwise (index nodes, or not an extent
   * inode: extents() decides those). The FUSE fast path's READ of a file it has not read yet.
   */
  extentsInline(st: InodeState): ExtentMap | null {
    if (st.extents) return st.extents;
    const inode = st.inode;
    if (!inode.hasFlag(INODE_FLAGS.EXTENTS)) return null;
    const map = ExtentMap.loadInline(inode.ino, inode.f.i_block, this.extentIO);
    return map && this.attachMap(st, map);
  }

  /** Give a state its extent map; the map reports itself dirty to this store. */
  attachMap(st: InodeState, map: ExtentMap): ExtentMap {
    st.extents = map;
    map.onDirty = () => this.addDirty(st);
    if (map.dirty) this.addDirty(st);
    return map;
  }

  /**
   * The inode changed: serialize it into the table (block cache) at the next flush, which every
   * commit runs first (flushAll before Volume.sync). A run of changes between commits (a
   * directory taking entry after entry, a file written in many calls, an inode created and then
   * given its data) costs one encode and checksum instead of one each. A state get() does not
   * know (an orphan-list walk's) is written now: get() would read the table block, stale.
   */
  async write(st: InodeState): Promise<void> {
    if (!this.markDirty(st)) await this.vol.writeInode(st.inode);
  }

  /** write() without waiting: false (nothing done) for a state get() does not know. */
  markDirty(st: InodeState): boolean {
    if (this.states.get(st.inode.ino) !== st) return false;
    this.addDirty(st);
    return true;
  }

  /** Write a dirty state back: its extent map into its tree, then the inode into its table block. */
  async flush(st: InodeState): Promise<void> {
    if (!this.removeDirty(st)) return;
    // Taken out first: a change made while this waits for I/O marks the state dirty again.
    try {
      const map = st.extents;
      const inode = st.inode;
      if (map && map.dirty) {
        if (!inode.hasFlag(INODE_FLAGS.EXTENTS)) inode.f.i_flags |= INODE_FLAGS.EXTENTS;
        const goal = map.extents.length ? map.extents[0].pblk : this.groupGoal(inode.ino);
        const delta = await map.store(inode.f.i_block, this.extentIO, this.csumSeedOf(inode), goal);
        if (delta) this.addSectors(inode, delta);
      }
      await this.vol.writeInode(inode);
    } catch (e) {
      this.addDirty(st); // still to write: the commit that ran this fails, the change is kept
      throw e;
    }
  }

  /** Changes not yet in the block cache (flushAll). */
  get hasDirty(): boolean {
    return this.dirty.size > 0;
  }

  /**
   * Inode table blocks the dirty states will dirty when flushed: what a commit's transaction
   * will hold besides the blocks dirty already (Ext4Fs commits early before it outgrows the log).
   */
  get pendingTableBlocks(): number {
    return this.dirtyTableBlocks.size;
  }

  /** Per inode table block, how many dirty states live in it. */
  private readonly dirtyTableBlocks = new Map<number, number>();

  private addDirty(st: InodeState): void {
    if (this.dirty.has(st)) return;
    this.dirty.add(st);
    const b = this.vol.inodeTableBlock(st.inode.ino);
    this.dirtyTableBlocks.set(b, (this.dirtyTableBlocks.get(b) ?? 0) + 1);
  }

  private removeDirty(st: InodeState): boolean {
    if (!this.dirty.delete(st)) return false;
    const b = this.vol.inodeTableBlock(st.inode.ino);
    const n = (this.dirtyTableBlocks.get(b) ?? 1) - 1;
    if (n > 0) this.dirtyTableBlocks.set(b, n);
    else this.dirtyTableBlocks.delete(b);
    return true;
  }

  /** Write every dirty state back (each commit does this: it costs O(dirty states)). */
  async flushAll(): Promise<void> {
    while (this.dirty.size) {
      const batch = [...this.dirty];
      for (const st of batch) await this.flush(st);
    }
  }

  private trimBlockedAt = 0;

  /** Inodes held in memory (bounded by trim()). */
  get cachedCount(): number {
    return this.states.size;
  }

  /** Would trim() do anything? (Checked first: most operations leave nothing to trim.) */
  get trimDue(): boolean {
    return this.states.size > MAX_CACHED && this.states.size >= this.trimBlockedAt;
  }

  /**
   * Drop closed states beyond the cache bound, oldest first, recently used ones getting a
   * second chance. When everything cached is open, wait until the map has grown by a tenth
   * before scanning again (a scan per operation would make each O(n)).
   */
  async trim(): Promise<void> {
    if (!this.trimDue) return;
    let budget = this.states.size * 2;
    for (const [ino, st] of this.states) {
      if (this.states.size <= MAX_CACHED * 0.9 || budget-- <= 0) break;
      if (st.openCount > 0) continue;
      if (st.ref) {
        st.ref = false;
        this.states.delete(ino);
        this.states.set(ino, st);
        continue;
      }
      // Written while get() still finds the state: meanwhile its table block is stale.
      await this.flush(st);
      if (this.dirty.has(st) || st.openCount > 0 || this.states.get(ino) !== st) continue; // used meanwhile
      this.states.delete(ino);
    }
    this.trimBlockedAt = this.states.size > MAX_CACHED ? Math.ceil(this.states.size * 1.1) : 0;
  }

  addSectors(inode: Inode, blocks: number): void {
    const s = inode.getSectors(this.blockSize) + blocks * this.sectorsPerBlock;
    if (s < 0) throw new CorruptionError(`inode ${inode.ino}: i_blocks would go negative`);
    inode.setSectors(s);
  }

  groupGoal(ino: number): number {
    const g = this.vol.groupOfInode(ino);
    return this.vol.groupFirstBlock(Math.min(g, this.vol.groupCount - 1));
  }

  /**
   * Reserve the extent-tree blocks a map of `extents` entries needs, so that writing the tree
   * back at flush time never has to allocate (a flush that hits ENOSPC would lose the change).
   * Reserved blocks count in i_blocks already; store() reuses them and frees what is left.
   */
  async reserveTree(st: InodeState, extents: number): Promise<void> {
    const map = await this.extents(st);
    const need = ExtentMap.treeBlocksFor(extents, this.blockSize);
    while (map.treeBlocks.length < need) {
      const goal = map.treeBlocks.length ? map.treeBlocks[map.treeBlocks.length - 1] + 1 : (map.extents[0]?.pblk ?? this.groupGoal(st.inode.ino));
      const run = await this.vol.allocBlocks(goal, 1);
      map.treeBlocks.push(run.start);
      map.dirty = true;
      this.addSectors(st.inode, 1);
    }
  }

  /**
   * Map the hole [lblk, lblk+count) to new blocks, one contiguous run at a time. `onRun` sees
   * each run as soon as it is mapped (to fill it with data before anything else can read it).
   * On ENOSPC after some runs, returns what was mapped: the caller decides about a short write.
   */
  async allocate(
    st: InodeState, lblk: number, count: number, unwritten: boolean,
    onRun?: (r: { lblk: number; pblk: number; len: number }) => Promise<void>,
  ): Promise<{ lblk: number; pblk: number; len: number }[]> {
    const map = await this.extents(st);
    let goal = map.goalFor(lblk) || this.groupGoal(st.inode.ino);
    const out: { lblk: number; pblk: number; len: number }[] = [];
    let l = lblk;
    let left = count;
    while (left > 0) {
      try {
        await this.reserveTree(st, map.extents.length + 1);
        const run = await this.vol.allocBlocks(goal, left);
        const r = { lblk: l, pblk: run.start, len: run.len };
        if (onRun) {
          try {
            await onRun(r);
          } catch (e) {
            await this.vol.freeBlocks(run.start, run.len);
            throw e;
          }
        }
        map.insert({ lblk: l, len: run.len, pblk: run.start, unwritten });
        this.addSectors(st.inode, run.len);
        out.push(r);
        l += run.len;
        left -= run.len;
        goal = run.start + run.len;
      } catch (e) {
        if (out.length && e instanceof FsError && e.code === 'ENOSPC') return out;
        throw e;
      }
    }
    return out;
  }

  /** Unmap and free [lblk, lblk+count). */
  /**
   * Called before a file's blocks stop belonging to it (bytes [from, to)): a DAX window showing
   * them unmaps them first, so a guest never sees blocks freed or reused by another file.
   */
  beforeRelease: ((ino: number, from: number, to: number) => Promise<void>) | null = null;

  async release(st: InodeState, lblk: number, count: number): Promise<void> {
    const bs = this.vol.blockSize;
    if (this.beforeRelease) await this.beforeRelease(st.inode.ino, lblk * bs, (lblk + count) * bs);
    const map = await this.extents(st);
    // Cutting a hole inside an extent splits it: room for one more entry first.
    await this.reserveTree(st, map.extents.length + 1);
    for (const r of map.remove(lblk, count)) {
      await this.vol.freeBlocks(r.pblk, r.len);
      this.addSectors(st.inode, -r.len);
    }
  }

  /** Allocate and initialize a new inode. */
  async create(parent: number, mode: number, uid: number, gid: number): Promise<InodeState> {
    const isDir = (mode & 0o170000) === S_IFDIR;
    const ino = await this.vol.allocInode(parent, isDir);
    const inode = this.vol.newInode(ino);
    inode.f.i_mode = mode;
    inode.uid = uid;
    inode.gid = gid;
    inode.links = 1;
    const t = now();
    inode.atime = t;
    inode.mtime = t;
    inode.ctime = t;
    inode.crtime = t;
    const st = newState(inode, null);
    this.attachMap(st, new ExtentMap());
    this.states.set(ino, st);
    return st;
  }

  /** Free an inode whose last link and last open are gone: data, xattr block, bitmap bit. */
  async destroy(st: InodeState, freeXattrBlock: (st: InodeState) => Promise<void>): Promise<void> {
    const inode = st.inode;
    // An inline-data inode's bytes are in the inode itself: no blocks to give back.
    if (!inode.hasFlag(INODE_FLAGS.INLINE_DATA) && (inode.hasFlag(INODE_FLAGS.EXTENTS) || holdsBlockMap(inode))) {
      const map = await this.extents(st);
      if (this.beforeRelease) await this.beforeRelease(inode.ino, 0, map.endLblk * this.vol.blockSize);
      for (const r of map.remove(0, map.endLblk)) await this.vol.freeBlocks(r.pblk, r.len);
      for (const b of map.treeBlocks) await this.vol.freeBlocks(b, 1);
      map.treeBlocks = [];
      map.dirty = false;
    }
    await freeXattrBlock(st);
    const isDir = inode.isDir();
    inode.links = 0;
    inode.size = 0;
    inode.setSectors(0);
    inode.f.i_dtime = Math.floor(Date.now() / 1000) >>> 0;
    inode.f.i_block.fill(0);
    inode.f.i_flags &= ~(INODE_FLAGS.EXTENTS | INODE_FLAGS.INLINE_DATA);
    // Written now, not at the flush: the state leaves `states` and its number is free for reuse.
    this.removeDirty(st);
    await this.vol.writeInode(inode);
    await this.vol.freeInode(inode.ino, isDir);
    this.states.delete(inode.ino);
  }

  // ---- orphan list (EXT4 s_last_orphan, chained through i_dtime) ----

  async addOrphan(st: InodeState): Promise<void> {
    st.inode.f.i_dtime = this.vol.sb.s_last_orphan;
    this.vol.sb.s_last_orphan = st.inode.ino;
    this.vol.superblockChanged();
    await this.write(st);
  }

  async removeOrphan(st: InodeState): Promise<void> {
    const ino = st.inode.ino;
    const next = st.inode.f.i_dtime;
    if (this.vol.sb.s_last_orphan === ino) {
      this.vol.sb.s_last_orphan = next;
      this.vol.superblockChanged();
      return;
    }
    let cur = this.vol.sb.s_last_orphan;
    for (let guard = 0; cur && guard < this.vol.inodesCount; guard++) {
      const c = this.states.get(cur) ?? newState(await this.vol.readInode(cur), null);
      if (c.inode.f.i_dtime === ino) {
        c.inode.f.i_dtime = next;
        await this.write(c);
        return;
      }
      cur = c.inode.f.i_dtime;
    }
  }

  /** Mount-time orphan processing: free every inode left on the list by a crash. */
  async processOrphans(freeXattrBlock: (st: InodeState) => Promise<void>): Promise<number> {
    const head = this.vol.sb.s_last_orphan;
    this.vol.sb.s_last_orphan = 0;
    if (head) this.vol.superblockChanged();
    return this.walkOrphans(head, async (ino) => {
      const st = newState(await this.vol.readInode(ino), null);
      this.states.set(ino, st);
      return st;
    }, async (st) => {
      if (st.inode.links === 0) {
        await this.destroy(st, freeXattrBlock);
      } else {
        st.inode.f.i_dtime = 0;
        await this.write(st);
      }
    });
  }

  /**
   * A server restarted on a live connection: the unlinked inodes on the orphan list may still
   * be open or known in the client (the kernel holds them across the restart), so they stay on
   * the list, each held as one opener (released like keepUnlinked's), and their numbers are
   * returned. Linked inodes on the list (a truncate cut short) leave it, as processOrphans does.
   */
  async adoptOrphans(): Promise<number[]> {
    const kept: number[] = [];
    const linked: InodeState[] = [];
    await this.walkOrphans(this.vol.sb.s_last_orphan, async (ino) => {
      const st = this.states.get(ino) ?? newState(await this.vol.readInode(ino), null);
      this.states.set(ino, st);
      return st;
    }, async (st) => {
      if (st.inode.links === 0) {
        st.openCount++;
        kept.push(st.inode.ino);
      } else linked.push(st);
    });
    for (const st of linked) {
      await this.removeOrphan(st);
      st.inode.f.i_dtime = 0;
      await this.write(st);
    }
    return kept;
  }

  /**
   * Walk the orphan list from `head` (chained through i_dtime): each inode's state as load()
   * gives it, to visit(), the link to the next read before the visit changes it. The number
   * visited; a loop or a link outside the inode table is damage.
   */
  private async walkOrphans(head: number, load: (ino: number) => Promise<InodeState>, visit: (st: InodeState) => Promise<void>): Promise<number> {
    const seen = new Set<number>();
    let n = 0;
    for (let cur = head; cur; n++) {
      if (seen.has(cur) || cur > this.vol.inodesCount) throw new CorruptionError(`orphan list loops or points outside the inode table at ${cur}`);
      seen.add(cur);
      const st = await load(cur);
      const next = st.inode.f.i_dtime;
      await visit(st);
      cur = next > this.vol.inodesCount ? 0 : next;
    }
    return n;
  }

  /** The directory I/O adapter for the Directory code. */
  /**
   * The rest of an inline-data inode after its 60 bytes of i_block: the value of its
   * system.data xattr (fs/ext4/inline.c). Set by Ext4Fs, which owns the xattr code.
   */
  inlineTail: ((st: InodeState) => Buffer | null) | null = null;

  /**
   * All of an inline-data inode's bytes (EXT4_INLINE_DATA_FL): i_block, then system.data, which
   * must be in the inode (ext4_find_inline_data_nolock: without it the kernel calls it damage).
   */
  async inlineData(st: InodeState): Promise<Buffer> {
    const tail = this.inlineTail?.(st) ?? null;
    if (!tail) throw new CorruptionError(`inode ${st.inode.ino} has inline data but no system.data attribute in the inode`);
    return tail.length ? Buffer.concat([st.inode.f.i_block, tail]) : Buffer.from(st.inode.f.i_block);
  }

  /**
   * An inline directory's entries as one directory block of the usual size, "." and ".." first
   * (what a directory that outgrows its inode gets, ext4_convert_inline_dir): how kfs lists and
   * searches it, and what it becomes before it changes (Ext4Fs.uninline).
   */
  inlineDirBlock(st: InodeState): Promise<Buffer> {
    return buildInlineDirBlock(this, st);
  }

  dirIO(st: InodeState): DirIO {
    if (st.inode.hasFlag(INODE_FLAGS.INLINE_DATA)) return inlineDirIO(this, st);
    const vol = this.vol;
    const inode = st.inode;
    const bs = vol.blockSize;
    const store = this;
    return {
      ino: inode.ino,
      blockSize: bs,
      csumSeed: this.csumSeedOf(inode),
      blockCount: () => Math.floor(inode.size / bs),
      read: async (lblk) => {
        const map = await store.extents(st);
        const p = map.lookup(lblk);
        if (!p) throw new CorruptionError(`directory inode ${inode.ino} has a hole at block ${lblk}`);
        return vol.dev.read(p);
      },
      readVerified: async (lblk, verify) => {
        const map = await store.extents(st);
        const p = map.lookup(lblk);
        if (!p) throw new CorruptionError(`directory inode ${inode.ino} has a hole at block ${lblk}`);
        return vol.dev.readVerified(p, verify);
      },
      peek: (lblk, verified) => {
        const p = store.extentsInline(st)?.lookup(lblk);
        if (!p) return null;
        return verified ? vol.dev.cachedVerified(p) : vol.dev.cached(p);
      },
      dirty: (lblk, buf) => {
        const p = st.extents!.lookup(lblk);
        vol.dev.markDirty(p, buf);
      },
      append: async () => {
        const lblk = Math.floor(inode.size / bs);
        const [r] = await store.allocate(st, lblk, 1, false);
        inode.size = (lblk + 1) * bs;
        await store.write(st);
        return { lblk, buf: vol.dev.zeroed(r.pblk) };
      },
      get indexed() {
        return inode.hasFlag(INODE_FLAGS.INDEX);
      },
      setIndexed: (v) => {
        if (v) inode.f.i_flags |= INODE_FLAGS.INDEX;
        else inode.f.i_flags &= ~INODE_FLAGS.INDEX;
      },
      dirIndex: vol.hasCompat(COMPAT.dir_index),
      defHashVersion: vol.sb.s_def_hash_version,
      unsignedDelta: vol.hashUnsignedDelta,
      hashSeed: vol.sb.s_hash_seed,
      largeDir: vol.hasIncompat(INCOMPAT.large_dir),
    };
  }
}

/**
 * InodeStore.inlineDirBlock. i_block holds the parent's inode number (an inline directory has no
 * "." or ".." entries), then entries to byte 60; system.data holds more (fs/ext4/inline.c).
 * They are packed, after "." and "..", into a block of the usual size.
 */
async function buildInlineDirBlock(store: InodeStore, st: InodeState): Promise<Buffer> {
  const vol = store.vol;
  const inode = st.inode;
  const bs = vol.blockSize;
  const csumSeed = store.csumSeedOf(inode);
  const where = `inline directory inode ${inode.ino}`;
  const raw = await store.inlineData(st);
  if (raw.length < 60) throw new CorruptionError(`${where}: i_block is ${raw.length} bytes`);
  const dirType = vol.hasIncompat(INCOMPAT.filetype) ? FT.DIR : 0;
  const entries: { inode: number; name: Buffer; fileType: number }[] = [
    { inode: inode.ino, name: Buffer.from('.'), fileType: dirType },
    { inode: raw.readUInt32LE(0), name: Buffer.from('..'), fileType: dirType },
  ];
  for (const part of [raw.subarray(4, 60), raw.subarray(60)]) {
    if (part.length === 0) continue;
    for (const d of parseDirBlock(part, part.length, where)) if (d.inode) entries.push({ inode: d.inode, name: Buffer.from(d.name), fileType: d.fileType });
  }
  const buf = Buffer.alloc(bs);
  const end = entriesEnd(bs, csumSeed !== null);
  let need = 0;
  for (const e of entries) need += direntSize(e.name.length);
  if (need > end) throw new CorruptionError(`${where}: its entries do not fit a block`);
  packDirBlock(buf, end, entries);
  sealDirBlock(buf, csumSeed);
  return buf;
}

/**
 * An inline directory (EXT4_INLINE_DATA_FL) seen as its one block (InodeStore.inlineDirBlock),
 * for reading: Directory lists and looks up in it as in any one-block directory. A change
 * stores the directory as that block first (Ext4Fs.uninline) and drops the Directory reading
 * through this, so nothing ever writes through it.
 */
function inlineDirIO(store: InodeStore, st: InodeState): DirIO {
  const vol = store.vol;
  const inode = st.inode;
  const bs = vol.blockSize;
  const where = `inline directory inode ${inode.ino}`;
  // Built once per Directory: the inline data never changes under it (see above).
  let built: Promise<Buffer> | null = null;
  const block = (): Promise<Buffer> => (built ??= buildInlineDirBlock(store, st));
  const unconverted = (): never => {
    throw new FsError('EIO', `${where} was about to change without being stored as a block first`);
  };
  return {
    ino: inode.ino,
    blockSize: bs,
    csumSeed: store.csumSeedOf(inode),
    blockCount: () => 1,
    read: (lblk) => (lblk === 0 ? block() : Promise.reject(new CorruptionError(`${where} has no block ${lblk}`))),
    readVerified: (lblk) => (lblk === 0 ? block() : Promise.reject(new CorruptionError(`${where} has no block ${lblk}`))),
    peek: () => null,
    dirty: unconverted,
    append: async () => unconverted(),
    indexed: false,
    setIndexed: unconverted,
    dirIndex: vol.hasCompat(COMPAT.dir_index),
    defHashVersion: vol.sb.s_def_hash_version,
    unsignedDelta: vol.hashUnsignedDelta,
    hashSeed: vol.sb.s_hash_seed,
    largeDir: vol.hasIncompat(INCOMPAT.large_dir),
  };
}

