/**
 * File data: reads and writes through the extent map straight to the image (no block cache),
 * truncation, fallocate (allocate, keep-size, punch hole, zero range) and SEEK_DATA/SEEK_HOLE.
 * Unwritten extents read as zeros; partial blocks written into holes or unwritten extents are
 * zero-filled around the data so that no stale disk content is ever exposed.
 */
import { FsError } from '../util/errors';
import { INODE_FLAGS } from './inode';
import { InodeStore, InodeState } from './inode-store';
import type { ExtentMap } from './extents';
import { native } from '../native';

/** Views of bytes [from, to) of the consecutive buffers `dest`, appended to out. */
function rangeViews(dest: readonly Buffer[], from: number, to: number, out: Buffer[]): void {
  let base = 0;
  for (const b of dest) {
    const end = base + b.length;
    if (end > from && base < to) {
      const s = Math.max(from, base) - base;
      const e = Math.min(to, end) - base;
      out.push(s === 0 && e === b.length ? b : b.subarray(s, e));
    }
    if (end >= to) break;
    base = end;
  }
}

/** Copy `src` into the consecutive views `dest` from their start. */
function copyInto(dest: readonly Buffer[], src: Buffer): void {
  let at = 0;
  for (const b of dest) {
    if (at >= src.length) break;
    at += src.copy(b, 0, at);
  }
}

function zeroRange(dest: readonly Buffer[], from: number, to: number): void {
  let base = 0;
  for (const b of dest) {
    const end = base + b.length;
    if (end > from && base < to) b.fill(0, Math.max(from, base) - base, Math.min(to, end) - base);
    if (end >= to) break;
    base = end;
  }
}

/** ext4 with extents: logical block numbers are 32-bit. */
export const MAX_LBLK = 0xffffffff;
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_COLLAPSE_RANGE = 0x08;
export const FALLOC_FL_ZERO_RANGE = 0x10;
export const FALLOC_FL_INSERT_RANGE = 0x20;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

/** A read resolved to image offsets: `len` bytes at `disk` go to out[at..]. */
export interface ReadPlan {
  /** Zero-filled, `length` bytes; empty when planned with `alloc` false (readPlannedInto). */
  out: Buffer;
  /** Bytes the read returns (clipped at the end of the file). */
  length: number;
  segments: { disk: number; at: number; len: number }[];
  /** An inline-data file's bytes for this read (no segments): they live in the inode, not in blocks. */
  inline?: Buffer;
}

/**
 * Blocks allocated or freed between two chances to commit in one large fallocate, truncate or
 * punch: a single operation must not outgrow the journal (a transaction larger than the log
 * cannot be atomic), so it is split into steps that each leave a consistent file, as ext4
 * splits them into transactions (ext4_alloc_file_blocks, ext4_ext_remove_space).
 */
const STEP_BLOCKS = 2048;

export class FileIO {
  /**
   * Called between the steps of a large operation, with the file consistent on its own: the
   * filesystem commits there when the running transaction is getting large (Ext4Fs).
   */
  step: (() => Promise<void>) | null = null;

  constructor(private store: InodeStore) {}

  private get bs(): number {
    return this.store.blockSize;
  }

  maxFileSize(): number {
    return MAX_LBLK * this.bs;
  }

  async read(st: InodeState, offset: number, length: number): Promise<Buffer> {
    return this.readPlanned(await this.planRead(st, offset, length));
  }

  /** Where the bytes of a read are in the image (under the filesystem lock); see readPlanned. */
  async planRead(st: InodeState, offset: number, length: number, alloc = true): Promise<ReadPlan> {
    if (offset >= st.inode.size || length <= 0) return { out: Buffer.alloc(0), length: 0, segments: [] };
    if (st.inode.hasFlag(INODE_FLAGS.INLINE_DATA)) {
      // Past what is stored, up to the size, reads as zeros (ext4_read_inline_folio).
      length = Math.min(length, st.inode.size - offset);
      const data = await this.store.inlineData(st);
      const inline = data.subarray(Math.min(offset, data.length), Math.min(offset + length, data.length));
      const out = alloc ? Buffer.alloc(length) : Buffer.alloc(0);
      if (alloc) inline.copy(out); // in the plan already: a caller may take out without readPlanned
      return { out, length, segments: [], inline };
    }
    return this.planMapped(st, await this.store.extents(st), offset, length, alloc);
  }

