/**
 * On-disk bytes of a new filesystem, built from a Layout (no I/O here). What each builder
 * produces, with the e2fsprogs function whose output it matches:
 *
 *  - superblock (struct ext4_super_block, superblock.ts): ext2fs_initialize + mke2fs main;
 *    backups differ from the primary only in s_block_group_nr and in s_state, which
 *    ext2fs_flush writes as 0 ("not clean") into every backup copy.
 *  - group descriptors (group-desc.ts): 32 or 64 bytes each; bg_checksum = crc32c(csum_seed,
 *    le32 group, descriptor) & 0xffff with metadata_csum, else 0.
 *  - block bitmap: one block per group; bit i = block first_block + i; bits past the end of
 *    the (last) group set. Checksum crc32c(csum_seed, first blocks_per_group/8 bytes).
 *  - inode bitmap: bit i = inode group*ipg + i + 1; bits past inodes_per_group set (padding).
 *    Checksum over the first inodes_per_group/8 bytes.
 *  - inodes (inode.ts): reserved inodes 1-10 zeroed with valid checksums (write_reserved_inodes),
 *    inode 1 with its times (ext2fs_update_bb_inode), root 2, journal 8, lost+found 11.
 *  - extent trees (ext4_extents.h): i_block = ext4_extent_header {eh_magic 0xF30A, eh_entries,
 *    eh_max 4, eh_depth, eh_generation} + 4 × 12-byte entries: ext4_extent {ee_block u32,
 *    ee_len u16, ee_start_hi u16, ee_start_lo u32} at depth 0, ext4_extent_idx {ei_block u32,
 *    ei_leaf_lo u32, ei_leaf_hi u16, ei_unused u16} above. A leaf block holds (bs-12)/12 entries
 *    and, with metadata_csum, ext4_extent_tail {et_checksum = crc32c(inode csum seed, block up
 *    to the tail)} right after eh_max entries.
 *  - directory blocks: ext4_dir_entry_2 {inode u32, rec_len u16, name_len u8, file_type u8,
 *    name}; with metadata_csum the last 12 bytes are ext4_dir_entry_tail {0, rec_len 12, 0,
 *    0xDE, crc32c(inode csum seed, block up to the tail)}.
 *  - journal superblock (journal/superblock.ts), in the journal's first block.
 *
 * Checksum seeds: csum_seed = crc32c(~0, s_uuid) (no csum_seed feature); the per-inode seed is
 * crc32c(crc32c(csum_seed, le32 ino), le32 i_generation).
 */
import { ByteCursor, lo32, hi32 } from '../src/util/cursor';
import { ext4Crc, ext4CrcU32 } from '../src/ext4/crc';
import {
  SuperblockLayout, SuperblockFields, SUPERBLOCK_SIZE, EXT4_MAGIC, STATE_VALID, COMPAT, INCOMPAT, RO_COMPAT,
  FLAG_SIGNED_HASH, FLAG_UNSIGNED_HASH, CHECKSUM_TYPE_CRC32C, superblockChecksum,
} from '../src/ext4/superblock';
import { GroupDesc, encodeGroupDesc, groupDescChecksum, bitmapChecksum } from '../src/ext4/group-desc';
import { Inode, setInodeChecksum, S_IFDIR, S_IFREG, INODE_FLAGS, JOURNAL_INO, ROOT_INO, Timespec } from '../src/ext4/inode';
import { newJournalSuperblock, encodeJournalSuperblock } from '../src/ext4/journal/superblock';
import { Layout, FileBlocks, EXTRA_ISIZE, FIRST_INO, LOST_FOUND_INO, INODE_EXTENT_SLOTS } from './layout';
import { FeatureName } from './options';

export const EXTENT_MAGIC = 0xf30a;
const EXT2_HASH_HALF_MD4 = 1;
const EXT3_JNL_BACKUP_BLOCKS = 1;
const EXT2_ERRORS_CONTINUE = 1;
/** mke2fs.conf default_mntopts = acl,user_xattr (EXT2_DEFM_XATTR_USER | EXT2_DEFM_ACL). */
const DEFAULT_MOUNT_OPTS = 0x4 | 0x8;
const DIR_TAIL_SIZE = 12;
const FT_DIR = 2;

