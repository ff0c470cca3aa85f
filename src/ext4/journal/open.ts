/**
 * Reading the superblock when an image is opened, with journal recovery (ext4_load_journal):
 *  - an image whose superblock says needs_recovery gets its journal replayed: in place when it
 *    is opened for writing (then the flag is cleared), into an in-memory overlay of the block
 *    device when it is read-only (the kernel replays even for ro mounts; the image stays as is);
 *  - a primary superblock that fails its checks may be an in-place write torn by a crash: its
 *    last good copy is then in the journal, which the first backup superblock locates.
 */
import { BlockDevice } from '../../block/device';
import { CorruptionError, FsError } from '../../util/errors';
import { log } from '../../util/log';
import {
  SuperblockLayout, SuperblockFields, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, EXT4_MAGIC, COMPAT, INCOMPAT, RO_COMPAT,
  SUPPORTED_INCOMPAT, descGeometry, featureNames, superblockChecksum, sbBlocksCount,
} from '../superblock';
import { needsRecovery, recoverInPlace, recoverInMemory } from './recovery';

/** Decode and validate a raw superblock (magic, geometry, checksum, incompat features). */
export function checkSuperblock(dev: BlockDevice, raw: Buffer): SuperblockFields {
  const sb = SuperblockLayout.decode(raw);
  if (sb.s_magic !== EXT4_MAGIC) throw new FsError('EINVAL', `${dev.path} is not an ext2/3/4 filesystem (bad superblock magic 0x${sb.s_magic.toString(16)})`);
  // bigalloc is ro_compat, but even reading needs it: bitmaps, free counts and s_blocks_per_group
  // (which may exceed 8 x block size) count clusters. Refused here, before the geometry check
  // takes its geometry for damage.
  if (sb.s_feature_ro_compat & RO_COMPAT.bigalloc) {
    throw new FsError('EINVAL', `${dev.path} uses ext4 features kfs does not support: bigalloc (make the image without -O bigalloc)`);
  }
  if (sb.s_log_block_size > 6 || sb.s_inodes_per_group === 0 || sb.s_blocks_per_group === 0 ||
      sb.s_blocks_per_group > 8 * (1024 << sb.s_log_block_size) || sb.s_inodes_per_group > 8 * (1024 << sb.s_log_block_size)) {
    throw new CorruptionError('superblock geometry is impossible (block size, blocks or inodes per group)');
  }
  // ext4_fill_super: the first data block must lie inside the filesystem (and is 0 with blocks
  // larger than 1 KiB, whose block 0 holds the superblock), or there are no block groups.
  if (sb.s_first_data_block >= sbBlocksCount(sb) || sb.s_first_data_block > (sb.s_log_block_size === 0 ? 1 : 0)) {
    throw new CorruptionError(`superblock's first data block ${sb.s_first_data_block} is impossible for ${1024 << sb.s_log_block_size}-byte blocks`);
  }
  // ext4_fill_super: a 64-bit descriptor is a power of two from 64 to 1024 bytes; meta_bg's
  // first meta group cannot lie past the descriptor blocks (CVE-2016-10208).
  if (sb.s_feature_incompat & INCOMPAT['64bit'] && (sb.s_desc_size < 64 || sb.s_desc_size > 1024 || (sb.s_desc_size & (sb.s_desc_size - 1)) !== 0)) {
    throw new CorruptionError(`superblock's descriptor size ${sb.s_desc_size} is impossible`);
  }
  if (sb.s_feature_incompat & INCOMPAT.meta_bg) {
    const { gdbCount } = descGeometry(sb);
    if (sb.s_first_meta_bg > gdbCount) throw new CorruptionError(`superblock's first meta group ${sb.s_first_meta_bg} is past the ${gdbCount} descriptor blocks`);
  }
  if (sb.s_feature_ro_compat & RO_COMPAT.metadata_csum) {
    if (sb.s_checksum_type !== 1) throw new CorruptionError(`unknown superblock checksum type ${sb.s_checksum_type}`);
    if (superblockChecksum(raw) !== sb.s_checksum) throw new CorruptionError('superblock checksum mismatch (try e2fsck -b <backup> to recover)');
  }
  const badIncompat = sb.s_feature_incompat & ~SUPPORTED_INCOMPAT;
  if (badIncompat) {
    throw new FsError('EINVAL', `${dev.path} uses ext4 features kfs does not support: ${featureNames(INCOMPAT, badIncompat).join(', ')}`);
  }
  return sb;
}

