/**
 * mkfs geometry: everything about a new filesystem that follows from the options and the size,
 * computed without I/O. It reproduces e2fsprogs 1.47.0 (Debian 12) so that `kfs mkfs` and
 * `mkfs.ext4 -O ^resize_inode` give the same block size, group size, inode count, table placement
 * and journal placement:
 *
 *  - size type (misc/mke2fs.c parse_fs_type): < 3 MiB "floppy", < 512 MiB "small", < 4 TiB
 *    default, < 16 TiB "big", else "huge"; mke2fs.conf gives block size 1024 for floppy/small and
 *    4096 otherwise, and bytes-per-inode 8192/4096/16384/32768/65536.
 *  - group geometry (lib/ext2fs/initialize.c ext2fs_initialize): 8 × block-size blocks per group
 *    (less when -N asks for more inodes than a bitmap block can map), inodes per group rounded up
 *    to fill whole inode-table blocks and down to a multiple of 8, a last group shorter than its
 *    overhead + 50 blocks dropped.
 *  - superblock + descriptor copies in groups 0, 1 and powers of 3, 5, 7 (sparse_super).
 *  - bitmaps and inode tables (lib/ext2fs/alloc_tables.c): with flex_bg, packed per flex group of
 *    16 (16 block bitmaps, 16 inode bitmaps, 16 inode tables) at the start of the flex group;
 *    without, in each group after its superblock copy.
 *  - root directory (1 block), lost+found (grown to 16 KiB and at least 2 blocks,
 *    misc/mke2fs.c create_lost_and_found), allocated from the first free block of group 0.
 *  - journal (lib/ext2fs/mkjournal.c): ext2fs_default_journal_size blocks, or -J size=, starting
 *    in the group with the most free blocks next to the middle of the filesystem, in extents of
 *    at most 32768 blocks; beyond 4 extents an extent-tree leaf block just before the first one.
 *
 * The searches behind every placement are mke2fs's own (allocator.ts). Block numbers are plain
 * numbers (exact up to 2^53, far past ext4's 2^48 blocks).
 */
import { FsError } from '../src/util/errors';
import { sparseSuperBackup } from '../src/ext4/superblock';
import { GroupDesc, BG_BLOCK_UNINIT, BG_INODE_UNINIT, BG_INODE_ZEROED } from '../src/ext4/group-desc';
import { BlockSize, FeatureName, FeatureSet } from './options';
import { BlockAllocator } from './allocator';

export const INODE_SIZE = 256;
/** Extra inode bytes in use (sizeof(ext2_inode_large) - 128), as mke2fs sets i_extra_isize. */
export const EXTRA_ISIZE = 32;
export const FIRST_INO = 11;
export const LOST_FOUND_INO = 11;
export const FLEX_BG_SIZE = 16;
/** Longest initialized extent (ext4 EXT_INIT_MAX_LEN). */
export const MAX_EXTENT_LEN = 32768;
/** i_block holds a 12-byte extent header and 4 entries. */
export const INODE_EXTENT_SLOTS = 4;
const MAX_U32 = 0xffffffff;

export type SizeType = 'floppy' | 'small' | 'default' | 'big' | 'huge';

export interface LayoutInput {
  /** Bytes available for the filesystem. */
  sizeBytes: number;
  /** true: the size was given (mke2fs: an explicit block count); false: it is the device's size. */
  sizeExplicit: boolean;
  blockSize?: BlockSize;
  inodes?: number;
  bytesPerInode?: number;
  reservedPercent?: number;
  journalSizeMiB?: number;
  features: FeatureSet;
}

export interface Extent {
  logical: number;
  physical: number;
  length: number;
}

/** Blocks of a file: its extents and, for trees deeper than i_block, the leaf blocks. */
export interface FileBlocks {
  extents: Extent[];
  /** Extent-tree leaf blocks (empty when the extents fit in i_block). */
  leafBlocks: number[];
  /** Data blocks (sum of extent lengths). */
  dataBlocks: number;
}

