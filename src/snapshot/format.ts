/**
 * The snapshot store's on-disk format. The store lives in the image file itself, starting at
 * byte blocks_count * block_size (the first byte past the ext4 filesystem), so the
 * filesystem stays plain ext4: e2fsck and the kernel never look past the filesystem's last
 * block. The store is an array of "store blocks" of the filesystem's block size; store block
 * s is at byte base + s * block_size. All integers little-endian.
 *
 *   store block 0, 1   header A / header B (alternating: the valid one with the higher seq
 *                      wins; a change is published by writing the other one, so a torn
 *                      header write leaves the previous one in force)
 *     0  magic "KFSSNAP1"          8
 *     8  version (1)               u32
 *    12  block size                u32     (must equal the filesystem's)
 *    16  filesystem blocks         u64     (must equal the superblock's: the store's base)
 *    24  seq                       u64
 *    32  log start                 u32     store block of the first map batch
 *    36  log nonce                 u32     the nonce that batch must carry
 *    40  table start               u32     first store block of the snapshot table
 *    44  table blocks              u32
 *    48  snapshot count            u32
 *    52  next snapshot id          u32
 *    56  restore in progress       u32     id of the snapshot being restored whole (0: none)
 *    60  filesystem UUID           16      (a store left behind by an older filesystem, e.g.
 *                                          after mkfs with the same size, is not this one's)
 *    76  crc32c of bytes 0..75     u32
 *
 *   snapshot table (contiguous store blocks), per block:
 *     0 magic "KSTB" u32, 4 block index u32, 8 crc32c of the block (this field zero) u32, 12 pad
 *     16.. entries of 96 bytes, oldest snapshot first (the chain order):
 *       0 id u32, 4 flags u32 (0), 8 creation time ms u64, 16 slots held u64 (informative),
 *       24 name length u8, 25 name (UTF-8, at most 64 bytes), 89..95 zero
 *
 *   map log: a chain of batch blocks, each naming the store block of the next one (reserved in
 *   advance) and the random nonce the next must carry, so a stale block at that place (an old
 *   batch, slot data) is never mistaken for the continuation: the chain ends at the first block
 *   whose magic, nonce or crc does not match.
 *     0 magic "KSMB" u32, 4 nonce u32, 8 next nonce u32, 12 seq u32, 16 flush seq u32,
 *     20 snapshot id u32, 24 record count u32, 28 next u32, 32 crc32c (this field zero) u32,
 *     36..47 zero, 48.. records of 16 bytes: filesystem block u64, store slot u32,
 *     crc32c of the slot's data u32
 *   A record says: snapshot `id` sees filesystem block `block` as the bytes in store slot
 *   `slot` (the block's contents when the snapshot was the newest and the block was first
 *   overwritten in place). The batches one copy-on-write step appends share a flush seq; their
 *   slot data and the batches go out together before one fdatasync, so at open the records of
 *   the last flush group are checked against the slots' crcs (a crash before that fdatasync
 *   returned may have left a batch without its data: then the in-place writes it protected
 *   never happened, and the group is dropped). Flush seq 0 marks batches written by a rewrite
 *   of the whole log (delete), which is made durable before the header names it.
 *
 *   Everything else is free: the free list is rebuilt at open from the header, the table, the
 *   log chain and the slots its records name.
 */
import { ByteCursor } from '../util/cursor';
import { ext4Crc } from '../ext4/crc';

export const STORE_MAGIC = Buffer.from('KFSSNAP1', 'latin1');
export const STORE_VERSION = 1;
export const HEADER_SIZE = 80;
const TABLE_MAGIC = 0x4254534b; // "KSTB"
const BATCH_MAGIC = 0x424d534b; // "KSMB"
export const TABLE_HEAD = 16;
export const TABLE_ENTRY = 96;
export const BATCH_HEAD = 48;
export const RECORD_SIZE = 16;
export const NAME_MAX_BYTES = 64;

const crc = (b: Buffer): number => ext4Crc(0xffffffff, b);

export interface StoreHeader {
  blockSize: number;
  fsBlocks: number;
  seq: number;
  logStart: number;
  logNonce: number;
  tableStart: number;
  tableBlocks: number;
  snapCount: number;
  nextId: number;
  restoreId: number;
  uuid: Buffer;
}

export function encodeHeader(h: StoreHeader, bs: number): Buffer {
  const buf = Buffer.alloc(bs);
  const c = new ByteCursor(buf);
  c.putBytes(STORE_MAGIC).putU32(STORE_VERSION).putU32(h.blockSize).putU64(h.fsBlocks).putU64(h.seq);
  c.putU32(h.logStart).putU32(h.logNonce).putU32(h.tableStart).putU32(h.tableBlocks).putU32(h.snapCount).putU32(h.nextId).putU32(h.restoreId);
  c.putBytes(h.uuid.subarray(0, 16));
  c.putU32(crc(buf.subarray(0, 76)));
  return buf;
}

/** 'absent': no store magic; 'bad': magic but a bad crc or version (torn or damaged). */
export function decodeHeader(buf: Buffer): StoreHeader | 'absent' | 'bad' {
  if (!buf.subarray(0, 8).equals(STORE_MAGIC)) return 'absent';
  const c = new ByteCursor(buf, 8, HEADER_SIZE);
  const version = c.u32();
  if (version !== STORE_VERSION) return 'bad';
  const h: StoreHeader = {
    blockSize: c.u32(), fsBlocks: c.u64(), seq: c.u64(), logStart: c.u32(), logNonce: c.u32(), tableStart: c.u32(),
    tableBlocks: c.u32(), snapCount: c.u32(), nextId: c.u32(), restoreId: c.u32(), uuid: c.bytes(16),
  };
  if (c.u32() !== crc(buf.subarray(0, 76))) return 'bad';
  return h;
}

