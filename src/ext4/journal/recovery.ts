/**
 * Finding the journal of an ext4 image and replaying it, as jbd2_journal_recover() does
 * (linux fs/jbd2/recovery.c, e2fsprogs e2fsck/recovery.c): starting at s_start with sequence
 * s_sequence, walk descriptor / revoke / commit blocks while each carries the expected sequence;
 * a transaction counts only when its commit block is found and valid. Revoke records of every
 * committed transaction are gathered first (PASS_REVOKE); then each logged block is written
 * home unless a revoke with a sequence >= its transaction's names it (PASS_REPLAY).
 *
 * The journal's blocks are found through the superblock's backup of the journal inode's
 * i_block (s_jnl_blocks) or, failing that, inode 8 itself, read without verifying checksums:
 * before replay, the metadata on disk may be torn; only the journal is to be trusted.
 */
import { BlockDevice } from '../../block/device';
import { CorruptionError, FsError } from '../../util/errors';
import { log } from '../../util/log';
import { SuperblockFields, INCOMPAT, COMPAT, sbBlocksCount, descGeometry, groupDescLocation } from '../superblock';
import { decodeGroupDesc } from '../group-desc';
import { ExtentMap, ExtentTreeIO, EXTENT_MAGIC } from '../extents';
import { loadIndirectMap } from '../indirect';
import { INODE_FLAGS, JOURNAL_INO } from '../inode';
import {
  JournalSuperblock, decodeJournalSuperblock, encodeJournalSuperblock, journalSuperblockChecksum, setJournalSuperblockChecksum,
  JBD2_MAGIC_NUMBER, JBD2_SUPERBLOCK_V1, JBD2_SUPERBLOCK_V2, JBD2_DESCRIPTOR_BLOCK, JBD2_COMMIT_BLOCK, JBD2_REVOKE_BLOCK,
  JBD2_FEATURE_INCOMPAT_CSUM_V2, JBD2_FEATURE_INCOMPAT_CSUM_V3, JBD2_FEATURE_INCOMPAT_FAST_COMMIT, JOURNAL_SUPERBLOCK_SIZE,
} from './superblock';
import {
  LogFormat, journalCsumSeed, readHeader, readTags, verifyTail, verifyCommit, commitTime, readRevoke, tagChecksum,
  hasCsum, JBD2_FLAG_ESCAPE, BlockTag, KFS_SOFT_COMMIT_BLOCK, decodeSoftCommit, currentBootId, txnCrc, softCrcCoversTagsOnly,
} from './blocks';

const EXT3_JNL_BACKUP_BLOCKS = 1;
/** jbd2 incompat features kfs can replay and write. */
const KNOWN_INCOMPAT = 0x1 | 0x2 | 0x4 | JBD2_FEATURE_INCOMPAT_CSUM_V2 | JBD2_FEATURE_INCOMPAT_CSUM_V3;

/** The journal inode's blocks: log block n lives at image block phys(n). */
export class JournalFile {
  constructor(readonly extents: { lblk: number; len: number; pblk: number }[], readonly blockCount: number) {}

  phys(n: number): number {
    for (const e of this.extents) if (n >= e.lblk && n < e.lblk + e.len) return e.pblk + (n - e.lblk);
    throw new CorruptionError(`journal block ${n} is not mapped by the journal inode`);
  }

  /** Runs of consecutive log blocks [from, from+count) that are also consecutive on disk. */
  runs(from: number, count: number): { log: number; pblk: number; len: number }[] {
    const out: { log: number; pblk: number; len: number }[] = [];
    let n = from;
    while (n < from + count) {
      const e = this.extents.find((x) => n >= x.lblk && n < x.lblk + x.len);
      if (!e) throw new CorruptionError(`journal block ${n} is not mapped by the journal inode`);
      const len = Math.min(from + count - n, e.lblk + e.len - n);
      out.push({ log: n, pblk: e.pblk + (n - e.lblk), len });
      n += len;
    }
    return out;
  }
}