/** A group's descriptor fields (BG_* flags included) plus where the group is. */
export interface GroupLayout extends Pick<GroupDesc, 'blockBitmap' | 'inodeBitmap' | 'inodeTable' | 'freeBlocks' | 'freeInodes' | 'usedDirs' | 'flags' | 'itableUnused'> {
  index: number;
  firstBlock: number;
  /** Blocks in this group (the last group may be shorter). */
  blocks: number;
  hasSuper: boolean;
  /** The on-disk block bitmap is not written (BLOCK_UNINIT) / the inode bitmap (INODE_UNINIT). */
  blockUninit: boolean;
  inodeUninit: boolean;
}

export interface Layout {
  sizeType: SizeType;
  features: Set<FeatureName>;
  blockSize: number;
  logBlockSize: number;
  blocksCount: number;
  firstDataBlock: number;
  blocksPerGroup: number;
  groupCount: number;
  descSize: number;
  descBlocks: number;
  inodeSize: number;
  inodesPerGroup: number;
  inodesCount: number;
  inodeTableBlocks: number;
  logGroupsPerFlex: number;
  reservedBlocks: number;
  freeBlocks: number;
  freeInodes: number;
  /** s_overhead_clusters as mke2fs 1.47 computes it (metadata + journal + blocks before the first group). */
  overheadBlocks: number;
  groups: GroupLayout[];
  root: FileBlocks;
  lostFound: FileBlocks;
  journal: FileBlocks | null;
  /** Groups holding a superblock copy (0 first). */
  superGroups: number[];
  /** Things mke2fs would print as warnings (e.g. "too small for a journal"). */
  warnings: string[];
  /** The final allocation map, for building the block bitmaps (read it; the layout is done). */
  allocator: BlockAllocator;
}

const tooSmall = (what: string): FsError => new FsError('EINVAL', what);

/** ext2fs_default_journal_size: journal blocks for a filesystem of `blocks` blocks (-1: none). */
export function defaultJournalBlocks(blocks: number): number {
  if (blocks < 2048) return -1;
  if (blocks < 32768) return 1024;
  if (blocks < 256 * 1024) return 4096;
  if (blocks < 512 * 1024) return 8192;
  if (blocks < 4096 * 1024) return 16384;
  if (blocks < 8192 * 1024) return 32768;
  if (blocks < 16384 * 1024) return 65536;
  if (blocks < 32768 * 1024) return 131072;
  return 262144;
}

/** lost+found blocks: grown until 16 KiB and 2 blocks, at most 12 (create_lost_and_found). */
export function lostFoundBlocks(blockSize: number): number {
  let blocks = 1;
  let size = 0;
  for (let i = 1; i < 12; i++) {
    size += blockSize;
    if (size >= 16 * 1024 && size >= 2 * blockSize) break;
    blocks++;
  }
  return blocks;
}

export function sizeTypeOf(blocks: number, unit: number): SizeType {
  const meg = (1024 * 1024) / unit;
  if (blocks < 3 * meg) return 'floppy';
  if (blocks < 512 * meg) return 'small';
  if (blocks < 4 * 1024 * 1024 * meg) return 'default';
  if (blocks < 16 * 1024 * 1024 * meg) return 'big';
  return 'huge';
}

const PROFILE_INODE_RATIO: Record<SizeType, number> = { floppy: 8192, small: 4096, default: 16384, big: 32768, huge: 65536 };
const PROFILE_BLOCK_SIZE: Record<SizeType, BlockSize> = { floppy: 1024, small: 1024, default: 4096, big: 4096, huge: 4096 };

function humanSize(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1 && v % 1024 === 0) {
    v /= 1024;
    u++;
  }
  return `${v} ${units[u]}`;
}

/** Group geometry as ext2fs_initialize settles it. */
interface Geometry {
  blocksCount: number;
  reservedBlocks: number;
  blocksPerGroup: number;
  groupCount: number;
  descBlocks: number;
  inodesPerGroup: number;
  inodeTableBlocks: number;
}

