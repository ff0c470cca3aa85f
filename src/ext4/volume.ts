/**
 * Volume: the ext4 metadata that is global to the filesystem: superblock, group descriptor
 * table, block and inode bitmaps, the inode table, and block/inode allocation.
 *
 * Group descriptors live in memory and are written back at sync(); bitmaps and inode table
 * blocks live in the BlockDevice cache. Checksums are verified when a structure is loaded and
 * recomputed when it is written. Allocation follows ext4's habits: blocks near a goal (the
 * block after a file's last block), inodes of new directories spread over groups (Orlov-like),
 * files' inodes in their parent's group.
 *
 * With a journal (journal/), sync() commits the dirty blocks as one jbd2 transaction before
 * they are written home; opening an image replays its journal first (journal/open.ts).
 */
import { randomBytes } from 'node:crypto';
import { BlockDevice, WriteLogSink } from '../block/device';
import { CorruptionError, FsError } from '../util/errors';
import { log } from '../util/log';
import { join64, lo32, hi32 } from '../util/cursor';
import { ext4Crc } from './crc';
import {
  SuperblockFields, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, COMPAT, INCOMPAT, RO_COMPAT,
  SUPPORTED_RO_COMPAT, featureNames, sbBlocksCount, sbGroupCount, sbFreeBlocks, groupBaseMetaBlocks, groupDescLocation, FLAG_UNSIGNED_HASH, STATE_VALID,
} from './superblock';
import {
  GroupDesc, decodeGroupDesc, encodeGroupDesc, groupDescChecksum, bitmapChecksum, GROUP_DESC_CHECKSUM_OFFSET,
  BG_BLOCK_UNINIT, BG_INODE_UNINIT, BG_INODE_ZEROED,
} from './group-desc';
import { Inode, verifyInodeChecksum, setInodeChecksum } from './inode';
import { Journal } from './journal/journal';
import { readSuperblockAtOpen, recoverImage, encodeSuperblock, checkSuperblock } from './journal/open';
import { isCommitBlockOf } from './journal/recovery';
import { SharedSoftLog, SharedLogContents } from './journal/shared-log';

export interface VolumeOptions {
  readOnly?: boolean;
  cacheBytes?: number;
  /** Read without taking the image lock (inspection of an image another process serves). */
  noLock?: boolean;
  /** Write metadata in place without the journal (as before kfs had one; for measuring its cost). */
  noJournal?: boolean;
  /** Record every device write and barrier (crash tests). */
  writeLog?: WriteLogSink;
  /**
   * Replay the journal as the kernel of this boot id would (default: the running one). Log-only
   * commits of other boots are dropped; crash tests pass a foreign id to model a power loss.
   */
  replayBoot?: Buffer;
  /** An already open device to use instead of opening the image (a snapshot's view: src/snapshot/view.ts). */
  device?: BlockDevice;
  /**
   * Shared memory for log-only commits (journal/shared-log.ts), from the supervisor. What a
   * dead predecessor committed there is applied at open.
   */
  sharedLog?: SharedSoftLog;
}

export interface BlockRun {
  start: number;
  len: number;
}

export class Volume {
  sb: SuperblockFields;
  readonly blockSize: number;
  readonly groupCount: number;
  readonly inodesPerGroup: number;
  readonly blocksPerGroup: number;
  readonly inodeSize: number;
  readonly descSize: number;
  readonly firstDataBlock: number;
  readonly blocksCount: number;
  readonly metadataCsum: boolean;
  readonly csumSeed: number;
  readOnly: boolean;
  /** Why the volume is read-only when the caller asked for read-write (unknown ro_compat...). */
  readOnlyReason: string | null;
  readonly gds: GroupDesc[];
  private dirtyGroups = new Set<number>();
  /** Superblock fields other than the free counts changed (orphan list, state, features). */
  private sbDirty = false;
  /**
   * The free block/inode counts changed. Like the kernel (which keeps them in percpu counters
   * and writes them only with ext4_commit_super), log-only commits leave them out: they are
   * recomputed from the group descriptors at open, and e2fsck fixes stale ones silently.
   */
  private countersDirty = false;
  private freeBlocksTotal: number;
  private freeInodesTotal: number;
  /** The running jbd2 journal (null: read-only, no journal, or -o nojournal). */
  journal: Journal | null = null;
  /** Where log-only commits go (VolumeOptions.sharedLog), kept for a journal restarted by atCleanPoint. */
  private sharedLog: SharedSoftLog | null = null;
  /**
   * Blocks freed since the last commit, per group (a bitmap). They are not handed out again
   * until the commit that frees them is durable: before it, a crash brings back the old owner,
   * whose contents must still be there (ext4's busy extents, ext4_mb_free_metadata).
   */
  private busy = new Map<number, Buffer>();

