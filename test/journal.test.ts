/**
 * The jbd2 journal against its real peers:
 *  - log block layouts: descriptor tags (csum v3 / 64-bit / plain), escaping, revoke and commit
 *    blocks, from and to bytes;
 *  - e2fsck replays a journal kfs left needing recovery, and so does the kernel (loop mount);
 *  - kfs replays a journal the kernel left needing recovery and reads what the kernel showed;
 *  - a read-only open replays in memory and leaves the image alone; `kfs fsck` replays first;
 *  - a transaction larger than the whole journal (fallocate of 10 GiB with a 1 MiB journal)
 *    does not fail; -o nojournal leaves the journal untouched.
 * Needs root (loop mounts) and e2fsprogs.
 */
import test, { ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { join } from 'node:path';
import { Ext4Fs } from '../src/ext4/fs';
import { parseMountOptions } from '../src/cli/mount-command';
import {
  LogFormat, encodeDescriptor, readTags, logCopy, encodeRevoke, readRevoke, encodeCommit, verifyCommit, verifyTail,
  journalCsumSeed, tagBytes, tagsPerDescriptor, JBD2_FLAG_ESCAPE, JBD2_FLAG_LAST_TAG, JBD2_FLAG_SAME_UUID,
} from '../src/ext4/journal/blocks';
import {
  JBD2_MAGIC_NUMBER, JBD2_FEATURE_INCOMPAT_64BIT, JBD2_FEATURE_INCOMPAT_CSUM_V3, JBD2_FEATURE_INCOMPAT_REVOKE,
} from '../src/ext4/journal/superblock';
import { makeImage, tempDir, fsck, mustRun, loopMount, superblockInfo, kfsCliPath, runCmd, bash, debugfs } from './helpers/image';
import { WriteLog, CrashImageBuilder } from './helpers/write-log';
import { rng } from './helpers/rng';
import { readTree, diffTrees, ModelState, openAndRead } from './helpers/crash-workload';

// ---------- log block layouts ----------

function fmt(incompat: number, blockSize = 4096): LogFormat {
  const uuid = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
  return { blockSize, incompat, csumSeed: journalCsumSeed(uuid), uuid };
}

test('descriptor blocks: tag3 with csum v3 and 64-bit block numbers, UUID after the first tag only', (t) => {
  const f = fmt(JBD2_FEATURE_INCOMPAT_CSUM_V3 | JBD2_FEATURE_INCOMPAT_64BIT);
  t.is(tagBytes(f), 16);
  const data = Buffer.alloc(4096, 7);
  const a = logCopy(f, 42, 2 ** 33 + 5, data);
  const b = logCopy(f, 42, 17, data);
  const d = encodeDescriptor(f, 42, [a.tag, b.tag]);
  t.is(d.readUInt32BE(0), JBD2_MAGIC_NUMBER);
  t.is(d.readUInt32BE(4), 1);
  t.is(d.readUInt32BE(8), 42);
  // First tag at 12: blocknr lo, flags, blocknr hi, checksum; then the 16-byte UUID.
  t.is(d.readUInt32BE(12), 5);
  t.is(d.readUInt32BE(20), 2);
  t.deepEqual(d.subarray(28, 44), f.uuid);
  t.is(d.readUInt32BE(44), 17);
  t.is(d.readUInt32BE(48), JBD2_FLAG_SAME_UUID | JBD2_FLAG_LAST_TAG);
  t.true(verifyTail(f, d));
  d[100] ^= 1;
  t.false(verifyTail(f, d));
  d[100] ^= 1;
  t.deepEqual(readTags(f, d).map((x) => x.block), [2 ** 33 + 5, 17]);
  t.is(readTags(f, d)[0].checksum, a.tag.checksum);
  t.true(tagsPerDescriptor(f) * 16 + 12 + 16 + 4 <= 4096);
});

test('descriptor blocks without checksums: 8-byte tags (32-bit) and 12-byte tags (64-bit)', (t) => {
  const f32 = fmt(0, 1024);
  t.is(tagBytes(f32), 8);
  const d = encodeDescriptor(f32, 3, [{ block: 900, flags: 0, checksum: 0 }, { block: 901, flags: 0, checksum: 0 }]);
  t.is(d.readUInt32BE(12), 900);
  t.is(d.readUInt16BE(18), 0); // flags of the first tag: UUID follows
  t.is(d.readUInt32BE(36), 901);
  t.is(d.readUInt16BE(42), JBD2_FLAG_SAME_UUID | JBD2_FLAG_LAST_TAG);
  t.deepEqual(readTags(f32, d).map((x) => x.block), [900, 901]);
  t.is(tagBytes(fmt(JBD2_FEATURE_INCOMPAT_64BIT)), 12);
});

test('a block starting with the jbd2 magic is logged escaped', (t) => {
  const f = fmt(JBD2_FEATURE_INCOMPAT_CSUM_V3);
  const data = Buffer.alloc(4096, 1);
  data.writeUInt32BE(JBD2_MAGIC_NUMBER, 0);
  const { logged, tag } = logCopy(f, 9, 100, data);
  t.is(logged.readUInt32BE(0), 0);
  t.is(tag.flags & JBD2_FLAG_ESCAPE, JBD2_FLAG_ESCAPE);
  t.is(data.readUInt32BE(0), JBD2_MAGIC_NUMBER, 'the cached block itself is not changed');
});

test('revoke and commit blocks', (t) => {
  const f = fmt(JBD2_FEATURE_INCOMPAT_CSUM_V3 | JBD2_FEATURE_INCOMPAT_64BIT | JBD2_FEATURE_INCOMPAT_REVOKE);
  const r = encodeRevoke(f, 5, [10, 2 ** 40]);
  t.is(r.readUInt32BE(4), 5);
  t.is(r.readUInt32BE(12), 16 + 16, 'r_count counts the header and two 8-byte records');
  t.deepEqual(readRevoke(f, r), [10, 2 ** 40]);
  t.true(verifyTail(f, r));
  const c = encodeCommit(f, 5, 1700000000, 123);
  t.is(c.readUInt32BE(4), 2);
  t.is(Number(c.readBigUInt64BE(48)), 1700000000);
  t.true(verifyCommit(f, c));
  c[200] = 1;
  t.false(verifyCommit(f, c), 'the commit checksum covers the whole block');
});

// ---------- images ----------

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** The tree as the image shows it without its journal (noLock inspection skips replay). */
async function readUnreplayed(image: string): Promise<ModelState> {
  const f = await Ext4Fs.open(image, { readOnly: true, noLock: true });
  try {
    return await readTree(f);
  } finally {
    await f.close();
  }
}

function content(seed: number, n: number): Buffer {
  const r = rng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (r() * 256) | 0;
  return b;
}

/**
 * kfs writes a small tree and "crashes" right after its last commit block is durable, before
 * any home write of that transaction: the image needs recovery and the journal holds the
 * tree's last changes. Returns the crash image and the tree it must show.
 */
async function kfsCrashImage(t: ExecutionContext, dir: string): Promise<{ image: string; want: ModelState }> {
  const base = makeImage(t, { size: '64M', mkfs: 'kfs', dir, name: 'base.img' });
  const start = join(dir, 'start.img');
  fs.copyFileSync(base, start);
  const log = new WriteLog();
  const f = await Ext4Fs.open(base, { commitIntervalMs: 0, writeLog: log });
  const want: ModelState = new Map();
  const d = await f.mkdir(2, Buffer.from('dir'), 0o755, 0, 0);
  want.set('dir', { kind: 'dir' });
  for (let i = 0; i < 40; i++) {
    const data = content(i, 500 + i * 997);
    const a = await f.create(i % 2 ? d.ino : 2, Buffer.from(`f${i}`), 0o644, 0, 0);
    await f.write(a.ino, 0, data);
    await f.release(a.ino);
    want.set(i % 2 ? `dir/f${i}` : `f${i}`, { kind: 'file', data });
  }
  for (let i = 0; i < 40; i += 5) {
    await f.unlink(i % 2 ? d.ino : 2, Buffer.from(`f${i}`));
    want.delete(i % 2 ? `dir/f${i}` : `f${i}`);
  }
  await f.fsync(2);
  const lastCommit = log.events.map((e) => e.kind === 'mark' && e.label.startsWith('commit ')).lastIndexOf(true);
  await f.close();
  const b = new CrashImageBuilder(log, start, join(dir, 'work.img'));
  const image = join(dir, 'crash.img');
  b.build({ upTo: lastCommit + 1 }, image);
  b.close();
  const info = superblockInfo(image);
  t.regex(info.get('Filesystem features') ?? '', /needs_recovery/);
  t.not(info.get('Journal start'), '0', 'the journal holds transactions');
  // Without the replay the tree is different: the last transaction is only in the journal.
  t.notDeepEqual(diffTrees(await readUnreplayed(image), want), [], 'the last changes are only in the journal');
  return { image, want };
}

test.serial('e2fsck replays a journal kfs left needing recovery', async (t) => {
  const dir = tempDir(t, 'jr');
  const { image, want } = await kfsCrashImage(t, dir);
  const y = fsck(image, ['-fy']);
  t.true(y.code <= 1, `e2fsck -fy exited ${y.code}:\n${y.output}`);
  t.regex(y.output, /recovering journal/);
  const n = fsck(image);
  t.is(n.code, 0, n.output);
  t.deepEqual(diffTrees(await openAndRead(image), want), []);
});

/** A mounted tree in the model's terms (lost+found left out). */
function hostTree(root: string): ModelState {
  const out: ModelState = new Map();
  for (const p of bash(`cd ${root} && find . -mindepth 1 ! -path './lost+found*' | sort`).split('\n').filter(Boolean)) {
    const rel = p.slice(2);
    const st = fs.statSync(join(root, rel));
    out.set(rel, st.isDirectory() ? { kind: 'dir' } : { kind: 'file', data: fs.readFileSync(join(root, rel)) });
  }
  return out;
}

test.serial('the kernel mounts (and replays) an image kfs left needing recovery', async (t) => {
  const dir = tempDir(t, 'jk');
  const { image, want } = await kfsCrashImage(t, dir);
  const m = loopMount(t, image);
  const got = hostTree(m.dir);
  m.unmount();
  t.deepEqual(diffTrees(got, want), []);
  const n = fsck(image);
  t.is(n.code, 0, n.output);
});

test.serial('kfs replays a journal the kernel left needing recovery and reads what the kernel showed', async (t) => {
  const dir = tempDir(t, 'kj');
  const image = makeImage(t, { size: '64M', dir });
  // A long commit interval: only the test's syncs commit.
  const m = loopMount(t, image, { options: ['noatime', 'commit=300'] });
  bash(`cd ${m.dir} && mkdir -p a/b c && for i in $(seq 1 300); do head -c $((i * 37)) /dev/urandom > a/f$i; done && cp -r a c/ && sync -f .`);
  // Deleting a tree frees metadata blocks logged in the last transaction: revoke records.
  // The second batch is committed by an fsync (`sync FILE`), which, unlike syncfs, does not
  // write the metadata home: it stays in the journal only.
  bash(`cd ${m.dir} && rm -rf c && for i in $(seq 1 50); do echo $i > a/b/g$i; done && mv a/f1 a/b/moved && sync a/b/moved`);
  const copy = join(dir, 'copy.img');
  mustRun('cp', ['--reflink=never', '--sparse=always', image, copy]);
  m.unmount();
  // The oracle: what the kernel itself shows after replaying the same crash image.
  const kernelCopy = join(dir, 'kernel-copy.img');
  fs.copyFileSync(copy, kernelCopy);
  const km = loopMount(t, kernelCopy);
  const kernelView = hostTree(km.dir);
  km.unmount();
  t.true(kernelView.has('a/b/moved'), 'the fsync-committed rename survived the kernel replay');
  const info = superblockInfo(copy);
  t.regex(info.get('Filesystem features') ?? '', /needs_recovery/, 'the copy needs recovery');
  t.not(info.get('Journal start'), '0');
  t.regex(runCmd('dumpe2fs', ['-h', copy]).stdout, /journal_checksum_v3/);
  t.notDeepEqual(diffTrees(await readUnreplayed(copy), kernelView), [], 'the kernel left changes only in its journal');
  const f = await Ext4Fs.open(copy, { commitIntervalMs: 0 });
  const got = await readTree(f);
  await f.close();
  t.is(got.size, kernelView.size);
  t.deepEqual(diffTrees(got, kernelView), []);
  const n = fsck(copy);
  t.is(n.code, 0, n.output);
  t.notRegex(superblockInfo(copy).get('Filesystem features') ?? '', /needs_recovery/);
});

test.serial('a read-only open replays in memory and leaves the image unchanged', async (t) => {
  const dir = tempDir(t, 'ro');
  const { image, want } = await kfsCrashImage(t, dir);
  const before = sha(fs.readFileSync(image));
  const f = await Ext4Fs.open(image, { readOnly: true });
  const got = await readTree(f);
  await f.close();
  t.deepEqual(diffTrees(got, want), []);
  t.is(sha(fs.readFileSync(image)), before);
});

test.serial('kfs fsck replays our journal, then e2fsck finds the image clean', async (t) => {
  const dir = tempDir(t, 'fk');
  const { image, want } = await kfsCrashImage(t, dir);
  const r = runCmd(process.execPath, [kfsCliPath()!, 'fsck', image]);
  t.is(r.code, 0, r.stdout + r.stderr);
  t.regex(r.stderr, /journal replayed/);
  t.regex(r.stderr, /clean/);
  t.deepEqual(diffTrees(await openAndRead(image), want), []);
});

/**
 * The orphan list a crash left is cleaned up at open, and that cleanup (the list's inodes losing
 * their dtime links, the superblock its head) is one commit: a crash right after the open must
 * not find the superblock's list emptied while an inode still carries its link.
 */
test.serial('orphan cleanup at open commits the inodes with the superblock: a crash right after leaves a clean image', async (t) => {
  const dir = tempDir(t, 'orph');
  const img = makeImage(t, { size: '64M', blockSize: 4096, dir });
  const src = join(dir, 'content');
  fs.writeFileSync(src, Buffer.alloc(10000, 7));
  debugfs(img, ['write ' + src + ' a', 'write ' + src + ' b'], { write: true });
  const ino = (name: string): number => Number(/Inode: (\d+)/.exec(debugfs(img, `stat ${name}`))![1]);
  const [a, b] = [ino('a'), ino('b')];
  // A truncate cut short on both (linked inodes on the list): a -> b -> end.
  debugfs(img, [`ssv last_orphan ${a}`, `sif <${a}> dtime ${b}`, `sif <${b}> dtime 0`], { write: true });
  const f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  t.is(f.vol.sb.s_last_orphan, 0, 'the list was processed at open');
  await f.vol.dev.closeNoSync(); // the server dies before any later commit
  const r = runCmd(process.execPath, [kfsCliPath()!, 'fsck', img]);
  t.is(r.code, 0, `kfs fsck (replay, then e2fsck -fn) exited ${r.code}:\n${r.stdout}${r.stderr}`);
  t.notRegex(debugfs(img, `stat <${a}>`), /^\s*dtime: /m, 'inode a has no dtime link left (debugfs shows dtime only when set)');
});

/**
 * Inode changes wait in memory until the next commit (InodeStore.write). 6000 chmods with no
 * commit between them touch 1500 inode table blocks of 1 KiB: more than a 1 MiB log holds. The
 * early commit must count those blocks before they are dirty, or the one commit at the end would
 * not fit the log and be written in place without atomicity.
 */
test.serial('6000 chmods with no commit and a 1 MiB journal: the deferred inode writes are committed in steps that fit the log', async (t) => {
  const dir = tempDir(t, 'chmod');
  const image = makeImage(t, { size: '256M', blockSize: 1024, mkfs: 'kfs', extraArgs: ['-J', 'size=1', '-N', '8192'], dir });
  const f = await Ext4Fs.open(image, { commitIntervalMs: 0 });
  const inos: number[] = [];
  for (let i = 0; i < 6000; i++) {
    inos.push((await f.create(2, Buffer.from(`f${i}`), 0o644, 0, 0)).ino);
    if (i % 500 === 499) await f.sync();
  }
  await f.sync();
  const before = { ...f.vol.journal!.stats };
  for (const ino of inos) await f.setattr(ino, { mode: 0o600 });
  await f.sync();
  const stats = { ...f.vol.journal!.stats };
  await f.close();
  t.log(before, stats);
  t.is(stats.oversized, 0, 'no transaction outgrew the 1 MiB log: every one was atomic');
  t.true(stats.commits - before.commits > 2, `the chmods were committed in steps (${stats.commits - before.commits} commits)`);
  const n = fsck(image);
  t.is(n.code, 0, n.output);
});

test.serial('fallocate 10 GiB, truncate and punch with a 1 MiB journal: split into transactions that fit the log', async (t) => {
  const dir = tempDir(t, 'big');
  const image = makeImage(t, { size: '12G', blockSize: 1024, mkfs: 'kfs', extraArgs: ['-J', 'size=1'], dir });
  const f = await Ext4Fs.open(image, { commitIntervalMs: 0 });
  const a = await f.create(2, Buffer.from('big'), 0o644, 0, 0);
  await f.fallocate(a.ino, 0, 0, 10 * 2 ** 30);
  await f.write(a.ino, 5 * 2 ** 30, Buffer.from('middle'));
  await f.fsync(a.ino);
  const afterFallocate = { ...f.vol.journal!.stats };
  // Punch 2 GiB around the written bytes' neighbourhood, then cut the file to 6 GiB.
  await f.fallocate(a.ino, 0x01 | 0x02, 1 * 2 ** 30, 2 * 2 ** 30); // KEEP_SIZE | PUNCH_HOLE
  await f.setattr(a.ino, { size: 6 * 2 ** 30 });
  await f.fsync(a.ino);
  const stats = { ...f.vol.journal!.stats };
  await f.close();
  t.log(afterFallocate, stats);
  t.is(stats.oversized, 0, 'no transaction outgrew the 1 MiB log: every one was atomic');
  t.true(afterFallocate.commits > 3, `the fallocate was committed in steps (${afterFallocate.commits} commits)`);
  const n = fsck(image);
  t.is(n.code, 0, n.output);
  const g = await Ext4Fs.open(image, { readOnly: true });
  const st = await g.lookup(2, Buffer.from('big'));
  t.is(st.size, 6 * 2 ** 30);
  t.is((await g.read(st.ino, 5 * 2 ** 30, 6)).toString(), 'middle');
  // Unwritten (preallocated) and punched ranges are holes to SEEK_DATA: the next data is 'middle'.
  t.is(await g.lseek(st.ino, 0, 3), 5 * 2 ** 30);
  await g.close();
});

test.serial('-o nojournal writes in place and leaves the journal untouched', async (t) => {
  t.true(parseMountOptions(['nojournal']).nojournal);
  t.false(parseMountOptions([]).nojournal);
  // A server death loses nothing acknowledged unless the user trades that for speed.
  t.true(parseMountOptions([]).commit_before_reply);
  t.false(parseMountOptions(['nocommit_before_reply']).commit_before_reply);
  const dir = tempDir(t, 'nj');
  const image = makeImage(t, { size: '32M', mkfs: 'kfs', dir });
  const seqBefore = superblockInfo(image).get('Journal sequence');
  const f = await Ext4Fs.open(image, { commitIntervalMs: 0, noJournal: true });
  t.is(f.vol.journal, null);
  const a = await f.create(2, Buffer.from('x'), 0o644, 0, 0);
  await f.write(a.ino, 0, Buffer.from('hello'));
  await f.fsync(a.ino);
  t.notRegex(superblockInfo(image).get('Filesystem features') ?? '', /needs_recovery/);
  await f.close();
  t.is(superblockInfo(image).get('Journal sequence'), seqBefore);
  t.is(fsck(image).code, 0);
});

// ---------- log-only (soft) commits ----------

/**
 * A durable commit (tree A), then two soft commits (B, then C), then the process "dies": the
 * image file is closed with nothing more written (the host's page cache keeps every write).
 * Returns the image, the trees, and where each soft transaction's single write landed.
 */
async function softCommitImage(t: ExecutionContext, dir: string): Promise<{ image: string; trees: ModelState[]; softWrites: { pos: number; len: number }[] }> {
  const image = makeImage(t, { size: '64M', mkfs: 'kfs', dir, name: 'soft.img' });
  const log = new WriteLog();
  const f = await Ext4Fs.open(image, { commitIntervalMs: 0, writeLog: log });
  const trees: ModelState[] = [];
  const want: ModelState = new Map();
  const add = async (name: string, seed: number) => {
    const data = content(seed, 3000 + seed * 101);
    const a = await f.create(2, Buffer.from(name), 0o644, 0, 0);
    await f.write(a.ino, 0, data);
    await f.release(a.ino);
    want.set(name, { kind: 'file', data });
  };
  await add('a', 1);
  await f.fsync(2);
  trees.push(new Map(want));
  await add('b', 2);
  await f.commitToLog();
  trees.push(new Map(want));
  await add('c', 3);
  await f.commitToLog();
  trees.push(new Map(want));
  t.is(f.vol.journal!.stats.softCommits, 2);
  await f.vol.dev.closeNoSync();
  const softWrites: { pos: number; len: number }[] = [];
  log.events.forEach((e, i) => {
    if (e.kind !== 'mark' || !e.label.startsWith('soft ')) return;
    const w = log.events[i - 1];
    if (w.kind !== 'write') throw new Error('a soft commit record is written with its transaction');
    softWrites.push({ pos: w.pos, len: w.data.length });
  });
  t.is(softWrites.length, 2);
  return { image, trees, softWrites };
}

/** Zero the block after the descriptor (the first logged copy) of a soft transaction: what a power loss can leave. */
function tearSoft(image: string, w: { pos: number; len: number }): void {
  const fd = fs.openSync(image, 'r+');
  try {
    fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, w.pos + 4096);
  } finally {
    fs.closeSync(fd);
  }
}