function initializeGeometry(
  bs: number, fdb: number, descSize: number, sparse: boolean,
  paramBlocks: number, paramReserved: number, paramInodes: number, sizeText: string,
): Geometry {
  let bpg = bs * 8;
  let blocks = paramBlocks;
  let reserved = paramReserved;
  const inodesPerBlock = bs / INODE_SIZE;
  for (;;) {
    const groups = Math.ceil((blocks - fdb) / bpg);
    if (groups <= 0) throw tooSmall(`a ${sizeText} filesystem is too small to hold ext4's metadata; use a larger --size (at least 256K)`);
    const descBlocks = Math.ceil(groups / (bs / descSize));
    let inodes = paramInodes || Math.floor(blocks / (bs >= 4096 ? 1 : 4096 / bs));
    if (inodes < FIRST_INO + 1) inodes = FIRST_INO + 1;
    let ipg = Math.ceil(inodes / groups);
    if (ipg > bs * 8) {
      // More inodes than one bitmap block can map: make groups smaller (more of them) and retry.
      if (bpg >= 256) {
        // (ext2fs_initialize resets the block count but not the reserved count: a reserve
        // shrunk by an earlier dropped last group stays shrunk. Kept for identical results.)
        bpg -= 8;
        blocks = paramBlocks;
        continue;
      }
      throw new FsError('EINVAL', `${paramInodes} inodes do not fit in a ${sizeText} filesystem; pass a smaller -N or a larger -i`);
    }
    ipg = Math.min(ipg, 65536 - inodesPerBlock);
    let itb: number;
    let perGroup: number;
    for (;;) {
      itb = Math.ceil((ipg * INODE_SIZE) / bs);
      perGroup = Math.floor((itb * bs) / INODE_SIZE);
      if (perGroup < 8) perGroup = 8;
      perGroup &= ~7;
      itb = Math.ceil((perGroup * INODE_SIZE) / bs);
      if (perGroup * groups <= MAX_U32) break;
      ipg--;
    }
    if (descBlocks > Math.floor((bpg * 3) / 4)) {
      throw new FsError('EINVAL', `a ${sizeText} filesystem needs the meta_bg layout, which kfs mkfs does not create; use a larger block size or a smaller --size`);
    }
    if (3 + itb + descBlocks > bpg) {
      throw new FsError('EINVAL', `the inode tables do not fit in the ${bpg}-block groups of a ${sizeText} filesystem; pass a smaller -N or a larger -i`);
    }
    // A short last group must hold its own metadata plus 50 blocks, or it is dropped.
    const lastHasSuper = sparseSuperBackup(groups - 1, sparse);
    const lastOverhead = 2 + itb + (lastHasSuper ? 1 + descBlocks : 0);
    const rem = (blocks - fdb) % bpg;
    if (groups === 1 && rem && rem < lastOverhead) {
      throw tooSmall(`a ${sizeText} filesystem is too small to hold ext4's metadata (${lastOverhead} blocks of ${bs} bytes); use a larger --size (at least 256K)`);
    }
    if (rem && rem < lastOverhead + 50) {
      blocks -= rem;
      const ratio = (100.0 * paramReserved) / paramBlocks;
      reserved = Math.floor((ratio * blocks) / 100.0);
      continue;
    }
    return { blocksCount: blocks, reservedBlocks: reserved, blocksPerGroup: bpg, groupCount: groups, descBlocks, inodesPerGroup: perGroup, inodeTableBlocks: itb };
  }
}

