/**
 * Extent trees (linux fs/ext4/ext4_extents.h). A tree node is a 12-byte header
 * {eh_magic 0xF30A, eh_entries, eh_max, eh_depth, eh_generation} followed by eh_max entries:
 * leaves (depth 0) hold ext4_extent {ee_block u32, ee_len u16, ee_start_hi u16, ee_start_lo u32}
 * (ee_len > 32768 marks an unwritten extent of ee_len - 32768 blocks); index nodes hold
 * ext4_extent_idx {ei_block u32, ei_leaf_lo u32, ei_leaf_hi u16, ei_unused u16}. The root lives
 * in the inode's 60-byte i_block (4 entries); other nodes are blocks ending in a 4-byte
 * ext4_extent_tail holding crc32c(inode csum seed, block up to the tail).
 *
 * kfs keeps a file's mapping in memory as a sorted array of extents (like ext4's extent
 * status tree) and writes the tree back densely packed when the inode is flushed. Lookups are
 * binary searches; edits splice the array.
 */
import { ByteCursor, join64, hi32, lo32 } from '../util/cursor';
import { CorruptionError } from '../util/errors';
import { ext4Crc } from './crc';

export const EXTENT_MAGIC = 0xf30a;
export const MAX_INIT_LEN = 32768;
export const MAX_UNWRITTEN_LEN = 32767;
const HEADER_SIZE = 12;
const ENTRY_SIZE = 12;
const ROOT_ENTRIES = 4;
const MAX_DEPTH = 5;

export interface Extent {
  /** First logical block. */
  lblk: number;
  len: number;
  /** First physical block. */
  pblk: number;
  unwritten: boolean;
}

/** A piece of a logical range: mapped to `pblk`, or a hole (pblk = 0, hole = true). */
export interface Mapping {
  lblk: number;
  len: number;
  pblk: number;
  hole: boolean;
  unwritten: boolean;
}

export interface ExtentTreeIO {
  blockSize: number;
  read(block: number): Promise<Buffer>;
  /** A zero buffer for a block that will be fully written. */
  zeroed(block: number): Buffer;
  markDirty(block: number, buf: Buffer): void;
  /** Allocate one metadata block near `goal`. */
  allocMeta(goal: number): Promise<number>;
  freeMeta(block: number): Promise<void>;
  /** Block numbers must be below this. */
  blocksCount: number;
}

export class ExtentMap {
  /** Sorted, non-overlapping. */
  extents: Extent[];
  /** Blocks the on-disk tree uses now (index and leaf nodes). */
  treeBlocks: number[];
  private changed = false;
  /**
   * Called when the map becomes dirty: the inode store keeps the set of dirty maps so that a
   * commit visits only those, not every cached inode (a commit per request must be O(changes)).
   */
  onDirty: (() => void) | null = null;

  /** Changed since it was loaded or last stored into its tree. */
  get dirty(): boolean {
    return this.changed;
  }
  set dirty(v: boolean) {
    if (v && !this.changed) this.onDirty?.();
    this.changed = v;
  }

  constructor(extents: Extent[] = [], treeBlocks: number[] = []) {
    this.extents = extents;
    this.treeBlocks = treeBlocks;
  }

  /** Read the tree rooted in i_block. csumSeed = the inode's seed, or null without metadata_csum. */
  static async load(ino: number, iBlock: Buffer, io: ExtentTreeIO, csumSeed: number | null): Promise<ExtentMap> {
    const map = new ExtentMap();
    const root = parseNode(iBlock, ino, 'i_block', ROOT_ENTRIES);
    await walk(map, root, ino, io, csumSeed, -1, 0);
    return checkOrder(map, ino);
  }

  /**
   * load() without waiting, for a tree that lies wholly in i_block (depth 0: up to four
   * extents, every small file): null when it has index nodes to read.
   */
  static loadInline(ino: number, iBlock: Buffer, io: ExtentTreeIO): ExtentMap | null {
    const root = parseNode(iBlock, ino, 'i_block', ROOT_ENTRIES);
    if (root.depth !== 0) return null;
    const map = new ExtentMap();
    readLeaf(map, root, ino, io, 0);
    return checkOrder(map, ino);
  }

  /** Tree blocks (leaves and index nodes) a map of n extents is stored in; 0 fits in i_block. */
  static treeBlocksFor(n: number, blockSize: number): number {
    if (n <= ROOT_ENTRIES) return 0;
    const perBlock = Math.floor((blockSize - HEADER_SIZE - 4) / ENTRY_SIZE);
    let total = 0;
    let level = Math.ceil(n / perBlock);
    for (;;) {
      total += level;
      if (level <= ROOT_ENTRIES) return total;
      level = Math.ceil(level / perBlock);
    }
  }

