/**
 * loadIndirectMap (src/ext4/indirect.ts) on block maps made in memory: the mapping of each
 * level, and the bounds that keep a crafted map from costing the server its memory or time.
 */
import test from 'ava';
import { loadIndirectMap } from '../src/ext4/indirect';

const BS = 1024;
const P = BS / 4;

/** An i_block with the given direct blocks and single/double/triple indirect block numbers. */
function iBlock(direct: number[], ind = 0, dind = 0, tind = 0): Buffer {
  const b = Buffer.alloc(60);
  direct.forEach((p, k) => b.writeUInt32LE(p, k * 4));
  b.writeUInt32LE(ind, 48);
  b.writeUInt32LE(dind, 52);
  b.writeUInt32LE(tind, 56);
  return b;
}

/** An indirect block listing `entries` (index -> block number). */
function block(entries: Record<number, number>, bs = BS): Buffer {
  const b = Buffer.alloc(bs);
  for (const [k, p] of Object.entries(entries)) b.writeUInt32LE(p, Number(k) * 4);
  return b;
}

test('direct, single, double and triple indirect blocks map to their logical ranges, contiguous runs joined', async (t) => {
  const blocks = new Map<number, Buffer>([
    [100, block(Object.fromEntries(Array.from({ length: P }, (_, k) => [k, 1000 + k])))], // single: 12..267 -> 1000..1255
    [101, block({ 0: 102, 5: 103 })], // double
    [102, block({ 0: 2000, 1: 2001 })], // lblk 268, 269
    [103, block({ 255: 3000 })], // lblk 268 + 5*256 + 255
    [104, block({ 1: 105 })], // triple
    [105, block({ 2: 106 })],
    [106, block({ 3: 4000 })], // lblk 12 + 256 + 65536 + 65536 + 2*256 + 3
  ]);
  const map = await loadIndirectMap(12, iBlock([988, 989, 0, 991, 992, 993, 994, 995, 996, 997, 998, 999], 100, 101, 104), {
    blockSize: BS, blocksCount: 1 << 20, read: async (b) => blocks.get(b)!,
  });
  t.deepEqual(map.extents.map((e) => [e.lblk, e.pblk, e.len]), [
    [0, 988, 2], [3, 991, 265], // 3..11 direct, then the single-indirect run continues it on disk
    [268, 2000, 2], [268 + 5 * 256 + 255, 3000, 1], [12 + 256 + 65536 + 65536 + 2 * 256 + 3, 4000, 1],
  ]);
  t.deepEqual(map.treeBlocks, [100, 101, 102, 103, 104, 105, 106]);
});

test('a map of one extent per block stops at the extent cap instead of growing without bound', async (t) => {
  // A crafted triple-indirect tree: every indirect block is a new one, and the data pointers are
  // every other block, so no two join: one extent per pointer, 16.7M of them if nothing stopped it.
  const level = new Map<number, number>([[2 ** 31, 3]]);
  let nextIndirect = 2 ** 31 + 1;
  let nextData = 2;
  const read = async (b: number): Promise<Buffer> => {
    const buf = Buffer.alloc(BS);
    const l = level.get(b)!;
    for (let k = 0; k < P; k++) {
      if (l > 1) level.set(nextIndirect, l - 1);
      buf.writeUInt32LE(l > 1 ? nextIndirect++ : (nextData += 2), k * 4);
    }
    return buf;
  };
  await t.throwsAsync(() => loadIndirectMap(12, iBlock([], 0, 0, 2 ** 31), { blockSize: BS, blocksCount: 2 ** 32 - 1, read }), {
    message: /in over 1048576 pieces/,
  });
  t.true(nextData / 2 < 1.1 * 2 ** 20, 'the walk stopped soon after the cap');
});

test('a map that names more blocks than the filesystem has is damage', async (t) => {
  const ind = block(Object.fromEntries(Array.from({ length: P }, (_, k) => [k, 50 + (k % 40)])));
  await t.throwsAsync(() => loadIndirectMap(12, iBlock([], 20), { blockSize: BS, blocksCount: 100, read: async () => ind }), {
    message: /names more blocks than the filesystem has/,
  });
});

test('logical blocks past 2^32 (reachable with 64 KiB blocks) are damage, found before the walk reaches them', async (t) => {
  const bs = 65536;
  const p = bs / 4;
  // The triple range starts at 12 + p + p^2; top entry 16 starts 16 p^2 later, past 2^32.
  t.true(12 + p + p * p + 16 * p * p >= 2 ** 32);
  let reads = 0;
  const top = block({ 16: 7 }, bs);
  await t.throwsAsync(() => loadIndirectMap(12, iBlock([], 0, 0, 5), {
    blockSize: bs, blocksCount: 1 << 20, read: async (b) => {
      reads++;
      return b === 5 ? top : Buffer.alloc(bs);
    },
  }), { message: /past 2\^32/ });
  t.is(reads, 1, 'only the triple-indirect block was read');
});