  private constructor(readonly dev: BlockDevice, sb: SuperblockFields, readOnly: boolean, reason: string | null) {
    this.sb = sb;
    this.readOnly = readOnly;
    this.readOnlyReason = reason;
    this.blockSize = 1024 << sb.s_log_block_size;
    this.inodesPerGroup = sb.s_inodes_per_group;
    this.blocksPerGroup = sb.s_blocks_per_group;
    this.inodeSize = sb.s_rev_level === 0 ? 128 : sb.s_inode_size;
    this.descSize = sb.s_feature_incompat & INCOMPAT['64bit'] ? sb.s_desc_size : 32;
    this.firstDataBlock = sb.s_first_data_block;
    this.blocksCount = sbBlocksCount(sb);
    this.groupCount = sbGroupCount(sb);
    this.metadataCsum = !!(sb.s_feature_ro_compat & RO_COMPAT.metadata_csum);
    this.csumSeed = sb.s_feature_incompat & INCOMPAT.csum_seed ? sb.s_checksum_seed : ext4Crc(0xffffffff, sb.s_uuid);
    this.gds = [];
    this.freeBlocksTotal = sbFreeBlocks(sb);
    this.freeInodesTotal = sb.s_free_inodes_count;
  }

  static async open(path: string, opts: VolumeOptions = {}): Promise<Volume> {
    const dev = opts.device ?? BlockDevice.open(path, { readOnly: opts.readOnly || opts.noLock, cacheBytes: opts.cacheBytes, noLock: opts.noLock, writeLog: opts.writeLog });
    try {
      return await Volume.fromDevice(dev, !!opts.readOnly || !!opts.noLock, opts);
    } catch (e) {
      await dev.close().catch(() => undefined);
      throw e;
    }
  }

  static async fromDevice(dev: BlockDevice, readOnly: boolean, opts: VolumeOptions = {}): Promise<Volume> {
    if (dev.size < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE) throw new CorruptionError(`image is ${dev.size} bytes, too small to hold an ext4 superblock`);
    let sb = await readSuperblockAtOpen(dev, readOnly, !!opts.noLock, opts.replayBoot);
    readOnly = readOnly || dev.readOnly;
    let reason: string | null = null;
    const badRo = sb.s_feature_ro_compat & ~SUPPORTED_RO_COMPAT;
    if (badRo && !readOnly) reason = `read-only: unsupported ro_compat features ${featureNames(RO_COMPAT, badRo).join(', ')}`;
    // An ext2/ext3 filesystem: its files are block maps, which kfs reads (indirect.ts) but does
    // not write; an extent tree would need the extent feature, which only a tool should turn on.
    if (!(sb.s_feature_incompat & INCOMPAT.extent) && !readOnly && !reason) {
      reason = 'read-only: no extent feature (an ext2/ext3 filesystem; kfs reads its block-mapped files but writes only extent trees: tune2fs -O extent,... makes it ext4)';
    }
    if (!readOnly && !(sb.s_state & STATE_VALID)) {
      log.warn(`${dev.path}: filesystem was not cleanly unmounted or has errors; run kfs fsck`);
    }
    const bs = 1024 << sb.s_log_block_size;
    dev.setBlockSize(bs);
    // ext4_check_geometry, in its order: the image holds the blocks, and every group holds
    // s_inodes_per_group inodes ("inodes count not valid"; an inode number past the groups would
    // have no descriptor to find its table by).
    if (sbBlocksCount(sb) * bs > dev.size) {
      throw new CorruptionError(`superblock says ${sbBlocksCount(sb)} blocks but the image holds only ${Math.floor(dev.size / bs)}`);
    }
    const groups = sbGroupCount(sb);
    if (sb.s_inodes_count !== groups * sb.s_inodes_per_group) {
      throw new CorruptionError(`superblock's inode count ${sb.s_inodes_count} is not its ${groups} groups of ${sb.s_inodes_per_group} inodes`);
    }
    const ro = readOnly || reason !== null;
    if (reason) log.warn(`${dev.path}: ${reason}`);
    const journaled = !ro && (sb.s_feature_compat & COMPAT.has_journal) !== 0 && !opts.noJournal;
    const applied = opts.sharedLog && journaled ? await applySharedLog(dev, opts.sharedLog) : null;
    if (applied) sb = applied.sb;
    const vol = new Volume(dev, sb, ro, reason);
    await vol.loadGroupDescs();
    // The free counts are the group descriptors' sums (ext4_fill_super does the same): log-only
    // commits leave the superblock's copies behind (see countersDirty).
    vol.freeBlocksTotal = vol.gds.reduce((n, gd) => n + gd.freeBlocks, 0);
    vol.freeInodesTotal = vol.gds.reduce((n, gd) => n + gd.freeInodes, 0);
    if (journaled) {
      vol.journal = await Journal.start(dev, sb);
      vol.sharedLog = opts.sharedLog ?? null;
      if (vol.sharedLog) vol.journal.useSharedLog(vol.sharedLog, applied?.found ?? null);
      // needs_recovery travels in the first transaction (the superblock is in every one) rather
      // than in an in-place write as ext4_setup_super does: a torn in-place write of the primary
      // superblock is then always repaired by a replay. Before the first commit's home writes
      // are durable, a crash loses only that commit (the mount-time changes); from the second
      // commit on, its first barrier has put the flag on disk.
      sb.s_feature_incompat |= INCOMPAT.recover;
    }
    return vol;
  }

