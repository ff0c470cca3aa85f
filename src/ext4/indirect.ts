/**
 * ext2/ext3 block maps ("indirect" mapping: files without EXTENTS_FL; Linux fs/ext4/indirect.c).
 * i_block holds fifteen le32 block numbers: 0-11 map logical blocks 0-11 directly, 12 names a
 * block of P = block size / 4 further numbers (single indirect, logical blocks 12 .. 12+P-1),
 * 13 a block of P single-indirect blocks (double), 14 a block of P double-indirect blocks
 * (triple). 0 is a hole, at any level. Block numbers are 32-bit.
 *
 * kfs reads such a map into the same in-memory ExtentMap as an extent tree, with the indirect
 * blocks as the map's tree blocks. On a filesystem with the extent feature the first change to
 * the file then stores it as an extent tree (reusing or freeing those blocks and setting
 * EXTENTS_FL), as the kernel's ext4_ext_migrate does; without the feature (an ext2/ext3 image)
 * the volume is read-only (Volume.fromDevice), so nothing is ever written in this format.
 */
import { CorruptionError } from '../util/errors';
import { ExtentMap, ExtentTreeIO, MAX_INIT_LEN } from './extents';
import { Inode, INODE_FLAGS } from './inode';

const DIRECT = 12;
const I_BLOCK_ENTRIES = 15;
/** ext4_lblk_t is 32-bit: the kernel never maps a logical block at or past 2^32. */
const LBLK_LIMIT = 2 ** 32;
/**
 * Pieces a map may have. A crafted map of alternating pointers makes one extent per block (a
 * 128 MiB image made a 1.9 GB map); a real file this fragmented would be one of millions of
 * blocks scattered one by one, which kfs refuses rather than risk the server's memory.
 */
const MAX_EXTENTS = 1 << 20;

/** Read the block map rooted in i_block. Every block number must lie inside the filesystem. */
export async function loadIndirectMap(ino: number, iBlock: Buffer, io: Pick<ExtentTreeIO, 'blockSize' | 'read' | 'blocksCount'>): Promise<ExtentMap> {
  if (iBlock.length < I_BLOCK_ENTRIES * 4) throw new CorruptionError(`inode ${ino}: i_block is ${iBlock.length} bytes`);
  const perBlock = io.blockSize / 4;
  const map = new ExtentMap();
  // An indirect block named twice would be walked twice (or, named by itself, without end in a
  // crafted image): each may appear once, which bounds the walk by the filesystem's size.
  const seen = new Set<number>();
  // No file maps more blocks (data and indirect) than the filesystem has.
  let pointers = 0;
  const check = (b: number, what: string): void => {
    if (b >= io.blocksCount) throw new CorruptionError(`inode ${ino}: ${what} block ${b} is past the end of the filesystem (${io.blocksCount} blocks)`);
    if (++pointers > io.blocksCount) throw new CorruptionError(`inode ${ino}: its block map names more blocks than the filesystem has`);
  };
  // Logical blocks come in ascending order: a block continuing the last extent on disk joins it.
  const data = (lblk: number, pblk: number): void => {
    check(pblk, 'data');
    if (lblk >= LBLK_LIMIT) throw new CorruptionError(`inode ${ino}: block map reaches logical block ${lblk}, past 2^32`);
    const e = map.extents[map.extents.length - 1];
    if (e && e.lblk + e.len === lblk && e.pblk + e.len === pblk && e.len < MAX_INIT_LEN) e.len++;
    else if (map.extents.length >= MAX_EXTENTS) throw new CorruptionError(`inode ${ino}: block map in over ${MAX_EXTENTS} pieces, more than kfs loads`);
    else map.extents.push({ lblk, pblk, len: 1, unwritten: false });
  };
  // Walk the indirect block `b` of the given level (1: it lists data blocks) mapping from lblk.
  const walk = async (b: number, level: number, lblk: number): Promise<void> => {
    check(b, 'indirect');
    if (seen.has(b)) throw new CorruptionError(`inode ${ino}: indirect block ${b} is named twice`);
    seen.add(b);
    map.treeBlocks.push(b);
    const buf = await io.read(b);
    const span = perBlock ** (level - 1); // logical blocks under each entry
    for (let k = 0; k < perBlock; k++) {
      const p = buf.readUInt32LE(k * 4);
      if (p === 0) continue;
      if (lblk + k * span >= LBLK_LIMIT) throw new CorruptionError(`inode ${ino}: block map reaches logical block ${lblk + k * span}, past 2^32`);
      if (level === 1) data(lblk + k, p);
      else await walk(p, level - 1, lblk + k * span);
    }
  };
  for (let k = 0; k < DIRECT; k++) {
    const p = iBlock.readUInt32LE(k * 4);
    if (p !== 0) data(k, p);
  }
  let base = DIRECT;
  for (let level = 1; level <= 3; level++) {
    const p = iBlock.readUInt32LE((DIRECT + level - 1) * 4);
    if (p !== 0) await walk(p, level, base);
    base += perBlock ** level;
  }
  return map;
}

/**
 * Does this inode map data through i_block when it has no EXTENTS_FL? Directories and regular
 * files do; a symlink only when its target did not fit in i_block (a "slow" symlink, size 60 or
 * more); device nodes, fifos and sockets never (i_block holds a device number or nothing).
 */
export function holdsBlockMap(inode: Inode): boolean {
  if (inode.isDir() || inode.isReg()) return true;
  return inode.isSymlink() && inode.size >= I_BLOCK_ENTRIES * 4;
}

/** An ext2/3 block map with at least one block in i_block: what loadIndirectMap reads. */
export function hasBlockMap(inode: Inode): boolean {
  return !inode.hasFlag(INODE_FLAGS.EXTENTS) && !inode.hasFlag(INODE_FLAGS.INLINE_DATA) && holdsBlockMap(inode) && inode.f.i_block.some((b) => b !== 0);
}
