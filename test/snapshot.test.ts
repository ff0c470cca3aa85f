/**
 * Copy-on-write snapshots (src/snapshot/) end to end, against real kernel FUSE mounts, the
 * kernel's ext4 (loop mount) and e2fsck:
 *  - tree A → snapshot s1 → changes → B → snapshot s2 → changes → C, online through kfsctl on
 *    a kfs mount; `kfs mount --snapshot` of s1 and s2 shows exactly A and B; an online
 *    `--path` restore gives A's subtree through the live mount; an offline whole restore gives
 *    exactly A (kfs and the kernel agree) and leaves s2 intact; deleting snapshots gives their
 *    space back (free slots reused, the file shrinks to the filesystem when none is left);
 *    e2fsck -fn is clean at every step; a snapshot's space is close to what changed after it,
 *    and a big new file written into free space costs next to nothing;
 *  - 64 snapshots coexist, each showing its own state, also after half of them are deleted;
 *  - kfsd with a DAX window: a snapshot drops the mappings, later stores through a writable
 *    mapping are copied first, a path restore works online;
 *  - crash safety: a whole restore, a delete and a create recorded with the write log, cut at every
 *    barrier and torn: every crash image opens to a consistent store, with the operation
 *    either finished or cleanly absent.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { makeImage, requireRoot, runCmd, tempDir, loopMount, fsck } from './helpers/image';
import { mountKfs, KfsMount, attachLogOnFailure } from './helpers/mount';
import { Checks } from './helpers/checks';
import { snapshotHost, snapshotExt4, diffSnapshots, Snapshot, DiffOptions } from './helpers/tree';
import { WriteLog, CrashImageBuilder, sparseCopy, epochStart } from './helpers/write-log';
import { rng } from './helpers/rng';
import { Ext4Fs } from '../src/ext4/fs';
import { setLogLevel } from '../src/util/log';
import { BlockDevice } from '../src/block/device';
import { createSnapshot, deleteSnapshot, listSnapshots, openSnapshotFs, SnapshotStore } from '../src/snapshot';
import { decodeHeader } from '../src/snapshot/format';
import { FUSE_SETUPMAPPING_FLAG_READ as MAP_READ, FUSE_SETUPMAPPING_FLAG_WRITE as MAP_WRITE } from '../src/fuse/abi';
import { spawnKfsd, VhostFrontend } from './helpers/vhost-frontend';
import { kfsctlJson, KFSCTL } from './helpers/kfsctl';

// Crash images log "finishing the interrupted restore" warnings on purpose.
setLogLevel('error');

const MiB = 1 << 20;

/** kfsctl without blocking this process (the DAX front-end lives here and must answer kfsd meanwhile). */
async function kfsctlJsonAsync<T>(args: string[]): Promise<T> {
  const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [KFSCTL, ...args, '--json'], (e, stdout, stderr) => resolve({ code: e ? Number(e.code ?? 1) : 0, stdout, stderr }));
  });
  if (r.code !== 0) throw new Error(`kfsctl ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}


interface ListJson {
  snapshots: { name: string; bytes: number; slots: number; createdMs: number }[];
  storeBytes: number;
  freeSlots: number;
  blockSize: number;
}

const bytesOf = (l: ListJson, name: string): number => l.snapshots.find((s) => s.name === name)?.bytes ?? -1;

function randomBytes(seed: number, n: number): Buffer {
  const r = rng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE(Math.floor(r() * 2 ** 32), i);
  return b;
}

/** Overwrite [off, off+data) of an existing file in place, fsync'd. */
function overwrite(file: string, off: number, data: Buffer): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, data, 0, data.length, off);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function writeFsync(file: string, data: Buffer): void {
  fs.writeFileSync(file, data);
  const fd = fs.openSync(file, 'r');
  fs.fsyncSync(fd);
  fs.closeSync(fd);
}

function buildA(root: string): void {
  const p = (...x: string[]) => path.join(root, ...x);
  fs.mkdirSync(p('proj', 'src'), { recursive: true });
  fs.mkdirSync(p('proj', 'deep', 'a', 'b', 'c'), { recursive: true });
  fs.writeFileSync(p('proj', 'src', 'main.c'), randomBytes(1, 20000).toString('base64'));
  fs.writeFileSync(p('proj', 'src', 'util.c'), 'int util(void) { return 42; }\n');
  fs.writeFileSync(p('proj', 'README'), 'the project\n');
  fs.writeFileSync(p('proj', 'data.bin'), randomBytes(2, 3 * MiB));
  fs.writeFileSync(p('proj', 'deep', 'a', 'b', 'c', 'file'), 'deep down\n');
  fs.symlinkSync('src/main.c', p('proj', 'link'));
  fs.writeFileSync(p('proj', 'hard1'), 'two names\n');
  fs.linkSync(p('proj', 'hard1'), p('proj', 'hard2'));
  fs.chmodSync(p('proj', 'src', 'util.c'), 0o640);
  fs.chownSync(p('proj', 'README'), 1000, 1000);
  fs.utimesSync(p('proj', 'deep', 'a', 'b', 'c', 'file'), new Date('2001-02-03T04:05:06Z'), new Date('2002-03-04T05:06:07Z'));
  runCmd('setfattr', ['-n', 'user.tag', '-v', 'original', p('proj', 'README')]);
  runCmd('setfattr', ['-n', 'user.big', '-v', '0x' + randomBytes(3, 1500).toString('hex'), p('proj', 'data.bin')]);
  fs.mkdirSync(p('docs'));
  for (let i = 0; i < 40; i++) fs.writeFileSync(p('docs', `f${i}`), `document ${i}\n`.repeat(i + 1));
  fs.mkdirSync(p('old', 'x', 'y'), { recursive: true });
  for (let i = 0; i < 20; i++) fs.writeFileSync(p('old', 'x', `o${i}`), randomBytes(100 + i, 30000));
  fs.writeFileSync(p('big.bin'), randomBytes(4, 4 * MiB));
}

/** A → B: returns the bytes of existing file data overwritten in place. */
function changeToB(root: string): number {
  const p = (...x: string[]) => path.join(root, ...x);
  overwrite(p('big.bin'), MiB, randomBytes(5, MiB));
  fs.appendFileSync(p('proj', 'src', 'main.c'), '/* more */\n');
  fs.mkdirSync(p('new'));
  for (let i = 0; i < 5; i++) writeFsync(p('new', `n${i}`), randomBytes(200 + i, 100000));
  for (let i = 10; i < 20; i++) fs.unlinkSync(p('docs', `f${i}`));
  fs.renameSync(p('docs', 'f1'), p('docs', 'renamed1'));
  runCmd('setfattr', ['-n', 'user.tag', '-v', 'changed', p('proj', 'README')]);
  runCmd('setfattr', ['-n', 'user.added', '-v', 'yes', p('proj', 'src', 'main.c')]);
  fs.rmSync(p('old'), { recursive: true });
  fs.chmodSync(p('proj', 'README'), 0o600);
  return MiB + 4096;
}

function changeToC(root: string): void {
  const p = (...x: string[]) => path.join(root, ...x);
  overwrite(p('proj', 'data.bin'), 0, randomBytes(6, MiB));
  fs.unlinkSync(p('proj', 'src', 'util.c'));
  fs.renameSync(p('proj', 'deep'), p('proj', 'deeper'));
  fs.writeFileSync(p('proj', 'newfile'), 'not in A\n');
  fs.unlinkSync(p('proj', 'hard2'));
  runCmd('setfattr', ['-x', 'user.tag', p('proj', 'README')]);
  fs.rmSync(p('new'), { recursive: true });
  fs.writeFileSync(p('docs', 'f3'), 'rewritten\n');
}

// Times: reading a tree for its manifest moves atimes (relatime), and FUSE reports no birth
// time; ctime cannot be set by a copy (path restore) and inode numbers are new there.
const VIEW_OPTS: DiffOptions = { ignore: ['atimeNs', 'crtimeNs'] };
const COPY_OPTS: DiffOptions = { ignore: ['atimeNs', 'crtimeNs', 'ctimeNs', 'ino'] };

test.serial('A → s1 → B → s2 → C: snapshot mounts show A and B, path restore online, whole restore offline, delete frees space', async (t) => {
  requireRoot(t);
  const c = new Checks(t);
  const dir = tempDir(t, 'snap');
  const img = makeImage(t, { size: '256M', blockSize: 4096, dir });
  const fsBytes = fs.statSync(img).size;
  const live = path.join(dir, 'live');
  let m: KfsMount | undefined = await mountKfs(t, img, live);
  t.teardown(() => attachLogOnFailure(t, m));

  buildA(live);
  runCmd('sync', ['-f', live]);
  const manA = snapshotHost(live);
  const manAProj = snapshotHost(path.join(live, 'proj'));
  const s1 = kfsctlJson<{ name: string; bytes: number }>(['-t', live, 'snapshot', 'create', 's1']);
  c.equal(s1.name, 's1', 'create s1');
  c.equal(s1.bytes, 0, 's1 costs nothing when created');

  const overwritten = changeToB(live);
  runCmd('sync', ['-f', live]);
  const manB = snapshotHost(live);
  kfsctlJson(['-t', live, 'snapshot', 'create', 's2']);
  const afterS2 = kfsctlJson<ListJson>(['-t', live, 'snapshot', 'list']);
  c.lap(`s1 holds ${bytesOf(afterS2, 's1')} bytes after ${overwritten} bytes overwritten in B`);
  // s1 holds the blocks changed while it was the newest: the overwritten data plus the metadata
  // blocks touched (bitmaps, inode table, directories, superblocks, extent and xattr blocks).
  c.check(bytesOf(afterS2, 's1') >= MiB, `s1 holds the overwritten MiB (${bytesOf(afterS2, 's1')} bytes)`);
  c.check(bytesOf(afterS2, 's1') <= overwritten + MiB, `s1 holds ${bytesOf(afterS2, 's1')} bytes: more than the ${overwritten} overwritten + 1 MiB of metadata`);

  changeToC(live);
  runCmd('sync', ['-f', live]);
  const beforeBig = bytesOf(kfsctlJson<ListJson>(['-t', live, 'snapshot', 'list']), 's2');
  writeFsync(path.join(live, 'huge.bin'), randomBytes(7, 48 * MiB));
  runCmd('sync', ['-f', live]);
  const afterBig = bytesOf(kfsctlJson<ListJson>(['-t', live, 'snapshot', 'list']), 's2');
  c.lap(`s2: ${beforeBig} bytes before a 48 MiB file, ${afterBig} after`);
  c.check(afterBig - beforeBig <= 512 * 1024, `a 48 MiB new file in free space cost s2 ${afterBig - beforeBig} bytes`);
  const status = kfsctlJson<{ snapshots: { supported: boolean; count: number; storeBytes: number; list: { name: string }[] } }>(['-t', live, 'status']);
  c.equal(status.snapshots.count, 2, 'status counts the snapshots');
  c.check(status.snapshots.list.map((s) => s.name).join() === 's1,s2', 'status lists s1, s2');

  // Online restore of a subtree: the mount shows A's subtree right away.
  const r = kfsctlJson<{ path: string; entries: number }>(['-t', live, 'snapshot', 'restore', 's1', '--path', path.join(live, 'proj'), '--yes']);
  c.equal(r.path, '/proj', 'restored path');
  c.snapshot(manAProj, snapshotHost(path.join(live, 'proj')), 'proj after the online path restore (through the mount)', COPY_OPTS);
  c.check(!fs.readdirSync(live).some((n) => n.includes('kfs-restore')), 'no temporary name left');
  const whole = runCmd(process.execPath, [KFSCTL, '-t', live, 'snapshot', 'restore', 's1', '--yes']);
  c.check(whole.code === 1 && /unmount first/.test(whole.stderr) && whole.stderr.trim().split('\n').length === 1, `online whole restore refused with one line: ${whole.stderr}`);
  const manC = snapshotHost(live);
  await m.unmount();
  m = undefined;
  c.fsckClean(img, 'after C and the path restore');

  await c.stage('snapshot mounts', async () => {
    for (const [name, want] of [['s1', manA], ['s2', manB]] as [string, Snapshot][]) {
      const v = await mountKfs(t, img, path.join(dir, `view-${name}`), { args: ['--snapshot', name] });
      try {
        c.snapshot(want, snapshotHost(v.dir), `kfs mount --snapshot ${name}`, VIEW_OPTS);
        const w = runCmd('touch', [path.join(v.dir, 'nope')]);
        c.check(w.code !== 0, 'a snapshot mount is read-only');
      } finally {
        await v.unmount();
      }
    }
  });
  c.fsckClean(img, 'after the snapshot mounts');

  // Offline whole restore of s1: exactly A, for kfs and for the kernel; s2 keeps B.
  const wr = kfsctlJson<{ blocks: number }>(['-t', img, 'snapshot', 'restore', 's1', '--yes']);
  c.check(wr.blocks > 0, 'whole restore wrote blocks back');
  c.fsckClean(img, 'after the whole restore');
  await c.stage('kernel view of the restored image', async () => {
    const k = loopMount(t, img, { readOnly: true });
    try {
      c.snapshot(manA, snapshotHost(k.dir), 'kernel ext4 after whole restore of s1', { ignore: ['atimeNs', 'crtimeNs'] });
    } finally {
      k.unmount();
    }
  });
  await c.stage('kfs view of the restored image', async () => {
    const v = await mountKfs(t, img, path.join(dir, 'restored'), { options: ['ro'] });
    try {
      c.snapshot(manA, snapshotHost(v.dir), 'kfs after whole restore of s1', VIEW_OPTS);
    } finally {
      await v.unmount();
    }
    const s2 = await mountKfs(t, img, path.join(dir, 'view-s2-again'), { args: ['--snapshot', 's2'] });
    try {
      c.snapshot(manB, snapshotHost(s2.dir), 's2 after the whole restore of s1', VIEW_OPTS);
    } finally {
      await s2.unmount();
    }
  });
  c.check(manC.has('/huge.bin'), 'C had huge.bin (the restore removed it)');

  // Delete s1 (the oldest: its blocks are nobody else's), then new copy-on-write reuses them.
  const before = kfsctlJson<ListJson>(['-t', img, 'snapshot', 'list']);
  const del = kfsctlJson<{ freedBytes: number }>(['-t', img, 'snapshot', 'delete', 's1']);
  c.equal(del.freedBytes, bytesOf(before, 's1'), 'deleting the oldest snapshot frees all it held');
  const afterDel = kfsctlJson<ListJson>(['-t', img, 'snapshot', 'list']);
  c.check(afterDel.snapshots.map((s) => s.name).join() === 's2', 'only s2 is left');
  c.fsckClean(img, 'after deleting s1');
  const sizeAfterDel = fs.statSync(img).size;
  c.check(afterDel.freeSlots * afterDel.blockSize + (fsBytes + before.storeBytes - sizeAfterDel) >= del.freedBytes, 'freed slots are free (or cut off the file)');
  const reuse = await mountKfs(t, img, live);
  try {
    overwrite(path.join(live, 'big.bin'), 2 * MiB, randomBytes(8, 256 * 1024));
  } finally {
    await reuse.unmount();
  }
  const afterReuse = kfsctlJson<ListJson>(['-t', img, 'snapshot', 'list']);
  c.check(afterReuse.freeSlots < afterDel.freeSlots, `copy-on-write took free slots (${afterDel.freeSlots} → ${afterReuse.freeSlots})`);
  c.equal(fs.statSync(img).size, sizeAfterDel, 'the image file did not grow (free slots reused)');
  const s2View = await mountKfs(t, img, path.join(dir, 'view-s2-last'), { args: ['--snapshot', 's2'] });
  try {
    c.snapshot(manB, snapshotHost(s2View.dir), 's2 after s1 was deleted and blocks were reused', VIEW_OPTS);
  } finally {
    await s2View.unmount();
  }
  kfsctlJson(['-t', img, 'snapshot', 'delete', 's2']);
  c.equal(kfsctlJson<ListJson>(['-t', img, 'snapshot', 'list']).snapshots.length, 0, 'no snapshots left');
  c.equal(fs.statSync(img).size, fsBytes, 'without snapshots the image is the filesystem alone');
  c.fsckClean(img, 'after deleting every snapshot');
  c.done();
});

test.serial('64 snapshots coexist, each with its own state, also after every other one is deleted', async (t) => {
  const c = new Checks(t);
  const img = makeImage(t, { size: '64M', blockSize: 4096 });
  const N = 64;
  let f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  const counter = await f.create(2, Buffer.from('counter'), 0o644, 0, 0);
  for (let i = 0; i < N; i++) {
    await f.write(counter.ino, 0, Buffer.alloc(8192, i));
    const a = await f.create(2, Buffer.from(`f${i}`), 0o644, 0, 0);
    await f.write(a.ino, 0, Buffer.from(`file ${i}\n`));
    await createSnapshot(f, `n${i}`);
  }
  await f.write(counter.ino, 0, Buffer.alloc(8192, 0xee));
  c.equal(listSnapshots(f).snapshots.length, N, 'all snapshots listed');
  const verify = async (names: number[], label: string) => {
    for (const i of names) {
      const v = await openSnapshotFs(img, `n${i}`, { live: f.vol.dev.snapshots });
      try {
        const a = await v.fs.lookup(2, Buffer.from('counter'));
        const data = await v.fs.read(a.ino, 0, 8192);
        c.check(data.every((x) => x === i), `${label}: n${i} sees counter = ${i} (got ${data[0]})`);
        c.check((await v.fs.lookupOrNull(2, Buffer.from(`f${i}`))) !== null, `${label}: n${i} has f${i}`);
        c.check((await v.fs.lookupOrNull(2, Buffer.from(`f${i + 1}`))) === null, `${label}: n${i} lacks f${i + 1}`);
      } finally {
        await v.close();
      }
    }
  };
  await verify([...Array(N).keys()], 'all');
  for (let i = 0; i < N; i += 2) await deleteSnapshot(f, `n${i}`);
  c.equal(listSnapshots(f).snapshots.length, N / 2, 'half left');
  await f.close();
  c.fsckClean(img, 'with 32 snapshots');
  f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  await verify([...Array(N).keys()].filter((i) => i % 2), 'after reopening');
  await f.close();
  c.done();
});

test.serial('crash safety: a whole restore, a delete and a create, cut at every barrier, torn and reordered: reopen to the old or the new state', async (t) => {
  const c = new Checks(t);
  const dir = tempDir(t, 'snapcrash');
  const base = makeImage(t, { size: '32M', blockSize: 4096, dir, name: 'base.img' });
  let f = await Ext4Fs.open(base, { commitIntervalMs: 0 });
  const d = await f.mkdir(2, Buffer.from('d'), 0o755, 0, 0);
  for (let i = 0; i < 30; i++) {
    const a = await f.create(d.ino, Buffer.from(`a${i}`), 0o644, 0, 0);
    await f.write(a.ino, 0, randomBytes(300 + i, 20000 + i * 1000));
  }
  await createSnapshot(f, 's1');
  const big = await f.create(2, Buffer.from('big'), 0o644, 0, 0);
  await f.write(big.ino, 0, randomBytes(400, 2 * MiB));
  for (let i = 0; i < 30; i += 3) await f.unlink(d.ino, Buffer.from(`a${i}`));
  for (let i = 1; i < 30; i += 3) await f.write((await f.lookup(d.ino, Buffer.from(`a${i}`))).ino, 0, randomBytes(500 + i, 8192));
  await createSnapshot(f, 's2');
  await f.write(big.ino, 0, randomBytes(401, MiB));
  await f.rename(2, Buffer.from('d'), 2, Buffer.from('e'));
  await f.close();
  const manifest = async (fsys: Ext4Fs) => snapshotExt4(fsys);
  const view = async (name: string) => {
    const v = await openSnapshotFs(base, name);
    try {
      return await manifest(v.fs);
    } finally {
      await v.close();
    }
  };
  const manA = await view('s1');
  const manB = await view('s2');
  f = await Ext4Fs.open(base, { readOnly: true });
  const manC = await manifest(f);
  await f.close();

  const log = new WriteLog();
  const work = path.join(dir, 'work.img');
  sparseCopy(base, work);
  const dev = BlockDevice.open(work, { writeLog: log });
  await dev.snapshots!.restoreWhole('s1');
  await dev.snapshots!.delete('s1');
  // The restored image is at a clean point (the snapshot's): a snapshot of it may be taken here.
  await dev.snapshots!.create('s3');
  await dev.closeNoSync();
  const barriers = log.barriers();
  c.lap(`${log.length} events, ${barriers.length} barriers`);
  const cuts: { upTo: number; tornSectors?: number; reorder?: number }[] = [{ upTo: 0 }];
  for (const b of barriers) cuts.push({ upTo: b });
  // Writes between two barriers may reach the disk in any order, some torn.
  barriers.forEach((b, i) => cuts.push({ upTo: b, reorder: 100 + i }));
  const r = rng(11);
  const writes = log.writes();
  for (let k = 0; k < 12; k++) {
    const w = writes[Math.floor(r() * writes.length)];
    const e = log.events[w];
    if (e.kind === 'write' && e.data.length > 512) cuts.push({ upTo: w, tornSectors: 1 + Math.floor(r() * (e.data.length / 512 - 1)) });
  }
  cuts.push({ upTo: log.length });
  // The builder applies writes forward only: order by where each cut starts.
  const startOf = (x: { upTo: number; reorder?: number }) => (x.reorder !== undefined ? epochStart(log, x.upTo) : x.upTo);
  cuts.sort((a, b) => startOf(a) - startOf(b));
  const builder = new CrashImageBuilder(log, base, path.join(dir, 'building.img'));
  const crash = path.join(dir, 'crash.img');
  const same = (a: Snapshot, b: Snapshot) => diffSnapshots(a, b).length === 0;
  let finished = 0;
  let absent = 0;
  for (const cut of cuts) {
    const label = `cut at ${cut.upTo}${cut.tornSectors ? ` torn ${cut.tornSectors}` : ''}${cut.reorder !== undefined ? ` reordered (seed ${cut.reorder})` : ''}`;
    builder.build(cut, crash);
    try {
      // Opening read-write finishes an interrupted restore.
      const fsys = await Ext4Fs.open(crash, { commitIntervalMs: 0 });
      const names = listSnapshots(fsys).snapshots.map((s) => s.name).join();
      await fsys.close();
      c.fsckClean(crash, label);
      const ro = await Ext4Fs.open(crash, { readOnly: true });
      const now = await manifest(ro);
      await ro.close();
      const isA = same(manA, now);
      const isC = same(manC, now);
      c.check(isA || isC, `${label}: the live filesystem is neither the old state nor the restored one`);
      c.check(names === 's1,s2' || ((names === 's2' || names === 's2,s3') && isA), `${label}: snapshots ${names} with the live state ${isA ? 'A' : 'C'}`);
      if (isA) finished++;
      else absent++;
      const v = await openSnapshotFs(crash, 's2');
      try {
        c.check(same(manB, await manifest(v.fs)), `${label}: s2 still shows B`);
      } finally {
        await v.close();
      }
    } catch (e) {
      c.fail(`${label}: ${(e as Error).message}`);
    }
  }
  builder.close();
  c.lap(`${cuts.length} crash images: restore finished in ${finished}, cleanly absent in ${absent}`);
  c.check(finished > 0 && absent > 0, 'cuts fall both before and after the restore was recorded');
  c.done();
});

test.serial('store format: a damaged newest header falls back to the previous one; a store left by another filesystem is ignored', async (t) => {
  const img = makeImage(t, { size: '16M', blockSize: 4096 });
  let f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  await createSnapshot(f, 'one');
  const a = await f.create(2, Buffer.from('a'), 0o644, 0, 0);
  await f.write(a.ino, 0, Buffer.alloc(50000, 1));
  await f.close();
  // A crash right after the header naming 'two' was written, torn (the table went to free
  // blocks before it and nothing was written after it).
  const dev = BlockDevice.open(img, {});
  await dev.snapshots!.create('two');
  await dev.closeNoSync();
  const base = 16 * MiB;
  const bs = 4096;
  const fd = fs.openSync(img, 'r+');
  try {
    const heads = [0, 1].map((i) => {
      const b = Buffer.alloc(bs);
      fs.readSync(fd, b, 0, bs, base + i * bs);
      const h = decodeHeader(b);
      if (typeof h === 'string') throw new Error(`header ${i} is ${h}`);
      return h;
    });
    const newest = heads[0].seq > heads[1].seq ? 0 : 1;
    t.is(heads[newest].snapCount, 2);
    // A torn header write: one byte of the newest differs.
    fs.writeSync(fd, Buffer.from([0x5a]), 0, 1, base + newest * bs + 50);
  } finally {
    fs.closeSync(fd);
  }
  f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  t.deepEqual(listSnapshots(f).snapshots.map((s) => s.name), ['one']);
  await createSnapshot(f, 'three');
  await f.close();
  f = await Ext4Fs.open(img, { readOnly: true });
  t.deepEqual(listSnapshots(f).snapshots.map((s) => s.name), ['one', 'three']);
  await f.close();
  t.is(fsck(img).code, 0);
  // mkfs again with the same size: the old store sits where a new one would, but is not this filesystem's.
  runCmd('mkfs.ext4', ['-q', '-F', '-b', '4096', img, '16M']);
  t.true(fs.statSync(img).size > base);
  f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  t.deepEqual(listSnapshots(f).snapshots, []);
  await createSnapshot(f, 'fresh');
  t.deepEqual(listSnapshots(f).snapshots.map((s) => s.name), ['fresh']);
  await f.close();
  t.is(fsck(img).code, 0);
});

test.serial('crash safety of copy-on-write: a workload after a snapshot, cut at barriers and reordered, never changes the snapshot', async (t) => {
  const c = new Checks(t);
  const dir = tempDir(t, 'cowcrash');
  const base = makeImage(t, { size: '32M', blockSize: 4096, dir, name: 'base.img' });
  let f = await Ext4Fs.open(base, { commitIntervalMs: 0 });
  const files: number[] = [];
  for (let i = 0; i < 12; i++) {
    const a = await f.create(2, Buffer.from(`f${i}`), 0o644, 0, 0);
    await f.write(a.ino, 0, randomBytes(600 + i, 50000));
    files.push(a.ino);
  }
  await createSnapshot(f, 's1');
  await f.close();
  const v0 = await openSnapshotFs(base, 's1');
  const manA = await snapshotExt4(v0.fs);
  await v0.close();

  const log = new WriteLog();
  const work = path.join(dir, 'work.img');
  sparseCopy(base, work);
  f = await Ext4Fs.open(work, { commitIntervalMs: 0, writeLog: log });
  for (let round = 0; round < 4; round++) {
    for (let i = round; i < 12; i += 4) await f.write(files[i], 4096 * round, randomBytes(700 + i * 10 + round, 12000));
    const n = await f.create(2, Buffer.from(`new${round}`), 0o644, 0, 0);
    await f.write(n.ino, 0, randomBytes(800 + round, 30000));
    if (round === 2) await f.unlink(2, Buffer.from('f0'));
    await f.sync();
  }
  await f.close();
  const barriers = log.barriers();
  const cuts: { upTo: number; reorder?: number }[] = [];
  const r = rng(21);
  for (const b of barriers) if (r() < 0.6) cuts.push({ upTo: b });
  barriers.forEach((b, i) => r() < 0.5 && cuts.push({ upTo: b, reorder: 300 + i }));
  cuts.push({ upTo: log.length });
  const startOf = (x: { upTo: number; reorder?: number }) => (x.reorder !== undefined ? epochStart(log, x.upTo) : x.upTo);
  cuts.sort((a, b) => startOf(a) - startOf(b));
  c.lap(`${log.length} events, ${barriers.length} barriers, ${cuts.length} cuts`);
  const builder = new CrashImageBuilder(log, base, path.join(dir, 'building.img'));
  const crash = path.join(dir, 'crash.img');
  for (const cut of cuts) {
    const label = `cut at ${cut.upTo}${cut.reorder !== undefined ? ` reordered (seed ${cut.reorder})` : ''}`;
    builder.build(cut, crash);
    try {
      // A read-write open replays the journal (its home writes go through copy-on-write too).
      const fsys = await Ext4Fs.open(crash, { commitIntervalMs: 0 });
      await fsys.close();
      c.fsckClean(crash, label);
      const v = await openSnapshotFs(crash, 's1');
      try {
        const d = diffSnapshots(manA, await snapshotExt4(v.fs));
        c.check(d.length === 0, `${label}: s1 changed: ${d.slice(0, 5).join('; ')}`);
      } finally {
        await v.close();
      }
    } catch (e) {
      c.fail(`${label}: ${(e as Error).message}`);
    }
  }
  builder.close();
  c.done();
});

test.serial('kfsd with DAX: a snapshot drops the window mappings; stores through a writable mapping afterwards are copied first; path restore online', async (t) => {
  const work = tempDir(t, 'snapdax');
  const socket = path.join(work, 'vhost.sock');
  const image = makeImage(t, { size: '128M', blockSize: 4096, mkfs: 'kfs', dir: work });
  const RANGE = 2 * MiB;
  const backend = spawnKfsd(['--image', image], socket, ['--dax-window', String(64 * MiB), '--log-level', 'info']);
  t.teardown(() => backend.stop());
  const fe = await VhostFrontend.start({ socketPath: socket });
  t.teardown(() => fe.close());
  await fe.fuse.init();
  const before = randomBytes(900, 3 * MiB);
  const { entry, fh } = await fe.fuse.create(1, 'target', 0o644);
  for (let at = 0; at < before.length; at += MiB) await fe.fuse.write(entry.nodeid, fh, at, before.subarray(at, at + MiB));
  await fe.fuse.fsync(entry.nodeid, fh);
  await fe.fuse.setupmapping(entry.nodeid, fh, 0, RANGE, 0, MAP_READ | MAP_WRITE);
  t.is(fe.window!.mappings.length, 1);
  await kfsctlJsonAsync(['-t', image, 'snapshot', 'create', 's1']);
  t.is(fe.window!.mappings.length, 0, 'creating a snapshot unmapped the window');
  // The guest maps again (writable) and stores: the blocks must be copied before.
  await fe.fuse.setupmapping(entry.nodeid, fh, 0, RANGE, 0, MAP_READ | MAP_WRITE);
  const stores = randomBytes(901, 64 * 1024);
  fe.windowWrite(8192, stores);
  await fe.fuse.fsync(entry.nodeid, fh);
  const after = Buffer.from(before);
  stores.copy(after, 8192);
  const read = await fe.fuse.read(entry.nodeid, fh, 0, MiB);
  t.true(read.equals(after.subarray(0, MiB)), 'FUSE_READ sees the stores');
  const list = await kfsctlJsonAsync<ListJson>(['-t', image, 'snapshot', 'list']);
  t.true(bytesOf(list, 's1') >= stores.length, `s1 holds the stored-over blocks (${bytesOf(list, 's1')} bytes)`);
  // Path restore online through kfsd: the name now leads to the snapshot's bytes.
  const r = await kfsctlJsonAsync<{ path: string }>(['-t', image, 'snapshot', 'restore', 's1', '--path', '/target', '--yes']);
  t.is(r.path, '/target');
  const again = await fe.fuse.lookup(1, 'target');
  t.not(again.nodeid, entry.nodeid, 'a new inode under the name');
  const fh2 = await fe.fuse.open(again.nodeid);
  t.true((await fe.fuse.read(again.nodeid, fh2, 0, MiB)).equals(before.subarray(0, MiB)), 'the restored file has the snapshot bytes');
  fe.close();
  t.is((await backend.stop()).code, 0, backend.output);
  t.is(fsck(image).code, 0);
  // The front-end (this process) still holds the image fd kfsd passed for the mappings, and
  // with it kfsd's image lock: read the store without the lock (kfsd is gone).
  const raw = BlockDevice.open(image, { readOnly: true, noLock: true });
  try {
    const v = await openSnapshotFs(image, 's1', { live: SnapshotStore.open(raw) });
    try {
      const a = await v.fs.lookup(2, Buffer.from('target'));
      t.true((await v.fs.read(a.ino, 0, before.length)).equals(before), 's1 kept the bytes from before the stores');
    } finally {
      await v.close();
    }
  } finally {
    await raw.closeNoSync();
  }
});

test.serial('kfs fsck -y refuses an image with snapshots (e2fsck writes past copy-on-write) unless --force; kfs fsck checks it', async (t) => {
  const dir = tempDir(t, 'snapfsck');
  const image = makeImage(t, { size: '64M', mkfs: 'kfs', dir });
  kfsctlJson(['-t', image, 'snapshot', 'create', 'keep']);
  const kfs = path.resolve(__dirname, '..', 'src', 'cli', 'kfs.js');
  const before = fs.readFileSync(image);
  const y = runCmd(process.execPath, [kfs, 'fsck', '-y', image]);
  t.not(y.code, 0);
  t.regex(y.stderr.trim(), /^kfs fsck: .*1 snapshot\(s\).*--force$/);
  t.is(y.stderr.trim().split('\n').length, 1, y.stderr);
  t.true(fs.readFileSync(image).equals(before), 'the refused repair changed nothing');
  const n = runCmd(process.execPath, [kfs, 'fsck', image]);
  t.is(n.code, 0, n.stdout + n.stderr);
  const f = runCmd(process.execPath, [kfs, 'fsck', '-y', '--force', image]);
  t.is(f.code, 0, f.stdout + f.stderr);
});