  /**
   * Replay an image's journal if it needs recovery (for offline tools: kfs fsck), changing
   * nothing else. Returns whether a replay happened.
   */
  static recoverImage(path: string): Promise<boolean> {
    return recoverImage(path);
  }

  // ---- group descriptors ----

  private async loadGroupDescs(): Promise<void> {
    const csum = { metadataCsum: this.metadataCsum, csumSeed: this.csumSeed, uuid: this.sb.s_uuid };
    const gdtCsum = this.metadataCsum || !!(this.sb.s_feature_ro_compat & RO_COMPAT.gdt_csum);
    for (let g = 0; g < this.groupCount; g++) {
      const { block, offset } = groupDescLocation(g, this.sb);
      const buf = await this.dev.read(block);
      const gd = decodeGroupDesc(buf, offset, this.descSize);
      if (gdtCsum && groupDescChecksum(buf, offset, this.descSize, g, csum) !== gd.checksum) {
        throw new CorruptionError(`group descriptor ${g} checksum mismatch`);
      }
      const inRange = (b: number) => b >= this.firstDataBlock && b < this.blocksCount;
      if (!inRange(gd.blockBitmap) || !inRange(gd.inodeBitmap) || !inRange(gd.inodeTable) ||
          gd.freeBlocks > this.blocksPerGroup || gd.freeInodes > this.inodesPerGroup) {
        throw new CorruptionError(`group descriptor ${g} points outside the filesystem or has impossible counts`);
      }
      this.gds.push(gd);
    }
  }

  private async writeGroupDescs(): Promise<void> {
    const csum = { metadataCsum: this.metadataCsum, csumSeed: this.csumSeed, uuid: this.sb.s_uuid };
    const gdtCsum = this.metadataCsum || !!(this.sb.s_feature_ro_compat & RO_COMPAT.gdt_csum);
    for (const g of this.dirtyGroups) {
      const { block, offset } = groupDescLocation(g, this.sb);
      const buf = await this.dev.read(block);
      const gd = this.gds[g];
      const stale = this.staleBitmapCsums.get(g);
      if (stale?.block) gd.blockBitmapCsum = bitmapChecksum(this.csumSeed, stale.block.subarray(0, this.blocksPerGroup / 8), this.descSize);
      if (stale?.inode) gd.inodeBitmapCsum = bitmapChecksum(this.csumSeed, stale.inode.subarray(0, this.inodesPerGroup / 8), this.descSize);
      this.staleBitmapCsums.delete(g);
      encodeGroupDesc(gd, buf, offset, this.descSize);
      if (gdtCsum) {
        gd.checksum = groupDescChecksum(buf, offset, this.descSize, g, csum);
        buf.writeUInt16LE(gd.checksum, offset + GROUP_DESC_CHECKSUM_OFFSET);
      }
      this.dev.markDirty(block, buf);
    }
    this.dirtyGroups.clear();
  }

  private markGroupDirty(g: number): void {
    this.dirtyGroups.add(g);
  }

  // ---- geometry helpers ----

  groupOfBlock(block: number): number {
    return Math.floor((block - this.firstDataBlock) / this.blocksPerGroup);
  }
  groupFirstBlock(g: number): number {
    return this.firstDataBlock + g * this.blocksPerGroup;
  }
  blocksInGroup(g: number): number {
    return g === this.groupCount - 1 ? this.blocksCount - this.groupFirstBlock(g) : this.blocksPerGroup;
  }
  groupOfInode(ino: number): number {
    return Math.floor((ino - 1) / this.inodesPerGroup);
  }
  get inodesCount(): number {
    return this.sb.s_inodes_count;
  }
  get freeBlockCount(): number {
    return this.freeBlocksTotal;
  }
  get freeInodeCount(): number {
    return this.freeInodesTotal;
  }
  get reservedBlocks(): number {
    return join64(this.sb.s_r_blocks_count_lo, this.sb.s_r_blocks_count_hi);
  }
  hasCompat(bit: number): boolean { return (this.sb.s_feature_compat & bit) !== 0; }
  hasIncompat(bit: number): boolean { return (this.sb.s_feature_incompat & bit) !== 0; }
  hasRoCompat(bit: number): boolean { return (this.sb.s_feature_ro_compat & bit) !== 0; }
  /** 3 when the superblock says directory hashes treat name bytes as unsigned. */
  get hashUnsignedDelta(): number {
    return this.sb.s_flags & FLAG_UNSIGNED_HASH ? 3 : 0;
  }

  // ---- bitmaps ----

  /** The block bitmap of a group; a BLOCK_UNINIT group's bitmap is computed (ext4_init_block_bitmap). */
  private async blockBitmap(g: number, forWrite: boolean): Promise<Buffer> {
    const gd = this.gds[g];
    if (gd.flags & BG_BLOCK_UNINIT) {
      if (!forWrite) return this.initBlockBitmap(g, Buffer.alloc(this.blockSize));
      const buf = this.initBlockBitmap(g, this.dev.zeroed(gd.blockBitmap));
      gd.flags &= ~BG_BLOCK_UNINIT;
      this.dev.markDirty(gd.blockBitmap, buf);
      this.updateBitmapChecksums(g, buf);
      return buf;
    }
    if (!this.metadataCsum) return this.dev.read(gd.blockBitmap);
    return this.dev.readVerified(gd.blockBitmap, (buf) => {
      const csum = bitmapChecksum(this.csumSeed, buf.subarray(0, this.blocksPerGroup / 8), this.descSize);
      if (csum !== gd.blockBitmapCsum) throw new CorruptionError(`block bitmap of group ${g} (block ${gd.blockBitmap}) checksum mismatch`);
    });
  }