/** Where the journal is, from the superblock alone (or inode 8, read raw). */
export async function locateJournal(dev: BlockDevice, sb: SuperblockFields): Promise<JournalFile> {
  // ext4_load_journal: both an inode and a device is not a journal setup but damage (EINVAL there).
  if (sb.s_journal_dev && sb.s_journal_inum) throw new CorruptionError(`superblock names both a journal inode (${sb.s_journal_inum}) and a journal device`);
  if (sb.s_journal_dev || !sb.s_journal_inum) throw new FsError('EOPNOTSUPP', 'external journal devices are not supported');
  const bs = 1024 << sb.s_log_block_size;
  const raw = async (block: number): Promise<Buffer> => {
    const b = Buffer.alloc(bs);
    await dev.readAt(b, block * bs);
    return b;
  };
  let iBlock: Buffer;
  // An extent tree (ext4) or an ext3 block map: the inode's EXTENTS_FL says; the superblock's
  // copy of i_block does not carry the flags. An extent root there has its magic, eh_max 4 and
  // a depth of at most 5; a block map's first two words are block numbers, which pass all
  // three only by accident (a journal at a block ending in 0xf30a passes the first alone).
  let extentTree: boolean;
  if (sb.s_jnl_backup_type === EXT3_JNL_BACKUP_BLOCKS && sb.s_journal_inum === JOURNAL_INO) {
    iBlock = Buffer.from(sb.s_jnl_blocks.subarray(0, 60));
    extentTree = iBlock.readUInt16LE(0) === EXTENT_MAGIC && iBlock.readUInt16LE(2) <= 4 && iBlock.readUInt16LE(4) === 4 && iBlock.readUInt16LE(6) <= 5;
  } else {
    const ino = sb.s_journal_inum;
    const g = Math.floor((ino - 1) / sb.s_inodes_per_group);
    const at = groupDescLocation(g, sb);
    const gd = decodeGroupDesc(await raw(at.block), at.offset, descGeometry(sb).descSize);
    const inodeSize = sb.s_rev_level === 0 ? 128 : sb.s_inode_size;
    const byte = ((ino - 1) % sb.s_inodes_per_group) * inodeSize;
    const itb = await raw(gd.inodeTable + Math.floor(byte / bs));
    iBlock = Buffer.from(itb.subarray((byte % bs) + 40, (byte % bs) + 100)); // i_block at 0x28
    extentTree = (itb.readUInt32LE((byte % bs) + 0x20) & INODE_FLAGS.EXTENTS) !== 0; // i_flags at 0x20
  }
  // The journal's extents must lie inside the filesystem (and the image): a damaged
  // s_jnl_blocks backup or journal inode is then EIO here, not a read at an absurd offset.
  const io: ExtentTreeIO = {
    blockSize: bs, read: raw, blocksCount: Math.min(sbBlocksCount(sb), Math.floor(dev.size / bs)),
    zeroed: () => { throw new Error('read-only extent walk'); },
    markDirty: () => { throw new Error('read-only extent walk'); },
    allocMeta: () => { throw new Error('read-only extent walk'); },
    freeMeta: () => { throw new Error('read-only extent walk'); },
  };
  const map = extentTree ? await ExtentMap.load(sb.s_journal_inum, iBlock, io, null) : await loadIndirectMap(sb.s_journal_inum, iBlock, io);
  const extents = map.extents.map((e) => ({ lblk: e.lblk, len: e.len, pblk: e.pblk }));
  const count = extents.reduce((m, e) => Math.max(m, e.lblk + e.len), 0);
  if (count === 0) throw new CorruptionError('the journal inode maps no blocks');
  return new JournalFile(extents, count);
}

