/**
 * Copy-on-write snapshots of a kfs image (format: ./format.ts).
 *
 * Scheme: an origin with a chain of snapshots, oldest first. Snapshot k owns a map
 * block → store slot of the blocks overwritten in place while k was the newest snapshot.
 * Reading block b in snapshot k: the first snapshot j >= k whose map holds b gives the slot;
 * none gives the live block. So snapshot creation writes only the table (O(1) in the image
 * size), and a snapshot costs only the blocks changed after it.
 *
 * Before the live filesystem overwrites block b in place (BlockDevice.writeAt and flush call
 * prepare(); DAX calls it before mapping blocks writable), b is copied to a free slot and
 * recorded in the newest snapshot's map if some snapshot still resolves b to the live block
 * and uses it: walking from the newest snapshot to older ones, stopping at the first map that
 * holds b (older snapshots resolve through that one), "uses" meaning b is in use in that
 * snapshot's own view of its block bitmaps (./usage.ts). Checking older snapshots too matters:
 * a block used by s1, freed before s2 was taken and reused after it is free in s2's view but
 * still s1's. The copies and their records go out together, then one fdatasync, and only then
 * may the in-place writes happen: a crash in between leaves either no record (and the old
 * bytes in place) or a complete one. The jbd2 journal's log blocks are never copied (a
 * snapshot is taken with an empty journal, so its log contents do not matter).
 *
 * Metadata changes (create, delete, restore markers) write new table/log blocks into free
 * store blocks, fdatasync, then publish them by writing the other header, fdatasync.
 */
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import type { BlockDevice } from '../block/device';
import { CorruptionError, FsError } from '../util/errors';
import { log } from '../util/log';
import { Mutex } from '../util/mutex';
import { locateJournal } from '../ext4/journal/recovery';
import { COMPAT, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE } from '../ext4/superblock';
import {
  StoreHeader, TableEntry, MapRecord, encodeHeader, decodeHeader, encodeTable, tableBlocksFor, encodeBatch, recordsPerBatch,
  dataCrc, checkSnapshotName,
} from './format';
import { loadStore } from './load';
import { FsGeometry, ViewUsage } from './usage';

export interface SnapshotInfo {
  id: number;
  name: string;
  createdMs: number;
  /** Store slots (blocks) this snapshot's map holds: the space it costs. */
  slots: number;
  bytes: number;
}

interface Snap {
  id: number;
  name: string;
  createdMs: number;
  map: Map<number, number>;
}

interface Staged {
  publish(): void;
  abandon(): void;
}

/** Blocks written per step of a whole restore (one copy-on-write fdatasync each). */
const RESTORE_CHUNK = 512;

const randomU32 = (): number => randomBytes(4).readUInt32LE(0);

export class SnapshotStore {
  private snaps: Snap[] = [];
  private header: StoreHeader;
  private current: 0 | 1;
  /** Free store blocks below `end`, highest first (pop() takes the lowest). */
  private free: number[] = [];
  private end = 2;
  private logBlocks: number[] = [];
  private logNext: number;
  private logNextNonce: number;
  private batchSeq = 1;
  private mutex = new Mutex();
  private usage: ViewUsage;
  /** Journal log blocks (never copied); null until looked up. */
  private journalLog: { pblk: number; len: number }[] | null = null;
  private broken: string | null = null;
  readonly blockSize: number;
  /** Byte offset of store block 0: the first byte past the filesystem. */
  readonly base: number;

  private constructor(readonly dev: BlockDevice, readonly geo: FsGeometry, header: StoreHeader, current: 0 | 1) {
    this.blockSize = geo.blockSize;
    this.base = geo.blocksCount * geo.blockSize;
    this.header = header;
    this.current = current;
    this.logNext = header.logStart;
    this.logNextNonce = header.logNonce;
    this.usage = new ViewUsage(geo);
  }

  // ---- opening ----