export function computeLayout(input: LayoutInput): Layout {
  const features = new Set<FeatureName>(input.features);
  const warnings: string[] = [];
  const sizeText = humanSize(input.sizeBytes);

  // Block count in "units" (the -b size, else 1 KiB), as mke2fs reads the device size.
  const unit = input.blockSize ?? 1024;
  let unitBlocks = Math.floor(input.sizeBytes / unit);
  if (!input.sizeExplicit && unit < 4096) unitBlocks -= unitBlocks % (4096 / unit); // whole pages
  const sizeType = sizeTypeOf(unitBlocks, unit);
  const bs = input.blockSize ?? PROFILE_BLOCK_SIZE[sizeType];
  const paramBlocks = input.blockSize ? unitBlocks : Math.floor(unitBlocks / (bs / 1024));
  if (paramBlocks <= 0) throw tooSmall(`a ${sizeText} filesystem is smaller than one ${bs}-byte block; use a larger --size (at least 256K)`);
  if (paramBlocks > MAX_U32 && !features.has('64bit')) {
    throw new FsError('EINVAL', `a ${sizeText} filesystem has ${paramBlocks} blocks, more than fit in 32 bits without the 64bit feature; drop -O ^64bit or use a smaller --size`);
  }
  if (paramBlocks > 2 ** (Math.log2(bs) + 3 + 32) - 1) {
    throw new FsError('EINVAL', `a ${sizeText} filesystem has too many block groups for ${bs}-byte blocks; use a smaller --size`);
  }

  let inodeRatio = input.bytesPerInode ?? 0;
  if (!inodeRatio) inodeRatio = Math.max(PROFILE_INODE_RATIO[sizeType], bs);
  const reservedPercent = input.reservedPercent ?? 5;
  const paramReserved = Math.floor((reservedPercent * paramBlocks) / 100.0);

  let paramInodes = input.inodes ?? 0;
  if (!paramInodes) {
    const n = (BigInt(paramBlocks) * BigInt(bs)) / BigInt(inodeRatio);
    if (n > BigInt(MAX_U32)) {
      if (!features.has('64bit')) throw new FsError('EINVAL', `a ${sizeText} filesystem would get ${n} inodes, more than 2^32; pass a larger -i`);
      paramInodes = MAX_U32;
    } else paramInodes = Number(n);
  }
  if (BigInt(paramInodes) * BigInt(INODE_SIZE) >= BigInt(paramBlocks) * BigInt(bs)) {
    throw new FsError('EINVAL', `${paramInodes} inodes of ${INODE_SIZE} bytes do not fit in a ${sizeText} filesystem; pass a smaller -N or a larger -i`);
  }

  const fdb = bs === 1024 ? 1 : 0;
  const descSize = features.has('64bit') ? 64 : 32;
  const sparse = features.has('sparse_super');
  const geo = initializeGeometry(bs, fdb, descSize, sparse, paramBlocks, paramReserved, paramInodes, sizeText);
  const inodesCount = geo.inodesPerGroup * geo.groupCount;
  if (inodesCount < LOST_FOUND_INO) {
    throw tooSmall(`a ${sizeText} filesystem gets only ${inodesCount} inodes, fewer than the ${LOST_FOUND_INO} ext4 needs for its reserved inodes and lost+found; pass -N 16 or use a larger --size`);
  }

  const flex = features.has('flex_bg');
  const alloc = new BlockAllocator(geo.blocksCount, fdb, geo.blocksPerGroup, geo.groupCount, geo.descBlocks, sparse);
  const tables = allocateTables(alloc, geo, flex);
  const metadataBlocks = alloc.usedTotal();

  // Journal size (misc/util.c figure_journal_size) is decided before anything is allocated.
  let journalBlocks = 0;
  if (features.has('has_journal')) {
    const dflt = defaultJournalBlocks(geo.blocksCount);
    if (input.journalSizeMiB !== undefined) {
      if (dflt < 0) throw tooSmall(`a ${sizeText} filesystem (${geo.blocksCount} blocks) is too small for a journal; drop -J size= and the journal (-O ^has_journal) or use a larger --size`);
      journalBlocks = (input.journalSizeMiB * 1024) / (bs / 1024);
      if (journalBlocks < 1024 || journalBlocks > 10240000) {
        throw new FsError('EINVAL', `a ${input.journalSizeMiB} MiB journal is ${journalBlocks} blocks, outside the 1024..10240000 blocks jbd2 allows; pick another -J size=`);
      }
      const freeAtInit = geo.blocksCount - fdb - alloc.sbGdtTotal() - (flex ? 0 : geo.groupCount * (2 + geo.inodeTableBlocks));
      if (journalBlocks > Math.floor(freeAtInit / 2)) {
        throw new FsError('EINVAL', `a ${input.journalSizeMiB} MiB journal is more than half of the free space of a ${sizeText} filesystem; pick a smaller -J size=`);
      }
    } else if (dflt < 0) {
      warnings.push('Filesystem too small for a journal; creating it without one');
      features.delete('has_journal');
    } else journalBlocks = dflt;
  }

  const flexAlignedFirstBlock = (ino: number): number => {
    let g = Math.floor((ino - 1) / geo.inodesPerGroup);
    if (flex) g &= ~(FLEX_BG_SIZE - 1);
    return alloc.firstBlock(g);
  };
  const noSpace = (what: string): FsError =>
    new FsError('EINVAL', `a ${sizeText} filesystem has no room left for ${what}; use a larger --size${journalBlocks ? ' or a smaller journal (-J size=)' : ''}`);

  // Root directory, then lost+found growing block by block after it (ext2fs_mkdir, ext2fs_expand_dir).
  const rootBlock = alloc.newBlock(flexAlignedFirstBlock(2));
  if (rootBlock < 0) throw noSpace('the root directory');
  alloc.mark(rootBlock, 1);
  const root = fileFromBlocks([rootBlock]);
  const lpf: number[] = [];
  let goal = flexAlignedFirstBlock(LOST_FOUND_INO);
  for (let i = 0; i < lostFoundBlocks(bs); i++) {
    const b = alloc.newBlock(goal);
    if (b < 0) throw noSpace('lost+found');
    alloc.mark(b, 1);
    lpf.push(b);
    goal = b + 1;
  }
  const lostFound = fileFromBlocks(lpf);

  let journal: FileBlocks | null = null;
  if (journalBlocks > 0) {
    journal = allocateJournal(alloc, journalBlocks, bs, flex ? Math.log2(FLEX_BG_SIZE) : 0);
    if (!journal) throw noSpace(`a ${journalBlocks}-block journal`);
  }

  // Inodes 1..11 are in use: reserved 1-10 (bad blocks 1, root 2, journal 8, ...) and lost+found.
  const csum = features.has('metadata_csum');
  const groups: GroupLayout[] = [];
  for (let g = 0; g < geo.groupCount; g++) {
    const firstIno = g * geo.inodesPerGroup + 1;
    const usedInodes = Math.max(0, Math.min(FIRST_INO, firstIno + geo.inodesPerGroup - 1) - firstIno + 1);
    let usedDirs = 0;
    for (const dir of [2, LOST_FOUND_INO]) if (Math.floor((dir - 1) / geo.inodesPerGroup) === g) usedDirs++;
    const last = g === geo.groupCount - 1;
    const blockUninit = csum && !last && !alloc.isTouched(g);
    const inodeUninit = csum && usedInodes === 0;
    const itableUnused = csum ? geo.inodesPerGroup - usedInodes : 0;
    groups.push({
      index: g,
      firstBlock: alloc.firstBlock(g),
      blocks: alloc.groupBlocks(g),
      hasSuper: alloc.hasSuper(g),
      blockBitmap: tables.blockBitmaps[g],
      inodeBitmap: tables.inodeBitmaps[g],
      inodeTable: tables.inodeTables[g],
      freeBlocks: alloc.groupFree(g),
      freeInodes: geo.inodesPerGroup - usedInodes,
      usedDirs,
      // The inode tables are zeroed by the formatter (punched or written), so the kernel need not.
      flags: BG_INODE_ZEROED | (blockUninit ? BG_BLOCK_UNINIT : 0) | (inodeUninit ? BG_INODE_UNINIT : 0),
      itableUnused,
      blockUninit,
      inodeUninit,
    });
  }
  const freeBlocks = groups.reduce((s, g) => s + g.freeBlocks, 0);
  const superGroups = groups.filter((g) => g.hasSuper).map((g) => g.index);

  return {
    sizeType, features, blockSize: bs, logBlockSize: Math.log2(bs) - 10,
    blocksCount: geo.blocksCount, firstDataBlock: fdb, blocksPerGroup: geo.blocksPerGroup, groupCount: geo.groupCount,
    descSize, descBlocks: geo.descBlocks, inodeSize: INODE_SIZE, inodesPerGroup: geo.inodesPerGroup, inodesCount,
    inodeTableBlocks: geo.inodeTableBlocks, logGroupsPerFlex: flex ? Math.log2(FLEX_BG_SIZE) : 0,
    reservedBlocks: geo.reservedBlocks, freeBlocks, freeInodes: inodesCount - FIRST_INO,
    overheadBlocks: metadataBlocks + journalBlocks + fdb,
    groups, root, lostFound, journal, superGroups, warnings, allocator: alloc,
  };
}