test.serial('soft commits: kfs replays them after a process death; e2fsck and the kernel stop at the first (never apply one)', async (t) => {
  const dir = tempDir(t, 'soft');
  const { image, trees } = await softCommitImage(t, dir);
  const forE2fsck = join(dir, 'e2fsck.img');
  const forKernel = join(dir, 'kernel.img');
  fs.copyFileSync(image, forE2fsck);
  fs.copyFileSync(image, forKernel);
  t.deepEqual(diffTrees(await openAndRead(image), trees[2]), [], 'kfs: everything soft-committed is back');
  t.is(fsck(image).code, 0);
  const y = fsck(forE2fsck, ['-fy']);
  t.true(y.code <= 1, `e2fsck -fy exited ${y.code}:\n${y.output}`);
  t.is(fsck(forE2fsck).code, 0, 'clean after e2fsck replayed the durable part');
  t.deepEqual(diffTrees(await openAndRead(forE2fsck), trees[0]), [], 'e2fsck: the durable commit only');
  const m = loopMount(t, forKernel);
  const got = hostTree(m.dir);
  m.unmount();
  t.deepEqual(diffTrees(got, trees[0]), [], 'kernel: the durable commit only');
  t.is(fsck(forKernel).code, 0);
});

test.serial('soft commits torn by a power loss: kfs replays up to the torn one and nothing after it; e2fsck clean', async (t) => {
  const dir = tempDir(t, 'softtorn');
  const { image, trees, softWrites } = await softCommitImage(t, dir);
  const firstTorn = join(dir, 'first.img');
  fs.copyFileSync(image, firstTorn);
  // The second soft transaction torn (its record reached the disk, a logged block did not).
  tearSoft(image, softWrites[1]);
  t.deepEqual(diffTrees(await openAndRead(image), trees[1]), [], 'the torn transaction is not applied, the one before it is');
  t.is(fsck(image).code, 0);
  // The first one torn, the second intact behind it: neither may be applied.
  tearSoft(firstTorn, softWrites[0]);
  t.deepEqual(diffTrees(await openAndRead(firstTorn), trees[0]), [], 'nothing after a torn soft transaction is applied');
  t.is(fsck(firstTorn).code, 0);
  // A new transaction after that replay must not pick up the intact stale one (sequence bump).
  const f = await Ext4Fs.open(firstTorn, { commitIntervalMs: 0 });
  const a = await f.create(2, Buffer.from('after'), 0o644, 0, 0);
  await f.release(a.ino);
  await f.commitToLog();
  await f.vol.dev.closeNoSync();
  const after = new Map(trees[0]);
  after.set('after', { kind: 'file', data: Buffer.alloc(0) });
  t.deepEqual(diffTrees(await openAndRead(firstTorn), after), []);
  t.is(fsck(firstTorn).code, 0);
});