/** The superblock's bytes, with its checksum when metadata_csum is on (sets sb.s_checksum). */
export function encodeSuperblock(sb: SuperblockFields): Buffer {
  const raw = Buffer.alloc(SUPERBLOCK_SIZE);
  SuperblockLayout.encode(sb, raw);
  if (sb.s_feature_ro_compat & RO_COMPAT.metadata_csum) {
    sb.s_checksum = superblockChecksum(raw);
    raw.writeUInt32LE(sb.s_checksum, SuperblockLayout.offsetOf('s_checksum'));
  }
  return raw;
}

/** A superblock whose checksum failed but whose magic and geometry are sane, or null. */
function geometryOnly(raw: Buffer): SuperblockFields | null {
  const sb = SuperblockLayout.decode(raw);
  const bs = 1024 << sb.s_log_block_size;
  const sane = sb.s_magic === EXT4_MAGIC && sb.s_log_block_size <= 6 && sb.s_inodes_per_group > 0 && sb.s_blocks_per_group > 0 &&
    sb.s_blocks_per_group <= 8 * bs && sb.s_inodes_per_group <= 8 * bs && sb.s_journal_inum > 0 && !sb.s_journal_dev;
  return sane ? sb : null;
}

/**
 * The first backup superblock (group 1) that decodes with a good magic and checksum, trying
 * each block size as e2fsck does for -b: at block 8 * blockSize (+1 with 1 KiB blocks).
 */
async function findBackupSuperblock(dev: BlockDevice): Promise<SuperblockFields | null> {
  for (let bs = 1024; bs <= 65536; bs *= 2) {
    const pos = (bs * 8 + (bs === 1024 ? 1 : 0)) * bs;
    if (pos + SUPERBLOCK_SIZE > dev.size) break;
    const raw = Buffer.alloc(SUPERBLOCK_SIZE);
    await dev.readAt(raw, pos);
    const sb = SuperblockLayout.decode(raw);
    if (sb.s_magic !== EXT4_MAGIC || 1024 << sb.s_log_block_size !== bs || sb.s_block_group_nr !== 1) continue;
    if (sb.s_feature_ro_compat & RO_COMPAT.metadata_csum && superblockChecksum(raw) !== sb.s_checksum) continue;
    return sb;
  }
  return null;
}

/**
 * Replay the journal: in place for a writable image (then needs_recovery is cleared), into
 * the device's overlay for a read-only one. Returns the superblock as replayed.
 */
async function replay(dev: BlockDevice, sb: SuperblockFields, readOnly: boolean, primaryDamage?: Error, boot?: Buffer): Promise<SuperblockFields> {
  dev.setBlockSize(1024 << sb.s_log_block_size);
  const bs = dev.blockSize;
  if (readOnly) {
    const blocks = await recoverInMemory(dev, sb, boot);
    dev.overlay = blocks;
    const b = blocks.get(Math.floor(SUPERBLOCK_OFFSET / bs));
    log.info(`${dev.path}: journal replayed in memory (${blocks.size} blocks; the image is read-only)`);
    if (!b && primaryDamage) throw primaryDamage;
    const off = SUPERBLOCK_OFFSET % bs;
    return b ? checkSuperblock(dev, b.subarray(off, off + SUPERBLOCK_SIZE)) : sb;
  }
  const r = await recoverInPlace(dev, sb, boot);
  if (r.transactions) log.info(`${dev.path}: journal replayed: ${r.transactions} transaction(s) (${r.softTransactions} log-only), ${r.blocks} block(s)`);
  const raw = Buffer.alloc(SUPERBLOCK_SIZE);
  await dev.readAt(raw, SUPERBLOCK_OFFSET);
  const replayed = checkSuperblock(dev, raw);
  replayed.s_feature_incompat &= ~INCOMPAT.recover;
  await dev.writeAt(encodeSuperblock(replayed), SUPERBLOCK_OFFSET);
  await dev.barrier();
  return replayed;
}

/**
 * The superblock of an image being opened, after journal recovery. `noLock` (inspecting an
 * image another process may be writing) never replays. `boot`: see scanAndReplay.
 */