  private initBlockBitmap(g: number, buf: Buffer): Buffer {
    buf.fill(0);
    const first = this.groupFirstBlock(g);
    const n = groupBaseMetaBlocks(g, this.sb); // superblock backup, descriptor blocks, reserve
    for (let i = 0; i < n; i++) setBit(buf, i);
    for (let og = 0; og < this.groupCount; og++) {
      const gd = this.gds[og];
      const mark = (b: number, count: number) => {
        for (let k = 0; k < count; k++) {
          const rel = b + k - first;
          if (rel >= 0 && rel < this.blocksPerGroup) setBit(buf, rel);
        }
      };
      mark(gd.blockBitmap, 1);
      mark(gd.inodeBitmap, 1);
      mark(gd.inodeTable, Math.ceil((this.inodesPerGroup * this.inodeSize) / this.blockSize));
    }
    // Bits past the last block of the last group, and past blocks_per_group, are set.
    for (let i = this.blocksInGroup(g); i < this.blockSize * 8; i++) setBit(buf, i);
    return buf;
  }

  private async inodeBitmap(g: number, forWrite: boolean): Promise<Buffer> {
    const gd = this.gds[g];
    if (gd.flags & BG_INODE_UNINIT) {
      const buf = forWrite ? this.dev.zeroed(gd.inodeBitmap) : Buffer.alloc(this.blockSize);
      for (let i = this.inodesPerGroup; i < this.blockSize * 8; i++) setBit(buf, i);
      if (forWrite) {
        gd.flags &= ~BG_INODE_UNINIT;
        this.dev.markDirty(gd.inodeBitmap, buf);
        this.updateBitmapChecksums(g, undefined, buf);
      }
      return buf;
    }
    if (!this.metadataCsum) return this.dev.read(gd.inodeBitmap);
    return this.dev.readVerified(gd.inodeBitmap, (buf) => {
      const csum = bitmapChecksum(this.csumSeed, buf.subarray(0, this.inodesPerGroup / 8), this.descSize);
      if (csum !== gd.inodeBitmapCsum) throw new CorruptionError(`inode bitmap of group ${g} (block ${gd.inodeBitmap}) checksum mismatch`);
    });
  }

  /**
   * Group g's block and/or inode bitmap changed (`block`, `inode`: the changed bitmap's buffer).
   * Their checksums in the descriptor are computed when the descriptors are written, once per
   * commit, not on every allocation (a crc32c over up to a block each time): a bitmap changed
   * since the last commit is dirty, so it stays cached and nothing verifies it meanwhile.
   */
  private updateBitmapChecksums(g: number, block?: Buffer, inode?: Buffer): void {
    if (this.metadataCsum) {
      let stale = this.staleBitmapCsums.get(g);
      if (!stale) this.staleBitmapCsums.set(g, (stale = { block: null, inode: null }));
      if (block) stale.block = block;
      if (inode) stale.inode = inode;
    }
    this.markGroupDirty(g);
  }

  /** Bitmaps whose checksums writeGroupDescs must compute, per group (see updateBitmapChecksums). */
  private staleBitmapCsums = new Map<number, { block: Buffer | null; inode: Buffer | null }>();

  // ---- block allocation ----

  /**
   * Allocate up to `count` contiguous blocks, starting the search at `goal`. Returns the first
   * free run found at or after the goal (wrapping around), at least 1 block; ENOSPC when full.
   */
  async allocBlocks(goal: number, count: number): Promise<BlockRun> {
    this.assertWritable();
    if (this.freeBlocksTotal <= 0) throw new FsError('ENOSPC', 'no free blocks left in the filesystem');
    if (!(goal >= this.firstDataBlock && goal < this.blocksCount)) goal = this.firstDataBlock;
    const run = await this.tryAllocBlocks(goal, count, false);
    if (run) return run;
    // Only blocks freed by the uncommitted transaction are left. Taking one breaks the
    // guarantee that a crash brings the freeing back intact; a full disk leaves no better choice.
    if (this.busy.size) {
      log.debug('allocating blocks freed by the running transaction (filesystem nearly full)');
      const r = await this.tryAllocBlocks(goal, count, true);
      if (r) return r;
    }
    throw new FsError('ENOSPC', 'no free blocks left in the filesystem');
  }