test.serial('close() runs after the operations queued before it; one queued after it fails EIO and changes nothing; a second close() waits and does nothing', async (t) => {
  const image = makeImage(t, { size: '64M', dir: tempDir(t, 'kclose') });
  const f = await Ext4Fs.open(image, {});
  // Queued in this order behind the operation lock, without awaiting in between.
  const before = f.mkdir(2, Buffer.from('before'), 0o755, 0, 0);
  const closing = f.close();
  const again = f.close();
  const after = f.mkdir(2, Buffer.from('after'), 0o755, 0, 0);
  await t.notThrowsAsync(before);
  await t.notThrowsAsync(closing);
  await t.notThrowsAsync(again);
  await t.throwsAsync(after, { code: 'EIO' });
  const r = fsck(image);
  t.is(r.code, 0, r.output);
  const ls = debugfs(image, 'ls -l /');
  t.regex(ls, /\sbefore\b/);
  t.notRegex(ls, /\safter\b/);
});

test.serial('a second close() on an idle filesystem waits for the first one\'s flush; a read queued before discard() is answered from the open image', async (t) => {
  const image = makeImage(t, { size: '64M', dir: tempDir(t, 'kclose2') });
  const f = await Ext4Fs.open(image, {});
  await f.mkdir(2, Buffer.from('made'), 0o755, 0, 0);
  const first = f.close(); // takes the free lock at once and marks the filesystem closed
  await f.close();
  // The second close returned: the first one's flush is done, the image clean on disk.
  const r = fsck(image);
  t.is(r.code, 0, r.output);
  t.regex(debugfs(image, 'ls -l /'), /\smade\b/);
  await first;

  const g = await Ext4Fs.open(image, {});
  const data = Buffer.alloc(256 << 10, 0x5a);
  const a = await g.create(2, Buffer.from('data'), 0o644, 0, 0);
  t.is(await g.write(a.ino, 0, data), data.length);
  const read = g.read(a.ino, 0, data.length);
  const discarded = g.discard(); // closes the image's descriptor without a flush
  t.true((await read).equals(data));
  await discarded;
});