function fileFromBlocks(blocks: number[]): FileBlocks {
  const extents: Extent[] = [];
  blocks.forEach((b, i) => {
    const last = extents[extents.length - 1];
    if (last && last.physical + last.length === b && last.length < MAX_EXTENT_LEN) last.length++;
    else extents.push({ logical: i, physical: b, length: 1 });
  });
  if (extents.length > INODE_EXTENT_SLOTS) throw new FsError('EINVAL', 'the filesystem is too fragmented to place its root directories; use a larger --size');
  return { extents, leafBlocks: [], dataBlocks: blocks.length };
}

interface Tables {
  blockBitmaps: number[];
  inodeBitmaps: number[];
  inodeTables: number[];
}

/** ext2fs_allocate_tables / ext2fs_allocate_group_table, flex_bg and plain. */
function allocateTables(a: BlockAllocator, geo: Geometry, flex: boolean): Tables {
  const t: Tables = { blockBitmaps: [], inodeBitmaps: [], inodeTables: [] };
  const itb = geo.inodeTableBlocks;
  const n = geo.groupCount;
  const fail = (): FsError => new FsError('EINVAL', 'the block bitmaps and inode tables do not fit; pass a smaller -N or a larger --size');
  for (let g = 0; g < n; g++) {
    let groupBlk = a.firstBlock(g);
    let lastBlk = a.lastBlock(g);
    let startBlk = groupBlk;
    let lastGrp = g;
    let remGrps = 0;
    let tableOffset = 0;
    if (flex) {
      lastGrp = Math.min(g | (FLEX_BG_SIZE - 1), n - 1);
      remGrps = lastGrp - g + 1;
      tableOffset = FLEX_BG_SIZE;
      let prev = 0;
      if (g % FLEX_BG_SIZE) prev = t.blockBitmaps[g - 1] + 1;
      else if (lastGrp === n - 1) {
        // The last flex group keeps its tables contiguous: offset by its real group count.
        tableOffset = lastGrp & (FLEX_BG_SIZE - 1);
        tableOffset = tableOffset === 0 ? FLEX_BG_SIZE : tableOffset + 1;
      }
      startBlk = flexbgOffset(a, g, prev, remGrps, 1, geo);
      lastBlk = a.lastBlock(lastGrp);
    }
    let b = a.getFreeBlocks(startBlk, lastBlk, 1);
    if (b < 0) b = a.getFreeBlocks(groupBlk, lastBlk, 1);
    if (b < 0) throw fail();
    a.mark(b, 1, flex);
    t.blockBitmaps[g] = b;

    if (flex) {
      const prev = g % FLEX_BG_SIZE ? t.inodeBitmaps[g - 1] + 1 : t.blockBitmaps[g] + tableOffset;
      startBlk = flexbgOffset(a, g, prev, remGrps, 1, geo);
      lastBlk = a.lastBlock(lastGrp);
    }
    b = a.getFreeBlocks(startBlk, lastBlk, 1);
    if (b < 0) b = a.getFreeBlocks(groupBlk, lastBlk, 1);
    if (b < 0) throw fail();
    a.mark(b, 1, flex);
    t.inodeBitmaps[g] = b;

    if (flex) {
      const prev = g % FLEX_BG_SIZE ? t.inodeTables[g - 1] + itb : t.inodeBitmaps[g] + tableOffset;
      groupBlk = flexbgOffset(a, g, prev, remGrps, itb, geo);
      lastBlk = a.lastBlock(lastGrp);
    }
    b = a.getFreeBlocks(groupBlk, lastBlk, itb);
    if (b < 0) throw fail();
    a.mark(b, itb, flex);
    t.inodeTables[g] = b;
  }
  return t;
}

