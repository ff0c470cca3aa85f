/**
 * Log-only commits into shared memory the supervisor keeps (commit before reply, reply-gate.ts).
 *
 * A log-only commit must survive the death of the server process, nothing more: a power loss
 * is the durable commits' business. Memory that outlives the process does that without a
 * system call: the supervisor creates a memfd for the mount's whole life and hands it to each
 * server it starts. A commit then copies the changed blocks into it (a few µs) instead of
 * building a jbd2 transaction with checksums and writing it to the image's log (~130 µs per
 * commit, measured; two such commits per created file). The blocks stay pinned in the cache
 * until the next durable commit logs them all as one jbd2 transaction and writes them home;
 * then the shared log starts over. The image itself never sees these records, so the kernel,
 * e2fsck and older kfs versions are unaffected.
 *
 * A restarted server reads the shared log after the journal's replay and applies its blocks,
 * unless a durable commit already covered them: the server marks the log "committing
 * (sequence S, commit block at P)" before it writes the commit block of a durable transaction
 * and empties the log once that commit is done. A death between the two leaves the mark; the
 * log is then stale exactly when P holds the commit block of S.
 *
 * Compaction. Every commit appends whole copies of the blocks it changed, so a run of creates
 * in one directory appends the same few blocks (its leaf, the inode table block, the bitmaps,
 * the group descriptors) again and again, and the log fills long before the periodic durable
 * commit: 8000 creates filled 32 MiB nine times, and each time the server stopped for a
 * durable commit with its barrier (~35 ms). So the memory holds two regions, one active: when
 * the active one is full, the latest copy of every block in it (the pinned blocks, which
 * Journal.commitShared hands over with the new commit's) is written as one record into the
 * other region, which then becomes the active one. Only when even that does not fit does a
 * durable commit take over.
 *
 * Layout (little-endian), a 64-byte header then the two regions (each half of the rest):
 *   u32 magic "KFSL", u32 version, u32 block size, u32 flags (bit 0: committing),
 *   u32 committing sequence, u32 0, u64 committing commit block (physical),
 *   u32 state: bit 31 the active region, bits 0-30 bytes of complete records in it.
 *   record: u32 magic "KFSR", u32 count, count * u64 block numbers, count * block-size copies.
 * A record counts once the state includes it, which is stored after the record is complete,
 * with one aligned 32-bit store (a death cannot tear it): a death in the middle of a commit or
 * a compaction leaves the previous commits intact.
 *
 * Memory: the pages written stay the supervisor's (shmem) after the log is emptied, up to the
 * whole 64 MiB once a busy mount has used both regions. When the filesystem has been idle for a
 * commit interval with the log empty (releaseIfIdle), they are given back (a hole punched in
 * the memfd); a busy mount keeps them, as faulting them in again would cost each commit.
 */
import { ByteCursor } from '../../util/cursor';
import { log } from '../../util/log';

const MAGIC = 0x4c53464b; // "KFSL"
const VERSION = 2;
const RECORD_MAGIC = 0x5253464b; // "KFSR"
const HEADER_SIZE = 64;
const RECORD_HEADER_SIZE = 8;
const FLAG_COMMITTING = 1;
/** The state word (active region, bytes used in it); 4-byte aligned. */
const STATE_AT = 32;
const REGION_BIT = 0x80000000;
const FLAGS_AT = 12;

/** What the shared log holds for a restarted server. */
export interface SharedLogContents {
  /** The latest copy of each block, in the order the commits made them. */
  blocks: Map<number, Buffer>;
  records: number;
  /** Bytes of the records applied (less than the header says if one was damaged). */
  bytes: number;
  /** A durable commit was being made: its sequence and the physical block of its commit block. */
  committing: { seq: number; pblk: number } | null;
}

