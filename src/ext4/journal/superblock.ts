/**
 * jbd2 journal superblock (journal_superblock_t, the first 1024 bytes of the journal's first
 * block; every field BIG-endian, unlike the rest of ext4). Layout and names follow
 * linux/include/linux/jbd2.h and e2fsprogs lib/ext2fs/kernel-jbd.h:
 *
 *   0x000 journal_header_t s_header   { h_magic, h_blocktype, h_sequence }  (flattened here)
 *   0x00C s_blocksize, s_maxlen, s_first            static geometry of the log
 *   0x018 s_sequence, s_start                       first expected commit ID, log start (0 = empty)
 *   0x020 s_errno                                   set by jbd2_journal_abort()
 *   0x024 s_feature_compat/_incompat/_ro_compat     (V2 superblocks only, as is everything below)
 *   0x030 s_uuid[16]                                journal UUID (internal journal: the fs UUID)
 *   0x040 s_nr_users, s_dynsuper
 *   0x048 s_max_transaction, s_max_trans_data
 *   0x050 s_checksum_type, s_padding2[3]
 *   0x054 s_num_fc_blks, s_head                     fast-commit area size, log head hint
 *   0x05C s_padding[40]
 *   0x0FC s_checksum                                crc32c(~0, superblock with s_checksum = 0)
 *   0x100 s_users[16*48]                            UUIDs of the filesystems sharing the log
 *
 * Also here: the jbd2 constants (layouts use util/struct's Struct in big-endian mode), so the
 * journal replay/commit code can describe its other block types (descriptor, commit, revoke) the
 * same way.
 */
import { ByteCursor } from '../../util/cursor';
import { Struct, Decoded } from '../../util/struct';
import { ext4Crc } from '../crc';

export const JBD2_MAGIC_NUMBER = 0xc03b3998;

/** h_blocktype values. */
export const JBD2_DESCRIPTOR_BLOCK = 1;
export const JBD2_COMMIT_BLOCK = 2;
export const JBD2_SUPERBLOCK_V1 = 3;
export const JBD2_SUPERBLOCK_V2 = 4;
export const JBD2_REVOKE_BLOCK = 5;
export const JBD2_FC_BLOCK = 6;

export const JBD2_FEATURE_COMPAT_CHECKSUM = 0x1;
export const JBD2_FEATURE_INCOMPAT_REVOKE = 0x1;
export const JBD2_FEATURE_INCOMPAT_64BIT = 0x2;
export const JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT = 0x4;
export const JBD2_FEATURE_INCOMPAT_CSUM_V2 = 0x8;
export const JBD2_FEATURE_INCOMPAT_CSUM_V3 = 0x10;
export const JBD2_FEATURE_INCOMPAT_FAST_COMMIT = 0x20;

/** s_checksum_type values. */
export const JBD2_CRC32_CHKSUM = 1;
export const JBD2_MD5_CHKSUM = 2;
export const JBD2_SHA1_CHKSUM = 3;
export const JBD2_CRC32C_CHKSUM = 4;

export const JBD2_USERS_MAX = 48;
/** Smallest journal jbd2 (and mke2fs) accept, in blocks. */
export const JBD2_MIN_JOURNAL_BLOCKS = 1024;
/** Largest journal mke2fs creates, in blocks. */
export const JBD2_MAX_JOURNAL_BLOCKS = 10240000;
export const JOURNAL_SUPERBLOCK_SIZE = 1024;

export const JournalHeaderLayout = new Struct('journal_header_t', {
  h_magic: 'u32', h_blocktype: 'u32', h_sequence: 'u32',
}, 12, 'be');

export const JournalSuperblockLayout = new Struct('journal_superblock_t', {
  h_magic: 'u32', h_blocktype: 'u32', h_sequence: 'u32',
  s_blocksize: 'u32', s_maxlen: 'u32', s_first: 'u32',
  s_sequence: 'u32', s_start: 'u32',
  s_errno: 'i32',
  s_feature_compat: 'u32', s_feature_incompat: 'u32', s_feature_ro_compat: 'u32',
  s_uuid: 16,
  s_nr_users: 'u32', s_dynsuper: 'u32',
  s_max_transaction: 'u32', s_max_trans_data: 'u32',
  s_checksum_type: 'u8', s_padding2: 3,
  s_num_fc_blks: 'u32', s_head: 'u32',
  s_padding: 160,
  s_checksum: 'u32',
  s_users: 16 * JBD2_USERS_MAX,
}, JOURNAL_SUPERBLOCK_SIZE, 'be');

export type JournalSuperblock = Decoded<typeof JournalSuperblockLayout.layout>;

export interface NewJournalParams {
  blockSize: number;
  /** Journal length in blocks, including the superblock block and any fast-commit blocks. */
  maxLen: number;
  /** The filesystem UUID (an internal journal carries its filesystem's UUID). */
  uuid: Buffer;
  /** Fast-commit blocks at the end of the journal (0: none). */
  numFcBlocks?: number;
}

/**
 * A fresh, empty journal superblock exactly as mke2fs (ext2fs_create_journal_superblock2)
 * writes one for an internal journal: V2, s_first 1, s_sequence 1, s_start 0 (nothing to
 * replay), one user, no features. mke2fs leaves s_users zeroed for an internal journal (only
 * external journal devices list their filesystems there), and so does this. The kernel turns on
 * the checksum feature (CSUM_V3 with metadata_csum) itself at the first mount.
 */
export function newJournalSuperblock(p: NewJournalParams): JournalSuperblock {
  const sb = JournalSuperblockLayout.zero();
  sb.h_magic = JBD2_MAGIC_NUMBER;
  sb.h_blocktype = JBD2_SUPERBLOCK_V2;
  sb.s_blocksize = p.blockSize;
  sb.s_maxlen = p.maxLen;
  sb.s_first = 1;
  sb.s_sequence = 1;
  sb.s_nr_users = 1;
  sb.s_num_fc_blks = p.numFcBlocks ?? 0;
  sb.s_uuid = Buffer.from(p.uuid);
  return sb;
}

export function decodeJournalSuperblock(buf: Buffer, offset = 0): JournalSuperblock {
  return JournalSuperblockLayout.decode(buf, offset);
}

/** Encode into a JOURNAL_SUPERBLOCK_SIZE buffer (s_checksum as given; see setJournalSuperblockChecksum). */
export function encodeJournalSuperblock(sb: JournalSuperblock, buf: Buffer = Buffer.alloc(JOURNAL_SUPERBLOCK_SIZE), offset = 0): Buffer {
  JournalSuperblockLayout.encode(sb, buf, offset);
  return buf;
}

const CSUM_OFF = JournalSuperblockLayout.offsetOf('s_checksum');

/** jbd2_superblock_csum(): crc32c(~0, the whole 1024-byte superblock with s_checksum zeroed). */
export function journalSuperblockChecksum(raw: Buffer, offset = 0): number {
  let crc = ext4Crc(0xffffffff, raw.subarray(offset, offset + CSUM_OFF));
  crc = ext4Crc(crc, Buffer.alloc(4));
  return ext4Crc(crc, raw.subarray(offset + CSUM_OFF + 4, offset + JOURNAL_SUPERBLOCK_SIZE));
}

/** Store the checksum into an encoded superblock (only meaningful with CSUM_V2/V3). */
export function setJournalSuperblockChecksum(raw: Buffer, offset = 0): number {
  const crc = journalSuperblockChecksum(raw, offset);
  raw.writeUInt32BE(crc, offset + CSUM_OFF);
  return crc;
}
