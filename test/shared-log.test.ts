/**
 * Log-only commits into the supervisor's shared memory (src/ext4/journal/shared-log.ts), on the
 * library: Ext4Fs opened with a SharedSoftLog over a plain Buffer (what the memfd mapping is
 * to the server), a process death modelled by closing the image without a sync.
 *
 *  - What is committed there comes back when the image is opened with the same memory, and
 *    only then: the image alone shows the last durable commit, and e2fsck is clean on either.
 *  - A death during the durable commit that takes the shared log over: before its commit block
 *    the shared log is applied (the commit never happened); after it, it is not (applying it
 *    would take back what that commit added).
 *  - Damaged or foreign contents are ignored, never applied in part of a record; a restarted
 *    server's commits go after what it applied.
 */
import test, { ExecutionContext } from 'ava';
import fs from 'node:fs';
import { join } from 'node:path';
import { Ext4Fs } from '../src/ext4/fs';
import { SharedSoftLog } from '../src/ext4/journal/shared-log';
import { makeImage, tempDir, assertFsckClean } from './helpers/image';
import { readTree, diffTrees, ModelState } from './helpers/crash-workload';
import { rng } from './helpers/rng';

const SHARED_BYTES = 4 << 20;

function content(seed: number, n: number): Buffer {
  const r = rng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (r() * 256) | 0;
  return b;
}

/** Create `name` in the root with some bytes; the model tree follows. */
async function add(f: Ext4Fs, want: ModelState, name: string, seed: number): Promise<void> {
  const data = content(seed, 3000 + seed * 101);
  const a = await f.create(2, Buffer.from(name), 0o644, 0, 0);
  await f.write(a.ino, 0, data);
  await f.release(a.ino);
  want.set(name, { kind: 'file', data });
}

/** Open, read the whole tree, close (which makes everything durable). */
async function readImage(image: string, sharedLog?: SharedSoftLog): Promise<ModelState> {
  const f = await Ext4Fs.open(image, { commitIntervalMs: 0, sharedLog });
  try {
    return await readTree(f);
  } finally {
    await f.close();
  }
}

function copy(t: ExecutionContext, image: string, name: string): string {
  const to = join(tempDir(t, 'shared-copy'), name);
  fs.copyFileSync(image, to);
  return to;
}

test.serial('log-only commits in the shared log come back with it after a death, and only with it; e2fsck clean', async (t) => {
  const image = makeImage(t, { size: '64M', mkfs: 'kfs', dir: tempDir(t, 'shared') });
  const mem = Buffer.alloc(SHARED_BYTES);
  const f = await Ext4Fs.open(image, { commitIntervalMs: 0, sharedLog: new SharedSoftLog(mem) });
  const want: ModelState = new Map();
  await add(f, want, 'a', 1);
  await f.fsync(2);
  const durable = new Map(want);
  await add(f, want, 'b', 2);
  await f.commitToLog();
  await add(f, want, 'c', 3);
  await f.commitToLog();
  t.is(f.vol.journal!.stats.softCommits, 2);
  const loggedBefore = f.vol.journal!.stats.loggedBlocks;
  await f.vol.dev.closeNoSync(); // the process dies: nothing more reaches the image

  const alone = copy(t, image, 'alone.img');
  assertFsckClean(t, alone, 'e2fsck of the image without the shared log');
  t.deepEqual(diffTrees(await readImage(alone), durable), [], 'the image alone: the last durable commit');

  const restarted = new SharedSoftLog(mem);
  t.deepEqual(diffTrees(await readImage(image, restarted), want), [], 'with the shared log: everything committed there is back');
  t.false(restarted.pending, 'the restarted open made it durable and emptied the shared log');
  assertFsckClean(t, image);
  t.deepEqual(diffTrees(await readImage(image), want), [], 'and it is on the image now');
  t.true(loggedBefore > 0);
});

