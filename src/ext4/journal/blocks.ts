/**
 * jbd2 log blocks other than the superblock, as linux/include/linux/jbd2.h defines them (all
 * fields BIG-endian):
 *
 *   journal_header_t    { be32 h_magic, h_blocktype, h_sequence }                  12 bytes
 *   descriptor block    header, then block tags; with CSUM_V2/V3 the last 4 bytes are
 *                       jbd2_journal_block_tail { be32 t_checksum } = crc32c(j_csum_seed,
 *                       block with t_checksum 0)
 *   journal_block_tag3_t (CSUM_V3)  { be32 t_blocknr, t_flags, t_blocknr_high, t_checksum } 16
 *   journal_block_tag_t { be32 t_blocknr; be16 t_checksum; be16 t_flags; be32 t_blocknr_high }
 *                       12 bytes with 64BIT, 8 without (no t_blocknr_high); +2 with CSUM_V2
 *                       (journal_tag_bytes()). A tag without JBD2_FLAG_SAME_UUID is followed by
 *                       the 16-byte UUID; the last tag of a descriptor has JBD2_FLAG_LAST_TAG.
 *                       The tag checksum (V3: 32 bits) is crc32c(j_csum_seed, be32 sequence)
 *                       continued over the log block as written (escaped).
 *   commit_header       { header; u8 h_chksum_type, h_chksum_size, h_padding[2];
 *                         be32 h_chksum[8]; be64 h_commit_sec; be32 h_commit_nsec }; with
 *                       CSUM_V2/V3 h_chksum[0] = crc32c(j_csum_seed, whole block, h_chksum[0] 0)
 *   revoke block        { header; be32 r_count (bytes used, header included) } then block
 *                       numbers (be64 with 64BIT, else be32); block tail as for descriptors.
 *
 * A logged copy of a block whose first 4 bytes are the jbd2 magic is written with them zeroed
 * and JBD2_FLAG_ESCAPE set, so replay cannot mistake it for a log block (jbd2_journal_write_
 * metadata_buffer); replay puts the magic back.
 */
import { Struct } from '../../util/struct';
import fs from 'node:fs';
import { ext4Crc } from '../crc';
import {
  JBD2_MAGIC_NUMBER, JBD2_FEATURE_INCOMPAT_64BIT, JBD2_FEATURE_INCOMPAT_CSUM_V2, JBD2_FEATURE_INCOMPAT_CSUM_V3,
} from './superblock';

export const JBD2_FLAG_ESCAPE = 1;
export const JBD2_FLAG_SAME_UUID = 2;
export const JBD2_FLAG_DELETED = 4;
export const JBD2_FLAG_LAST_TAG = 8;

export const JOURNAL_HEADER_SIZE = 12;
export const BLOCK_TAIL_SIZE = 4;
export const REVOKE_HEADER_SIZE = 16;
const UUID_SIZE = 16;

export const CommitHeaderLayout = new Struct('commit_header', {
  h_magic: 'u32', h_blocktype: 'u32', h_sequence: 'u32',
  h_chksum_type: 'u8', h_chksum_size: 'u8', h_padding: 2,
  h_chksum: 32,
  h_commit_sec: 'u64', h_commit_nsec: 'u32',
}, 60, 'be');

/** The journal features that decide the on-disk shape of tags and tails. */
export interface LogFormat {
  blockSize: number;
  incompat: number;
  /** crc32c(~0, journal UUID): seeds every jbd2 checksum. */
  csumSeed: number;
  uuid: Buffer;
}

export const hasCsum = (f: LogFormat): boolean => (f.incompat & (JBD2_FEATURE_INCOMPAT_CSUM_V2 | JBD2_FEATURE_INCOMPAT_CSUM_V3)) !== 0;
const hasCsumV3 = (f: LogFormat): boolean => (f.incompat & JBD2_FEATURE_INCOMPAT_CSUM_V3) !== 0;
const has64 = (f: LogFormat): boolean => (f.incompat & JBD2_FEATURE_INCOMPAT_64BIT) !== 0;

/** journal_tag_bytes(). */
export function tagBytes(f: LogFormat): number {
  if (hasCsumV3(f)) return 16;
  let sz = 12;
  if (f.incompat & JBD2_FEATURE_INCOMPAT_CSUM_V2) sz += 2;
  return has64(f) ? sz : sz - 4;
}

export function journalCsumSeed(uuid: Buffer): number {
  return ext4Crc(0xffffffff, uuid);
}

export interface LogHeader {
  magic: number;
  blockType: number;
  sequence: number;
}

export function readHeader(buf: Buffer): LogHeader {
  return { magic: buf.readUInt32BE(0), blockType: buf.readUInt32BE(4), sequence: buf.readUInt32BE(8) };
}

