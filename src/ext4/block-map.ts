/**
 * The block map: what every block of the volume holds, summarized into cells of N blocks for
 * drawing (kfsctl map --svg).
 *
 * A block's class comes from, in order (later wins):
 *   1. the block bitmap: free, or used ("unowned" until an owner below claims it);
 *   2. the geometry: boot block, superblock copies with their descriptor table and reserved
 *      GDT blocks (sparse_super: groups 0, 1, powers of 3, 5, 7), block and inode bitmaps,
 *      inode tables (from the group descriptors, wherever flex_bg put them);
 *   3. the inodes in use (inode bitmaps): the journal (inode 8), the resize inode's
 *      double-indirect block, xattr blocks (i_file_acl), extent-tree index/leaf blocks,
 *      directory blocks and file data; file data carries its file's fragmentation score.
 * Blocks an owner claims that the bitmap calls free are counted in `inconsistent` (a change in
 * flight on a live filesystem, or damage e2fsck would report).
 */
import { CorruptionError } from '../util/errors';
import { BG_BLOCK_UNINIT, BG_INODE_UNINIT } from './group-desc';
import { JOURNAL_INO, RESIZE_INO, ROOT_INO } from './inode';
import { InodeStore } from './inode-store';
import { groupBaseMetaBlocks } from './superblock';
import { Volume } from './volume';
import { measureFile, readFileExtents, readInodeView } from './fragmentation';

export const BLOCK_CLASSES = ['free', 'superblock', 'bitmap', 'inode-table', 'journal', 'extent-tree', 'directory', 'xattr', 'file', 'unowned'] as const;
export type BlockClass = (typeof BLOCK_CLASSES)[number];
const C = Object.fromEntries(BLOCK_CLASSES.map((c, i) => [c, i])) as Record<BlockClass, number>;

export interface BlockMapSummary {
  blockSize: number;
  blocks: number;
  blocksPerCell: number;
  classes: BlockClass[];
  /** Per cell, blocks of each class (same order as `classes`); the last cell may be short. */
  counts: number[][];
  /** Per cell, the highest fragmentation score (0..100) of the files whose data it holds; -1 without any. */
  fileScore: number[];
  totals: Record<BlockClass, number>;
  inconsistent: number;
  inodesScanned: number;
  /** Inodes whose metadata could not be read, with the reason. */
  damaged: { ino: number; error: string }[];
}

export interface BlockMapOptions {
  /** Most cells to produce (default 4096). */
  maxCells?: number;
  progress?: (done: number, total: number) => void;
}