test.serial('a death during the durable commit that takes the shared log over: applied before its commit block, not after', async (t) => {
  const dir = tempDir(t, 'shared-commit');
  const image = makeImage(t, { size: '64M', mkfs: 'kfs', dir });
  const mem = Buffer.alloc(SHARED_BYTES);
  // What a death at the committing mark leaves: the shared memory, and the image with the
  // transaction's blocks in the log but not its commit block.
  let atMark: { mem: Buffer; image: string } | null = null;
  class Watched extends SharedSoftLog {
    override markCommitting(seq: number, pblk: number): void {
      super.markCommitting(seq, pblk);
      if (!atMark) atMark = { mem: Buffer.from(mem), image: copy(t, image, 'at-mark.img') };
    }
  }
  const f = await Ext4Fs.open(image, { commitIntervalMs: 0, sharedLog: new Watched(mem) });
  const want: ModelState = new Map();
  await add(f, want, 'a', 1);
  await f.fsync(2);
  atMark = null;
  await add(f, want, 'b', 2);
  await f.commitToLog();
  await add(f, want, 'c', 3);
  await f.commitToLog();
  const softState = new Map(want);
  // Not log-committed: only the durable commit below has it. It changes the blocks the shared
  // log holds (the root directory's, the inode table's).
  await add(f, want, 'd', 4);
  await f.fsync(2);
  t.truthy(atMark, 'the durable commit marked the shared log');
  await f.vol.dev.closeNoSync();
  const mark = atMark as unknown as { mem: Buffer; image: string };

  t.deepEqual(diffTrees(await readImage(mark.image, new SharedSoftLog(Buffer.from(mark.mem))), softState), [],
    'death before the commit block: the shared log is applied (d was never acknowledged)');
  assertFsckClean(t, mark.image, 'e2fsck after the restart at the mark');

  t.deepEqual(diffTrees(await readImage(image, new SharedSoftLog(Buffer.from(mark.mem))), want), [],
    'death after the commit block, before the shared log was emptied: it is not applied, d stays');
  assertFsckClean(t, image);
});

test('shared log records: a torn record and everything after it are ignored; another block size is not applied', (t) => {
  const mem = Buffer.alloc(1 << 20);
  const s = new SharedSoftLog(mem);
  t.is(s.contents(4096), null, 'new memory holds nothing');
  const block = (v: number) => Buffer.alloc(4096, v);
  s.append([{ block: 10, buf: block(1) }, { block: 11, buf: block(2) }], 4096);
  s.append([{ block: 10, buf: block(3) }], 4096);
  const c = s.contents(4096)!;
  t.is(c.records, 2);
  t.deepEqual([...c.blocks.keys()].sort(), [10, 11]);
  t.is(c.blocks.get(10)![0], 3, 'the latest copy of a block wins');
  t.is(c.committing, null);
  t.is(s.contents(1024), null, 'written for 4 KiB blocks: not for an image of 1 KiB blocks');

  // A record whose magic was overwritten (a bug, or memory damage): the log ends before it.
  const second = 64 + 8 + 2 * (8 + 4096);
  const damaged = Buffer.from(mem);
  damaged.writeUInt32LE(0, second);
  const dl = new SharedSoftLog(damaged);
  const d = dl.contents(4096)!;
  t.is(d.records, 1);
  t.is(d.blocks.get(10)![0], 1);
  // A restarted server keeps what it applied; its own commits go after that, not after the
  // damaged record (where a later restart would never find them).
  dl.keep(d);
  dl.append([{ block: 12, buf: block(9) }], 4096);
  const after = dl.contents(4096)!;
  t.is(after.records, 2);
  t.is(after.blocks.get(12)![0], 9);

  // A byte count beyond the memory: nothing is applied.
  const lying = Buffer.from(mem);
  lying.writeBigUInt64LE(BigInt(mem.length), 32);
  t.is(new SharedSoftLog(lying).contents(4096), null);

  s.markCommitting(77, 12345);
  t.deepEqual(s.contents(4096)!.committing, { seq: 77, pblk: 12345 });
  s.keep(s.contents(4096)!);
  t.is(s.contents(4096)!.committing, null, 'kept: the mark that did not hold goes');
  t.is(s.contents(4096)!.records, 2);
  s.reset();
  t.false(s.pending);
  t.is(s.contents(4096), null, 'emptied');
  t.false(s.room((1 << 20) / 4096, 4096), 'a commit larger than the memory does not fit');
});