  /** Index of the last extent with lblk <= l, or -1. */
  private find(l: number): number {
    let lo = 0;
    let hi = this.extents.length - 1;
    let ans = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.extents[mid].lblk <= l) {
        ans = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return ans;
  }

  /** The mapping of [lblk, lblk+len) as consecutive pieces. */
  map(lblk: number, len: number): Mapping[] {
    const out: Mapping[] = [];
    let l = lblk;
    const end = lblk + len;
    let i = this.find(l);
    if (i >= 0 && this.extents[i].lblk + this.extents[i].len <= l) i++;
    if (i < 0) i = 0;
    while (l < end) {
      const e = this.extents[i];
      if (!e || e.lblk >= end) {
        out.push({ lblk: l, len: end - l, pblk: 0, hole: true, unwritten: false });
        break;
      }
      if (e.lblk > l) {
        out.push({ lblk: l, len: e.lblk - l, pblk: 0, hole: true, unwritten: false });
        l = e.lblk;
      }
      const n = Math.min(end, e.lblk + e.len) - l;
      out.push({ lblk: l, len: n, pblk: e.pblk + (l - e.lblk), hole: false, unwritten: e.unwritten });
      l += n;
      i++;
    }
    return out;
  }

  /** Physical block of one logical block, or 0 for a hole. */
  lookup(lblk: number): number {
    const i = this.find(lblk);
    if (i < 0) return 0;
    const e = this.extents[i];
    return lblk < e.lblk + e.len ? e.pblk + (lblk - e.lblk) : 0;
  }

  /** Last mapped physical block at or before lblk (an allocation goal), or 0. */
  goalFor(lblk: number): number {
    const i = this.find(lblk);
    if (i < 0) return this.extents.length ? this.extents[0].pblk : 0;
    const e = this.extents[i];
    return e.pblk + Math.min(lblk - e.lblk, e.len);
  }

  /** Number of mapped blocks (data only). */
  get mappedBlocks(): number {
    let n = 0;
    for (const e of this.extents) n += e.len;
    return n;
  }

  /** Logical block after the last extent. */
  get endLblk(): number {
    const e = this.extents[this.extents.length - 1];
    return e ? e.lblk + e.len : 0;
  }

  /** Insert a mapping for a range that is a hole now; merges with neighbours. */
  insert(x: Extent): void {
    const i = this.find(x.lblk);
    const prev = i >= 0 ? this.extents[i] : undefined;
    if (prev && prev.lblk + prev.len > x.lblk) throw new Error(`extent insert over mapped block ${x.lblk}`);
    const next = this.extents[i + 1];
    if (next && x.lblk + x.len > next.lblk) throw new Error(`extent insert over mapped block ${next.lblk}`);
    const max = x.unwritten ? MAX_UNWRITTEN_LEN : MAX_INIT_LEN;
    if (prev && prev.unwritten === x.unwritten && prev.lblk + prev.len === x.lblk && prev.pblk + prev.len === x.pblk && prev.len + x.len <= max) {
      prev.len += x.len;
      if (next && next.unwritten === x.unwritten && prev.lblk + prev.len === next.lblk && prev.pblk + prev.len === next.pblk && prev.len + next.len <= max) {
        prev.len += next.len;
        this.extents.splice(i + 1, 1);
      }
    } else if (next && next.unwritten === x.unwritten && x.lblk + x.len === next.lblk && x.pblk + x.len === next.pblk && x.len + next.len <= max) {
      next.lblk = x.lblk;
      next.pblk = x.pblk;
      next.len += x.len;
    } else {
      // Split overlong inserts into legal extent lengths.
      let l = x.lblk;
      let p = x.pblk;
      let left = x.len;
      let at = i + 1;
      while (left > 0) {
        const n = Math.min(left, max);
        this.extents.splice(at++, 0, { lblk: l, len: n, pblk: p, unwritten: x.unwritten });
        l += n;
        p += n;
        left -= n;
      }
    }
    this.dirty = true;
  }

