/**
 * kfsctl defrag (src/ext4/defrag.ts) against real oracles: files written into checkerboard free
 * space (every other small file deleted from a full image), extents counted by debugfs, content
 * dumped by debugfs and compared by sha256, e2fsck -fn after every step.
 *  - offline: with only 1-block holes free nothing moves (it could not get better); with the
 *    neighbours freed the file ends with its ideal extent count.
 *  - online, against a live `kfs mount` while this process writes and reads the file
 *    concurrently and checks every read against a model of the file.
 *  - SIGKILL during defrag (KFS_TEST_FAULT=kill-in-defrag:STAGE:N, a kill at an exact point):
 *    the kfs mount server after a piece's copies are durable but before its switch, and kfsctl
 *    offline after the donor's blocks are committed and after a switch committed. After the
 *    replay (the supervisor's next server, or the next open) nothing is lost, the donor's blocks
 *    are free again, e2fsck -fn is clean.
 * Needs root (FUSE) for the online parts, e2fsprogs.
 */
import test, { ExecutionContext } from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { assertFsckClean, debugfs, extentInfo, makeImage, mustRun, requireRoot, runCmd, tempDir } from './helpers/image';
import { isMountPoint, mountKfs } from './helpers/mount';
import { rng } from './helpers/rng';
import { checkerboardFreeSpace } from './helpers/free-space';
import { Ext4Fs } from '../src/ext4/fs';
import { ROOT_INO } from '../src/ext4/inode';
import { defragment, DefragResult } from '../src/ext4/defrag';
import { kfsctlJson, KFSCTL } from './helpers/kfsctl';

const BS = 4096;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

interface FileRes { path: string; extentsBefore: number; extentsAfter: number; fragmentsAfter: number; ideal: number; movedBlocks: number; pieces: number; retries: number; note: string | null }
interface DefragRes { files: number; movedBlocks: number; extentsBefore: number; extentsAfter: number; improved: number; worst: FileRes[]; errors: unknown[] }
interface CheckRes { files: number; worst: { path: string; extents: number; ideal: number; blocks: number }[] }