export class SharedSoftLog {
  /** The active region (0 or 1) and the bytes of complete records in it (mirror the state word). */
  private region: number;
  private used: number;
  /** Bytes per region. */
  private readonly regionBytes: number;
  /** The state word, stored with one 32-bit write. */
  private readonly state: Uint32Array;
  /** Records were written since the memory was last given back. */
  private touched = false;

  /**
   * `mem`: the shared mapping, zero-filled when new (the supervisor's memfd). `release(offset,
   * length)`: give those bytes' pages back, reading as zeros afterwards (a hole punched in the
   * memfd); without it the memory is kept.
   */
  constructor(private readonly mem: Buffer, private readonly release?: (offset: number, length: number) => void) {
    if (mem.length < HEADER_SIZE + 2 * (RECORD_HEADER_SIZE + 8 + 4096)) throw new RangeError(`shared log of ${mem.length} bytes is too small`);
    if (mem.length > HEADER_SIZE + 2 * (REGION_BIT - 1)) throw new RangeError(`shared log of ${mem.length} bytes is too large`);
    if ((mem.byteOffset + STATE_AT) % 4 !== 0) throw new RangeError('shared log memory must be 4-byte aligned');
    this.state = new Uint32Array(mem.buffer, mem.byteOffset + STATE_AT, 1);
    this.regionBytes = Math.floor((mem.length - HEADER_SIZE) / 2 / 8) * 8;
    const { region, used } = this.readState();
    this.region = region;
    this.used = this.header() ? used : 0;
    this.touched = this.header(); // a previous server's pages
  }

  private header(): boolean {
    const c = new ByteCursor(this.mem);
    return c.u32() === MAGIC && c.u32() === VERSION;
  }

  private readState(): { region: number; used: number } {
    const v = this.state[0];
    return { region: v & REGION_BIT ? 1 : 0, used: v & ~REGION_BIT };
  }

  private storeState(region: number, used: number): void {
    this.region = region;
    this.used = used;
    this.state[0] = (region ? REGION_BIT : 0) | used;
  }

  private regionStart(region: number): number {
    return HEADER_SIZE + region * this.regionBytes;
  }

  /**
   * The blocks a dead server committed here, or null when there are none (a new or empty log,
   * or one of another block size). A damaged record ends the log there, with a warning (the
   * memory is the supervisor's, so that means a bug, not an attack).
   */
  contents(blockSize: number): SharedLogContents | null {
    if (!this.header()) return null;
    const c = new ByteCursor(this.mem, 8);
    const bs = c.u32();
    const flags = c.u32();
    const seq = c.u32();
    c.skip(4);
    const pblk = c.u64();
    const { region, used } = this.readState();
    if (used === 0) return null;
    if (bs !== blockSize) {
      log.warn(`shared log: written for ${bs}-byte blocks, the image has ${blockSize}: ignored`);
      return null;
    }
    if (used > this.regionBytes) {
      log.warn(`shared log: state claims ${used} bytes in a ${this.regionBytes}-byte region: ignored`);
      return null;
    }
    const blocks = new Map<number, Buffer>();
    const start = this.regionStart(region);
    const r = new ByteCursor(this.mem, start, start + used);
    let records = 0;
    let good = 0;
    while (r.remaining > 0) {
      if (r.remaining < RECORD_HEADER_SIZE || r.u32() !== RECORD_MAGIC) {
        log.warn(`shared log: damaged record at byte ${r.offset}; the commits after it are ignored`);
        break;
      }
      const count = r.u32();
      if (count * (8 + bs) > r.remaining) {
        log.warn(`shared log: record of ${count} blocks at byte ${r.offset} runs past the log's end; ignored`);
        break;
      }
      const numbers: number[] = [];
      for (let i = 0; i < count; i++) numbers.push(r.u64());
      for (const b of numbers) blocks.set(b, Buffer.from(r.bytes(bs)));
      records++;
      good = r.offset;
    }
    return { blocks, records, bytes: good, committing: flags & FLAG_COMMITTING ? { seq, pblk } : null };
  }