  /** Unmap [lblk, lblk+len); returns the physical runs that were mapped there. */
  remove(lblk: number, len: number): { pblk: number; len: number }[] {
    const freed: { pblk: number; len: number }[] = [];
    const end = lblk + len;
    let i = this.find(lblk);
    if (i < 0) i = 0;
    const keep: Extent[] = [];
    let j = i;
    for (; j < this.extents.length; j++) {
      const e = this.extents[j];
      if (e.lblk >= end) break;
      const eEnd = e.lblk + e.len;
      if (eEnd <= lblk) {
        keep.push(e);
        continue;
      }
      const cutStart = Math.max(lblk, e.lblk);
      const cutEnd = Math.min(end, eEnd);
      freed.push({ pblk: e.pblk + (cutStart - e.lblk), len: cutEnd - cutStart });
      if (e.lblk < cutStart) keep.push({ lblk: e.lblk, len: cutStart - e.lblk, pblk: e.pblk, unwritten: e.unwritten });
      if (cutEnd < eEnd) keep.push({ lblk: cutEnd, len: eEnd - cutEnd, pblk: e.pblk + (cutEnd - e.lblk), unwritten: e.unwritten });
    }
    if (freed.length) {
      this.extents.splice(i, j - i, ...keep);
      this.dirty = true;
    }
    return freed;
  }

  /** Mark [lblk, lblk+len) written (it must be mapped); splits unwritten extents. */
  markWritten(lblk: number, len: number): void {
    const pieces = this.map(lblk, len).filter((m) => !m.hole && m.unwritten);
    for (const m of pieces) {
      this.remove(m.lblk, m.len);
      this.insert({ lblk: m.lblk, len: m.len, pblk: m.pblk, unwritten: false });
    }
  }

  /**
   * Write the tree back: root into `iBlock` (60 bytes), other nodes into blocks (reusing the
   * current tree blocks first). Returns the change in the number of tree blocks.
   */
  async store(iBlock: Buffer, io: ExtentTreeIO, csumSeed: number | null, goal: number): Promise<number> {
    const perBlock = Math.floor((io.blockSize - HEADER_SIZE - 4) / ENTRY_SIZE);
    const oldBlocks = this.treeBlocks;
    const reuse = [...oldBlocks];
    const newBlocks: number[] = [];
    const take = async (): Promise<number> => {
      const b = reuse.length ? reuse.shift()! : await io.allocMeta(goal);
      newBlocks.push(b);
      return b;
    };
    // Leaves hold the extents; each level up indexes the one below, until the root fits.
    let depth = 0;
    if (this.extents.length <= ROOT_ENTRIES) {
      writeNode(iBlock, 0, ROOT_ENTRIES, this.extents, null);
    } else {
      let items: { lblk: number; block: number }[] = [];
      for (let k = 0; k < this.extents.length; k += perBlock) {
        const chunk = this.extents.slice(k, k + perBlock);
        const b = await take();
        const buf = io.zeroed(b);
        writeNode(buf, 0, perBlock, chunk, null);
        sealNode(buf, perBlock, csumSeed);
        io.markDirty(b, buf);
        items.push({ lblk: chunk[0].lblk, block: b });
      }
      depth = 1;
      while (items.length > ROOT_ENTRIES) {
        if (depth >= MAX_DEPTH) throw new CorruptionError('extent tree too deep');
        const up: { lblk: number; block: number }[] = [];
        for (let k = 0; k < items.length; k += perBlock) {
          const chunk = items.slice(k, k + perBlock);
          const b = await take();
          const buf = io.zeroed(b);
          writeNode(buf, depth, perBlock, null, chunk);
          sealNode(buf, perBlock, csumSeed);
          io.markDirty(b, buf);
          up.push({ lblk: chunk[0].lblk, block: b });
        }
        items = up;
        depth++;
      }
      writeNode(iBlock, depth, ROOT_ENTRIES, null, items);
    }
    for (const b of reuse) await io.freeMeta(b);
    this.treeBlocks = newBlocks;
    this.dirty = false;
    return newBlocks.length - oldBlocks.length;
  }
}

interface ParsedNode {
  depth: number;
  entries: number;
  max: number;
  buf: Buffer;
}

function parseNode(buf: Buffer, ino: number, where: string, maxAllowed: number): ParsedNode {
  const c = new ByteCursor(buf);
  const magic = c.u16();
  const entries = c.u16();
  const max = c.u16();
  const depth = c.u16();
  if (magic !== EXTENT_MAGIC) throw new CorruptionError(`inode ${ino}: bad extent header magic 0x${magic.toString(16)} in ${where}`);
  if (max > maxAllowed || entries > max || depth > MAX_DEPTH) {
    throw new CorruptionError(`inode ${ino}: extent header in ${where} has impossible counts (entries ${entries}, max ${max}, depth ${depth})`);
  }
  return { depth, entries, max, buf };
}