function writeHeader(buf: Buffer, blockType: number, sequence: number): void {
  buf.writeUInt32BE(JBD2_MAGIC_NUMBER, 0);
  buf.writeUInt32BE(blockType, 4);
  buf.writeUInt32BE(sequence >>> 0, 8);
}

/** jbd2_descriptor_block_csum_set/verify: the tail of descriptor and revoke blocks. */
const ZERO_TAIL = Buffer.alloc(BLOCK_TAIL_SIZE);
export function tailChecksum(f: LogFormat, block: Buffer): number {
  const end = f.blockSize - BLOCK_TAIL_SIZE;
  const crc = ext4Crc(f.csumSeed, block.subarray(0, end));
  return ext4Crc(crc, ZERO_TAIL);
}
export function verifyTail(f: LogFormat, block: Buffer): boolean {
  return !hasCsum(f) || block.readUInt32BE(f.blockSize - BLOCK_TAIL_SIZE) === tailChecksum(f, block);
}
function sealTail(f: LogFormat, block: Buffer): void {
  if (hasCsum(f)) block.writeUInt32BE(tailChecksum(f, block), f.blockSize - BLOCK_TAIL_SIZE);
}

/** jbd2_block_tag_csum: over the sequence number, then the block as logged. */
const seqScratch = Buffer.alloc(4);
export function tagChecksum(f: LogFormat, sequence: number, logged: Buffer): number {
  seqScratch.writeUInt32BE(sequence >>> 0, 0);
  return ext4Crc(ext4Crc(f.csumSeed, seqScratch), logged);
}

// ---- descriptor blocks ----

export interface BlockTag {
  /** Filesystem block the logged copy belongs to. */
  block: number;
  flags: number;
  /** Tag checksum as stored (V3: 32 bits; V2: 16 bits; else 0). */
  checksum: number;
}

/** How many tags one descriptor block holds when every tag may carry a UUID (conservative). */
export function tagsPerDescriptor(f: LogFormat): number {
  const room = f.blockSize - JOURNAL_HEADER_SIZE - (hasCsum(f) ? BLOCK_TAIL_SIZE : 0) - UUID_SIZE;
  return Math.floor(room / tagBytes(f));
}

/** Parse the tags of a descriptor block (count_tags() and the replay loop of do_one_pass). */
export function readTags(f: LogFormat, buf: Buffer): BlockTag[] {
  const tb = tagBytes(f);
  const limit = f.blockSize - (hasCsum(f) ? BLOCK_TAIL_SIZE : 0);
  const tags: BlockTag[] = [];
  let p = JOURNAL_HEADER_SIZE;
  while (p + tb <= limit) {
    let block = buf.readUInt32BE(p);
    let flags: number;
    let checksum = 0;
    if (hasCsumV3(f)) {
      flags = buf.readUInt32BE(p + 4) & 0xffff;
      if (has64(f)) block += buf.readUInt32BE(p + 8) * 2 ** 32;
      checksum = buf.readUInt32BE(p + 12);
    } else {
      checksum = buf.readUInt16BE(p + 4);
      flags = buf.readUInt16BE(p + 6);
      if (has64(f)) block += buf.readUInt32BE(p + 8) * 2 ** 32;
    }
    tags.push({ block, flags, checksum });
    p += tb;
    if (!(flags & JBD2_FLAG_SAME_UUID)) p += UUID_SIZE;
    if (flags & JBD2_FLAG_LAST_TAG) break;
  }
  return tags;
}

/**
 * A block to encode into: `into` zeroed (a block of the transaction's write buffer), or a new
 * one. A fresh zeroed 4 KiB Buffer per log block was a visible part of a commit's cost.
 */
function blockFor(f: LogFormat, into?: Buffer): Buffer {
  return into ? into.fill(0) : Buffer.alloc(f.blockSize);
}