export async function readJournalSuperblock(dev: BlockDevice, file: JournalFile): Promise<{ jsb: JournalSuperblock; raw: Buffer }> {
  const raw = Buffer.alloc(JOURNAL_SUPERBLOCK_SIZE);
  await dev.readAt(raw, file.phys(0) * dev.blockSize);
  const jsb = decodeJournalSuperblock(raw);
  if (jsb.h_magic !== JBD2_MAGIC_NUMBER || (jsb.h_blocktype !== JBD2_SUPERBLOCK_V1 && jsb.h_blocktype !== JBD2_SUPERBLOCK_V2)) {
    throw new CorruptionError('the journal superblock is missing or damaged (run e2fsck)');
  }
  if (jsb.s_blocksize !== dev.blockSize) throw new CorruptionError(`journal block size ${jsb.s_blocksize} differs from the filesystem's ${dev.blockSize}`);
  if (jsb.h_blocktype === JBD2_SUPERBLOCK_V1) {
    jsb.s_feature_compat = 0;
    jsb.s_feature_incompat = 0;
    jsb.s_feature_ro_compat = 0;
  }
  if (jsb.s_feature_incompat & ~KNOWN_INCOMPAT) {
    // The kernel clears fast_commit at a clean unmount: only a crashed kernel's journal has it,
    // and e2fsck can replay that one.
    const fc = jsb.s_feature_incompat & JBD2_FEATURE_INCOMPAT_FAST_COMMIT ? " (fast_commit); replay it with e2fsck -fy (or mount and unmount it with the kernel's ext4) first" : '';
    throw new FsError('EINVAL', `the journal uses features kfs does not support: 0x${(jsb.s_feature_incompat & ~KNOWN_INCOMPAT).toString(16)}${fc}`);
  }
  if (hasCsum(logFormatOf(jsb)) && journalSuperblockChecksum(raw) !== jsb.s_checksum) {
    throw new CorruptionError('journal superblock checksum mismatch (run e2fsck)');
  }
  if (jsb.s_first < 1 || jsb.s_maxlen > file.blockCount || jsb.s_first >= jsb.s_maxlen) {
    throw new CorruptionError(`journal superblock geometry (first ${jsb.s_first}, maxlen ${jsb.s_maxlen}) does not fit the journal inode (${file.blockCount} blocks)`);
  }
  return { jsb, raw };
}

export function logFormatOf(jsb: JournalSuperblock): LogFormat {
  return { blockSize: jsb.s_blocksize, incompat: jsb.s_feature_incompat, csumSeed: journalCsumSeed(jsb.s_uuid), uuid: jsb.s_uuid };
}

export async function writeJournalSuperblock(dev: BlockDevice, file: JournalFile, jsb: JournalSuperblock): Promise<void> {
  const raw = encodeJournalSuperblock(jsb);
  if (hasCsum(logFormatOf(jsb))) jsb.s_checksum = setJournalSuperblockChecksum(raw);
  await dev.writeAt(raw, file.phys(0) * dev.blockSize);
}

interface ScannedTransaction {
  sequence: number;
  /** Log block index of each logged copy, with its tag. */
  blocks: { tag: BlockTag; logBlock: number }[];
  revokes: number[];
  /** Every log block of the transaction before its commit record, in log order. */
  logBlocks: number[];
  /** Its descriptor and revoke blocks, in log order. */
  metaBlocks: number[];
}

export interface ReplayResult {
  /** Final content of every replayed block, by filesystem block. */
  blocks: Map<number, Buffer>;
  transactions: number;
  /** Of which kfs log-only commits (replayed by kfs only). */
  softTransactions: number;
  /** Sequence the next transaction must use. */
  nextSequence: number;
  /** Log blocks whose tag checksum failed (not replayed). */
  badBlocks: number;
}

/** Scan and replay into memory (nothing is written). */
/**
 * `boot`: whose soft commits count (this boot's unless a caller replays an image as it would be
 * after a reboot: crash tests simulating a power loss).
 */