/** alloc_tables.c flexbg_offset: where the next run of a flex group's tables can go. */
function flexbgOffset(a: BlockAllocator, g: number, startBlk: number, remGrp: number, elemSize: number, geo: Geometry): number {
  const flexbg = Math.floor(g / FLEX_BG_SIZE);
  const size = Math.min(remGrp * elemSize, Math.floor(geo.blocksPerGroup / 4));
  if (startBlk && startBlk < a.total) {
    const b = a.getFreeBlocks(startBlk, startBlk + size, elemSize);
    if (b >= 0) return b;
  }
  const start = a.firstBlock(FLEX_BG_SIZE * flexbg);
  const lastBlk = a.lastBlock(Math.min(g | (FLEX_BG_SIZE - 1), geo.groupCount - 1));
  for (const [s, len] of [[start, size], [start, elemSize], [0, elemSize]]) {
    const b = a.getFreeBlocks(s, lastBlk, len);
    if (b >= 0) return b;
  }
  return 0;
}

/**
 * mkjournal.c: goal = first block of the group with the most free blocks around the middle
 * (flex-group aligned), then ext2fs_fallocate's loop: first free run at or after the goal,
 * up to 32768 blocks per extent. The 5th extent turns i_block into an index: its leaf block is
 * allocated "before the first extent" (extent.c extent_node_split).
 */