/** Build a descriptor block for `tags` (at most tagsPerDescriptor); the first tag carries the UUID. */
export function encodeDescriptor(f: LogFormat, sequence: number, tags: BlockTag[], into?: Buffer): Buffer {
  const buf = blockFor(f, into);
  writeHeader(buf, 1 /* JBD2_DESCRIPTOR_BLOCK */, sequence);
  const tb = tagBytes(f);
  let p = JOURNAL_HEADER_SIZE;
  tags.forEach((t, i) => {
    let flags = t.flags & ~(JBD2_FLAG_SAME_UUID | JBD2_FLAG_LAST_TAG);
    if (i > 0) flags |= JBD2_FLAG_SAME_UUID;
    if (i === tags.length - 1) flags |= JBD2_FLAG_LAST_TAG;
    const lo = t.block % 2 ** 32;
    const hi = Math.floor(t.block / 2 ** 32);
    buf.writeUInt32BE(lo, p);
    if (hasCsumV3(f)) {
      buf.writeUInt32BE(flags, p + 4);
      if (has64(f)) buf.writeUInt32BE(hi, p + 8);
      buf.writeUInt32BE(t.checksum >>> 0, p + 12);
    } else {
      buf.writeUInt16BE(t.checksum & 0xffff, p + 4);
      buf.writeUInt16BE(flags, p + 6);
      if (has64(f)) buf.writeUInt32BE(hi, p + 8);
    }
    p += tb;
    if (i === 0) {
      f.uuid.copy(buf, p);
      p += UUID_SIZE;
    }
  });
  sealTail(f, buf);
  return buf;
}

/**
 * The logged form of a metadata block: escaped when it starts with the jbd2 magic. Returns a
 * copy (the cache buffer keeps changing after the commit), made in `into` when given (a block of
 * the transaction's write buffer), and the tag for it.
 */
export function logCopy(f: LogFormat, sequence: number, block: number, data: Buffer, into?: Buffer): { logged: Buffer; tag: BlockTag } {
  const logged = into ?? Buffer.allocUnsafe(data.length);
  data.copy(logged);
  let flags = 0;
  if (logged.readUInt32BE(0) === JBD2_MAGIC_NUMBER) {
    logged.writeUInt32BE(0, 0);
    flags |= JBD2_FLAG_ESCAPE;
  }
  let checksum = 0;
  if (hasCsumV3(f)) checksum = tagChecksum(f, sequence, logged);
  else if (hasCsum(f)) checksum = tagChecksum(f, sequence, logged) & 0xffff;
  return { logged, tag: { block, flags, checksum } };
}

// ---- commit blocks ----

export function encodeCommit(f: LogFormat, sequence: number, sec: number, nsec: number, into?: Buffer): Buffer {
  const buf = commitHeader(f, sequence, sec, nsec, into);
  if (hasCsum(f)) buf.writeUInt32BE(ext4Crc(f.csumSeed, buf), CommitHeaderLayout.offsetOf('h_chksum'));
  return buf;
}

/** Reused by commitHeader (encode is synchronous): a decode per commit block showed in profiles. */
const commitFields = CommitHeaderLayout.zero();

/** A commit block's header fields, h_chksum left 0. */
function commitHeader(f: LogFormat, sequence: number, sec: number, nsec: number, into?: Buffer): Buffer {
  const buf = blockFor(f, into);
  const h = commitFields;
  h.h_magic = JBD2_MAGIC_NUMBER;
  h.h_blocktype = 2; // JBD2_COMMIT_BLOCK
  h.h_sequence = sequence >>> 0;
  h.h_commit_sec = sec;
  h.h_commit_nsec = nsec;
  CommitHeaderLayout.encode(h, buf);
  return buf;
}

/**
 * kfs's log-only ("soft") commit record: the fields of a commit block under a block type jbd2
 * does not know, so the kernel's and e2fsck's replay end the log there ("Unrecognised magic,
 * end of scan") and never apply a transaction whose blocks may not all be on disk. kfs replays
 * it only when the crc32c of the transaction's log blocks (descriptors, copies, revokes, in log
 * order; with csum v3 the descriptors and revokes only, see softCrcCoversTagsOnly), stored at
 * byte 60, matches what it reads. A later durable commit rewrites it as a
 * real commit block. Bytes 68..83: the boot_id of the kernel that ran the writer
 * (/proc/sys/kernel/random/boot_id): the record counts only in that same boot. A soft commit has
 * no barrier, so its log blocks may survive a power loss while the file data it points at
 * (ordered mode: written before it, but not flushed) does not; after a reboot it is dropped, as
 * an unflushed transaction would be. Within the boot (a server process death) the host's page
 * cache holds all of it. Bytes 64..67: crc32c of bytes 0..63 and 68..83 (the record's own
 * check, needed without csum v2/v3).
 */
export const KFS_SOFT_COMMIT_BLOCK = 0x4b465343; // "KFSC"
const SOFT_TXN_CRC = 60;
const SOFT_SELF_CRC = 64;
const SOFT_BOOT_ID = 68;
const BOOT_ID_SIZE = 16;

let bootId: Buffer | null = null;
/** This boot's id (16 bytes), or zeros where the kernel does not tell. */
export function currentBootId(): Buffer {
  if (bootId) return bootId;
  try {
    const hex = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim().replace(/-/g, '');
    bootId = /^[0-9a-f]{32}$/i.test(hex) ? Buffer.from(hex, 'hex') : Buffer.alloc(BOOT_ID_SIZE);
  } catch {
    bootId = Buffer.alloc(BOOT_ID_SIZE);
  }
  return bootId;
}

