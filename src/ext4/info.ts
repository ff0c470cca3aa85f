/**
 * A dumpe2fs-like summary of an image: features, geometry, free counts, journal, and per-group
 * detail on request. Reads only; takes a shared image lock, or none when another kfs process
 * holds the image (the figures may then lag behind that process's unsynced changes).
 */
import { FsError } from '../util/errors';
import { Volume } from './volume';
import { COMPAT, INCOMPAT, RO_COMPAT, featureNames, sbReservedBlocks } from './superblock';
import { JOURNAL_INO, INODE_FLAGS } from './inode';
import { ExtentMap } from './extents';
import { loadIndirectMap } from './indirect';
import { InodeStore } from './inode-store';
import { decodeJournalSuperblock, JBD2_MAGIC_NUMBER } from './journal/superblock';
import { GroupDesc, BG_BLOCK_UNINIT, BG_INODE_UNINIT, BG_INODE_ZEROED } from './group-desc';

export interface GroupInfo extends Pick<GroupDesc, 'blockBitmap' | 'inodeBitmap' | 'inodeTable' | 'freeBlocks' | 'freeInodes' | 'usedDirs' | 'itableUnused'> {
  group: number;
  firstBlock: number;
  blocks: number;
  flags: string[];
}

export interface ImageInfo {
  image: string;
  inUse: boolean;
  label: string;
  uuid: string;
  features: string[];
  state: string;
  blockSize: number;
  blocks: number;
  freeBlocks: number;
  reservedBlocks: number;
  inodes: number;
  freeInodes: number;
  inodeSize: number;
  blocksPerGroup: number;
  inodesPerGroup: number;
  groups: number;
  descSize: number;
  hashSeed: string;
  defaultHash: string;
  checksum: string;
  mountCount: number;
  lastMount: string | null;
  lastWrite: string | null;
  created: string | null;
  journal: { inode: number; blocks: number; sequence: number; start: number; features: number } | null;
  groupDetail?: GroupInfo[];
}

const HASH_NAMES = ['legacy', 'half_md4', 'tea'];

export function uuidString(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const time = (t: number): string | null => (t ? new Date(t * 1000).toISOString() : null);

export async function describeImage(image: string, opts: { perGroup?: boolean } = {}): Promise<ImageInfo> {
  let vol: Volume;
  let inUse = false;
  try {
    vol = await Volume.open(image, { readOnly: true });
  } catch (e) {
    if (!(e instanceof FsError) || e.code !== 'EBUSY') throw e;
    inUse = true;
    vol = await Volume.open(image, { noLock: true });
  }
  try {
    const sb = vol.sb;
    const info: ImageInfo = {
      image,
      inUse,
      label: sb.s_volume_name.toString('utf8').replace(/\0.*$/s, ''),
      uuid: uuidString(sb.s_uuid),
      features: [
        ...featureNames(COMPAT, sb.s_feature_compat),
        ...featureNames(INCOMPAT, sb.s_feature_incompat),
        ...featureNames(RO_COMPAT, sb.s_feature_ro_compat),
      ],
      state: `${sb.s_state & 1 ? 'clean' : 'not clean'}${sb.s_state & 2 ? ' with errors' : ''}`,
      blockSize: vol.blockSize,
      blocks: vol.blocksCount,
      freeBlocks: vol.freeBlockCount,
      reservedBlocks: sbReservedBlocks(sb),
      inodes: vol.inodesCount,
      freeInodes: vol.freeInodeCount,
      inodeSize: vol.inodeSize,
      blocksPerGroup: vol.blocksPerGroup,
      inodesPerGroup: vol.inodesPerGroup,
      groups: vol.groupCount,
      descSize: vol.descSize,
      hashSeed: uuidString(sb.s_hash_seed),
      defaultHash: HASH_NAMES[sb.s_def_hash_version] ?? `unknown (${sb.s_def_hash_version})`,
      checksum: vol.metadataCsum ? 'crc32c' : 'none',
      mountCount: sb.s_mnt_count,
      lastMount: time(sb.s_mtime),
      lastWrite: time(sb.s_wtime),
      created: time(sb.s_mkfs_time),
      journal: null,
    };
    if (vol.hasJournal() && sb.s_journal_inum === JOURNAL_INO) {
      const ji = await vol.readInode(JOURNAL_INO);
      const store = new InodeStore(vol);
      const map = ji.hasFlag(INODE_FLAGS.EXTENTS)
        ? await ExtentMap.load(JOURNAL_INO, ji.f.i_block, store.extentIO, store.csumSeedOf(ji))
        : await loadIndirectMap(JOURNAL_INO, ji.f.i_block, store.extentIO); // ext3
      const first = map.lookup(0);
      if (first) {
        const buf = await vol.dev.read(first);
        const jsb = decodeJournalSuperblock(buf);
        if (jsb.h_magic === JBD2_MAGIC_NUMBER) {
          info.journal = { inode: JOURNAL_INO, blocks: jsb.s_maxlen, sequence: jsb.s_sequence, start: jsb.s_start, features: jsb.s_feature_incompat };
        }
      }
    }
    if (opts.perGroup) {
      info.groupDetail = vol.gds.map((gd, g) => ({
        group: g, firstBlock: vol.groupFirstBlock(g), blocks: vol.blocksInGroup(g),
        blockBitmap: gd.blockBitmap, inodeBitmap: gd.inodeBitmap, inodeTable: gd.inodeTable,
        freeBlocks: gd.freeBlocks, freeInodes: gd.freeInodes, usedDirs: gd.usedDirs, itableUnused: gd.itableUnused,
        flags: [gd.flags & BG_INODE_UNINIT && 'INODE_UNINIT', gd.flags & BG_BLOCK_UNINIT && 'BLOCK_UNINIT', gd.flags & BG_INODE_ZEROED && 'ITABLE_ZEROED'].filter((x): x is string => !!x),
      }));
    }
    return info;
  } finally {
    await vol.dev.close();
  }
}