/** Extents in logical order without overlaps, as the kernel's ext4_valid_extent_entries wants. */
function checkOrder(map: ExtentMap, ino: number): ExtentMap {
  for (let i = 1; i < map.extents.length; i++) {
    const a = map.extents[i - 1];
    const b = map.extents[i];
    if (a.lblk + a.len > b.lblk) throw new CorruptionError(`inode ${ino}: extents overlap at logical block ${b.lblk}`);
  }
  return map;
}

/** A leaf node's extents (struct ext4_extent), appended to the map. */
function readLeaf(map: ExtentMap, node: ParsedNode, ino: number, io: ExtentTreeIO, minLblk: number): void {
  const c = new ByteCursor(node.buf, HEADER_SIZE);
  for (let k = 0; k < node.entries; k++) {
    const lblk = c.u32();
    const rawLen = c.u16();
    const hi = c.u16();
    const lo = c.u32();
    const unwritten = rawLen > MAX_INIT_LEN;
    const len = unwritten ? rawLen - MAX_INIT_LEN : rawLen;
    const pblk = join64(lo, hi);
    if (len === 0 || pblk === 0 || pblk + len > io.blocksCount || lblk < minLblk) {
      throw new CorruptionError(`inode ${ino}: extent (logical ${lblk}, physical ${pblk}, length ${len}) is invalid`);
    }
    map.extents.push({ lblk, len, pblk, unwritten });
  }
}

async function walk(map: ExtentMap, node: ParsedNode, ino: number, io: ExtentTreeIO, csumSeed: number | null, expectDepth: number, minLblk: number): Promise<void> {
  if (expectDepth >= 0 && node.depth !== expectDepth) throw new CorruptionError(`inode ${ino}: extent tree depth inconsistent`);
  if (node.depth === 0) {
    readLeaf(map, node, ino, io, minLblk);
    return;
  }
  const c = new ByteCursor(node.buf, HEADER_SIZE);
  for (let k = 0; k < node.entries; k++) {
    const lblk = c.u32();
    const lo = c.u32();
    const hi = c.u16();
    c.skip(2);
    const child = join64(lo, hi);
    if (child === 0 || child >= io.blocksCount) throw new CorruptionError(`inode ${ino}: extent index points to block ${child} outside the filesystem`);
    if (map.treeBlocks.includes(child) || map.treeBlocks.length > 100000) throw new CorruptionError(`inode ${ino}: extent tree has a loop at block ${child}`);
    map.treeBlocks.push(child);
    const buf = await io.read(child);
    const perBlock = Math.floor((io.blockSize - HEADER_SIZE) / ENTRY_SIZE);
    const childNode = parseNode(buf, ino, `block ${child}`, perBlock);
    if (csumSeed !== null) {
      const tailOff = HEADER_SIZE + childNode.max * ENTRY_SIZE;
      if (tailOff + 4 > io.blockSize) throw new CorruptionError(`inode ${ino}: extent block ${child} has no room for its checksum`);
      const want = ext4Crc(csumSeed, buf.subarray(0, tailOff));
      if (buf.readUInt32LE(tailOff) !== want) throw new CorruptionError(`inode ${ino}: extent block ${child} checksum mismatch`);
    }
    await walk(map, childNode, ino, io, csumSeed, node.depth - 1, lblk);
  }
}

function writeNode(buf: Buffer, depth: number, max: number, leaves: Extent[] | null, index: { lblk: number; block: number }[] | null): void {
  const c = new ByteCursor(buf, 0, HEADER_SIZE + max * ENTRY_SIZE);
  const n = leaves ? leaves.length : index!.length;
  c.putU16(EXTENT_MAGIC).putU16(n).putU16(max).putU16(depth).putU32(0);
  if (leaves) {
    for (const e of leaves) {
      c.putU32(e.lblk).putU16(e.unwritten ? e.len + MAX_INIT_LEN : e.len).putU16(hi32(e.pblk) & 0xffff).putU32(lo32(e.pblk));
    }
  } else {
    for (const x of index!) c.putU32(x.lblk).putU32(lo32(x.block)).putU16(hi32(x.block) & 0xffff).putU16(0);
  }
  c.fill(c.remaining);
}

function sealNode(buf: Buffer, max: number, csumSeed: number | null): void {
  const tailOff = HEADER_SIZE + max * ENTRY_SIZE;
  buf.writeUInt32LE(csumSeed === null ? 0 : ext4Crc(csumSeed, buf.subarray(0, tailOff)), tailOff);
}
