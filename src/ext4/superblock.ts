/**
 * ext4 superblock (struct ext4_super_block, 1024 bytes at byte 1024 of the volume; backups
 * at the start of groups 0, 1 and powers of 3, 5, 7 with sparse_super). Layout follows
 * linux/fs/ext4/ext4.h and e2fsprogs lib/ext2fs/ext2_fs.h. With metadata_csum, s_checksum
 * is crc32c(~0, bytes 0..0x3fb).
 */
import { Struct, Decoded } from '../util/struct';
import { ext4Crc } from './crc';
import { join64 } from '../util/cursor';

export const SUPERBLOCK_OFFSET = 1024;
export const SUPERBLOCK_SIZE = 1024;
export const EXT4_MAGIC = 0xef53;

export const SuperblockLayout = new Struct('ext4_super_block', {
  s_inodes_count: 'u32', s_blocks_count_lo: 'u32', s_r_blocks_count_lo: 'u32', s_free_blocks_count_lo: 'u32',
  s_free_inodes_count: 'u32', s_first_data_block: 'u32', s_log_block_size: 'u32', s_log_cluster_size: 'u32',
  s_blocks_per_group: 'u32', s_clusters_per_group: 'u32', s_inodes_per_group: 'u32', s_mtime: 'u32',
  s_wtime: 'u32', s_mnt_count: 'u16', s_max_mnt_count: 'u16', s_magic: 'u16', s_state: 'u16',
  s_errors: 'u16', s_minor_rev_level: 'u16',
  s_lastcheck: 'u32', s_checkinterval: 'u32', s_creator_os: 'u32', s_rev_level: 'u32',
  s_def_resuid: 'u16', s_def_resgid: 'u16',
  s_first_ino: 'u32', s_inode_size: 'u16', s_block_group_nr: 'u16', s_feature_compat: 'u32',
  s_feature_incompat: 'u32', s_feature_ro_compat: 'u32',
  s_uuid: 16, s_volume_name: 16, s_last_mounted: 64,
  s_algorithm_usage_bitmap: 'u32', s_prealloc_blocks: 'u8', s_prealloc_dir_blocks: 'u8', s_reserved_gdt_blocks: 'u16',
  s_journal_uuid: 16, s_journal_inum: 'u32', s_journal_dev: 'u32', s_last_orphan: 'u32',
  s_hash_seed: 16, s_def_hash_version: 'u8', s_jnl_backup_type: 'u8', s_desc_size: 'u16',
  s_default_mount_opts: 'u32', s_first_meta_bg: 'u32', s_mkfs_time: 'u32', s_jnl_blocks: 68,
  s_blocks_count_hi: 'u32', s_r_blocks_count_hi: 'u32', s_free_blocks_count_hi: 'u32',
  s_min_extra_isize: 'u16', s_want_extra_isize: 'u16',
  s_flags: 'u32', s_raid_stride: 'u16', s_mmp_update_interval: 'u16', s_mmp_block: 'u64',
  s_raid_stripe_width: 'u32', s_log_groups_per_flex: 'u8', s_checksum_type: 'u8', s_encryption_level: 'u8',
  s_reserved_pad: 'u8', s_kbytes_written: 'u64',
  s_snapshot_inum: 'u32', s_snapshot_id: 'u32', s_snapshot_r_blocks_count: 'u64', s_snapshot_list: 'u32',
  s_error_count: 'u32', s_first_error_time: 'u32', s_first_error_ino: 'u32', s_first_error_block: 'u64',
  s_first_error_func: 32, s_first_error_line: 'u32', s_last_error_time: 'u32', s_last_error_ino: 'u32',
  s_last_error_line: 'u32', s_last_error_block: 'u64', s_last_error_func: 32, s_mount_opts: 64,
  s_usr_quota_inum: 'u32', s_grp_quota_inum: 'u32', s_overhead_clusters: 'u32', s_backup_bgs: 8,
  s_encrypt_algos: 4, s_encrypt_pw_salt: 16, s_lpf_ino: 'u32', s_prj_quota_inum: 'u32',
  s_checksum_seed: 'u32', s_wtime_hi: 'u8', s_mtime_hi: 'u8', s_mkfs_time_hi: 'u8', s_lastcheck_hi: 'u8',
  s_first_error_time_hi: 'u8', s_last_error_time_hi: 'u8', s_first_error_errcode: 'u8', s_last_error_errcode: 'u8',
  s_encoding: 'u16', s_encoding_flags: 'u16', s_orphan_file_inum: 'u32', s_reserved: 376, s_checksum: 'u32',
}, SUPERBLOCK_SIZE);