/** Identity and time of a new filesystem (everything random or clock-derived). */
export interface FsIdentity {
  uuid: Buffer;
  hashSeed: Buffer;
  label: string;
  now: Timespec;
}

/** The feature words, from the names. */
export function featureWords(features: ReadonlySet<FeatureName>): { compat: number; incompat: number; roCompat: number } {
  let compat = 0;
  let incompat = 0;
  let roCompat = 0;
  for (const f of features) {
    if (f in COMPAT) compat |= COMPAT[f as keyof typeof COMPAT];
    else if (f in INCOMPAT) incompat |= INCOMPAT[f as keyof typeof INCOMPAT];
    else roCompat |= RO_COMPAT[f as keyof typeof RO_COMPAT];
  }
  return { compat, incompat, roCompat };
}

export const fsCsumSeed = (uuid: Buffer): number => ext4Crc(0xffffffff, uuid);
export const inodeCsumSeed = (fsSeed: number, ino: number, generation = 0): number => ext4CrcU32(ext4CrcU32(fsSeed, ino), generation);

/**
 * Directory hashes use `char`, signed on x86 and unsigned on Arm, POWER and s390; mke2fs records
 * which one the creating machine had, and so does kfs.
 */
export function hashSignednessFlag(arch: string = process.arch): number {
  return ['arm', 'arm64', 'ppc', 'ppc64', 's390', 's390x'].includes(arch) ? FLAG_UNSIGNED_HASH : FLAG_SIGNED_HASH;
}

/** The primary superblock's fields. */
export function buildSuperblock(l: Layout, id: FsIdentity, journalInode: Inode | null, kbytesWritten: number): SuperblockFields {
  const s = SuperblockLayout.zero();
  const w = featureWords(l.features);
  const sec = id.now.sec;
  s.s_inodes_count = l.inodesCount;
  s.s_blocks_count_lo = lo32(l.blocksCount);
  s.s_blocks_count_hi = hi32(l.blocksCount);
  s.s_r_blocks_count_lo = lo32(l.reservedBlocks);
  s.s_r_blocks_count_hi = hi32(l.reservedBlocks);
  s.s_free_blocks_count_lo = lo32(l.freeBlocks);
  s.s_free_blocks_count_hi = hi32(l.freeBlocks);
  s.s_free_inodes_count = l.freeInodes;
  s.s_first_data_block = l.firstDataBlock;
  s.s_log_block_size = l.logBlockSize;
  s.s_log_cluster_size = l.logBlockSize;
  s.s_blocks_per_group = l.blocksPerGroup;
  s.s_clusters_per_group = l.blocksPerGroup;
  s.s_inodes_per_group = l.inodesPerGroup;
  s.s_wtime = lo32(sec);
  s.s_wtime_hi = hi32(sec) & 0xff;
  s.s_max_mnt_count = 0xffff; // -1: no mount-count checks (enable_periodic_fsck = 0)
  s.s_magic = EXT4_MAGIC;
  s.s_state = STATE_VALID;
  s.s_errors = EXT2_ERRORS_CONTINUE;
  s.s_lastcheck = lo32(sec);
  s.s_lastcheck_hi = hi32(sec) & 0xff;
  s.s_rev_level = 1; // EXT2_DYNAMIC_REV
  s.s_first_ino = FIRST_INO;
  s.s_inode_size = l.inodeSize;
  s.s_feature_compat = w.compat;
  s.s_feature_incompat = w.incompat;
  s.s_feature_ro_compat = w.roCompat;
  s.s_uuid = Buffer.from(id.uuid);
  s.s_volume_name = Buffer.from(id.label, 'utf8');
  s.s_hash_seed = Buffer.from(id.hashSeed);
  s.s_def_hash_version = EXT2_HASH_HALF_MD4;
  s.s_desc_size = l.features.has('64bit') ? l.descSize : 0;
  s.s_default_mount_opts = DEFAULT_MOUNT_OPTS;
  s.s_mkfs_time = lo32(sec);
  s.s_mkfs_time_hi = hi32(sec) & 0xff;
  s.s_min_extra_isize = EXTRA_ISIZE;
  s.s_want_extra_isize = EXTRA_ISIZE;
  s.s_flags = hashSignednessFlag();
  s.s_log_groups_per_flex = l.logGroupsPerFlex;
  s.s_checksum_type = l.features.has('metadata_csum') ? CHECKSUM_TYPE_CRC32C : 0;
  s.s_kbytes_written = kbytesWritten;
  s.s_overhead_clusters = l.overheadBlocks;
  if (journalInode) {
    // Backup of the journal inode's block map: i_block (15 words), then i_size_high, i_size.
    s.s_journal_inum = JOURNAL_INO;
    s.s_jnl_backup_type = EXT3_JNL_BACKUP_BLOCKS;
    const jb = Buffer.alloc(68);
    journalInode.f.i_block.copy(jb, 0);
    jb.writeUInt32LE(journalInode.f.i_size_high, 60);
    jb.writeUInt32LE(journalInode.f.i_size_lo, 64);
    s.s_jnl_blocks = jb;
  }
  return s;
}