  /** planRead without waiting, when the extent map is loaded or lies in i_block (InodeStore.extentsInline); no buffer. */
  planReadLoaded(st: InodeState, offset: number, length: number): ReadPlan | null {
    const map = this.store.extentsInline(st);
    if (!map) return null;
    if (offset >= st.inode.size || length <= 0) return { out: Buffer.alloc(0), length: 0, segments: [] };
    return this.planMapped(st, map, offset, length, false);
  }

  private planMapped(st: InodeState, map: ExtentMap, offset: number, length: number, alloc: boolean): ReadPlan {
    length = Math.min(length, st.inode.size - offset);
    const out = alloc ? Buffer.alloc(length) : Buffer.alloc(0);
    const bs = this.bs;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const segments: ReadPlan['segments'] = [];
    for (const m of map.map(first, last - first + 1)) {
      if (m.hole || m.unwritten) continue;
      const segStart = Math.max(offset, m.lblk * bs);
      const segEnd = Math.min(offset + length, (m.lblk + m.len) * bs);
      segments.push({ disk: m.pblk * bs + (segStart - m.lblk * bs), at: segStart - offset, len: segEnd - segStart });
    }
    return { out, length, segments };
  }

  /**
   * readPlannedInto on the event loop: every segment is read in one preadv2 (true), or nothing
   * is promised and the caller reads the ordinary way (false; dest may hold part of the data by
   * then). Without mayWait the read must not wait for the disk (RWF_NOWAIT: the data must be in
   * the host's page cache). Not for images read through a snapshot view.
   */
  readPlannedSync(plan: ReadPlan, dest: readonly Buffer[], mayWait: boolean): boolean {
    const dev = this.store.vol.dev;
    // (Inline-data plans never come here: planReadLoaded has no map for them, so they go the ordinary way.)
    if (plan.inline || dev.reader) return false;
    let covered = 0;
    const views: Buffer[] = [];
    for (const g of plan.segments) {
      if (g.at > covered) zeroRange(dest, covered, g.at);
      const one = dest.length === 1 ? dest[0] : null;
      if (one) {
        if (native.preadvAt(dev.fd, one, g.at, g.len, g.disk, !mayWait) !== g.len) return false;
      } else {
        views.length = 0;
        rangeViews(dest, g.at, g.at + g.len, views);
        if (native.preadv(dev.fd, views, g.disk, !mayWait) !== g.len) return false;
      }
      covered = g.at + g.len;
    }
    if (covered < plan.length) zeroRange(dest, covered, plan.length);
    dev.stats.reads += plan.segments.length;
    return true;
  }

  /**
   * Read a plan into `dest` (consecutive views of at least plan.length bytes, e.g. a guest's
   * buffers) instead of plan.out: segments straight from the image, zeros for holes and
   * unwritten extents. Returns plan.length.
   */
  async readPlannedInto(plan: ReadPlan, dest: readonly Buffer[]): Promise<number> {
    const dev = this.store.vol.dev;
    if (plan.inline) {
      copyInto(dest, plan.inline);
      if (plan.inline.length < plan.length) zeroRange(dest, plan.inline.length, plan.length);
      return plan.length;
    }
    const io: Promise<void>[] = [];
    let covered = 0; // plan bytes [0, covered) are read or zeroed
    const each = (from: number, to: number, fn: (b: Buffer, off: number, len: number, at: number) => void): void => {
      let base = 0;
      for (const b of dest) {
        const end = base + b.length;
        if (end > from && base < to) {
          const s = Math.max(from, base);
          fn(b, s - base, Math.min(to, end) - s, s);
        }
        if (end >= to) break;
        base = end;
      }
    };
    for (const g of plan.segments) {
      if (g.at > covered) each(covered, g.at, (b, off, len) => void b.fill(0, off, off + len));
      each(g.at, g.at + g.len, (b, off, len, at) => void io.push(dev.readAt(b, g.disk + (at - g.at), off, len)));
      covered = g.at + g.len;
    }
    if (covered < plan.length) each(covered, plan.length, (b, off, len) => void b.fill(0, off, off + len));
    await Promise.all(io);
    return plan.length;
  }

  /** Read a plan's segments (holes and unwritten extents stay zero). */
  async readPlanned(plan: ReadPlan): Promise<Buffer> {
    const dev = this.store.vol.dev;
    await Promise.all(plan.segments.map((g) => dev.readAt(plan.out, g.disk, g.at, g.len)));
    return plan.out;
  }