export type SuperblockFields = Decoded<typeof SuperblockLayout.layout>;

/** Feature bits (ext4.h EXT4_FEATURE_*). */
export const COMPAT = {
  dir_prealloc: 0x1, imagic_inodes: 0x2, has_journal: 0x4, ext_attr: 0x8, resize_inode: 0x10,
  dir_index: 0x20, lazy_bg: 0x40, exclude_bitmap: 0x100, sparse_super2: 0x200, fast_commit: 0x400,
  stable_inodes: 0x800, orphan_file: 0x1000,
} as const;
export const INCOMPAT = {
  compression: 0x1, filetype: 0x2, recover: 0x4, journal_dev: 0x8, meta_bg: 0x10, extent: 0x40,
  '64bit': 0x80, mmp: 0x100, flex_bg: 0x200, ea_inode: 0x400, dirdata: 0x1000, csum_seed: 0x2000,
  large_dir: 0x4000, inline_data: 0x8000, encrypt: 0x10000, casefold: 0x20000,
} as const;
export const RO_COMPAT = {
  sparse_super: 0x1, large_file: 0x2, btree_dir: 0x4, huge_file: 0x8, gdt_csum: 0x10, dir_nlink: 0x20,
  extra_isize: 0x40, has_snapshot: 0x80, quota: 0x100, bigalloc: 0x200, metadata_csum: 0x400,
  replica: 0x800, readonly: 0x1000, project: 0x2000, shared_blocks: 0x4000, verity: 0x8000,
  orphan_present: 0x10000,
} as const;

/**
 * What kfs implements. Unknown incompat: refuse; unknown ro_compat: read-only; compat: ignore.
 * inline_data: kfs reads inline files and directories and stores one as blocks before it
 * changes (Ext4Fs.uninline); it makes no inline inodes itself.
 */
export const SUPPORTED_INCOMPAT = INCOMPAT.filetype | INCOMPAT.recover | INCOMPAT.extent | INCOMPAT['64bit'] |
  INCOMPAT.flex_bg | INCOMPAT.csum_seed | INCOMPAT.large_dir | INCOMPAT.meta_bg | INCOMPAT.inline_data;
export const SUPPORTED_RO_COMPAT = RO_COMPAT.sparse_super | RO_COMPAT.large_file | RO_COMPAT.huge_file |
  RO_COMPAT.dir_nlink | RO_COMPAT.extra_isize | RO_COMPAT.metadata_csum | RO_COMPAT.gdt_csum;

export function featureNames(table: Record<string, number>, mask: number): string[] {
  const names: string[] = [];
  let rest = mask;
  for (const [name, bit] of Object.entries(table)) {
    if (mask & bit) {
      names.push(name);
      rest &= ~bit;
    }
  }
  for (let b = 0; b < 32; b++) if (rest & (1 << b)) names.push(`unknown_0x${((1 << b) >>> 0).toString(16)}`);
  return names;
}

export const STATE_VALID = 0x1;
export const STATE_ERROR = 0x2;
export const STATE_ORPHANS = 0x4;
export const FLAG_SIGNED_HASH = 0x1;
export const FLAG_UNSIGNED_HASH = 0x2;
export const CHECKSUM_TYPE_CRC32C = 1;

export function superblockChecksum(raw: Buffer): number {
  return ext4Crc(0xffffffff, raw.subarray(0, SuperblockLayout.offsetOf('s_checksum')));
}

/** Convenience accessors for the lo/hi split counters. */
export const sbBlocksCount = (s: SuperblockFields): number => join64(s.s_blocks_count_lo, s.s_blocks_count_hi);
export const sbFreeBlocks = (s: SuperblockFields): number => join64(s.s_free_blocks_count_lo, s.s_free_blocks_count_hi);
export const sbReservedBlocks = (s: SuperblockFields): number => join64(s.s_r_blocks_count_lo, s.s_r_blocks_count_hi);