test.serial('a full shared log is compacted into its other region, not emptied by a durable commit; a death after that loses nothing; e2fsck clean', async (t) => {
  const image = makeImage(t, { size: '64M', mkfs: 'kfs', dir: tempDir(t, 'shared-compact') });
  // Two regions of 120 KiB: sixty commits fill one several times.
  const mem = Buffer.alloc(64 + 2 * 120 * 1024);
  const f = await Ext4Fs.open(image, { commitIntervalMs: 0, sharedLog: new SharedSoftLog(mem) });
  const want: ModelState = new Map();
  await add(f, want, 'first', 1);
  await f.fsync(2);
  const j = f.vol.journal!;
  const durableBefore = j.stats.commits;
  for (let i = 0; i < 60; i++) {
    await add(f, want, `f${i}`, i + 2);
    await f.commitToLog();
  }
  t.true(j.stats.sharedCompactions >= 2, `compactions: ${JSON.stringify(j.stats)}`);
  t.is(j.stats.commits, durableBefore, 'no durable commit: each full region was compacted into the other');
  const blockSize = f.vol.dev.blockSize;
  await f.vol.dev.closeNoSync(); // the process dies

  const restarted = new SharedSoftLog(mem);
  const found = restarted.contents(blockSize)!;
  t.true(found.records >= 1 && found.records < 60, `records after compaction: ${found.records}`);
  t.deepEqual(diffTrees(await readImage(image, restarted), want), [], 'every file committed to the shared log is back');
  assertFsckClean(t, image);
});

test('shared log compaction: the latest copies go to the other region as one record, which counts only once its state is stored', (t) => {
  const block = (v: number) => Buffer.alloc(4096, v);
  const recordBytes = (n: number) => 8 + n * (8 + 4096);
  // Regions of room for three one-block records.
  const mem = Buffer.alloc(64 + 2 * 3 * recordBytes(1));
  const s = new SharedSoftLog(mem);
  s.append([{ block: 5, buf: block(1) }], 4096);
  s.append([{ block: 6, buf: block(2) }], 4096);
  s.append([{ block: 5, buf: block(3) }], 4096);
  t.false(s.room(1, 4096), 'the region is full');
  const before = Buffer.from(mem);
  t.true(s.compact([{ block: 5, buf: block(3) }, { block: 6, buf: block(2) }, { block: 7, buf: block(4) }], 4096));
  let c = s.contents(4096)!;
  t.is(c.records, 1);
  t.deepEqual([...c.blocks].map(([b, buf]) => [b, buf[0]]), [[5, 3], [6, 2], [7, 4]]);
  t.false(s.room(1, 4096), 'three blocks in one record fill the new region too');

  // A death before the state word was stored: the region written last is not looked at.
  const torn = Buffer.from(mem);
  before.copy(torn, 32, 32, 36);
  c = new SharedSoftLog(torn).contents(4096)!;
  t.is(c.records, 3, 'the old region stands');
  t.is(c.blocks.get(5)![0], 3);
  t.false(c.blocks.has(7));

  // Back into the first region; a restarted server appends after what it kept.
  t.true(s.compact([{ block: 7, buf: block(8) }], 4096));
  s.append([{ block: 9, buf: block(9) }], 4096);
  const again = new SharedSoftLog(mem);
  c = again.contents(4096)!;
  t.is(c.records, 2);
  t.deepEqual([...c.blocks.keys()], [7, 9]);
  again.keep(c);
  again.append([{ block: 10, buf: block(10) }], 4096);
  t.deepEqual([...again.contents(4096)!.blocks.keys()], [7, 9, 10]);
  t.false(again.compact([5, 6, 7, 8].map((b) => ({ block: b, buf: block(b) })), 4096), 'more than a region holds: a durable commit must take it');
  t.deepEqual([...again.contents(4096)!.blocks.keys()], [7, 9, 10], 'a refused compaction changes nothing');
  again.reset();
  t.is(again.contents(4096), null, 'emptied');
});

test('shared log memory is given back only when the log is empty and was written since the last time', (t) => {
  const released: [number, number][] = [];
  const mem = Buffer.alloc(64 + 2 * 64 * 1024);
  const s = new SharedSoftLog(mem, (offset, length) => {
    released.push([offset, length]);
    mem.fill(0, offset, offset + length);
  });
  t.false(s.releaseIfIdle(), 'new memory: nothing to give back');
  s.append([{ block: 3, buf: Buffer.alloc(4096, 7) }], 4096);
  t.false(s.releaseIfIdle(), 'a record is pending: kept');
  t.deepEqual(released, []);
  s.reset();
  t.true(s.releaseIfIdle());
  t.deepEqual(released, [[4096, mem.length - 4096]], 'everything but the header page');
  t.false(s.releaseIfIdle(), 'nothing written since');
  // The log works as before afterwards, from the zeroed memory.
  s.append([{ block: 4, buf: Buffer.alloc(4096, 9) }], 4096);
  const c = new SharedSoftLog(mem).contents(4096)!;
  t.is(c.blocks.get(4)![0], 9);
  t.is(new SharedSoftLog(Buffer.alloc(64 + 2 * 8200)).releaseIfIdle(), false, 'without a release function the memory is kept');
});