/** kfsctl without blocking this process's event loop (it serves concurrent I/O meanwhile). */
function kfsctlAsync(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [KFSCTL, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Random content of `blocks` blocks (seeded). */
function content(seed: number, blocks: number): Buffer {
  const r = rng(seed);
  const b = Buffer.alloc(blocks * BS);
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(Math.floor(r() * 2 ** 32), i);
  return b;
}

/** A file's content as debugfs dumps it from the image. */
function dumped(t: ExecutionContext, img: string, file: string): Buffer {
  const out = path.join(tempDir(t, 'dump'), 'out');
  debugfs(img, `dump "${file}" "${out}"`);
  return fs.readFileSync(out);
}

/**
 * Checkerboard free space through the Ext4Fs API: `small` 4 KiB files in /small, a filler up
 * to a full disk, every other small file deleted, then the big files written into the 1-block
 * holes. The filler stays (no contiguous free space) until freeNeighbours.
 */
async function buildOffline(img: string, small: number, big: { name: string; data: Buffer }[]): Promise<void> {
  const f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  try {
    const dir = await f.mkdir(ROOT_INO, Buffer.from('small'), 0o755, 0, 0);
    const one = Buffer.alloc(BS, 0x11);
    for (let i = 0; i < small; i++) {
      const a = await f.create(dir.ino, Buffer.from(`f${i}`), 0o644, 0, 0);
      await f.write(a.ino, 0, one);
    }
    const filler = await f.create(ROOT_INO, Buffer.from('filler'), 0o644, 0, 0);
    const chunk = Buffer.alloc(1 << 20, 0x55);
    for (let off = 0; ;) {
      let n = 0;
      try {
        n = await f.write(filler.ino, off, chunk);
      } catch {
        break;
      }
      off += n;
      if (n < chunk.length) break;
    }
    for (let i = 0; i < small; i += 2) await f.unlink(dir.ino, Buffer.from(`f${i}`));
    await f.sync();
    for (const b of big) {
      const a = await f.create(ROOT_INO, Buffer.from(b.name), 0o644, 0, 0);
      if ((await f.write(a.ino, 0, b.data)) !== b.data.length) throw new Error(`short write of ${b.name}: make fewer/smaller big files`);
    }
  } finally {
    await f.close();
  }
}

async function freeNeighbours(img: string, small: number): Promise<void> {
  const f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  try {
    await f.unlink(ROOT_INO, Buffer.from('filler'));
    const dir = await f.lookup(ROOT_INO, Buffer.from('small'));
    for (let i = 1; i < small; i += 2) await f.unlink(dir.ino, Buffer.from(`f${i}`));
  } finally {
    await f.close();
  }
}

test.serial('offline: nothing moves without contiguous free space; with it the file gets its ideal extents, same content, e2fsck clean', async (t) => {
  const img = makeImage(t, { size: '64M', blockSize: BS, mkfs: 'kfs' });
  const data = content(1, 150);
  await buildOffline(img, 400, [{ name: 'big', data }]);
  assertFsckClean(t, img, 'after the build');
  const ex0 = extentInfo(img, '/big');
  t.true(ex0.extents > 100, `big has ${ex0.extents} extents`);
  const check = kfsctlJson<CheckRes>(['-t', img, 'defrag', '--check']);
  t.is(check.worst[0].path, '/big');
  t.is(check.worst[0].extents, ex0.extents, '--check counts what debugfs counts');
  t.is(check.worst[0].ideal, 1);

  // Only 1-block holes are free: moving could not make fewer fragments, so nothing moves.
  const stuck = kfsctlJson<DefragRes>(['-t', img, 'defrag']);
  t.is(stuck.movedBlocks, 0);
  t.is(stuck.worst[0].path, '/big');
  t.is(stuck.worst[0].extentsAfter, ex0.extents);
  t.regex(stuck.worst[0].note ?? '', /contiguous free space/);
  t.is(extentInfo(img, '/big').extents, ex0.extents);
  assertFsckClean(t, img, 'after a defrag that moved nothing');

  await freeNeighbours(img, 400);
  const r = kfsctlJson<DefragRes>(['-t', img, 'defrag', '/big']);
  t.is(r.files, 1);
  t.is(r.movedBlocks, 150);
  t.is(r.worst[0].extentsBefore, ex0.extents);
  t.is(r.worst[0].extentsAfter, 1);
  t.is(r.worst[0].note, null);
  t.is(extentInfo(img, '/big').extents, 1, 'debugfs sees one extent');
  t.is(sha(dumped(t, img, '/big')), sha(data), 'content as debugfs dumps it');
  assertFsckClean(t, img, 'after the defrag');

  // The text table; a second run has nothing left to do.
  const text = runCmd(process.execPath, [KFSCTL, '-t', img, 'defrag']);
  t.is(text.code, 0, text.stderr);
  t.regex(text.stdout, /Total extents before -> after \(best\) +\d+ -> \d+ \(\d+\)/);
  t.regex(text.stdout, /Blocks moved +0$/m);
  assertFsckClean(t, img, 'after the second run');
});

test.serial('online: defrag of a file another process writes and reads meanwhile keeps every byte; near-ideal extents, e2fsck clean', async (t) => {
  requireRoot(t);
  const img = makeImage(t, { size: '64M', blockSize: BS, mkfs: 'kfs' });
  const m = await mountKfs(t, img, path.join(tempDir(t, 'defrag'), 'mnt'));
  const SMALL = 2400;
  checkerboardFreeSpace(t, m.dir, SMALL, BS);
  const bigPath = path.join(m.dir, 'big');
  const model = content(2, 1100);
  fs.writeFileSync(bigPath, model);
  mustRun('sync', ['-f', m.dir]);
  fs.unlinkSync(path.join(m.dir, 'filler'));
  mustRun('sync', ['-f', m.dir]);
  const before = kfsctlJson<CheckRes>(['-t', m.dir, 'defrag', bigPath, '--check']);
  t.true(before.worst[0].extents > 800, `big has ${before.worst[0].extents} extents`);

  // Writer and reader: random overwrites inside the file (the model follows), random reads
  // checked against the model, while kfsctl defragments it.
  const r = rng(3);
  const fh = await fs.promises.open(bigPath, 'r+');
  let done = false;
  let ops = 0;
  let mismatches = 0;
  const worker = (async () => {
    while (!done) {
      const len = 1 + Math.floor(r() * 16384);
      const off = Math.floor(r() * (model.length - len));
      const buf = crypto.randomBytes(len);
      await fh.write(buf, 0, len, off);
      buf.copy(model, off);
      const rl = 1 + Math.floor(r() * 65536);
      const ro = Math.floor(r() * (model.length - rl));
      const got = Buffer.alloc(rl);
      await fh.read(got, 0, rl, ro);
      if (!got.equals(model.subarray(ro, ro + rl))) mismatches++;
      ops++;
    }
  })();
  const run = await kfsctlAsync(['-t', m.dir, 'defrag', bigPath, '--json']);
  const opsDuring = ops;
  await sleep(200);
  done = true;
  await worker;
  await fh.close();
  t.is(run.code, 0, run.stderr);
  const res = JSON.parse(run.stdout) as DefragRes;
  t.log(`defrag: ${res.worst[0]?.extentsBefore} -> ${res.worst[0]?.extentsAfter} extents, ${res.worst[0]?.retries} piece(s) copied again; ${opsDuring} writes+reads during it`);
  t.true(opsDuring > 0, 'the writer ran during the defrag');
  t.is(mismatches, 0, 'every read matched the model');
  t.is(res.worst[0].movedBlocks, 1100);
  t.true(res.worst[0].extentsAfter <= res.worst[0].ideal + 1, `after: ${res.worst[0].extentsAfter} extents, ideal ${res.worst[0].ideal}`);
  t.true(fs.readFileSync(bigPath).equals(model), 'the whole file equals the model through the mount');
  const after = kfsctlJson<CheckRes>(['-t', m.dir, 'defrag', bigPath, '--check']);
  t.is(after.worst.length, 0, 'not fragmented any more');

  await m.unmount();
  assertFsckClean(t, img, 'after the online defrag');
  t.true(extentInfo(img, '/big').extents <= 2);
  t.is(sha(dumped(t, img, '/big')), sha(model), 'content on the image');
});

test.serial('a beforeRelease hook (kfsd: DAX unmap) sees each moved range while the file still has its old blocks; the copy runs under the lock', async (t) => {
  const img = makeImage(t, { size: '64M', blockSize: BS, mkfs: 'kfs' });
  const data = content(9, 150);
  await buildOffline(img, 400, [{ name: 'big', data }]);
  await freeNeighbours(img, 400);
  const f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  let r: DefragResult;
  const calls: { ino: number; from: number; to: number; extents: number }[] = [];
  let big = 0;
  try {
    big = (await f.lookup(ROOT_INO, Buffer.from('big'))).ino;
    f.beforeRelease = async (ino, from, to) => {
      calls.push({ ino, from, to, extents: f.store.cached(ino)?.extents?.extents.length ?? -1 });
    };
    r = await defragment(f);
  } finally {
    await f.close();
  }
  const mine = calls.filter((c) => c.ino === big);
  t.deepEqual(mine.map((c) => [c.from, c.to]), [[0, 150 * BS]], JSON.stringify(mine));
  t.true(mine.every((c) => c.extents > 100), 'called before the switch');
  t.is(r.worst[0].retries, 0);
  t.is(r.worst[0].extentsAfter, 1);
  t.is(sha(dumped(t, img, '/big')), sha(data));
  assertFsckClean(t, img, 'after the defrag');
});

/** Logical ranges of a file per debugfs `ex` (leaf extents merged): [start, end, uninit]. */
function mappedRanges(img: string, file: string): [number, number, boolean][] {
  const out: [number, number, boolean][] = [];
  for (const line of debugfs(img, `ex "${file}"`).split('\n')) {
    const m = /^\s*(\d+)\/\s*(\d+)\s+\d+\/\s*\d+\s+(\d+)\s*-\s*(\d+)\s+\d+\s*-\s*\d+\s+\d+\s*(Uninit)?/.exec(line);
    if (!m || m[1] !== m[2]) continue;
    const [s, e, u] = [Number(m[3]), Number(m[4]), !!m[5]];
    const last = out[out.length - 1];
    if (last && last[1] + 1 === s && last[2] === u) last[1] = e;
    else out.push([s, e, u]);
  }
  return out;
}

test.serial('a file larger than a piece moves in pieces; holes and unwritten extents stay as they are', async (t) => {
  // 1 KiB blocks: a piece (32768 blocks) is 32 MiB. Two files written in alternating 64 KiB
  // chunks interleave on disk; deleting one leaves the other in 64-block extents with gaps.
  const img = makeImage(t, { size: '128M', blockSize: 1024, mkfs: 'kfs' });
  const data = content(7, 40 * 1024 / 4);
  const f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  const a = await f.create(ROOT_INO, Buffer.from('big'), 0o644, 0, 0);
  const other = await f.create(ROOT_INO, Buffer.from('other'), 0o644, 0, 0);
  const step = 64 * 1024;
  for (let off = 0; off < data.length; off += step) {
    await f.write(a.ino, off, data.subarray(off, off + step));
    await f.write(other.ino, off, Buffer.alloc(step, 0x77));
  }
  // A hole (punched) and an unwritten range (fallocate over a punched hole, keep size).
  await f.fallocate(a.ino, 0x01 | 0x02, 5 << 20, 1 << 20);
  data.fill(0, 5 << 20, 6 << 20);
  await f.fallocate(a.ino, 0x01 | 0x02, 20 << 20, 2 << 20);
  await f.fallocate(a.ino, 0x01, 20 << 20, 2 << 20);
  data.fill(0, 20 << 20, 22 << 20);
  await f.unlink(ROOT_INO, Buffer.from('other'));
  await f.close();
  assertFsckClean(t, img, 'after the build');
  const ranges = mappedRanges(img, '/big');
  t.true(ranges.some((r) => r[2]), `an unwritten range: ${JSON.stringify(ranges)}`);
  t.true(ranges.length >= 3, `holes: ${JSON.stringify(ranges)}`);
  const ex0 = extentInfo(img, '/big').extents;
  t.true(ex0 > 500, `big has ${ex0} extents`);

  const r = kfsctlJson<DefragRes>(['-t', img, 'defrag']);
  const fr = r.worst[0];
  t.log(`big: ${fr.extentsBefore} -> ${fr.extentsAfter} extents (ideal ${fr.ideal}) in ${fr.pieces} pieces`);
  t.is(fr.path, '/big');
  t.true(fr.pieces >= 2, `moved in ${fr.pieces} pieces`);
  t.true(fr.fragmentsAfter <= fr.ideal + 4, `${fr.fragmentsAfter} fragments after, ideal ${fr.ideal}`);
  t.deepEqual(mappedRanges(img, '/big'), ranges, 'the same logical blocks are mapped, with the same unwritten ones');
  t.is(sha(dumped(t, img, '/big')), sha(data), 'content');
  assertFsckClean(t, img, 'after the defrag');
});

/** Files for the kill tests: 6 × 150 blocks in the holes of 1900 small files. */
function killFiles(): { name: string; data: Buffer }[] {
  return Array.from({ length: 6 }, (_, i) => ({ name: `big${i}`, data: content(100 + i, 150) }));
}

/** Extents of each file per debugfs, and its content per sha256 of debugfs's dump. */
function verifyFiles(t: ExecutionContext, img: string, files: { name: string; data: Buffer }[], label: string): number[] {
  const counts: number[] = [];
  for (const f of files) {
    counts.push(extentInfo(img, `/${f.name}`).extents);
    t.is(sha(dumped(t, img, `/${f.name}`)), sha(f.data), `${label}: content of ${f.name}`);
  }
  return counts;
}

function freeBlocks(img: string): number {
  const m = /Free blocks:\s+(\d+)/.exec(mustRun('dumpe2fs', ['-h', img], {}));
  return Number(m![1]);
}

test.serial('SIGKILL of kfsctl offline after the donor is committed and after a switch: after replay nothing is lost, e2fsck clean', async (t) => {
  const base = makeImage(t, { size: '64M', blockSize: BS, mkfs: 'kfs' });
  const files = killFiles();
  await buildOffline(base, 1900, files);
  await freeNeighbours(base, 1900);
  const before = verifyFiles(t, base, files, 'built');
  t.true(before.every((n) => n > 100), `extents: ${before.join(' ')}`);
  const free0 = freeBlocks(base);
  for (const stage of ['prepared', 'copied', 'switched'] as const) {
    const img = path.join(tempDir(t, stage), 'fs.img');
    mustRun('cp', ['--sparse=always', base, img]);
    // The second piece: the first file is switched already in every case.
    const k = spawnSync(process.execPath, [KFSCTL, '-t', img, 'defrag', '--json'], { env: { ...process.env, KFS_TEST_FAULT: `kill-in-defrag:${stage}:2` }, encoding: 'utf8' });
    t.is(k.signal, 'SIGKILL', `${stage}: kfsctl was killed (exit ${k.status}: ${k.stderr})`);
    // Replay and orphan processing happen at the next read-write open.
    const f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
    await f.close();
    assertFsckClean(t, img, `${stage}: after the kill and the replay`);
    const counts = verifyFiles(t, img, files, stage);
    const switched = counts.filter((n, i) => n < before[i]).length;
    t.is(switched, stage === 'switched' ? 2 : 1, `${stage}: files switched: ${counts.join(' ')}`);
    // A switched file's tree fits in its inode again: its leaf block is free too.
    t.is(freeBlocks(img), free0 + switched, `${stage}: the donor's blocks are free again`);
    // Finishing the job afterwards works.
    const r = kfsctlJson<DefragRes>(['-t', img, 'defrag']);
    t.is(r.errors.length, 0);
    const done = verifyFiles(t, img, files, `${stage}: finished`);
    t.true(done.every((n) => n === 1), `${stage}: extents after finishing: ${done.join(' ')}`);
    assertFsckClean(t, img, `${stage}: finished`);
  }
});

test.serial('SIGKILL of the kfs mount server between a piece copy and its switch: the next server replays, nothing is lost, e2fsck clean', async (t) => {
  requireRoot(t);
  const img = makeImage(t, { size: '64M', blockSize: BS, mkfs: 'kfs' });
  const files = killFiles();
  await buildOffline(img, 1900, files);
  await freeNeighbours(img, 1900);
  const before = verifyFiles(t, img, files, 'built');
  const free0 = freeBlocks(img);
  process.env.KFS_TEST_FAULT = 'kill-in-defrag:copied:3';
  let m;
  try {
    m = await mountKfs(t, img, path.join(tempDir(t, 'defrag'), 'mnt'));
  } finally {
    delete process.env.KFS_TEST_FAULT;
  }
  const run = await kfsctlAsync(['-t', m.dir, 'defrag', '--json']);
  t.not(run.code, 0, 'kfsctl lost its server');
  t.regex(run.stderr, /closed the connection|ECONNRESET|connection/i);
  // The supervisor starts the next server on the same mount; it replays the journal.
  let pid = m.pid;
  for (let i = 0; i < 200 && (pid === m.pid || !pid); i++) {
    await sleep(50);
    try {
      pid = Number(fs.readFileSync(m.pidFile, 'utf8').trim());
    } catch {
      /* being rewritten */
    }
  }
  t.not(pid, m.pid, 'a new server took over');
  for (const f of files) t.true(fs.readFileSync(path.join(m.dir, f.name)).equals(f.data), `${f.name} through the mount after the kill`);
  // Unmount, then wait for the new server to close the image.
  mustRun(process.execPath, [path.resolve(__dirname, '..', 'src', 'cli', 'kfs.js'), 'umount', m.dir]);
  for (let i = 0; i < 600; i++) {
    try {
      process.kill(pid, 0);
    } catch {
      break;
    }
    await sleep(50);
  }
  t.false(isMountPoint(m.dir));
  await m.unmount();
  assertFsckClean(t, img, 'after the kill');
  const counts = verifyFiles(t, img, files, 'after the kill');
  t.is(counts.filter((n, i) => n < before[i]).length, 2, `two pieces were switched before the kill: ${counts.join(' ')}`);
  t.is(freeBlocks(img), free0 + 2, "the donor's blocks are free again (and the switched files' leaf blocks)");
});