export interface TableEntry {
  id: number;
  name: string;
  createdMs: number;
  slots: number;
}

export function entriesPerTableBlock(bs: number): number {
  return Math.floor((bs - TABLE_HEAD) / TABLE_ENTRY);
}

export function tableBlocksFor(count: number, bs: number): number {
  return Math.max(1, Math.ceil(count / entriesPerTableBlock(bs)));
}

export function encodeTable(entries: TableEntry[], bs: number): Buffer[] {
  const per = entriesPerTableBlock(bs);
  const out: Buffer[] = [];
  const n = tableBlocksFor(entries.length, bs);
  for (let i = 0; i < n; i++) {
    const buf = Buffer.alloc(bs);
    const c = new ByteCursor(buf);
    c.putU32(TABLE_MAGIC).putU32(i).putU32(0).putU32(0);
    for (const e of entries.slice(i * per, (i + 1) * per)) {
      const name = Buffer.from(e.name, 'utf8');
      const start = c.offset;
      c.putU32(e.id).putU32(0).putU64(e.createdMs).putU64(e.slots).putU8(name.length).putBytes(name);
      c.seek(start + TABLE_ENTRY);
    }
    buf.writeUInt32LE(crc(buf), 8);
    out.push(buf);
  }
  return out;
}

export function decodeTable(blocks: Buffer[], count: number): TableEntry[] | string {
  const per = entriesPerTableBlock(blocks[0]?.length ?? 0);
  const out: TableEntry[] = [];
  for (let i = 0; i < blocks.length; i++) {
    const buf = blocks[i];
    const c = new ByteCursor(buf);
    if (c.u32() !== TABLE_MAGIC || c.u32() !== i) return `snapshot table block ${i} has a bad magic or index`;
    const stored = c.u32();
    const copy = Buffer.from(buf);
    copy.writeUInt32LE(0, 8);
    if (crc(copy) !== stored) return `snapshot table block ${i} checksum mismatch`;
    for (let k = 0; k < per && out.length < count; k++) {
      c.seek(TABLE_HEAD + k * TABLE_ENTRY);
      const id = c.u32();
      c.skip(4);
      const createdMs = c.u64();
      const slots = c.u64();
      const len = c.u8();
      if (len === 0 || len > NAME_MAX_BYTES) return `snapshot table entry ${out.length} has a bad name length ${len}`;
      out.push({ id, createdMs, slots, name: c.bytes(len).toString('utf8') });
    }
  }
  if (out.length !== count) return `snapshot table holds ${out.length} entries, the header says ${count}`;
  return out;
}

export interface MapRecord {
  block: number;
  slot: number;
  dataCrc: number;
}

export interface Batch {
  nonce: number;
  nextNonce: number;
  seq: number;
  flushSeq: number;
  snapId: number;
  next: number;
  records: MapRecord[];
}

export function recordsPerBatch(bs: number): number {
  return Math.floor((bs - BATCH_HEAD) / RECORD_SIZE);
}

export function encodeBatch(b: Batch, bs: number): Buffer {
  const buf = Buffer.alloc(bs);
  const c = new ByteCursor(buf);
  c.putU32(BATCH_MAGIC).putU32(b.nonce).putU32(b.nextNonce).putU32(b.seq).putU32(b.flushSeq).putU32(b.snapId);
  c.putU32(b.records.length).putU32(b.next).putU32(0);
  c.seek(BATCH_HEAD);
  for (const r of b.records) c.putU64(r.block).putU32(r.slot).putU32(r.dataCrc);
  buf.writeUInt32LE(crc(buf), 32);
  return buf;
}

/** The batch, or null when this block does not continue the chain (nonce, magic or crc). */
export function decodeBatch(buf: Buffer, nonce: number): Batch | null {
  const c = new ByteCursor(buf);
  if (c.u32() !== BATCH_MAGIC || c.u32() !== nonce) return null;
  const nextNonce = c.u32();
  const seq = c.u32();
  const flushSeq = c.u32();
  const snapId = c.u32();
  const count = c.u32();
  const next = c.u32();
  const stored = c.u32();
  if (count > recordsPerBatch(buf.length)) return null;
  const copy = Buffer.from(buf);
  copy.writeUInt32LE(0, 32);
  if (crc(copy) !== stored) return null;
  c.seek(BATCH_HEAD);
  const records: MapRecord[] = [];
  for (let i = 0; i < count; i++) records.push({ block: c.u64(), slot: c.u32(), dataCrc: c.u32() });
  return { nonce, nextNonce, seq, flushSeq, snapId, next, records };
}

export function dataCrc(buf: Buffer): number {
  return crc(buf);
}

/** A snapshot name: 1..64 bytes of UTF-8, no '/', no NUL, not '.' or '..'. */
export function checkSnapshotName(name: string): string | null {
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes === 0 || bytes > NAME_MAX_BYTES) return `snapshot names are 1 to ${NAME_MAX_BYTES} bytes long`;
  if (/[\u0000/]/.test(name) || name === '.' || name === '..' || /^\s|\s$/.test(name)) return 'snapshot names may not contain "/" or NUL, start or end with a space, or be "." or ".."';
  return null;
}