/**
 * Does group g hold a superblock backup (and so the descriptor table and its reserve)?
 * ext4_bg_has_super: group 0 always; with sparse_super2 only the two groups in s_backup_bgs
 * (0: none); with sparse_super groups 1 and the powers of 3, 5 and 7; without it every group.
 */
export function groupHasSuperblock(group: number, sb: Pick<SuperblockFields, 's_feature_compat' | 's_feature_ro_compat' | 's_backup_bgs'>): boolean {
  if (group === 0) return true;
  if (sb.s_feature_compat & COMPAT.sparse_super2) return group === sb.s_backup_bgs.readUInt32LE(0) || group === sb.s_backup_bgs.readUInt32LE(4);
  return sparseSuperBackup(group, (sb.s_feature_ro_compat & RO_COMPAT.sparse_super) !== 0);
}

/** Descriptor size, descriptors per descriptor block, and descriptor blocks in all (s_gdb_count), from the superblock alone. */
export function descGeometry(sb: SuperblockFields): { descSize: number; perBlock: number; gdbCount: number } {
  const blockSize = 1024 << sb.s_log_block_size;
  const descSize = sb.s_feature_incompat & INCOMPAT['64bit'] ? sb.s_desc_size : 32;
  const perBlock = blockSize / descSize;
  return { descSize, perBlock, gdbCount: Math.ceil(sbGroupCount(sb) / perBlock) };
}

/** Block groups: the blocks after s_first_data_block, s_blocks_per_group to a group, the last one partial. */
export function sbGroupCount(sb: SuperblockFields): number {
  return Math.ceil((sbBlocksCount(sb) - sb.s_first_data_block) / sb.s_blocks_per_group);
}

/**
 * Where group g's descriptor lives (the primary copy): ext4's descriptor_loc. Descriptor block
 * n follows the primary superblock unless meta_bg puts it (n >= s_first_meta_bg) at the start
 * of the first group of its meta group (after that group's superblock backup, if any).
 */
export function groupDescLocation(g: number, sb: SuperblockFields): { block: number; offset: number } {
  const { descSize, perBlock } = descGeometry(sb);
  const n = Math.floor(g / perBlock);
  const offset = (g % perBlock) * descSize;
  if (!(sb.s_feature_incompat & INCOMPAT.meta_bg) || n < sb.s_first_meta_bg) return { block: sb.s_first_data_block + 1 + n, offset };
  const first = n * perBlock;
  return { block: sb.s_first_data_block + first * sb.s_blocks_per_group + (groupHasSuperblock(first, sb) ? 1 : 0), offset };
}

/**
 * Blocks at the start of group g that hold its superblock backup, descriptor blocks (or their
 * backups) and reserved descriptor blocks: ext4_num_base_meta_blocks. Without meta_bg a group
 * with a superblock copy holds all s_gdb_count descriptor blocks and the reserve; with it, a
 * meta group's first, second and last groups hold its one descriptor block (groups below
 * s_first_meta_bg meta groups keep the old layout, with s_first_meta_bg descriptor blocks).
 */
export function groupBaseMetaBlocks(g: number, sb: SuperblockFields): number {
  const { perBlock, gdbCount } = descGeometry(sb);
  const hasSuper = groupHasSuperblock(g, sb) ? 1 : 0;
  const metaBg = (sb.s_feature_incompat & INCOMPAT.meta_bg) !== 0;
  if (!metaBg || g < sb.s_first_meta_bg * perBlock) {
    return hasSuper ? 1 + (metaBg ? sb.s_first_meta_bg : gdbCount) + sb.s_reserved_gdt_blocks : 0;
  }
  const first = Math.floor(g / perBlock) * perBlock;
  return hasSuper + (g === first || g === first + 1 || g === first + perBlock - 1 ? 1 : 0);
}

/** The rule without sparse_super2 (what kfs mkfs makes): with sparse_super groups 0, 1 and the powers of 3, 5 and 7, else all. */
export function sparseSuperBackup(group: number, sparseSuper: boolean): boolean {
  if (!sparseSuper || group <= 1) return true;
  for (const base of [3, 5, 7]) {
    let p = base;
    while (p < group) p *= base;
    if (p === group) return true;
  }
  return false;
}