  /** The geometry of the filesystem in dev (raw superblock), or null if it is not ext4. */
  static geometryOf(dev: BlockDevice): FsGeometry | null {
    if (dev.size < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE) return null;
    const raw = Buffer.alloc(SUPERBLOCK_SIZE);
    fs.readSync(dev.fd, raw, 0, SUPERBLOCK_SIZE, SUPERBLOCK_OFFSET);
    return FsGeometry.fromRaw(raw);
  }

  static isBlockDevice(dev: BlockDevice): boolean {
    return fs.fstatSync(dev.fd).isBlockDevice();
  }

  /**
   * The store in dev's image, or null if it has none. A read-write open with an interrupted
   * whole restore finishes it here, before anything reads the filesystem.
   */
  static open(dev: BlockDevice): SnapshotStore | null {
    try {
      return SnapshotStore.openStore(dev);
    } catch (e) {
      // The live filesystem does not depend on the store: reading it is safe without one, but
      // writing it is not (the snapshots would lose the blocks they still need).
      if (!(e instanceof CorruptionError) || !dev.readOnly) {
        if (e instanceof CorruptionError) throw new CorruptionError(`${e.message.replace(/^EIO: corrupt filesystem: /, '')}; the image can be opened read-only (the snapshots are then ignored)`);
        throw e;
      }
      log.warn(`${dev.path}: ${e.message}; snapshots ignored (read-only)`);
      return null;
    }
  }

  private static openStore(dev: BlockDevice): SnapshotStore | null {
    if (SnapshotStore.isBlockDevice(dev)) return null;
    const geo = SnapshotStore.geometryOf(dev);
    if (!geo) return null;
    const bs = geo.blockSize;
    const base = geo.blocksCount * bs;
    const size = fs.fstatSync(dev.fd).size;
    if (size < base + bs) return null;
    const raw = (s: number) => {
      const b = Buffer.alloc(bs);
      fs.readSync(dev.fd, b, 0, bs, base + s * bs);
      return b;
    };
    const hs = [decodeHeader(raw(0)), decodeHeader(raw(1))];
    if (hs.every((h) => h === 'absent')) return null;
    let cur: 0 | 1 | -1 = -1;
    for (const i of [0, 1] as const) {
      const h = hs[i];
      if (typeof h === 'string') continue;
      if (cur < 0 || h.seq > (hs[cur] as StoreHeader).seq) cur = i;
    }
    if (cur < 0) throw new CorruptionError(`snapshot store of ${dev.path}: both headers are damaged`);
    const h = hs[cur] as StoreHeader;
    if (!h.uuid.equals(geo.sb.s_uuid)) {
      log.warn(`${dev.path}: ignoring a snapshot store past the filesystem's end: it belongs to another filesystem (made again with mkfs?)`);
      return null;
    }
    if (h.blockSize !== bs || h.fsBlocks !== geo.blocksCount) {
      throw new CorruptionError(`snapshot store of ${dev.path} was made for ${h.fsBlocks} blocks of ${h.blockSize} bytes; the filesystem has ${geo.blocksCount} of ${bs}`);
    }
    const store = new SnapshotStore(dev, geo, h, cur as 0 | 1);
    store.load(raw);
    if (h.restoreId) {
      const name = store.snaps.find((s) => s.id === h.restoreId)?.name ?? `#${h.restoreId}`;
      if (dev.readOnly) throw new FsError('EBUSY', `${dev.path}: a restore of snapshot ${name} was interrupted; a read-write open finishes it (e.g. kfs fsck ${dev.path}, or kfs mount)`);
      log.warn(`${dev.path}: finishing the interrupted restore of snapshot ${name}`);
      store.finishRestoreSync(h.restoreId);
    }
    return store;
  }