  private async tryAllocBlocks(goal: number, count: number, ignoreBusy: boolean): Promise<BlockRun | null> {
    const g0 = this.groupOfBlock(goal);
    for (let i = 0; i <= this.groupCount; i++) {
      const g = (g0 + i) % this.groupCount;
      const gd = this.gds[g];
      if (gd.freeBlocks === 0) continue;
      const start = i === 0 ? goal - this.groupFirstBlock(g) : 0;
      let bm = await this.blockBitmap(g, false);
      const busy = ignoreBusy ? undefined : this.busy.get(g);
      if (busy) {
        bm = Buffer.from(bm);
        for (let k = 0; k < bm.length; k++) bm[k] |= busy[k];
      }
      const limit = this.blocksInGroup(g);
      let bit = findZero(bm, start, limit);
      if (bit < 0 && i === 0 && start > 0) bit = findZero(bm, 0, limit);
      if (bit < 0) continue;
      let end = bit + 1;
      while (end < limit && end - bit < count && !testBit(bm, end)) end++;
      const wbm = await this.blockBitmap(g, true);
      for (let b = bit; b < end; b++) setBit(wbm, b);
      const len = end - bit;
      gd.freeBlocks -= len;
      this.freeBlocksTotal -= len;
      this.dev.markDirty(gd.blockBitmap, wbm);
      this.updateBitmapChecksums(g, wbm);
      this.countersDirty = true;
      const startBlock = this.groupFirstBlock(g) + bit;
      this.dev.forgetRange(startBlock, len);
      return { start: startBlock, len };
    }
    return null;
  }

  /** Allocate exactly `count` blocks as one or more runs. */
  async allocBlockRuns(goal: number, count: number): Promise<BlockRun[]> {
    const runs: BlockRun[] = [];
    let left = count;
    try {
      while (left > 0) {
        const r = await this.allocBlocks(goal, left);
        runs.push(r);
        left -= r.len;
        goal = r.start + r.len;
      }
    } catch (e) {
      for (const r of runs) await this.freeBlocks(r.start, r.len);
      throw e;
    }
    return runs;
  }

  async freeBlocks(start: number, len: number): Promise<void> {
    this.assertWritable();
    if (len <= 0) return;
    if (start < this.firstDataBlock || start + len > this.blocksCount) throw new CorruptionError(`freeing blocks ${start}+${len} outside the filesystem`);
    this.journal?.revokeRange(start, len);
    let b = start;
    const end = start + len;
    while (b < end) {
      const g = this.groupOfBlock(b);
      const gEnd = Math.min(end, this.groupFirstBlock(g) + this.blocksInGroup(g));
      const bm = await this.blockBitmap(g, true);
      const gd = this.gds[g];
      let freed = 0;
      for (let x = b; x < gEnd; x++) {
        const bit = x - this.groupFirstBlock(g);
        if (!testBit(bm, bit)) throw new CorruptionError(`block ${x} freed twice (bitmap of group ${g} already shows it free)`);
        clearBit(bm, bit);
        freed++;
      }
      if (this.journal) {
        let busy = this.busy.get(g);
        if (!busy) this.busy.set(g, (busy = Buffer.alloc(this.blockSize)));
        for (let x = b; x < gEnd; x++) setBit(busy, x - this.groupFirstBlock(g));
      }
      gd.freeBlocks += freed;
      this.freeBlocksTotal += freed;
      this.dev.markDirty(gd.blockBitmap, bm);
      this.updateBitmapChecksums(g, bm);
      this.dev.forgetRange(b, gEnd - b);
      b = gEnd;
    }
    this.countersDirty = true;
  }

  // ---- inode allocation ----

  /** Allocate an inode: directories spread out (Orlov-like), others near their parent. */
  async allocInode(parentIno: number, isDir: boolean): Promise<number> {
    this.assertWritable();
    if (this.freeInodesTotal <= 0) throw new FsError('ENOSPC', 'no free inodes left in the filesystem');
    const order = this.inodeGroupOrder(parentIno, isDir);
    for (const g of order) {
      const gd = this.gds[g];
      if (gd.freeInodes === 0) continue;
      const bm = await this.inodeBitmap(g, true);
      const firstBit = g === 0 ? this.sb.s_first_ino - 1 : 0;
      const bit = findZero(bm, firstBit, this.inodesPerGroup);
      if (bit < 0) continue;
      setBit(bm, bit);
      gd.freeInodes--;
      this.freeInodesTotal--;
      if (isDir) gd.usedDirs++;
      // bg_itable_unused: inodes past the highest ever used are known-free (uninit_bg).
      const used = this.inodesPerGroup - gd.itableUnused;
      if (bit + 1 > used) gd.itableUnused = this.inodesPerGroup - (bit + 1);
      if (gd.flags & BG_BLOCK_UNINIT) await this.blockBitmap(g, true);
      this.dev.markDirty(gd.inodeBitmap, bm);
      this.updateBitmapChecksums(g, undefined, bm);
      this.countersDirty = true;
      const ino = g * this.inodesPerGroup + bit + 1;
      this.startTableBlockIfUnused(ino, bm, bit);
      return ino;
    }
    throw new FsError('ENOSPC', 'no free inodes left in the filesystem');
  }