/** One superblock copy: group 0 is the primary; backups carry their group and state 0. */
export function encodeSuperblock(s: SuperblockFields, group: number, csum: boolean): Buffer {
  const copy: SuperblockFields = { ...s, s_block_group_nr: Math.min(group, 0xffff), s_state: group === 0 ? s.s_state : 0 };
  const raw = Buffer.alloc(SUPERBLOCK_SIZE);
  SuperblockLayout.encode(copy, raw);
  if (csum) raw.writeUInt32LE(superblockChecksum(raw), SuperblockLayout.offsetOf('s_checksum'));
  return raw;
}

/** The block bitmap of group g (a full block). */
export function blockBitmap(l: Layout, g: number): Buffer {
  const bs = l.blockSize;
  const buf = Buffer.alloc(bs);
  const map = l.allocator.groupMap(g);
  if (map) buf.set(map, 0);
  setBitRange(buf, 0, l.allocator.reservedLen(g));
  setBitRange(buf, l.groups[g].blocks, bs * 8);
  return buf;
}

/** The inode bitmap of group g (inodes 1..FIRST_INO are in use). */
export function inodeBitmap(l: Layout, g: number): Buffer {
  const buf = Buffer.alloc(l.blockSize);
  const first = g * l.inodesPerGroup + 1;
  const usedEnd = Math.min(FIRST_INO, first + l.inodesPerGroup - 1);
  if (usedEnd >= first) setBitRange(buf, 0, usedEnd - first + 1);
  setBitRange(buf, l.inodesPerGroup, l.blockSize * 8);
  return buf;
}

function setBitRange(buf: Buffer, from: number, to: number): void {
  for (let i = from; i < to; i++) buf[i >> 3] |= 1 << (i & 7);
}

export interface BitmapChecksums {
  block: number;
  inode: number;
}

/** All group descriptors, as the descriptor blocks (descBlocks × block size). */
export function buildGroupDescriptors(l: Layout, uuid: Buffer, csums: BitmapChecksums[]): Buffer {
  const buf = Buffer.alloc(l.descBlocks * l.blockSize);
  const metadataCsum = l.features.has('metadata_csum');
  const seed = fsCsumSeed(uuid);
  for (const g of l.groups) {
    const d: GroupDesc = {
      blockBitmap: g.blockBitmap, inodeBitmap: g.inodeBitmap, inodeTable: g.inodeTable,
      freeBlocks: g.freeBlocks, freeInodes: g.freeInodes, usedDirs: g.usedDirs, flags: g.flags,
      excludeBitmap: 0, blockBitmapCsum: csums[g.index].block, inodeBitmapCsum: csums[g.index].inode,
      itableUnused: g.itableUnused, checksum: 0,
    };
    const off = g.index * l.descSize;
    encodeGroupDesc(d, buf, off, l.descSize);
    if (metadataCsum) {
      const c = groupDescChecksum(buf, off, l.descSize, g.index, { metadataCsum, csumSeed: seed, uuid });
      buf.writeUInt16LE(c, off + 0x1e);
    }
  }
  return buf;
}