  /**
   * Write data at offset; extends the file. Returns bytes written: short when the maximum file
   * size or a full disk cuts the write (an error only when nothing could be written).
   */
  async write(st: InodeState, offset: number, data: Buffer): Promise<number> {
    const max = this.maxFileSize();
    if (offset >= max) throw new FsError('EFBIG', `write beyond the maximum file size (${max} bytes)`);
    let len = Math.min(data.length, max - offset);
    if (len === 0) return 0;
    const bs = this.bs;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + len - 1) / bs);
    const map = await this.store.extents(st);
    const dev = this.store.vol.dev;
    let written = 0; // bytes from `offset` known to be on disk, contiguous
    const putRun = async (r: { lblk: number; pblk: number; len: number }, segStart: number, segEnd: number) => {
      const rStart = r.lblk * bs;
      const rEnd = (r.lblk + r.len) * bs;
      const dStart = Math.max(segStart, rStart);
      const dEnd = Math.min(segEnd, rEnd);
      if (dStart === rStart && dEnd === rEnd) {
        await dev.writeAt(data, r.pblk * bs, dStart - offset, dEnd - dStart);
      } else {
        // Fresh blocks: zero what the write does not cover.
        const buf = Buffer.alloc(rEnd - rStart);
        data.copy(buf, dStart - rStart, dStart - offset, dEnd - offset);
        await dev.writeAt(buf, r.pblk * bs);
      }
      written = dEnd - offset;
    };
    for (const m of map.map(first, last - first + 1)) {
      const segStart = Math.max(offset, m.lblk * bs);
      const segEnd = Math.min(offset + len, (m.lblk + m.len) * bs);
      if (!m.hole && !m.unwritten) {
        await dev.writeAt(data, m.pblk * bs + (segStart - m.lblk * bs), segStart - offset, segEnd - segStart);
        written = segEnd - offset;
        continue;
      }
      if (m.unwritten) {
        await putRun({ lblk: m.lblk, pblk: m.pblk, len: m.len }, segStart, segEnd);
        await this.store.reserveTree(st, map.extents.length + 2);
        map.markWritten(m.lblk, m.len);
        continue;
      }
      let runs: { lblk: number; len: number }[];
      try {
        runs = await this.store.allocate(st, m.lblk, m.len, false, (r) => putRun(r, segStart, segEnd));
      } catch (e) {
        if (written > 0 && e instanceof FsError && e.code === 'ENOSPC') break;
        throw e;
      }
      const mapped = runs.reduce((n, r) => n + r.len, 0);
      if (mapped < m.len) break; // disk full part-way: a short write
    }
    len = written;
    if (offset + len > st.inode.size) st.inode.size = offset + len;
    return len;
  }

  /** Change the size: shrinking frees blocks past the end and zeroes the tail of the last block. */
  async truncate(st: InodeState, size: number): Promise<void> {
    if (size > this.maxFileSize()) throw new FsError('EFBIG', `size ${size} exceeds the maximum file size`);
    const old = st.inode.size;
    if (size < old) {
      const bs = this.bs;
      const keep = Math.ceil(size / bs);
      const map = await this.store.extents(st);
      // From the end down, the size following: each step leaves a shorter, whole file.
      for (let end = map.endLblk; end > keep; ) {
        const from = Math.max(keep, end - STEP_BLOCKS);
        await this.store.release(st, from, end - from);
        end = from;
        if (end > keep) await this.stepped(st, Math.min(old, end * bs));
      }
      if (size % bs) await this.zeroRange(st, size, keep * bs);
    }
    st.inode.size = size;
  }

  /** Between two steps of a large change: the file as it stands (size `size`), then a chance to commit. */
  private async stepped(st: InodeState, size = st.inode.size): Promise<void> {
    if (!this.step) return;
    st.inode.size = size;
    await this.store.write(st);
    await this.step();
  }

  /** release() in steps (see STEP_BLOCKS): a punched range grows from its start. */
  private async releaseInSteps(st: InodeState, lblk: number, count: number): Promise<void> {
    for (let done = 0; done < count; ) {
      const n = Math.min(STEP_BLOCKS, count - done);
      await this.store.release(st, lblk + done, n);
      done += n;
      if (done < count) await this.stepped(st);
    }
  }

  /** Write zeros over [from, to) where blocks are mapped and written (within one block or more). */
  private async zeroRange(st: InodeState, from: number, to: number): Promise<void> {
    if (to <= from) return;
    const bs = this.bs;
    const map = await this.store.extents(st);
    const first = Math.floor(from / bs);
    const last = Math.floor((to - 1) / bs);
    for (const m of map.map(first, last - first + 1)) {
      if (m.hole || m.unwritten) continue;
      const s = Math.max(from, m.lblk * bs);
      const e = Math.min(to, (m.lblk + m.len) * bs);
      await this.store.vol.dev.writeAt(Buffer.alloc(e - s), m.pblk * bs + (s - m.lblk * bs));
    }
  }

  async fallocate(st: InodeState, mode: number, offset: number, length: number): Promise<void> {
    if (offset < 0 || length <= 0) throw new FsError('EINVAL', 'fallocate needs offset >= 0 and length > 0');
    if (mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)) throw new FsError('EOPNOTSUPP', 'collapse/insert range are not supported');
    if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) throw new FsError('EOPNOTSUPP', `fallocate mode 0x${mode.toString(16)} is not supported`);
    if (!st.inode.isReg()) throw new FsError('ENODEV', 'fallocate works on regular files only');
    const end = offset + length;
    if (end > this.maxFileSize()) throw new FsError('EFBIG', 'fallocate beyond the maximum file size');
    const bs = this.bs;
    const firstFull = Math.ceil(offset / bs);
    const lastFull = Math.floor(end / bs); // exclusive
    if (mode & FALLOC_FL_PUNCH_HOLE) {
      if (!(mode & FALLOC_FL_KEEP_SIZE)) throw new FsError('EOPNOTSUPP', 'punch hole requires keep size');
      const size = st.inode.size;
      const stop = Math.min(end, size);
      if (stop <= offset) return;
      const pFirst = Math.ceil(offset / bs);
      const pLast = Math.floor(stop / bs);
      if (pLast > pFirst) {
        await this.zeroRange(st, offset, pFirst * bs);
        await this.releaseInSteps(st, pFirst, pLast - pFirst);
        await this.zeroRange(st, pLast * bs, stop);
      } else {
        await this.zeroRange(st, offset, stop);
      }
      return;
    }
    const map = await this.store.extents(st);
    if (mode & FALLOC_FL_ZERO_RANGE) {
      if (lastFull > firstFull) {
        await this.zeroRange(st, offset, Math.min(end, firstFull * bs));
        await this.releaseInSteps(st, firstFull, lastFull - firstFull);
        await this.zeroRange(st, Math.max(offset, lastFull * bs), end);
      } else {
        await this.zeroRange(st, offset, end);
      }
    }
    // Allocate unwritten extents over the holes of the range.
    const first = Math.floor(offset / bs);
    const last = Math.floor((end - 1) / bs);
    // Unwritten extents past the size are valid ext4 (what KEEP_SIZE leaves), so the size
    // moves only at the end and each step in between is a consistent file.
    for (const m of map.map(first, last - first + 1)) {
      if (!m.hole) continue;
      for (let done = 0; done < m.len; ) {
        const n = Math.min(STEP_BLOCKS, m.len - done);
        const runs = await this.store.allocate(st, m.lblk + done, n, true);
        if (runs.reduce((k, r) => k + r.len, 0) < n) throw new FsError('ENOSPC', 'no space left to allocate the whole range');
        done += n;
        if (done < m.len) await this.stepped(st);
      }
    }
    if (!(mode & FALLOC_FL_KEEP_SIZE) && end > st.inode.size) st.inode.size = end;
  }

  /** SEEK_DATA / SEEK_HOLE over the extent map (unwritten extents count as holes). */
  async seek(st: InodeState, offset: number, whence: number): Promise<number> {
    const size = st.inode.size;
    if (offset < 0) throw new FsError('EINVAL', 'negative offset');
    if (offset >= size) throw new FsError('ENXIO', 'offset is at or past the end of the file');
    if (st.inode.hasFlag(INODE_FLAGS.INLINE_DATA) && (whence === SEEK_DATA || whence === SEEK_HOLE)) return whence === SEEK_DATA ? offset : size; // all data
    const bs = this.bs;
    const map = await this.store.extents(st);
    const first = Math.floor(offset / bs);
    const last = Math.floor((size - 1) / bs);
    for (const m of map.map(first, last - first + 1)) {
      const isData = !m.hole && !m.unwritten;
      if (whence === SEEK_DATA && isData) return Math.max(offset, m.lblk * bs);
      if (whence === SEEK_HOLE && !isData) return Math.max(offset, m.lblk * bs);
    }
    if (whence === SEEK_DATA) throw new FsError('ENXIO', 'no data after offset');
    if (whence === SEEK_HOLE) return size;
    throw new FsError('EINVAL', `unsupported whence ${whence}`);
  }
}