  /** Bytes a commit of `count` blocks takes. */
  recordBytes(count: number, blockSize: number): number {
    return RECORD_HEADER_SIZE + count * (8 + blockSize);
  }

  /** Can a commit of `count` blocks still go in the active region? */
  room(count: number, blockSize: number): boolean {
    return this.used + this.recordBytes(count, blockSize) <= this.regionBytes;
  }

  /** Records in the log (a durable commit must take them over before it is emptied). */
  get pending(): boolean {
    return this.used > 0;
  }

  /** Append one commit to the active region; it counts once this returns (the state is stored last). */
  append(entries: { block: number; buf: Buffer }[], blockSize: number): void {
    if (!this.room(entries.length, blockSize)) throw new RangeError('shared log full');
    if (this.used === 0) this.start(blockSize);
    const end = this.writeRecord(this.regionStart(this.region) + this.used, entries, blockSize);
    this.storeState(this.region, end - this.regionStart(this.region));
    this.touched = true;
  }

  /**
   * Replace everything with one record of `entries` (the latest copy of every block the log
   * holds, and the new commit's) in the other region, which becomes the active one; until its
   * state is stored, the old region stands. False when they do not fit a region.
   */
  compact(entries: { block: number; buf: Buffer }[], blockSize: number): boolean {
    if (this.recordBytes(entries.length, blockSize) > this.regionBytes) return false;
    if (!this.header()) this.start(blockSize);
    const other = this.region ^ 1;
    const end = this.writeRecord(this.regionStart(other), entries, blockSize);
    this.storeState(other, end - this.regionStart(other));
    this.touched = true;
    return true;
  }

  /** Write a record at byte `at`; returns where it ends. */
  private writeRecord(at: number, entries: { block: number; buf: Buffer }[], blockSize: number): number {
    const c = new ByteCursor(this.mem, at);
    c.putU32(RECORD_MAGIC).putU32(entries.length);
    for (const e of entries) c.putU64(e.block);
    // The copies: a copy() each (putBytes of a view per block took ~3 µs a block in a profile).
    let end = c.pos;
    for (const e of entries) end += e.buf.copy(this.mem, end, 0, blockSize);
    return end;
  }

  /** A fresh header (empty, not committing) for blocks of `blockSize`; the state is left alone. */
  private start(blockSize: number): void {
    new ByteCursor(this.mem, 0, STATE_AT).putU32(MAGIC).putU32(VERSION).putU32(blockSize).putU32(0).putU32(0).putU32(0).putU64(0);
  }

  /** A durable commit that takes over every record here is about to write its commit block. */
  markCommitting(seq: number, commitPblk: number): void {
    if (this.used === 0) return;
    const c = new ByteCursor(this.mem, 16);
    c.putU32(seq).putU32(0).putU64(commitPblk);
    new ByteCursor(this.mem, FLAGS_AT).putU32(FLAG_COMMITTING);
  }

  /**
   * A restarted server applied `found` (contents()): its records stand until the next durable
   * commit, new ones go after them (not after a damaged one, which would hide them), and the
   * committing mark, which did not hold, goes.
   */
  keep(found: SharedLogContents): void {
    this.storeState(this.readState().region, found.bytes);
    new ByteCursor(this.mem, FLAGS_AT).putU32(0);
  }

  /**
   * The filesystem had nothing to commit for a whole commit interval: if the log is empty and
   * was written since the last time, give its pages back, all but the first (the header's).
   * True if it did.
   */
  releaseIfIdle(): boolean {
    if (!this.release || this.used !== 0 || !this.touched) return false;
    const page = 4096;
    if (this.mem.length > page) this.release(page, this.mem.length - page);
    this.touched = false;
    return true;
  }

  /** Everything here is in the journal (a durable commit is done): start over. */
  reset(): void {
    if (this.used === 0 && !this.header()) return;
    this.storeState(this.region, 0);
    new ByteCursor(this.mem, FLAGS_AT).putU32(0);
  }
}