/** Bitmap checksums as stored in a descriptor (0 when the bitmap is not initialized on disk). */
export function bitmapChecksums(l: Layout, uuid: Buffer, g: number, block: Buffer | null, inode: Buffer | null): BitmapChecksums {
  if (!l.features.has('metadata_csum')) return { block: 0, inode: 0 };
  const seed = fsCsumSeed(uuid);
  return {
    block: block ? bitmapChecksum(seed, block.subarray(0, l.blocksPerGroup / 8), l.descSize) : 0,
    inode: inode ? bitmapChecksum(seed, inode.subarray(0, l.inodesPerGroup / 8), l.descSize) : 0,
  };
}

/** A file's i_block and extent-tree leaf blocks (depth 0, or depth 1 with up to 4 leaves). */
export function buildExtentTree(file: FileBlocks, blockSize: number, csumSeed: number | null): { iblock: Buffer; leaves: Buffer[] } {
  const iblock = Buffer.alloc(60);
  const c = new ByteCursor(iblock);
  if (file.leafBlocks.length === 0) {
    if (file.extents.length > INODE_EXTENT_SLOTS) throw new Error('extent tree: too many extents for i_block and no leaf blocks');
    putExtentHeader(c, file.extents.length, INODE_EXTENT_SLOTS, 0);
    for (const e of file.extents) putExtent(c, e.logical, e.length, e.physical);
    return { iblock, leaves: [] };
  }
  const perLeaf = Math.floor((blockSize - 12) / 12);
  putExtentHeader(c, file.leafBlocks.length, INODE_EXTENT_SLOTS, 1);
  const leaves: Buffer[] = [];
  file.leafBlocks.forEach((leafBlock, i) => {
    const part = file.extents.slice(i * perLeaf, (i + 1) * perLeaf);
    // ext4_extent_idx: first logical block covered, leaf block lo, leaf block hi, unused.
    c.putU32(part[0].logical).putU32(lo32(leafBlock)).putU16(hi32(leafBlock) & 0xffff).putU16(0);
    const leaf = Buffer.alloc(blockSize);
    const lc = new ByteCursor(leaf);
    putExtentHeader(lc, part.length, perLeaf, 0);
    for (const e of part) putExtent(lc, e.logical, e.length, e.physical);
    if (csumSeed !== null) {
      const tail = 12 + 12 * perLeaf;
      leaf.writeUInt32LE(ext4Crc(csumSeed, leaf.subarray(0, tail)), tail);
    }
    leaves.push(leaf);
  });
  return { iblock, leaves };
}

function putExtentHeader(c: ByteCursor, entries: number, max: number, depth: number): void {
  c.putU16(EXTENT_MAGIC).putU16(entries).putU16(max).putU16(depth).putU32(0);
}

function putExtent(c: ByteCursor, logical: number, length: number, physical: number): void {
  c.putU32(logical).putU16(length).putU16(hi32(physical) & 0xffff).putU32(lo32(physical));
}

interface DirEntry {
  ino: number;
  name: string;
}

/**
 * One directory block: the entries packed in order, the last one's rec_len reaching the tail
 * (or the block end); an empty block is one unused entry (inode 0) spanning it.
 */
export function dirBlock(entries: DirEntry[], blockSize: number, dirIno: number, fsSeed: number | null): Buffer {
  const buf = Buffer.alloc(blockSize);
  const end = fsSeed === null ? blockSize : blockSize - DIR_TAIL_SIZE;
  const c = new ByteCursor(buf);
  if (entries.length === 0) c.putU32(0).putU16(end).putU8(0).putU8(0);
  entries.forEach((e, i) => {
    const name = Buffer.from(e.name);
    const start = c.offset;
    const recLen = i === entries.length - 1 ? end - start : (8 + name.length + 3) & ~3;
    c.putU32(e.ino).putU16(recLen).putU8(name.length).putU8(FT_DIR).putBytes(name);
    c.seek(start + recLen);
  });
  if (fsSeed !== null) {
    const t = new ByteCursor(buf, end);
    t.putU32(0).putU16(DIR_TAIL_SIZE).putU8(0).putU8(0xde);
    t.putU32(ext4Crc(inodeCsumSeed(fsSeed, dirIno), buf.subarray(0, end)));
  }
  return buf;
}

/**
 * Inodes 1..11 (in inode-number order) plus the contents of the blocks mkfs fills for root,
 * lost+found and the journal (directory blocks, the journal superblock, extent-tree leaves).
 */