  /**
   * A new inode whose table block holds no other inode in use (per the bitmap `bm`, where its
   * own bit is already set) starts that block zeroed in the cache instead of reading it when the
   * inode is first written: the kernel does the same (__ext4_get_inode_loc's in_mem case). Files
   * created one after another fill a fresh table block every blockSize / inodeSize inodes, and
   * each such read was a cold read of the image (~10 µs of a ~100 µs kfsd create, more on disk).
   * Only for a block not cached: a cached one may hold a freed inode's last write, kept as is.
   */
  private startTableBlockIfUnused(ino: number, bm: Buffer, bit: number): void {
    const { block } = this.inodeLocation(ino);
    if (this.dev.cached(block)) return;
    const perBlock = this.blockSize / this.inodeSize;
    const first = bit - (bit % perBlock);
    for (let b = first; b < first + perBlock; b++) if (b !== bit && testBit(bm, b)) return;
    this.dev.zeroed(block);
  }

  private inodeGroupOrder(parentIno: number, isDir: boolean): number[] {
    const n = this.groupCount;
    const parentGroup = Math.min(this.groupOfInode(parentIno), n - 1);
    const order: number[] = [];
    if (isDir && parentIno === 2 && n > 1) {
      // Orlov for top-level directories: the group with most free blocks among those with
      // at least average free inodes, so top-level trees spread over the disk.
      const avgInodes = this.freeInodesTotal / n;
      let best = -1;
      for (let g = 0; g < n; g++) {
        const gd = this.gds[g];
        if (gd.freeInodes < avgInodes || gd.freeInodes === 0) continue;
        if (best < 0 || gd.freeBlocks > this.gds[best].freeBlocks || (gd.freeBlocks === this.gds[best].freeBlocks && gd.usedDirs < this.gds[best].usedDirs)) best = g;
      }
      if (best >= 0) order.push(best);
    }
    for (let i = 0; i < n; i++) order.push((parentGroup + i) % n);
    return order;
  }

  async freeInode(ino: number, isDir: boolean): Promise<void> {
    this.assertWritable();
    const g = this.groupOfInode(ino);
    const bit = (ino - 1) % this.inodesPerGroup;
    const bm = await this.inodeBitmap(g, true);
    if (!testBit(bm, bit)) throw new CorruptionError(`inode ${ino} freed twice`);
    clearBit(bm, bit);
    const gd = this.gds[g];
    gd.freeInodes++;
    this.freeInodesTotal++;
    if (isDir) gd.usedDirs = Math.max(0, gd.usedDirs - 1);
    this.dev.markDirty(gd.inodeBitmap, bm);
    this.updateBitmapChecksums(g, undefined, bm);
    this.countersDirty = true;
  }

  // ---- inode table ----

  /** The inode table block holding inode `ino`. */
  inodeTableBlock(ino: number): number {
    return this.inodeLocation(ino).block;
  }

  private inodeLocation(ino: number): { block: number; offset: number } {
    if (!Number.isInteger(ino) || ino < 1 || ino > this.sb.s_inodes_count) throw new FsError('ESTALE', `inode ${ino} out of range`);
    const g = this.groupOfInode(ino);
    const byte = ((ino - 1) % this.inodesPerGroup) * this.inodeSize;
    return { block: this.gds[g].inodeTable + Math.floor(byte / this.blockSize), offset: byte % this.blockSize };
  }

  async readInode(ino: number): Promise<Inode> {
    const { block, offset } = this.inodeLocation(ino);
    return this.decodeInode(ino, await this.dev.read(block), offset);
  }

  /** readInode when the inode's table block is cached (no I/O); null when it is not. */
  readInodeCached(ino: number): Inode | null {
    const { block, offset } = this.inodeLocation(ino);
    const buf = this.dev.cached(block);
    return buf && this.decodeInode(ino, buf, offset);
  }

  /** The inode at `offset` of its table block `buf`, its checksum and extra size checked. */
  private decodeInode(ino: number, buf: Buffer, offset: number): Inode {
    const raw = buf.subarray(offset, offset + this.inodeSize);
    if (this.metadataCsum && !verifyInodeChecksum(raw, ino, this.csumSeed)) {
      if (!raw.every((x) => x === 0)) throw new CorruptionError(`inode ${ino} checksum mismatch`);
    }
    const inode = Inode.decode(ino, raw);
    if (this.inodeSize > 128 && (inode.f.i_extra_isize > this.inodeSize - 128 || inode.f.i_extra_isize % 4)) {
      throw new CorruptionError(`inode ${ino} has impossible i_extra_isize ${inode.f.i_extra_isize}`);
    }
    return inode;
  }

  async writeInode(inode: Inode): Promise<void> {
    this.assertWritable();
    const { block, offset } = this.inodeLocation(inode.ino);
    this.putInode(inode, await this.dev.read(block), block, offset);
  }

  /** writeInode at once when the inode's table block is cached; false (nothing written) when it is not. */
  writeInodeCached(inode: Inode): boolean {
    this.assertWritable();
    const { block, offset } = this.inodeLocation(inode.ino);
    const buf = this.dev.cached(block);
    if (!buf) return false;
    this.putInode(inode, buf, block, offset);
    return true;
  }

  private putInode(inode: Inode, buf: Buffer, block: number, offset: number): void {
    inode.encode();
    if (this.metadataCsum) setInodeChecksum(inode, this.csumSeed);
    inode.raw.copy(buf, offset);
    this.dev.markDirty(block, buf);
  }