export async function readSuperblockAtOpen(dev: BlockDevice, readOnly: boolean, noLock: boolean, boot?: Buffer): Promise<SuperblockFields> {
  if (dev.size < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE) throw new CorruptionError(`image is ${dev.size} bytes, too small to hold an ext4 superblock`);
  const raw = Buffer.alloc(SUPERBLOCK_SIZE);
  await dev.readAt(raw, SUPERBLOCK_OFFSET);
  let sb: SuperblockFields;
  try {
    sb = checkSuperblock(dev, raw);
  } catch (e) {
    if (raw.readUInt16LE(0x38) !== EXT4_MAGIC) await explainNotExt4(dev, e as Error);
    // A torn write mixes sectors of two versions of the superblock, which agree on the
    // geometry and the journal's location: the damaged primary still locates the journal
    // (a filesystem of one group has no backup). Failing that, the first backup does.
    const locator = e instanceof CorruptionError && !noLock ? (geometryOnly(raw) ?? (await findBackupSuperblock(dev))) : null;
    if (!locator || !(locator.s_feature_compat & COMPAT.has_journal)) throw e;
    log.warn(`${dev.path}: primary superblock damaged (${(e as Error).message}); replaying the journal to repair it`);
    return replay(dev, locator, readOnly, e as Error, boot);
  }
  if (!needsRecovery(sb)) return sb;
  if (noLock) {
    log.info(`${dev.path}: journal not replayed (inspecting an image another process may be writing)`);
    return sb;
  }
  return replay(dev, sb, readOnly, undefined, boot);
}

/**
 * An image without the ext4 magic may be a whole disk (a VM's, say) whose ext4 is in a
 * partition: say so, and where the partitions are, rather than only "bad magic". Throws `e`,
 * its message extended when the first sectors hold an MBR or a GPT.
 */
async function explainNotExt4(dev: BlockDevice, e: Error): Promise<never> {
  const head = Buffer.alloc(1024);
  await dev.readAt(head, 0).catch(() => undefined);
  let table: string | null = null;
  if (head.toString('latin1', 512, 520) === 'EFI PART') table = 'a GPT partition table';
  else if (head.readUInt16LE(510) === 0xaa55 && !isFatOrNtfs(head) && hasMbrPartition(head, dev.size)) table = 'an MBR partition table';
  if (table) {
    e.message += `; it starts with ${table}, so it is a whole disk: serve one of its partitions (partx --show ${dev.path} lists them in 512-byte sectors; losetup -o START*512 --sizelimit SECTORS*512 -f --show ${dev.path} makes one a device to mount)`;
  }
  throw e;
}

/** A FAT, NTFS or exFAT boot sector also ends in 0x55aa: their OEM and type strings tell. */
function isFatOrNtfs(sector: Buffer): boolean {
  const oem = sector.toString('latin1', 3, 11);
  return oem === 'NTFS    ' || oem === 'EXFAT   ' || sector.toString('latin1', 54, 57) === 'FAT' || sector.toString('latin1', 82, 85) === 'FAT';
}

/** An MBR entry (of four at 446) that could be a partition: boot flag 0 or 0x80, a type, a start inside the image. */
function hasMbrPartition(sector: Buffer, size: number): boolean {
  for (let i = 0; i < 4; i++) {
    const e = 446 + 16 * i;
    const start = sector.readUInt32LE(e + 8);
    if ((sector[e] === 0 || sector[e] === 0x80) && sector[e + 4] !== 0 && start >= 1 && start * 512 < size) return true;
  }
  return false;
}

/** Replay an image's journal if it needs recovery, changing nothing else (kfs fsck). */
export async function recoverImage(path: string): Promise<boolean> {
  const dev = BlockDevice.open(path, {});
  try {
    const raw = Buffer.alloc(SUPERBLOCK_SIZE);
    await dev.readAt(raw, SUPERBLOCK_OFFSET);
    let needed = true; // a damaged primary superblock: let the journal repair it
    try {
      needed = needsRecovery(checkSuperblock(dev, raw));
    } catch (e) {
      if (!(e instanceof CorruptionError)) throw e;
    }
    if (!needed) return false;
    await readSuperblockAtOpen(dev, false, false);
    return true;
  } finally {
    await dev.closeNoSync();
  }
}