export function buildFiles(l: Layout, id: FsIdentity): { inodes: Inode[]; blocks: Map<number, Buffer>; journalInode: Inode | null } {
  const bs = l.blockSize;
  const csum = l.features.has('metadata_csum');
  const fsSeed = csum ? fsCsumSeed(id.uuid) : null;
  const blocks = new Map<number, Buffer>();
  const inodes: Inode[] = [];
  const t = id.now;

  const file = (ino: number, mode: number, links: number, f: FileBlocks, size: number): Inode => {
    const inode = Inode.fresh(ino, l.inodeSize, EXTRA_ISIZE);
    inode.f.i_mode = mode;
    inode.links = links;
    inode.size = size;
    inode.f.i_flags = INODE_FLAGS.EXTENTS;
    stamp(inode, t, true);
    const tree = buildExtentTree(f, bs, fsSeed === null ? null : inodeCsumSeed(fsSeed, ino));
    inode.f.i_block = tree.iblock;
    inode.setSectors(((f.dataBlocks + f.leafBlocks.length) * bs) / 512);
    f.leafBlocks.forEach((b, i) => blocks.set(b, tree.leaves[i]));
    return inode;
  };

  for (let ino = 1; ino < FIRST_INO; ino++) {
    let inode: Inode;
    if (ino === ROOT_INO) {
      inode = file(ino, S_IFDIR | 0o755, 3, l.root, bs);
      blocks.set(l.root.extents[0].physical, dirBlock(
        [{ ino: ROOT_INO, name: '.' }, { ino: ROOT_INO, name: '..' }, { ino: LOST_FOUND_INO, name: 'lost+found' }], bs, ROOT_INO, fsSeed));
    } else if (ino === JOURNAL_INO && l.journal) {
      inode = file(ino, S_IFREG | 0o600, 1, l.journal, l.journal.dataBlocks * bs);
      const jsb = Buffer.alloc(bs);
      encodeJournalSuperblock(newJournalSuperblock({ blockSize: bs, maxLen: l.journal.dataBlocks, uuid: id.uuid }), jsb);
      blocks.set(l.journal.extents[0].physical, jsb);
    } else {
      // Reserved inodes stay zero (i_extra_isize 0) but carry a valid checksum; the bad-blocks
      // inode also gets its times, as ext2fs_update_bb_inode leaves it.
      inode = Inode.fresh(ino, l.inodeSize, 0);
      if (ino === 1) stamp(inode, t, false);
    }
    inodes.push(inode);
  }

  const lpf = file(LOST_FOUND_INO, S_IFDIR | 0o700, 2, l.lostFound, l.lostFound.dataBlocks * bs);
  let logical = 0;
  for (const e of l.lostFound.extents) {
    for (let i = 0; i < e.length; i++, logical++) {
      const entries = logical === 0 ? [{ ino: LOST_FOUND_INO, name: '.' }, { ino: ROOT_INO, name: '..' }] : [];
      blocks.set(e.physical + i, dirBlock(entries, bs, LOST_FOUND_INO, fsSeed));
    }
  }
  inodes.push(lpf);

  for (const inode of inodes) {
    inode.encode();
    if (fsSeed !== null) setInodeChecksum(inode, fsSeed);
  }
  return { inodes, blocks, journalInode: l.journal ? inodes[JOURNAL_INO - 1] : null };
}

/** a/c/mtime (and crtime, when the inode has room for it) = t. */
function stamp(inode: Inode, t: Timespec, withCrtime: boolean): void {
  inode.atime = t;
  inode.ctime = t;
  inode.mtime = t;
  if (withCrtime) inode.crtime = t;
}

/** Inode-table blocks holding inodes 1..11: block number → block contents. */
export function inodeTableBlocks(l: Layout, inodes: Inode[]): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (const inode of inodes) {
    const g = Math.floor((inode.ino - 1) / l.inodesPerGroup);
    const byte = ((inode.ino - 1) % l.inodesPerGroup) * l.inodeSize;
    const block = l.groups[g].inodeTable + Math.floor(byte / l.blockSize);
    let buf = out.get(block);
    if (!buf) out.set(block, (buf = Buffer.alloc(l.blockSize)));
    inode.raw.copy(buf, byte % l.blockSize);
  }
  return out;
}
