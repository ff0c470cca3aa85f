/**
 * The block allocation map mkfs lays a filesystem out with (used by layout.ts), and the
 * searches mke2fs allocates with, so that placements come out identical to mkfs.ext4's:
 *   getFreeBlocks  = ext2fs_get_free_blocks2 (lib/ext2fs/alloc.c): first run of n free blocks
 *                    trying start, start+1, ... before `finish`, wrapping when finish <= start;
 *   newRange       = ext2fs_new_range without flags: the free run at the first free block from
 *                    the goal (wrapping), at most len long;
 *   newBlock       = ext2fs_new_block2: first free block from the goal, wrapping.
 * Superblock + descriptor copies are implied by the geometry (never stored); everything
 * allocated lives in per-group bitmaps (bit i = block first_block + i) created on first use, so
 * a 16 TiB layout only holds bitmaps for the few groups that receive metadata or data.
 */
import { sparseSuperBackup } from '../src/ext4/superblock';

export class BlockAllocator {
  private readonly maps = new Map<number, Uint8Array>();
  /** Groups where mke2fs clears BLOCK_UNINIT: they hold data, or (flex_bg) other groups' tables. */
  private readonly touched = new Set<number>();

  constructor(
    readonly total: number, readonly fdb: number, readonly bpg: number, readonly groups: number,
    private readonly descBlocks: number, private readonly sparse: boolean,
  ) {}

  firstBlock(g: number): number { return this.fdb + g * this.bpg; }
  lastBlock(g: number): number { return g === this.groups - 1 ? this.total - 1 : this.firstBlock(g) + this.bpg - 1; }
  groupBlocks(g: number): number { return this.lastBlock(g) - this.firstBlock(g) + 1; }
  groupOf(b: number): number { return Math.floor((b - this.fdb) / this.bpg); }
  hasSuper(g: number): boolean { return sparseSuperBackup(g, this.sparse); }
  /** Superblock + descriptor blocks at the start of group g. */
  reservedLen(g: number): number { return this.hasSuper(g) ? 1 + this.descBlocks : 0; }
  sbGdtTotal(): number {
    let s = 0;
    for (let g = 0; g < this.groups; g++) s += this.reservedLen(g);
    return s;
  }
  isTouched(g: number): boolean { return this.touched.has(g); }
  /** The allocated-block bitmap of group g (without the implied superblock copy), if any. */
  groupMap(g: number): Uint8Array | undefined { return this.maps.get(g); }

  /** Blocks in use in [fdb, total): implied copies plus everything marked. */
  usedTotal(): number {
    let s = this.sbGdtTotal();
    for (const m of this.maps.values()) s += popcount(m);
    return s;
  }

  groupFree(g: number): number {
    const m = this.maps.get(g);
    return this.groupBlocks(g) - this.reservedLen(g) - (m ? popcount(m) : 0);
  }

  /** Mark [b, b+n) allocated; `touch` false keeps BLOCK_UNINIT possible (tables without flex_bg). */
  mark(b: number, n: number, touch = true): void {
    let x = b;
    const end = b + n;
    while (x < end) {
      const g = this.groupOf(x);
      const gs = this.firstBlock(g);
      const stop = Math.min(end, this.lastBlock(g) + 1);
      let m = this.maps.get(g);
      if (!m) this.maps.set(g, (m = new Uint8Array(this.bpg / 8)));
      setBits(m, x - gs, stop - gs);
      if (touch) this.touched.add(g);
      x = stop;
    }
  }

  /** First used block in [from, to], or -1. Block 0 of a 1 KiB-block filesystem counts as used. */
  firstUsed(from: number, to: number): number {
    let x = from;
    while (x <= to) {
      if (x < this.fdb) return x;
      const g = this.groupOf(x);
      const gs = this.firstBlock(g);
      const ge = Math.min(this.lastBlock(g), to);
      if (x < gs + this.reservedLen(g)) return x;
      const m = this.maps.get(g);
      if (m) {
        const hit = findBit(m, x - gs, ge - gs, 1);
        if (hit >= 0) return gs + hit;
      }
      x = ge + 1;
    }
    return -1;
  }

  /** First free block in [from, to], or -1. */
  firstFree(from: number, to: number): number {
    let x = Math.max(from, this.fdb);
    while (x <= to) {
      const g = this.groupOf(x);
      const gs = this.firstBlock(g);
      const ge = Math.min(this.lastBlock(g), to);
      const resEnd = gs + this.reservedLen(g);
      if (x < resEnd) {
        x = resEnd;
        continue;
      }
      const m = this.maps.get(g);
      if (!m) return x;
      const hit = findBit(m, x - gs, ge - gs, 0);
      if (hit >= 0) return gs + hit;
      x = ge + 1;
    }
    return -1;
  }

  /**
   * ext2fs_get_free_blocks2: first b with [b, b+num) free, trying b = start, start+1, ... and
   * stopping before `finish` (wrapping to the first data block when finish <= start). -1 if none.
   * Candidates that contain a known used block are skipped in one step.
   */
  getFreeBlocks(start: number, finish: number, num: number): number {
    let b = start || this.fdb;
    if (!finish) finish = start;
    if (!num) num = 1;
    const bound = this.total - num + 1; // first b whose run would pass the end
    do {
      if (b >= bound) {
        if (finish > start) return -1;
        b = this.fdb;
      }
      const used = this.firstUsed(b, b + num - 1);
      if (used < 0) return b;
      let next = used + 1;
      if (finish > b && next > finish) next = finish;
      if (bound > b && next > bound) next = bound;
      b = next;
    } while (b !== finish);
    return -1;
  }

  /** ext2fs_new_range without flags: the free run at the first free block from goal (wrapping). */
  newRange(goal: number, len: number): { start: number; length: number } | null {
    if (!goal || goal >= this.total) goal = this.fdb;
    let s = this.firstFree(goal, this.total - 1);
    if (s < 0 && goal !== this.fdb) s = this.firstFree(this.fdb, this.total - 1);
    if (s < 0) return null;
    const last = Math.min(s + len - 1, this.total - 1);
    const used = this.firstUsed(s, last);
    return { start: s, length: (used < 0 ? last + 1 : used) - s };
  }

  /** ext2fs_new_block2: first free block at or after goal, wrapping; -1 when full. */
  newBlock(goal: number): number {
    if (!goal || goal >= this.total) goal = this.fdb;
    const b = this.firstFree(goal, this.total - 1);
    return b >= 0 ? b : this.firstFree(this.fdb, goal - 1);
  }
}

function setBits(m: Uint8Array, from: number, to: number): void {
  let i = from;
  while (i < to && i & 7) m[i >> 3] |= 1 << (i++ & 7);
  while (i + 8 <= to) {
    m[i >> 3] = 0xff;
    i += 8;
  }
  while (i < to) m[i >> 3] |= 1 << (i++ & 7);
}

/** First bit in [from, to] equal to `want`, or -1. */
function findBit(m: Uint8Array, from: number, to: number, want: 0 | 1): number {
  const skip = want ? 0x00 : 0xff;
  let i = from;
  while (i <= to) {
    if ((i & 7) === 0 && i + 7 <= to && m[i >> 3] === skip) {
      i += 8;
      continue;
    }
    if (((m[i >> 3] >> (i & 7)) & 1) === want) return i;
    i++;
  }
  return -1;
}

function popcount(m: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < m.length; i++) {
    let v = m[i];
    while (v) {
      v &= v - 1;
      n++;
    }
  }
  return n;
}
