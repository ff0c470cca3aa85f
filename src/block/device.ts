/**
 * BlockDevice: the image file as fixed-size blocks.
 * - Metadata blocks go through a bounded LRU cache (dirty blocks stay until flush(); clean
 *   ones are evicted first; memory does not grow with the image).
 * - File data bypasses the cache with positioned reads/writes (readAt/writeAt), as the
 *   kernel's page cache would hold it, not ext4's buffer cache.
 * - Exclusive use: an advisory flock on the image; a second kfs process is refused.
 * - A write log (crash tests): every write and every barrier (fdatasync), in order.
 */
import fs from 'node:fs';
import { native } from '../native';
import { FsError } from '../util/errors';
import { SnapshotStore } from '../snapshot/store';

export interface BlockDeviceOptions {
  readOnly?: boolean;
  /** Cache size in bytes (default 64 MiB). */
  cacheBytes?: number;
  /** Skip the exclusive lock (only for tools that read an image another kfs holds). */
  noLock?: boolean;
  /** Record every write and barrier (crash tests build crash images from the record). */
  writeLog?: WriteLogSink;
}

/**
 * Receiver of the device's writes, in issue order. A write that has returned may still be in
 * the host's page cache; only what precedes a barrier is known durable.
 */
export interface WriteLogSink {
  write(pos: number, data: Buffer): void;
  barrier(): void;
  /** A labelled point (e.g. the journal's commit block was just written). */
  mark(label: string): void;
}

interface CacheEntry {
  buf: Buffer;
  /** Changed since the last journal commit (or since the last flush without a journal). */
  dirty: boolean;
  /**
   * Committed to the journal by a log-only commit but not yet written home: the copy on disk
   * is stale, so the block may not be evicted; flush() writes it (after a durable commit).
   */
  pinned?: boolean;
  /** The block's checksum was verified since it was read from disk (or kfs wrote it). */
  verified?: boolean;
  /** Used since the eviction scan last passed it (second-chance LRU: hits touch no map). */
  ref?: boolean;
}

export interface BlockDeviceStats {
  hits: number;
  misses: number;
  reads: number;
  writes: number;
}

/** Transfers up to this size use synchronous pread/pwrite (see readAt). */
const SYNC_IO_MAX = 64 * 1024;

function pread(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buf, off, len, pos, (e, n) => (e ? reject(e) : resolve(n))));
}
function pwrite(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => fs.write(fd, buf, off, len, pos, (e, n) => (e ? reject(e) : resolve(n))));
}

export class BlockDevice {
  blockSize = 1024;
  private cache = new Map<number, CacheEntry>(); // insertion order = LRU order
  /** The dirty and pinned entries, so that a commit does not scan the whole cache. */
  private dirtySet = new Map<number, CacheEntry>();
  private pinnedSet = new Map<number, CacheEntry>();
  private maxBlocks: number;
  readonly stats: BlockDeviceStats = { hits: 0, misses: 0, reads: 0, writes: 0 };
  writeLog: WriteLogSink | null = null;
  /**
   * Blocks replayed from the journal of a read-only image: read() serves them instead of the
   * stale copies on disk (the kernel replays even for ro mounts; we do it in memory).
   */
  overlay: Map<number, Buffer> | null = null;
  /**
   * The image's snapshot store (src/snapshot/store.ts), attached at open: every in-place
   * overwrite of a block a snapshot still needs is preceded by its copy (prepare). Null when
   * the image has no snapshots (or the device was opened without the lock).
   */
  snapshots: SnapshotStore | null = null;
  /**
   * Reads served by someone else (a snapshot's view: src/snapshot/view.ts): readAt and the
   * cache's misses come from it instead of the file.
   */
  reader: ((buf: Buffer, pos: number, off: number, len: number) => void) | null = null;

  private constructor(readonly path: string, readonly fd: number, readonly size: number, readonly readOnly: boolean, private cacheBytes: number) {
    this.maxBlocks = Math.max(64, Math.floor(cacheBytes / this.blockSize));
  }

