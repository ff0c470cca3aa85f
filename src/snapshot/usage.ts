/**
 * Which blocks a snapshot's filesystem uses, from the snapshot's own view of its group
 * descriptors and block bitmaps (both copy-on-write protected like any block in use, so the
 * view is exact). A block free in every snapshot that would still see it needs no copy when it
 * is overwritten: new files written into free space cost the snapshots nothing.
 *
 * BLOCK_UNINIT groups have no bitmap on disk: as ext4_init_block_bitmap, their used blocks are
 * the superblock backup and descriptor table copies at the group's start (sparse_super) and
 * any group's bitmaps and inode table placed inside the group (flex_bg).
 */
import { SuperblockLayout, SuperblockFields, INCOMPAT, sbBlocksCount, sbGroupCount, groupBaseMetaBlocks, groupDescLocation, SUPERBLOCK_SIZE } from '../ext4/superblock';
import { GroupDesc, decodeGroupDesc, BG_BLOCK_UNINIT } from '../ext4/group-desc';

export class FsGeometry {
  readonly blockSize: number;
  readonly blocksCount: number;
  readonly firstDataBlock: number;
  readonly blocksPerGroup: number;
  readonly inodesPerGroup: number;
  readonly inodeSize: number;
  readonly descSize: number;
  readonly groupCount: number;
  readonly inodeTableBlocks: number;

  constructor(readonly sb: SuperblockFields) {
    this.blockSize = 1024 << sb.s_log_block_size;
    this.blocksCount = sbBlocksCount(sb);
    this.firstDataBlock = sb.s_first_data_block;
    this.blocksPerGroup = sb.s_blocks_per_group;
    this.inodesPerGroup = sb.s_inodes_per_group;
    this.inodeSize = sb.s_rev_level === 0 ? 128 : sb.s_inode_size;
    this.descSize = sb.s_feature_incompat & INCOMPAT['64bit'] ? sb.s_desc_size : 32;
    this.groupCount = sbGroupCount(sb);
    this.inodeTableBlocks = Math.ceil((this.inodesPerGroup * this.inodeSize) / this.blockSize);
  }

  /** From the raw superblock bytes (magic checked, checksum not: a torn write keeps the geometry). */
  static fromRaw(raw: Buffer): FsGeometry | null {
    if (raw.length < SUPERBLOCK_SIZE) return null;
    const sb = SuperblockLayout.decode(raw.subarray(0, SUPERBLOCK_SIZE));
    if (sb.s_magic !== 0xef53 || sb.s_log_block_size > 6 || !sb.s_blocks_per_group || !sb.s_inodes_per_group) return null;
    return new FsGeometry(sb);
  }

  get gdtBlocks(): number {
    return Math.ceil(this.groupCount / (this.blockSize / this.descSize));
  }

  groupOf(block: number): number {
    return Math.floor((block - this.firstDataBlock) / this.blocksPerGroup);
  }

  groupFirst(g: number): number {
    return this.firstDataBlock + g * this.blocksPerGroup;
  }

  blocksInGroup(g: number): number {
    return g === this.groupCount - 1 ? this.blocksCount - this.groupFirst(g) : this.blocksPerGroup;
  }

  /** Descriptor block i of the primary copy (after the superblock, or in its meta group with meta_bg). */
  gdtBlock(i: number): number {
    return groupDescLocation(i * (this.blockSize / this.descSize), this.sb).block;
  }

  decodeGdt(blocks: Buffer[]): GroupDesc[] {
    const perBlock = this.blockSize / this.descSize;
    const out: GroupDesc[] = [];
    for (let g = 0; g < this.groupCount; g++) out.push(decodeGroupDesc(blocks[Math.floor(g / perBlock)], (g % perBlock) * this.descSize, this.descSize));
    return out;
  }

  /**
   * The used-blocks bitmap of group g (bit i = block groupFirst(g) + i), given the view's
   * descriptors and a way to read the view's bitmap block.
   */
  usedBitmap(g: number, gds: GroupDesc[], readBlock: (block: number) => Buffer): Buffer {
    const gd = gds[g];
    if (!(gd.flags & BG_BLOCK_UNINIT)) {
      if (gd.blockBitmap < this.firstDataBlock || gd.blockBitmap >= this.blocksCount) return allUsed(this.blockSize);
      return Buffer.from(readBlock(gd.blockBitmap));
    }
    const buf = Buffer.alloc(this.blockSize);
    const first = this.groupFirst(g);
    for (let i = 0, n = groupBaseMetaBlocks(g, this.sb); i < n; i++) setBit(buf, i);
    const mark = (b: number, count: number) => {
      for (let k = 0; k < count; k++) {
        const rel = b + k - first;
        if (rel >= 0 && rel < this.blocksPerGroup) setBit(buf, rel);
      }
    };
    for (const d of gds) {
      mark(d.blockBitmap, 1);
      mark(d.inodeBitmap, 1);
      mark(d.inodeTable, this.inodeTableBlocks);
    }
    return buf;
  }
}

/** Entries of the used-bitmap cache (per snapshot and group; each one block). */
const USAGE_CACHE_MAX = 4096;

/**
 * Used-block bitmaps of snapshots' views, cached: a snapshot's view never changes, so neither
 * does what it uses (entries are dropped only when the store forgets snapshots).
 */
export class ViewUsage {
  private bitmaps = new Map<string, Buffer>();
  private gds = new Map<number, GroupDesc[]>();

  constructor(private geo: FsGeometry) {}

  /** Is block b in use in snapshot `id`'s view (read through readBlock)? */
  used(id: number, b: number, readBlock: (block: number) => Buffer): boolean {
    const geo = this.geo;
    if (b < geo.firstDataBlock) return true;
    const g = geo.groupOf(b);
    const key = `${id}:${g}`;
    let bm = this.bitmaps.get(key);
    if (!bm) {
      let gds = this.gds.get(id);
      if (!gds) {
        const blocks: Buffer[] = [];
        for (let k = 0; k < geo.gdtBlocks; k++) blocks.push(readBlock(geo.gdtBlock(k)));
        gds = geo.decodeGdt(blocks);
        this.gds.set(id, gds);
      }
      bm = geo.usedBitmap(g, gds, readBlock);
      if (this.bitmaps.size >= USAGE_CACHE_MAX) this.bitmaps.delete(this.bitmaps.keys().next().value as string);
      this.bitmaps.set(key, bm);
    }
    return testBit(bm, b - geo.groupFirst(g));
  }

  clear(): void {
    this.bitmaps.clear();
    this.gds.clear();
  }
}


function allUsed(bs: number): Buffer {
  return Buffer.alloc(bs, 0xff);
}

export function testBit(bm: Buffer, bit: number): boolean {
  return (bm[bit >>> 3] & (1 << (bit & 7))) !== 0;
}

function setBit(bm: Buffer, bit: number): void {
  bm[bit >>> 3] |= 1 << (bit & 7);
}