export async function scanAndReplay(dev: BlockDevice, file: JournalFile, jsb: JournalSuperblock, boot = currentBootId()): Promise<ReplayResult> {
  const f = logFormatOf(jsb);
  const first = jsb.s_first;
  const last = jsb.s_maxlen - (jsb.s_feature_incompat & JBD2_FEATURE_INCOMPAT_FAST_COMMIT ? jsb.s_num_fc_blks : 0);
  const wrap = (n: number) => (n >= last ? n - (last - first) : n);
  const bs = dev.blockSize;
  const readLog = async (n: number): Promise<Buffer> => {
    const b = Buffer.alloc(bs);
    await dev.readAt(b, file.phys(n) * bs);
    return b;
  };
  const txns: ScannedTransaction[] = [];
  let seq = jsb.s_sequence;
  let next = jsb.s_start;
  let lastCommitSec = 0;
  let cur: ScannedTransaction = { sequence: seq, blocks: [], revokes: [], logBlocks: [], metaBlocks: [] };
  let soft = 0;
  // Bounded by the log length: a valid log never holds more blocks than that.
  for (let guard = 0; guard <= last - first; guard++) {
    const buf = await readLog(next);
    const h = readHeader(buf);
    if (h.magic !== JBD2_MAGIC_NUMBER || h.sequence !== (seq >>> 0)) break;
    if (h.blockType === JBD2_DESCRIPTOR_BLOCK) {
      if (!verifyTail(f, buf)) break; // a torn descriptor: that transaction never committed
      cur.logBlocks.push(next);
      cur.metaBlocks.push(next);
      next = wrap(next + 1);
      for (const tag of readTags(f, buf)) {
        cur.blocks.push({ tag, logBlock: next });
        cur.logBlocks.push(next);
        next = wrap(next + 1);
      }
      continue;
    }
    if (h.blockType === JBD2_REVOKE_BLOCK) {
      const r = verifyTail(f, buf) ? readRevoke(f, buf) : null;
      if (!r) break;
      cur.revokes.push(...r);
      cur.logBlocks.push(next);
      cur.metaBlocks.push(next);
      next = wrap(next + 1);
      continue;
    }
    if (h.blockType === KFS_SOFT_COMMIT_BLOCK) {
      // A log-only commit (journal.ts): it counts only if every block it covers is the one
      // written with it; otherwise a power loss kept part of it, and the log ends here.
      const rec = decodeSoftCommit(f, buf);
      const t = commitTime(buf);
      // Another boot's soft commit: a power loss may have kept it without its file data.
      if (rec === null || t < lastCommitSec || !rec.boot.equals(boot)) break;
      const want = rec.txnCrc;
      let crc = 0;
      const tagsOnly = softCrcCoversTagsOnly(f);
      for (const n of tagsOnly ? cur.metaBlocks : cur.logBlocks) crc = txnCrc(f, crc, await readLog(n));
      if (crc !== want) break;
      let copiesOk = true;
      if (tagsOnly) {
        for (const { tag, logBlock } of cur.blocks) {
          if (tagChecksum(f, seq, await readLog(logBlock)) !== tag.checksum) {
            copiesOk = false;
            break;
          }
        }
      }
      if (!copiesOk) break;
      lastCommitSec = t;
      txns.push(cur);
      soft++;
      seq = (seq + 1) >>> 0;
      cur = { sequence: seq, blocks: [], revokes: [], logBlocks: [], metaBlocks: [] };
      next = wrap(next + 1);
      continue;
    }
    if (h.blockType === JBD2_COMMIT_BLOCK) {
      const t = commitTime(buf);
      if (!verifyCommit(f, buf) || t < lastCommitSec) break;
      lastCommitSec = t;
      txns.push(cur);
      seq = (seq + 1) >>> 0;
      cur = { sequence: seq, blocks: [], revokes: [], logBlocks: [], metaBlocks: [] };
      next = wrap(next + 1);
      continue;
    }
    break;
  }
  // PASS_REVOKE: the latest transaction revoking each block.
  const revoked = new Map<number, number>();
  for (const t of txns) for (const b of t.revokes) revoked.set(b, t.sequence);
  // PASS_REPLAY.
  const blocks = new Map<number, Buffer>();
  let badBlocks = 0;
  for (const t of txns) {
    for (const { tag, logBlock } of t.blocks) {
      const r = revoked.get(tag.block);
      if (r !== undefined && seqGeq(r, t.sequence)) continue;
      const data = await readLog(logBlock);
      if (hasCsum(f)) {
        const want = f.incompat & JBD2_FEATURE_INCOMPAT_CSUM_V3 ? tagChecksum(f, t.sequence, data) : tagChecksum(f, t.sequence, data) & 0xffff;
        if (want !== tag.checksum) {
          log.error(`journal: checksum mismatch in the logged copy of block ${tag.block} (transaction ${t.sequence}); not replayed`);
          badBlocks++;
          continue;
        }
      }
      if (tag.flags & JBD2_FLAG_ESCAPE) data.writeUInt32BE(JBD2_MAGIC_NUMBER, 0);
      blocks.set(tag.block, data);
    }
  }
  return { blocks, transactions: txns.length, softTransactions: soft, nextSequence: seq, badBlocks };
}