function allocateJournal(a: BlockAllocator, blocks: number, bs: number, logFlex: number): FileBlocks | null {
  const n = a.groups;
  let group = a.groupOf(Math.floor((a.total - a.fdb) / 2));
  const flexSize = 1 << logFlex;
  let start: number;
  if (logFlex && group > flexSize) {
    group &= ~(flexSize - 1);
    while (group < n && a.groupFree(group) === 0) group++;
    if (group === n) group = 0;
    start = group;
  } else start = group > 0 ? group - 1 : group;
  const end = group + 1 < n ? group + 1 : group;
  group = start;
  for (let i = start + 1; i <= end; i++) if (a.groupFree(i) > a.groupFree(group)) group = i;

  let pblk = a.firstFree(a.firstBlock(group), a.total - 1);
  if (pblk < 0) pblk = a.firstBlock(group);
  const extents: Extent[] = [];
  const leafBlocks: number[] = [];
  const perLeaf = Math.floor((bs - 12) / 12);
  let logical = 0;
  while (logical < blocks) {
    const run = a.newRange(pblk, Math.min(blocks - logical, MAX_EXTENT_LEN));
    if (!run) return null;
    a.mark(run.start, run.length);
    extents.push({ logical, physical: run.start, length: run.length });
    logical += run.length;
    // Each time the leaves fill up (first when i_block's 4 slots overflow), add a leaf block.
    const leavesNeeded = extents.length > INODE_EXTENT_SLOTS ? Math.ceil(extents.length / perLeaf) : 0;
    if (leavesNeeded > INODE_EXTENT_SLOTS) {
      throw new FsError('EINVAL', `the journal would need more than ${INODE_EXTENT_SLOTS * perLeaf} extents; pick a smaller -J size= or a larger block size`);
    }
    while (leafBlocks.length < leavesNeeded) {
      const leaf = a.newBlock(extents[0].physical - 1);
      if (leaf < 0) return null;
      a.mark(leaf, 1);
      leafBlocks.push(leaf);
    }
    pblk = run.start + run.length;
    if (pblk >= a.total) pblk = a.fdb;
  }
  return { extents, leafBlocks, dataBlocks: blocks };
}