  /** A zeroed in-memory inode for a freshly allocated number (generation random). */
  newInode(ino: number): Inode {
    const extra = Math.max(32, this.sb.s_want_extra_isize);
    const inode = Inode.fresh(ino, this.inodeSize, Math.min(extra, this.inodeSize - 128));
    inode.f.i_generation = this.randomU32();
    return inode;
  }

  private randomPool = Buffer.alloc(0);
  private randomPos = 0;
  /** Inode generations: random, drawn from a pool (one getrandom per 1024 inodes). */
  private randomU32(): number {
    if (this.randomPos + 4 > this.randomPool.length) {
      this.randomPool = randomBytes(4096);
      this.randomPos = 0;
    }
    const v = this.randomPool.readUInt32LE(this.randomPos);
    this.randomPos += 4;
    return v;
  }

  /** crc32c seed for per-inode structures (extent blocks, directory blocks). */
  inodeCsumSeed(inode: Inode): number {
    return inode.csumSeed(this.csumSeed);
  }

  // ---- sync ----

  /**
   * Commit the changes. `soft`: a log-only journal commit (no barrier; survives the death of
   * this process, not a power loss; see Journal.commit), or without a journal the dirty blocks
   * written in place with no barrier.
   */
  async sync(opts: { fsync?: boolean; clean?: boolean; soft?: boolean } = {}): Promise<void> {
    if (this.readOnly) return;
    if (this.journal && !this.isDirty && opts.clean === undefined && (opts.soft || !this.journal.softPending)) {
      // Nothing to commit (an idle periodic commit, or fsync after data-only overwrites):
      // no transaction, only the barrier that makes file data durable.
      if (opts.fsync !== false && !opts.soft) await this.dev.barrier();
      return;
    }
    if (this.dirtyGroups.size) await this.writeGroupDescs();
    if (this.sbDirty || opts.clean !== undefined || (this.countersDirty && !opts.soft)) await this.writeSuperblock(opts.clean);
    if (this.journal) {
      // Blocks freed stay busy until the freeing is durable (a soft commit may be lost).
      if (await this.journal.commit(!!opts.soft && opts.clean === undefined)) this.busy.clear();
    } else if (opts.fsync === false || opts.soft) await this.dev.flush();
    else await this.dev.sync();
  }

  /**
   * Dirty blocks at which the filesystem layer should sync: a transaction must fit the journal
   * (Infinity without one).
   */
  get maxDirtyBlocks(): number {
    return this.journal ? this.journal.maxTransactionBlocks : Infinity;
  }

  /** Write the superblock straight to the image (outside any transaction) and make it durable. */
  private async writeSuperblockInPlace(): Promise<void> {
    await this.dev.writeAt(encodeSuperblock(this.sb), SUPERBLOCK_OFFSET);
    this.dev.forget(Math.floor(SUPERBLOCK_OFFSET / this.blockSize));
    await this.dev.barrier();
  }

  private async writeSuperblock(clean?: boolean): Promise<void> {
    const sb = this.sb;
    sb.s_free_blocks_count_lo = lo32(this.freeBlocksTotal);
    sb.s_free_blocks_count_hi = hi32(this.freeBlocksTotal);
    sb.s_free_inodes_count = this.freeInodesTotal;
    const now = Math.floor(Date.now() / 1000);
    sb.s_wtime = lo32(now);
    sb.s_wtime_hi = hi32(now) & 0xff;
    if (clean !== undefined) sb.s_state = clean ? sb.s_state | STATE_VALID : sb.s_state & ~STATE_VALID;
    const raw = encodeSuperblock(sb);
    // Byte 1024: block 1 with 1 KiB blocks, inside block 0 otherwise.
    const block = Math.floor(SUPERBLOCK_OFFSET / this.blockSize);
    const buf = await this.dev.read(block);
    raw.copy(buf, SUPERBLOCK_OFFSET % this.blockSize);
    this.dev.markDirty(block, buf);
    this.sbDirty = false;
    this.countersDirty = false;
  }

  /** A superblock field other than the free counts was changed (e.g. s_last_orphan). */
  superblockChanged(): void {
    this.sbDirty = true;
  }

  /** Mark the filesystem mounted (state not clean) and count the mount, as the kernel does. */
  async markMounted(): Promise<void> {
    if (this.readOnly) return;
    const now = Math.floor(Date.now() / 1000);
    this.sb.s_mtime = lo32(now);
    this.sb.s_mtime_hi = hi32(now) & 0xff;
    this.sb.s_mnt_count = (this.sb.s_mnt_count + 1) & 0xffff;
    this.sbDirty = true;
    // With a journal the state stays valid while mounted (needs_recovery covers a crash), as
    // the kernel leaves it; without one, "not clean" until a clean close.
    await this.sync({ clean: this.journal ? undefined : false });
  }