/** tid_geq(): sequence comparison modulo 2^32. */
export function seqGeq(a: number, b: number): boolean {
  return ((a - b) | 0) >= 0;
}

export interface RecoveryOutcome {
  transactions: number;
  softTransactions: number;
  blocks: number;
}

/**
 * Replay the journal of a writable image in place: blocks home, a barrier, then the journal
 * marked empty (s_start 0, s_sequence past the last transaction) and another barrier. Clearing
 * the ext4 needs_recovery flag is the caller's (it re-reads the replayed superblock).
 */
export async function recoverInPlace(dev: BlockDevice, sb: SuperblockFields, boot?: Buffer): Promise<RecoveryOutcome> {
  const file = await locateJournal(dev, sb);
  const { jsb } = await readJournalSuperblock(dev, file);
  if (jsb.s_start === 0) return { transactions: 0, softTransactions: 0, blocks: 0 };
  const r = await scanAndReplay(dev, file, jsb, boot);
  const bs = dev.blockSize;
  const sorted = [...r.blocks.keys()].sort((a, b) => a - b);
  for (const b of sorted) {
    if ((b + 1) * bs > dev.size) throw new CorruptionError(`journal replays block ${b}, outside the image`);
    await dev.writeAt(r.blocks.get(b)!, b * bs);
  }
  await dev.barrier();
  jsb.s_start = 0;
  // Past the first uncommitted ID too (its blocks may be in the log), as jbd2 does.
  jsb.s_sequence = (r.nextSequence + 1) >>> 0;
  await writeJournalSuperblock(dev, file, jsb);
  await dev.barrier();
  if (r.badBlocks) log.error(`journal: ${r.badBlocks} logged block(s) failed their checksum and were skipped; run kfs fsck`);
  return { transactions: r.transactions, softTransactions: r.softTransactions, blocks: r.blocks.size };
}

/** Replay for a read-only open: the replayed blocks, to serve from memory. */
export async function recoverInMemory(dev: BlockDevice, sb: SuperblockFields, boot?: Buffer): Promise<Map<number, Buffer>> {
  const file = await locateJournal(dev, sb);
  const { jsb } = await readJournalSuperblock(dev, file);
  if (jsb.s_start === 0) return new Map();
  return (await scanAndReplay(dev, file, jsb, boot)).blocks;
}

/**
 * Does physical block `pblk` hold the commit block of transaction `seq`? (A restarted server
 * asks whether the durable commit its predecessor was making got that far: shared-log.ts.)
 */
export async function isCommitBlockOf(dev: BlockDevice, pblk: number, seq: number): Promise<boolean> {
  if (!Number.isInteger(pblk) || pblk < 0 || (pblk + 1) * dev.blockSize > dev.size) return false;
  const raw = Buffer.alloc(12);
  await dev.readAt(raw, pblk * dev.blockSize);
  const h = readHeader(raw);
  return h.magic === JBD2_MAGIC_NUMBER && h.blockType === JBD2_COMMIT_BLOCK && h.sequence === seq >>> 0;
}

export function needsRecovery(sb: SuperblockFields): boolean {
  return (sb.s_feature_compat & COMPAT.has_journal) !== 0 && (sb.s_feature_incompat & INCOMPAT.recover) !== 0;
}