  static open(path: string, opts: BlockDeviceOptions = {}): BlockDevice {
    const readOnly = !!opts.readOnly;
    let fd: number;
    try {
      // O_NOATIME: every read of the image would otherwise have the host check (and maybe write)
      // its atime; it needs the file's owner or CAP_FOWNER, so without it the plain open.
      const flags = readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
      try {
        fd = fs.openSync(path, flags | fs.constants.O_NOATIME);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EPERM') throw e;
        fd = fs.openSync(path, flags);
      }
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
      throw new FsError(code as 'ENOENT', `cannot open image ${path}: ${(e as Error).message}`);
    }
    try {
      const st = fs.fstatSync(fd);
      const size = st.isBlockDevice() ? native.blockDeviceSize(fd) : st.size;
      if (!opts.noLock) {
        try {
          native.flock(fd, !readOnly, true);
        } catch (e) {
          if ((e as { code?: string }).code === 'EWOULDBLOCK' || (e as { code?: string }).code === 'EAGAIN') {
            throw new FsError('EBUSY', `image ${path} is in use by another kfs process (it holds the image lock); stop it first`);
          }
          throw e;
        }
      }
      const dev = new BlockDevice(path, fd, size, readOnly, opts.cacheBytes ?? 64 << 20);
      dev.writeLog = opts.writeLog ?? null;
      // Before anything is read or written: an interrupted whole restore is finished here, and
      // journal recovery's home writes already go through copy-on-write.
      if (!opts.noLock) dev.snapshots = SnapshotStore.open(dev);
      if (dev.snapshots) dev.setBlockSize(dev.snapshots.blockSize);
      return dev;
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  setBlockSize(bs: number): void {
    if (bs === this.blockSize) return;
    if (this.cache.size) throw new Error('block size changed with blocks cached');
    this.blockSize = bs;
    this.maxBlocks = Math.max(64, Math.floor(this.cacheBytes / bs));
  }

  get blockCount(): number {
    return Math.floor(this.size / this.blockSize);
  }

  private checkBlock(block: number): void {
    if (!Number.isInteger(block) || block < 0 || (block + 1) * this.blockSize > this.size) {
      throw new FsError('EIO', `block ${block} is outside the image (${this.blockCount} blocks)`);
    }
  }

  /** A cached block. The returned buffer is shared: modify it and call markDirty(). */
  async read(block: number): Promise<Buffer> {
    const e = this.cache.get(block);
    if (e) {
      this.stats.hits++;
      e.ref = true;
      return e.buf;
    }
    this.stats.misses++;
    this.checkBlock(block);
    const buf = Buffer.allocUnsafe(this.blockSize);
    const replayed = this.overlay?.get(block);
    if (replayed) replayed.copy(buf);
    else await this.readAt(buf, block * this.blockSize);
    // Another reader may have filled the slot while we awaited; keep the first copy.
    const again = this.cache.get(block);
    if (again) return again.buf;
    this.cache.set(block, { buf, dirty: false });
    await this.evict();
    return buf;
  }

  /** The block if it is in the cache (shared, as read()'s), else null: no I/O. */
  cached(block: number): Buffer | null {
    const e = this.cache.get(block);
    if (!e) return null;
    this.stats.hits++;
    e.ref = true;
    return e.buf;
  }

  /**
   * The block if it is cached and its checksum was checked (readVerified) or kfs wrote it; else
   * null, with no I/O and no check: the caller goes the way of readVerified.
   */
  cachedVerified(block: number): Buffer | null {
    const e = this.cache.get(block);
    if (!e || !e.verified) return null;
    this.stats.hits++;
    e.ref = true;
    return e.buf;
  }

  /**
   * A cached block whose checksum `verify` checks (throwing on damage) only the first time it
   * comes from disk; blocks kfs itself modified stay trusted while cached.
   */
  async readVerified(block: number, verify: (buf: Buffer) => void): Promise<Buffer> {
    const buf = await this.read(block);
    const e = this.cache.get(block);
    if (e && e.verified) return buf;
    verify(buf);
    if (e) e.verified = true;
    return buf;
  }

  /** A block about to be entirely overwritten: no read from disk. */
  zeroed(block: number): Buffer {
    this.checkBlock(block);
    const e = this.cache.get(block);
    if (e) {
      e.buf.fill(0);
      return e.buf;
    }
    const buf = Buffer.alloc(this.blockSize);
    this.cache.set(block, { buf, dirty: false });
    return buf;
  }

  /** Mark a cached block dirty; `buf` re-inserts it if it was evicted meanwhile. */
  markDirty(block: number, buf?: Buffer): void {
    this.assertWritable();
    let e = this.cache.get(block);
    if (!e) {
      if (!buf) throw new Error(`markDirty of uncached block ${block}`);
      this.checkBlock(block);
      e = { buf, dirty: false };
      this.cache.set(block, e);
    } else if (buf && buf !== e.buf) {
      buf.copy(e.buf);
    }
    e.verified = true;
    if (!e.dirty) {
      e.dirty = true;
      this.dirtySet.set(block, e);
    }
  }

  /** Drop a block from the cache without writing it (it was freed). */
  forget(block: number): void {
    const e = this.cache.get(block);
    if (e) {
      this.dirtySet.delete(block);
      this.pinnedSet.delete(block);
      this.cache.delete(block);
    }
  }

  /** Blocks changed since the last commit. */
  get dirtyBlocks(): number {
    return this.dirtySet.size;
  }

  /** Blocks committed to the log only, waiting to go home. */
  get pinnedBlocks(): number {
    return this.pinnedSet.size;
  }

  /** How many blocks the cache holds before it evicts. */
  get capacityBlocks(): number {
    return this.maxBlocks;
  }

  /**
   * A log-only commit has logged the dirty blocks: they are no longer dirty (the next commit
   * logs only what changes again) but stay pinned until flush() writes them home.
   */
  pinDirty(): void {
    for (const [b, e] of this.dirtySet) {
      e.dirty = false;
      e.pinned = true;
      this.pinnedSet.set(b, e);
    }
    this.dirtySet.clear();
  }

  /**
   * The pinned blocks' home copies were brought up to date another way (the journal replayed
   * its log home): unpin them; those changed since stay dirty.
   */
  unpinAll(): void {
    for (const e of this.pinnedSet.values()) e.pinned = false;
    this.pinnedSet.clear();
  }

  /**
   * Evict clean blocks beyond the bound, oldest first, giving recently used ones a second
   * chance (moved to the young end); dirty ones are written only by flush().
   */
  private async evict(): Promise<void> {
    if (this.cache.size <= this.maxBlocks) return;
    let budget = this.cache.size * 2;
    for (const [b, e] of this.cache) {
      if (this.cache.size <= this.maxBlocks || budget-- <= 0) break;
      if (e.dirty || e.pinned) continue;
      this.cache.delete(b);
      if (e.ref) {
        e.ref = false;
        this.cache.set(b, e);
      }
    }
  }

  /** The dirty blocks in block order (the buffers are the cache's own: do not keep them). */
  dirtyEntries(): { block: number; buf: Buffer }[] {
    const out: { block: number; buf: Buffer }[] = [];
    for (const [block, e] of this.dirtySet) out.push({ block, buf: e.buf });
    out.sort((a, b) => a.block - b.block);
    return out;
  }

  /** The dirty and the pinned blocks (each once): what is not home yet. */
  pendingEntries(): { block: number; buf: Buffer }[] {
    const out: { block: number; buf: Buffer }[] = [];
    for (const [block, e] of this.pinnedSet) out.push({ block, buf: e.buf });
    for (const [block, e] of this.dirtySet) if (!e.pinned) out.push({ block, buf: e.buf });
    out.sort((a, b) => a.block - b.block);
    return out;
  }

  /** Write every dirty and pinned block, in block order, coalescing neighbours. */
  async flush(): Promise<void> {
    if (this.dirtySet.size === 0 && this.pinnedSet.size === 0) return;
    const dirty = [...new Set([...this.dirtySet.keys(), ...this.pinnedSet.keys()])];
    dirty.sort((a, b) => a - b);
    // All of the flush's copy-on-write in one step (one store barrier, not one per block).
    if (this.snapshots?.hasSnapshots) await this.snapshots.prepare(dirty);
    let i = 0;
    while (i < dirty.length) {
      let j = i + 1;
      while (j < dirty.length && dirty[j] === dirty[j - 1] + 1 && j - i < 256) j++;
      const bufs = dirty.slice(i, j).map((b) => this.cache.get(b)!.buf);
      const run = bufs.length === 1 ? bufs[0] : Buffer.concat(bufs);
      await this.writeInPlace(run, dirty[i] * this.blockSize);
      for (let k = i; k < j; k++) {
        const e = this.cache.get(dirty[k])!;
        e.dirty = false;
        e.pinned = false;
      }
      i = j;
    }
    this.dirtySet.clear();
    this.pinnedSet.clear();
    await this.evict();
  }

  /**
   * Positioned read of raw bytes (file data); short reads past the end are zero-filled.
   * Small transfers are done synchronously: they are served from the host page cache in a
   * few microseconds, less than a round trip through the libuv threadpool costs.
   */
  async readAt(buf: Buffer, pos: number, off = 0, len = buf.length - off): Promise<void> {
    this.stats.reads++;
    // A position computed from damaged metadata: an I/O error, not a RangeError from node:fs.
    if (!Number.isSafeInteger(pos) || pos < 0) throw new FsError('EIO', `read at byte ${pos} of ${this.path}: outside any file`);
    if (this.reader) return this.reader(buf, pos, off, len);
    let done = 0;
    const small = len <= SYNC_IO_MAX;
    while (done < len) {
      const n = small ? fs.readSync(this.fd, buf, off + done, len - done, pos + done) : await pread(this.fd, buf, off + done, len - done, pos + done);
      if (n === 0) {
        buf.fill(0, off + done, off + len);
        return;
      }
      done += n;
    }
  }

  async writeAt(buf: Buffer, pos: number, off = 0, len = buf.length - off): Promise<void> {
    this.assertWritable();
    if (len > 0 && this.snapshots?.hasSnapshots) await this.prepareInPlaceWrite(Math.floor(pos / this.blockSize), Math.ceil((pos + len) / this.blockSize) - Math.floor(pos / this.blockSize));
    await this.writeInPlace(buf, pos, off, len);
  }

  /**
   * Blocks [block, block+count) are about to be overwritten in place by a writer that does
   * not go through writeAt (a writable DAX mapping): copy what snapshots still need first.
   */
  async prepareInPlaceWrite(block: number, count: number): Promise<void> {
    if (!this.snapshots?.hasSnapshots || count <= 0) return;
    const blocks: number[] = [];
    for (let b = block; b < block + count; b++) blocks.push(b);
    await this.snapshots.prepare(blocks);
  }

  private async writeInPlace(buf: Buffer, pos: number, off = 0, len = buf.length - off): Promise<void> {
    this.assertWritable();
    if (pos + len > this.size) throw new FsError('EIO', `write at ${pos}+${len} beyond the image end ${this.size}`);
    this.stats.writes++;
    if (this.writeLog) this.writeLog.write(pos, Buffer.from(buf.subarray(off, off + len)));
    let done = 0;
    const small = len <= SYNC_IO_MAX;
    while (done < len) {
      done += small ? fs.writeSync(this.fd, buf, off + done, len - done, pos + done) : await pwrite(this.fd, buf, off + done, len - done, pos + done);
    }
  }

  /** Drop file-data blocks that might be cached as metadata (after reuse). */
  forgetRange(block: number, count: number): void {
    if (this.cache.size === 0) return;
    if (count > this.cache.size) {
      for (const b of [...this.cache.keys()]) if (b >= block && b < block + count) this.forget(b);
    } else {
      for (let b = block; b < block + count; b++) this.forget(b);
    }
  }

  async sync(): Promise<void> {
    await this.flush();
    await this.barrier();
  }

  /** fdatasync: every write issued before it is durable when it returns. */
  async barrier(): Promise<void> {
    if (this.readOnly) return;
    await new Promise<void>((res, rej) => fs.fdatasync(this.fd, (e) => (e ? rej(e) : res())));
    this.writeLog?.barrier();
  }

  /** Label the current point of the write log (no I/O). */
  mark(label: string): void {
    this.writeLog?.mark(label);
  }

  private assertWritable(): void {
    if (this.readOnly) throw new FsError('EROFS', 'image is open read-only');
  }

  /** Close without writing anything (after a failure that makes writing unsafe). */
  async closeNoSync(): Promise<void> {
    try {
      fs.closeSync(this.fd);
    } catch {
      /* already closed */
    }
  }

  async close(): Promise<void> {
    if (!this.readOnly) await this.sync();
    fs.closeSync(this.fd);
  }
}