  /**
   * Run fn at a clean point of the image (a snapshot is taken there): everything committed and
   * written home, the journal checkpointed and marked empty (s_start 0), the superblock written
   * without needs_recovery: what a clean unmount leaves. Then the journal restarts and
   * needs_recovery travels in its first transaction again (as at mount). The caller holds off
   * every other change meanwhile (Ext4Fs.atCleanPoint).
   */
  async atCleanPoint<T>(fn: () => Promise<T>): Promise<T> {
    this.assertWritable();
    await this.sync({ clean: true });
    const hadJournal = this.journal !== null;
    if (this.journal) {
      this.sb.s_feature_incompat &= ~INCOMPAT.recover;
      await this.writeSuperblockInPlace();
      await this.journal.close();
      this.journal = null;
    } else await this.dev.sync();
    try {
      return await fn();
    } finally {
      if (hadJournal) {
        this.journal = await Journal.start(this.dev, this.sb);
        if (this.sharedLog) this.journal.useSharedLog(this.sharedLog, null);
        this.sb.s_feature_incompat |= INCOMPAT.recover;
        this.sbDirty = true;
      } else await this.sync({ clean: false });
    }
  }

  /** Idle for a commit interval: give back the memory of the shared log's records (SharedSoftLog.releaseIfIdle). */
  releaseIdleMemory(): void {
    if (this.sharedLog?.releaseIfIdle()) log.debug(`${this.dev.path}: idle; the shared log's memory was given back`);
  }

  get isDirty(): boolean {
    return this.sbDirty || this.dirtyGroups.size > 0 || this.dev.dirtyBlocks > 0;
  }

  async close(): Promise<void> {
    if (!this.readOnly) {
      await this.sync({ clean: true });
      if (this.journal) {
        // needs_recovery is cleared before the log is marked empty (ext4_put_super does it
        // after): a torn superblock write is then still repaired from the log. A crash between
        // the two leaves a log of transactions already home and no flag: it is wiped at open,
        // as ext4_load_journal does.
        this.sb.s_feature_incompat &= ~INCOMPAT.recover;
        await this.writeSuperblockInPlace();
        await this.journal.close();
        this.journal = null;
      }
    }
    await this.dev.close();
  }

  /**
   * Damage found during a change: stop writing. Unsynced metadata is dropped rather than
   * written, since the change that hit the damage may be half-applied.
   */
  fallBackToReadOnly(why: string): void {
    if (this.readOnly) return;
    this.readOnly = true;
    this.readOnlyReason = `read-only after detecting corruption (${why}); run kfs fsck`;
  }

  assertWritable(): void {
    if (this.readOnly) throw new FsError('EROFS', this.readOnlyReason ?? 'filesystem is mounted read-only');
  }

  hasJournal(): boolean {
    return this.hasCompat(COMPAT.has_journal);
  }
}

export function testBit(bm: Buffer, bit: number): boolean {
  return (bm[bit >>> 3] & (1 << (bit & 7))) !== 0;
}
export function setBit(bm: Buffer, bit: number): void {
  bm[bit >>> 3] |= 1 << (bit & 7);
}
export function clearBit(bm: Buffer, bit: number): void {
  bm[bit >>> 3] &= ~(1 << (bit & 7));
}
/** First clear bit in [from, limit), or -1. Skips full bytes quickly. */
export function findZero(bm: Buffer, from: number, limit: number): number {
  let bit = from;
  while (bit < limit) {
    if ((bit & 7) === 0) {
      let byte = bit >>> 3;
      const lastByte = (limit - 1) >>> 3;
      while (byte <= lastByte && bm[byte] === 0xff) byte++;
      bit = byte << 3;
      if (bit >= limit) return -1;
    }
    if (!testBit(bm, bit)) return bit;
    bit++;
  }
  return -1;
}

/**
 * A restarted server's open, after the journal's replay: the blocks its dead predecessor
 * committed to the shared log go back into the cache as dirty blocks (the open's first durable
 * commit logs them), unless a durable commit already took them over (the committing mark with
 * its commit block in the log). Returns what was applied and the superblock as the shared log
 * has it (or as read, if it has no copy); null when there was nothing to apply.
 */
async function applySharedLog(dev: BlockDevice, shared: SharedSoftLog): Promise<{ found: SharedLogContents; sb: SuperblockFields } | null> {
  const found = shared.contents(dev.blockSize);
  if (!found) return null;
  if (found.committing && (await isCommitBlockOf(dev, found.committing.pblk, found.committing.seq))) {
    log.info(`${dev.path}: shared log already in the journal (transaction ${found.committing.seq}); not applied`);
    return null;
  }
  for (const [b, buf] of found.blocks) dev.markDirty(b, buf);
  log.info(`${dev.path}: applied ${found.records} log-only commit(s) of the previous server from the shared log (${found.blocks.size} blocks)`);
  const bs = dev.blockSize;
  const sbCopy = found.blocks.get(Math.floor(SUPERBLOCK_OFFSET / bs));
  const raw = Buffer.alloc(SUPERBLOCK_SIZE);
  if (sbCopy) sbCopy.copy(raw, 0, SUPERBLOCK_OFFSET % bs);
  else await dev.readAt(raw, SUPERBLOCK_OFFSET);
  return { found, sb: checkSuperblock(dev, raw) };
}