  /** Read the table and the map log (./load.ts); rebuild the free list. */
  private load(raw: (s: number) => Buffer): void {
    const fileBlocks = Math.ceil((fs.fstatSync(this.dev.fd).size - this.base) / this.blockSize);
    const l = loadStore(this.header, raw, fileBlocks, this.dev.path);
    if (l.dropped) log.warn(`${this.dev.path}: snapshot store: dropped the last copy-on-write step (cut before it was durable; its writes never happened)`);
    this.snaps = l.table.map((e) => ({ id: e.id, name: e.name, createdMs: e.createdMs, map: new Map() }));
    const byId = new Map(this.snaps.map((s) => [s.id, s]));
    for (const b of l.batches) {
      const s = byId.get(b.snapId);
      if (s) for (const r of b.records) s.map.set(r.block, r.slot);
    }
    this.logBlocks = l.logBlocks;
    this.logNext = l.logNext;
    this.logNextNonce = l.logNextNonce;
    this.batchSeq = l.nextBatchSeq;
    this.rebuildFree();
  }

  private rebuildFree(): void {
    const used = new Set<number>([0, 1, this.logNext, ...this.logBlocks]);
    for (let i = 0; i < this.header.tableBlocks; i++) used.add(this.header.tableStart + i);
    for (const s of this.snaps) for (const slot of s.map.values()) used.add(slot);
    let end = 2;
    for (const u of used) end = Math.max(end, u + 1);
    this.end = end;
    this.free = [];
    for (let s = end - 1; s >= 2; s--) if (!used.has(s)) this.free.push(s);
  }

  // ---- space ----

  private alloc(): number {
    return this.free.length ? this.free.pop()! : this.end++;
  }