function softSelfCrc(f: LogFormat, buf: Buffer): number {
  return ext4Crc(ext4Crc(f.csumSeed, buf.subarray(0, SOFT_SELF_CRC)), buf.subarray(SOFT_BOOT_ID, SOFT_BOOT_ID + BOOT_ID_SIZE));
}

export function encodeSoftCommit(f: LogFormat, sequence: number, sec: number, nsec: number, txnCrc: number, boot = currentBootId(), into?: Buffer): Buffer {
  const buf = commitHeader(f, sequence, sec, nsec, into);
  buf.writeUInt32BE(KFS_SOFT_COMMIT_BLOCK, 4);
  buf.writeUInt32BE(txnCrc >>> 0, SOFT_TXN_CRC);
  boot.copy(buf, SOFT_BOOT_ID, 0, BOOT_ID_SIZE);
  buf.writeUInt32BE(softSelfCrc(f, buf), SOFT_SELF_CRC);
  return buf;
}

/** A soft commit record's transaction crc and boot, or null when the record itself is damaged. */
export function decodeSoftCommit(f: LogFormat, buf: Buffer): { txnCrc: number; boot: Buffer } | null {
  if (buf.readUInt32BE(SOFT_SELF_CRC) !== softSelfCrc(f, buf)) return null;
  return { txnCrc: buf.readUInt32BE(SOFT_TXN_CRC), boot: buf.subarray(SOFT_BOOT_ID, SOFT_BOOT_ID + BOOT_ID_SIZE) };
}

/**
 * Does the soft commit crc cover only a transaction's descriptor and revoke blocks? With csum
 * v3 each logged copy has its own 32-bit checksum in a descriptor tag (over the sequence and
 * the copy), so the descriptors vouch for the copies and replay checks each copy against its
 * tag; without csum v3 (none, or v2's 16-bit tags) the crc covers every block.
 */
export const softCrcCoversTagsOnly = (f: LogFormat): boolean => hasCsumV3(f);

/** crc32c over a transaction's log blocks, continued block by block. */
export function txnCrc(f: LogFormat, crc: number, block: Buffer): number {
  return ext4Crc(crc, block);
}

/** jbd2_commit_block_csum_verify. */
export function verifyCommit(f: LogFormat, buf: Buffer): boolean {
  if (!hasCsum(f)) return true;
  const off = CommitHeaderLayout.offsetOf('h_chksum');
  const copy = Buffer.from(buf.subarray(0, f.blockSize));
  const provided = copy.readUInt32BE(off);
  copy.writeUInt32BE(0, off);
  return provided === ext4Crc(f.csumSeed, copy);
}

export function commitTime(buf: Buffer): number {
  return Number(CommitHeaderLayout.decode(buf).h_commit_sec);
}

// ---- revoke blocks ----

export function revokeRecordSize(f: LogFormat): number {
  return has64(f) ? 8 : 4;
}

/** Revoke records per block. */
export function revokesPerBlock(f: LogFormat): number {
  return Math.floor((f.blockSize - REVOKE_HEADER_SIZE - (hasCsum(f) ? BLOCK_TAIL_SIZE : 0)) / revokeRecordSize(f));
}

export function encodeRevoke(f: LogFormat, sequence: number, blocks: number[], into?: Buffer): Buffer {
  const buf = blockFor(f, into);
  writeHeader(buf, 5 /* JBD2_REVOKE_BLOCK */, sequence);
  const rs = revokeRecordSize(f);
  let p = REVOKE_HEADER_SIZE;
  for (const b of blocks) {
    if (rs === 8) buf.writeBigUInt64BE(BigInt(b), p);
    else buf.writeUInt32BE(b >>> 0, p);
    p += rs;
  }
  buf.writeUInt32BE(p, JOURNAL_HEADER_SIZE);
  sealTail(f, buf);
  return buf;
}

/** The blocks a revoke block names (scan_revoke_records); null when r_count is impossible. */
export function readRevoke(f: LogFormat, buf: Buffer): number[] | null {
  const count = buf.readUInt32BE(JOURNAL_HEADER_SIZE);
  if (count > f.blockSize - (hasCsum(f) ? BLOCK_TAIL_SIZE : 0)) return null;
  const rs = revokeRecordSize(f);
  const out: number[] = [];
  for (let p = REVOKE_HEADER_SIZE; p + rs <= count; p += rs) {
    out.push(rs === 8 ? Number(buf.readBigUInt64BE(p)) : buf.readUInt32BE(p));
  }
  return out;
}