export async function buildBlockMap(store: InodeStore, opts: BlockMapOptions = {}): Promise<BlockMapSummary> {
  const vol = store.vol;
  const blocks = vol.blocksCount;
  const cls = new Uint8Array(blocks);
  // Per block, the fragmentation score of the file owning it (file data only).
  const score = new Uint8Array(blocks);
  let inconsistent = 0;
  const claim = (start: number, len: number, c: number, s = 0): void => {
    const end = Math.min(blocks, start + len);
    for (let b = Math.max(0, start); b < end; b++) {
      if (cls[b] === C.free && c !== C.free) inconsistent++;
      cls[b] = c;
      score[b] = s;
    }
  };

  // 1. bitmaps
  for (let g = 0; g < vol.groupCount; g++) {
    const gd = vol.gds[g];
    if (gd.flags & BG_BLOCK_UNINIT) continue; // only its metadata is used; step 2 marks that
    const bitmap = await vol.dev.read(gd.blockBitmap);
    const first = vol.groupFirstBlock(g);
    const n = vol.blocksInGroup(g);
    for (let i = 0; i < n; i++) if (bitmap[i >> 3] & (1 << (i & 7))) cls[first + i] = C.unowned;
  }
  // 2. geometry (owned by the filesystem whatever the bitmap says: no inconsistency counted)
  const meta = (start: number, len: number, c: number) => {
    for (let b = start; b < Math.min(blocks, start + len); b++) cls[b] = c;
  };
  meta(0, vol.firstDataBlock, C.superblock);
  const itableBlocks = Math.ceil((vol.inodesPerGroup * vol.inodeSize) / vol.blockSize);
  for (let g = 0; g < vol.groupCount; g++) {
    const gd = vol.gds[g];
    meta(vol.groupFirstBlock(g), groupBaseMetaBlocks(g, vol.sb), C.superblock);
    meta(gd.blockBitmap, 1, C.bitmap);
    meta(gd.inodeBitmap, 1, C.bitmap);
    meta(gd.inodeTable, itableBlocks, C['inode-table']);
  }

  // 3. inodes
  const total = Math.max(1, vol.inodesCount - vol.freeInodeCount);
  const damaged: { ino: number; error: string }[] = [];
  let scanned = 0;
  const firstIno = vol.sb.s_rev_level === 0 ? 11 : vol.sb.s_first_ino;
  for (let g = 0; g < vol.groupCount; g++) {
    const gd = vol.gds[g];
    if (gd.flags & BG_INODE_UNINIT) continue;
    const bitmap = await vol.dev.read(gd.inodeBitmap);
    for (let i = 0; i < vol.inodesPerGroup; i++) {
      if (!(bitmap[i >> 3] & (1 << (i & 7)))) continue;
      const ino = g * vol.inodesPerGroup + i + 1;
      if (ino < firstIno && ino !== ROOT_INO && ino !== JOURNAL_INO && ino !== RESIZE_INO) continue;
      scanned++;
      if (opts.progress && scanned % 512 === 0) opts.progress(Math.min(scanned, total), total);
      try {
        const inode = await readInodeView(store, ino);
        if (inode.mode === 0 && ino !== RESIZE_INO) continue;
        if (ino === RESIZE_INO) {
          // ext2 block map: i_block[13] is the double-indirect block listing the reserved GDT blocks.
          const dind = inode.f.i_block.readUInt32LE(13 * 4);
          if (dind > 0 && dind < blocks) claim(dind, 1, C.superblock);
          continue;
        }
        const acl = inode.fileAcl;
        if (acl > 0 && acl < blocks) claim(acl, 1, C.xattr);
        const ext = await readFileExtents(store, ino, inode);
        if (!ext) continue;
        const dataClass = ino === JOURNAL_INO ? C.journal : inode.isDir() ? C.directory : C.file;
        for (const b of ext.treeBlocks) claim(b, 1, ino === JOURNAL_INO ? C.journal : C['extent-tree']);
        const s = dataClass === C.file ? Math.round(measureFile(vol, ino, null, inode.size, ext.extents).score) : 0;
        for (const e of ext.extents) claim(e.pblk, e.len, dataClass, s);
      } catch (e) {
        if (!(e instanceof CorruptionError)) throw e;
        damaged.push({ ino, error: e.message });
      }
    }
  }
  opts.progress?.(total, total);
  return summarize(vol, cls, score, inconsistent, scanned, damaged, opts.maxCells ?? 4096);
}

function summarize(vol: Volume, cls: Uint8Array, score: Uint8Array, inconsistent: number, scanned: number, damaged: { ino: number; error: string }[], maxCells: number): BlockMapSummary {
  const blocks = cls.length;
  const perCell = Math.max(1, Math.ceil(blocks / Math.max(1, maxCells)));
  const nCells = Math.ceil(blocks / perCell);
  const counts: number[][] = [];
  const fileScore: number[] = [];
  const totals = Object.fromEntries(BLOCK_CLASSES.map((c) => [c, 0])) as Record<BlockClass, number>;
  for (let cell = 0; cell < nCells; cell++) {
    const row = new Array<number>(BLOCK_CLASSES.length).fill(0);
    let scoreMax = -1;
    const end = Math.min(blocks, (cell + 1) * perCell);
    for (let b = cell * perCell; b < end; b++) {
      row[cls[b]]++;
      if (cls[b] === C.file && score[b] > scoreMax) scoreMax = score[b];
    }
    for (let k = 0; k < row.length; k++) totals[BLOCK_CLASSES[k]] += row[k];
    counts.push(row);
    fileScore.push(scoreMax);
  }
  return {
    blockSize: vol.blockSize, blocks, blocksPerCell: perCell, classes: [...BLOCK_CLASSES], counts, fileScore, totals,
    inconsistent, inodesScanned: scanned, damaged,
  };
}