  /** Give store blocks back (below `end`; the free list stays sorted, highest first). */
  private release(blocks: number[]): void {
    for (const b of blocks) {
      let lo = 0;
      let hi = this.free.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (this.free[mid] > b) lo = mid + 1;
        else hi = mid;
      }
      this.free.splice(lo, 0, b);
    }
  }

  /** n contiguous store blocks (the table). */
  private allocRun(n: number): number {
    const asc = [...this.free].reverse();
    for (let i = 0; i + n <= asc.length; i++) {
      if (asc[i + n - 1] - asc[i] === n - 1) {
        const start = asc[i];
        this.free = this.free.filter((x) => x < start || x >= start + n);
        return start;
      }
    }
    // Extend at the end (taking free blocks just below it if they are contiguous with it).
    let start = this.end;
    while (this.free.length && this.free[0] === start - 1) {
      this.free.shift();
      start--;
    }
    this.end = start + n;
    return start;
  }

  /** Give the file's tail back to the host once nothing lives there. */
  private trimFile(): void {
    const want = this.snaps.length ? this.base + this.end * this.blockSize : this.base;
    if (fs.fstatSync(this.dev.fd).size > want) fs.ftruncateSync(this.dev.fd, want);
  }

  // ---- raw I/O ----

  private readStore(s: number): Buffer {
    const b = Buffer.alloc(this.blockSize);
    fs.readSync(this.dev.fd, b, 0, this.blockSize, this.base + s * this.blockSize);
    return b;
  }

  private writeStore(s: number, buf: Buffer): void {
    const pos = this.base + s * this.blockSize;
    this.dev.writeLog?.write(pos, Buffer.from(buf));
    let done = 0;
    while (done < buf.length) done += fs.writeSync(this.dev.fd, buf, done, buf.length - done, pos + done);
  }

  private readLive(block: number): Buffer {
    const b = Buffer.alloc(this.blockSize);
    fs.readSync(this.dev.fd, b, 0, this.blockSize, block * this.blockSize);
    return b;
  }

  private barrierSync(): void {
    fs.fdatasyncSync(this.dev.fd);
    this.dev.writeLog?.barrier();
  }

  private async barrier(): Promise<void> {
    await new Promise<void>((res, rej) => fs.fdatasync(this.dev.fd, (e) => (e ? rej(e) : res())));
    this.dev.writeLog?.barrier();
  }

  /** Publish a new header (the other copy), durably. */
  private writeHeader(h: StoreHeader): void {
    h.seq = this.header.seq + 1;
    const next: 0 | 1 = this.current === 0 ? 1 : 0;
    this.writeStore(next, encodeHeader(h, this.blockSize));
    this.dev.mark(`snapshot header ${h.seq}`);
    this.barrierSync();
    this.header = h;
    this.current = next;
  }

  // ---- views ----

  private indexOf(id: number): number {
    const i = this.snaps.findIndex((s) => s.id === id);
    if (i < 0) throw new FsError('ENOENT', `snapshot #${id} does not exist`);
    return i;
  }

  /** The store slot snapshot index i reads block b from, or -1: the live block. */
  private resolve(i: number, b: number): number {
    for (let j = i; j < this.snaps.length; j++) {
      const slot = this.snaps[j].map.get(b);
      if (slot !== undefined) return slot;
    }
    return -1;
  }

  private readViewBlock(i: number, b: number): Buffer {
    const slot = this.resolve(i, b);
    return slot < 0 ? this.readLive(b) : this.readStore(slot);
  }

  /**
   * Bytes of snapshot `id`'s image (blocks past the filesystem read as zeros). Synchronous, so
   * that no copy-on-write step can slip between resolving a block and reading it.
   */
  readView(id: number, buf: Buffer, pos: number, off = 0, len = buf.length - off): void {
    const i = this.indexOf(id);
    const bs = this.blockSize;
    let done = 0;
    while (done < len) {
      const p = pos + done;
      const b = Math.floor(p / bs);
      const inBlock = p - b * bs;
      const n = Math.min(len - done, bs - inBlock);
      if (b >= this.geo.blocksCount) buf.fill(0, off + done, off + done + n);
      else {
        const slot = this.resolve(i, b);
        const at = slot < 0 ? p : this.base + slot * bs + inBlock;
        const got = fs.readSync(this.dev.fd, buf, off + done, n, at);
        if (got < n) buf.fill(0, off + done + got, off + done + n);
      }
      done += n;
    }
  }

  // ---- which blocks a snapshot uses ----

  private usedInView(i: number, b: number): boolean {
    const id = this.snaps[i].id;
    return this.usage.used(id, b, (blk) => this.readViewBlock(i, blk));
  }

  /** Must the current bytes of live block b be kept for some snapshot before b is overwritten? */
  private needsCopy(b: number): boolean {
    const n = this.snaps.length - 1;
    if (this.snaps[n].map.has(b)) return false;
    for (let i = n; i >= 0; i--) {
      if (i < n && this.snaps[i].map.has(b)) return false;
      if (this.usedInView(i, b)) return true;
    }
    return false;
  }

  private isJournalLog(b: number): boolean {
    if (!this.journalLog) return false;
    for (const r of this.journalLog) if (b >= r.pblk && b < r.pblk + r.len) return true;
    return false;
  }

  private async lookUpJournal(): Promise<void> {
    if (this.journalLog) return;
    this.journalLog = [];
    const sb = this.geo.sb;
    if (!(sb.s_feature_compat & COMPAT.has_journal) || !sb.s_journal_inum) return;
    try {
      const file = await locateJournal(this.dev, sb);
      const jsb = file.phys(0);
      // Every journal block but its superblock: jbd2's log area.
      for (const e of file.extents) {
        if (jsb >= e.pblk && jsb < e.pblk + e.len) {
          if (jsb > e.pblk) this.journalLog.push({ pblk: e.pblk, len: jsb - e.pblk });
          if (e.pblk + e.len > jsb + 1) this.journalLog.push({ pblk: jsb + 1, len: e.pblk + e.len - jsb - 1 });
        } else this.journalLog.push({ pblk: e.pblk, len: e.len });
      }
    } catch (e) {
      log.warn(`${this.dev.path}: snapshot store: journal not located (${(e as Error).message}); its log blocks will be copied too`);
    }
  }

  // ---- copy-on-write ----

  /** Copy what must be kept and write the records; publish() after the barrier. */
  private stage(blocks: Iterable<number>): Staged | null {
    if (this.broken) throw new FsError('EIO', `snapshot store unusable after an earlier failure (${this.broken}); no write is allowed that could damage the snapshots`);
    if (!this.snaps.length) return null;
    const want: number[] = [];
    const seen = new Set<number>();
    for (const b of blocks) {
      if (seen.has(b) || b >= this.geo.blocksCount || this.isJournalLog(b)) continue;
      seen.add(b);
      if (this.needsCopy(b)) want.push(b);
    }
    if (!want.length) return null;
    want.sort((x, y) => x - y);
    const newest = this.snaps[this.snaps.length - 1];
    const records: MapRecord[] = [];
    const endBefore = this.end;
    const taken: number[] = [];
    const take = () => {
      const s = this.alloc();
      taken.push(s);
      return s;
    };
    for (const b of want) {
      const data = this.readLive(b);
      const slot = take();
      this.writeStore(slot, data);
      records.push({ block: b, slot, dataCrc: dataCrc(data) });
    }
    const per = recordsPerBatch(this.blockSize);
    const flushSeq = this.batchSeq;
    const written: number[] = [];
    let at = this.logNext;
    let nonce = this.logNextNonce;
    let seq = this.batchSeq;
    for (let k = 0; k < records.length; k += per) {
      const next = take();
      const nextNonce = randomU32();
      this.writeStore(at, encodeBatch({ nonce, nextNonce, seq, flushSeq, snapId: newest.id, next, records: records.slice(k, k + per) }, this.blockSize));
      written.push(at);
      at = next;
      nonce = nextNonce;
      seq++;
    }
    return {
      publish: () => {
        for (const r of records) newest.map.set(r.block, r.slot);
        this.logBlocks.push(...written);
        this.logNext = at;
        this.logNextNonce = nonce;
        this.batchSeq = seq;
      },
      abandon: () => {
        this.release(taken.filter((s) => s < endBefore));
        this.end = endBefore;
      },
    };
  }

  /**
   * Called before blocks of the live filesystem are overwritten in place: returns once every
   * byte a snapshot still needs from them is durable in the store.
   */
  async prepare(blocks: Iterable<number>): Promise<void> {
    if (!this.snaps.length) return;
    await this.mutex.run(async () => {
      await this.lookUpJournal();
      const st = this.stage(blocks);
      if (!st) return;
      try {
        await this.barrier();
      } catch (e) {
        st.abandon();
        this.broken = (e as Error).message;
        throw e;
      }
      st.publish();
    });
  }

  private prepareSync(blocks: Iterable<number>): void {
    const st = this.stage(blocks);
    if (!st) return;
    this.barrierSync();
    st.publish();
  }

  // ---- the table ----

  get hasSnapshots(): boolean {
    return this.snaps.length > 0;
  }

  list(): SnapshotInfo[] {
    return this.snaps.map((s) => ({ id: s.id, name: s.name, createdMs: s.createdMs, slots: s.map.size, bytes: s.map.size * this.blockSize }));
  }

  find(name: string): SnapshotInfo | null {
    return this.list().find((s) => s.name === name) ?? null;
  }

  /** Bytes of the image file the store takes (headers, table, log, slots, free slots). */
  get storeBytes(): number {
    return this.snaps.length ? this.end * this.blockSize : 0;
  }

  get freeSlots(): number {
    return this.free.length;
  }

  private tableEntries(snaps: Snap[]): TableEntry[] {
    return snaps.map((s) => ({ id: s.id, name: s.name, createdMs: s.createdMs, slots: s.map.size }));
  }

  /** Write a table for `snaps` into free blocks (durable), then a header naming it. */
  private publishTable(snaps: Snap[], h: Partial<StoreHeader>): void {
    const blocks = encodeTable(this.tableEntries(snaps), this.blockSize);
    const start = this.allocRun(blocks.length);
    blocks.forEach((b, i) => this.writeStore(start + i, b));
    this.barrierSync();
    this.writeHeader({ ...this.header, ...h, tableStart: start, tableBlocks: tableBlocksFor(snaps.length, this.blockSize), snapCount: snaps.length });
  }

  /**
   * Record a new snapshot of the live image as it is on disk now. The caller guarantees a
   * clean point (Ext4Fs.atCleanPoint: everything written home, journal empty, superblock
   * without needs_recovery) and that nothing writes meanwhile.
   */
  async create(name: string): Promise<SnapshotInfo> {
    return this.mutex.run(async () => {
      const bad = checkSnapshotName(name);
      if (bad) throw new FsError('EINVAL', `bad snapshot name ${JSON.stringify(name)}: ${bad}`);
      if (this.snaps.some((s) => s.name === name)) throw new FsError('EEXIST', `snapshot ${name} already exists`);
      if (this.header.restoreId) throw new FsError('EBUSY', 'a whole restore is in progress');
      const snap: Snap = { id: this.header.nextId, name, createdMs: Date.now(), map: new Map() };
      const snaps = [...this.snaps, snap];
      const oldTable = Array.from({ length: this.header.tableBlocks }, (_, i) => this.header.tableStart + i);
      this.publishTable(snaps, { nextId: this.header.nextId + 1 });
      this.snaps = snaps;
      // Only the table moved: O(1), whatever the store holds.
      this.release(oldTable);
      return this.list().find((s) => s.id === snap.id)!;
    });
  }

  /**
   * Start a store in an image that has none (the first snapshot): its blocks past the
   * filesystem are cut off first (nothing valid lives there), then an empty store is written.
   */
  static initialize(dev: BlockDevice): SnapshotStore {
    if (SnapshotStore.isBlockDevice(dev)) {
      throw new FsError('EOPNOTSUPP', `${dev.path} is a block device: snapshots live past the filesystem's end in an image file and need room to grow; use an image file`);
    }
    if (dev.readOnly) throw new FsError('EROFS', `${dev.path} is open read-only`);
    const geo = SnapshotStore.geometryOf(dev);
    if (!geo) throw new FsError('EINVAL', `${dev.path} holds no ext4 filesystem`);
    const base = geo.blocksCount * geo.blockSize;
    fs.ftruncateSync(dev.fd, base);
    const h: StoreHeader = {
      blockSize: geo.blockSize, fsBlocks: geo.blocksCount, seq: 0, logStart: 3, logNonce: randomU32(), tableStart: 2, tableBlocks: 1,
      snapCount: 0, nextId: 1, restoreId: 0, uuid: Buffer.from(geo.sb.s_uuid),
    };
    const store = new SnapshotStore(dev, geo, h, 1);
    store.end = 4;
    // Header A (seq 1) is the first published; B stays zero (absent) until the next change.
    store.writeStore(1, Buffer.alloc(geo.blockSize));
    store.writeStore(2, encodeTable([], geo.blockSize)[0]);
    store.writeStore(3, Buffer.alloc(geo.blockSize));
    store.barrierSync();
    store.writeHeader({ ...h });
    store.rebuildFree();
    return store;
  }

  /**
   * Delete a snapshot. Its records that an older snapshot still resolves through it move to
   * its predecessor (unless that has its own copy of the block); the rest are freed. The map
   * log is rewritten compacted into free blocks, made durable, and published with the new
   * table by one header write: a crash leaves the old store or the new one.
   */
  async delete(name: string): Promise<{ freedSlots: number }> {
    return this.mutex.run(async () => {
      const i = this.snaps.findIndex((s) => s.name === name);
      if (i < 0) throw new FsError('ENOENT', `snapshot ${name} does not exist`);
      if (this.header.restoreId) throw new FsError('EBUSY', 'a whole restore is in progress');
      const victim = this.snaps[i];
      const pred = i > 0 ? this.snaps[i - 1] : null;
      const predMap = pred ? new Map(pred.map) : null;
      let freed = 0;
      for (const [b, slot] of victim.map) {
        if (predMap && !predMap.has(b)) predMap.set(b, slot);
        else freed++;
      }
      const snaps = this.snaps.filter((s) => s !== victim).map((s) => (s === pred ? { ...s, map: predMap! } : s));
      if (!snaps.length) {
        // The last one: the store goes away (a header with no snapshots first, so that a crash
        // before the truncation leaves an empty store rather than the old one).
        this.publishTable([], {});
        this.snaps = [];
        this.logBlocks = [];
        this.rebuildFree();
        this.trimFile();
        this.usage.clear();
        return { freedSlots: freed };
      }
      // Compacted log: one run of batches per snapshot, flush seq 0 (durable before published).
      const per = recordsPerBatch(this.blockSize);
      const startNonce = randomU32();
      const logStart = this.alloc();
      const newLog: number[] = [];
      let at = logStart;
      let nonce = startNonce;
      let seq = 1;
      for (const s of snaps) {
        const recs = [...s.map].map(([block, slot]) => ({ block, slot, dataCrc: 0 }));
        for (let k = 0; k < recs.length; k += per) {
          const next = this.alloc();
          const nextNonce = randomU32();
          this.writeStore(at, encodeBatch({ nonce, nextNonce, seq, flushSeq: 0, snapId: s.id, next, records: recs.slice(k, k + per) }, this.blockSize));
          newLog.push(at);
          at = next;
          nonce = nextNonce;
          seq++;
        }
      }
      this.publishTable(snaps, { logStart, logNonce: startNonce });
      this.snaps = snaps;
      this.logBlocks = newLog;
      this.logNext = at;
      this.logNextNonce = nonce;
      this.batchSeq = seq;
      this.rebuildFree();
      this.trimFile();
      this.usage.clear();
      return { freedSlots: freed };
    });
  }

  // ---- whole restore ----

  /**
   * Make the live filesystem snapshot `name`'s image. Only with the filesystem closed (no
   * cache above the device). The live blocks that can differ from the snapshot are those some
   * map from the snapshot on holds; each is written back through copy-on-write, so newer
   * snapshots keep their view. Crash-safe: the header records the restore before the first
   * write, and an open finishes it (the writes are idempotent).
   */
  async restoreWhole(name: string, progress?: (done: number, total: number) => void): Promise<{ blocks: number }> {
    return this.mutex.run(async () => {
      const s = this.snaps.find((x) => x.name === name);
      if (!s) throw new FsError('ENOENT', `snapshot ${name} does not exist`);
      await this.lookUpJournal();
      this.writeHeader({ ...this.header, restoreId: s.id });
      const n = this.finishRestoreSync(s.id, progress);
      return { blocks: n };
    });
  }

  private finishRestoreSync(id: number, progress?: (done: number, total: number) => void): number {
    const i = this.indexOf(id);
    const blocks = new Set<number>();
    for (let j = i; j < this.snaps.length; j++) for (const b of this.snaps[j].map.keys()) blocks.add(b);
    const list = [...blocks].sort((a, b) => a - b);
    for (let k = 0; k < list.length; k += RESTORE_CHUNK) {
      const chunk = list.slice(k, k + RESTORE_CHUNK);
      const data = chunk.map((b) => this.readViewBlock(i, b));
      this.prepareSync(chunk);
      chunk.forEach((b, x) => {
        const pos = b * this.blockSize;
        this.dev.writeLog?.write(pos, Buffer.from(data[x]));
        fs.writeSync(this.dev.fd, data[x], 0, this.blockSize, pos);
      });
      progress?.(Math.min(k + RESTORE_CHUNK, list.length), list.length);
    }
    this.barrierSync();
    this.dev.mark(`restore ${id} written`);
    this.writeHeader({ ...this.header, restoreId: 0 });
    return list.length;
  }

  get restoreInProgress(): number {
    return this.header.restoreId;
  }
}
