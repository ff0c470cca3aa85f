/**
 * SIGKILL of the serving process in the middle of a write-heavy workload, repeatedly, on one
 * image (issue 5):
 *  - `kfs mount -o nosupervisor`: a child process writes files through the mount (some
 *    fsync'd, some unlinked or renamed later, directories made) and prints each file whose
 *    fsync returned; the server is killed at a random moment; the dead mount is detached
 *    (umount -l) and the image mounted again;
 *  - kfsd --image: the vhost-user test front-end drives the same kind of workload with FUSE
 *    requests; kfsd is killed at a random moment and started again on the same image.
 * After every kill: the new server replays the journal; every file whose fsync was answered
 * (in this round and all earlier ones) has its exact bytes; after a clean unmount / stop,
 * e2fsck -fn is clean. Kill delays are seeded: KFS_SEED=n replays a run (printed).
 * Needs root, /dev/fuse, e2fsprogs.
 */
import test, { ExecutionContext } from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { makeImage, tempDir, assertFsckClean } from './helpers/image';
import { mountKfs, isMountPoint } from './helpers/mount';
import { rng } from './helpers/rng';
import { ConnectionClosedError, spawnKfsd, VhostFrontend, Backend, FuseReplyError } from './helpers/vhost-frontend';
import { waitFor } from './posix/util';

const ROUNDS = Number(process.env.KFS_SIGKILL_ROUNDS ?? 4);
const SEED = Number(process.env.KFS_SEED ?? Math.floor(Math.random() * 1e9));
const ROOT = 1;

/** File i of a round: its size and bytes follow from (seed, i) alone (the mount workload child has a copy). */
function fileContent(seed: number, i: number): Buffer {
  const r = rng(seed * 1000003 + i);
  const size = Math.floor(r() * r() * 300000);
  const b = Buffer.alloc(size);
  for (let k = 0; k + 4 <= size; k += 4) b.writeUInt32LE((r() * 4294967296) >>> 0, k);
  return b;
}

/** A file whose fsync was answered: path relative to the filesystem root, and how to make its bytes. */
interface Durable {
  rel: string;
  seed: number;
  i: number;
}

/**
 * The workload child for the host mount. Writes f<i> in 64 KiB writes; fsyncs ~40% of them and
 * prints "F <i>" after the fsync returns (fs.writeSync: no buffering); unlinks or renames only
 * files it did not fsync; makes a directory now and then. Runs until the mount dies.
 */
const MOUNT_WORKLOAD = `
const fs = require('fs'), path = require('path');
const { rng } = require(process.argv[3]);
function fileContent(seed, i) {
  const r = rng(seed * 1000003 + i);
  const size = Math.floor(r() * r() * 300000);
  const b = Buffer.alloc(size);
  for (let k = 0; k + 4 <= size; k += 4) b.writeUInt32LE((r() * 4294967296) >>> 0, k);
  return b;
}
const dir = process.argv[1], seed = Number(process.argv[2]);
const r = rng(seed);
const loose = [];
for (let i = 0; ; i++) {
  const data = fileContent(seed, i);
  const p = path.join(dir, 'f' + i);
  const fd = fs.openSync(p, 'w');
  for (let o = 0; o < data.length; o += 65536) fs.writeSync(fd, data, o, Math.min(65536, data.length - o));
  if (r() < 0.4) {
    fs.fsyncSync(fd);
    fs.writeSync(1, 'F ' + i + '\\n');
  } else loose.push(i);
  fs.closeSync(fd);
  const x = r();
  if (x < 0.15 && loose.length > 1) fs.unlinkSync(path.join(dir, 'f' + loose.splice(Math.floor(r() * loose.length), 1)[0]));
  else if (x < 0.25 && loose.length > 1) { const j = loose[Math.floor(r() * loose.length)]; fs.renameSync(path.join(dir, 'f' + j), path.join(dir, 'f' + j + '.moved')); loose.splice(loose.indexOf(j), 1); }
  else if (x < 0.3) fs.mkdirSync(path.join(dir, 'd' + i));
}
`;

function verifyHost(t: ExecutionContext, root: string, durable: Durable[], label: string): void {
  let bad = 0;
  for (const d of durable) {
    const want = fileContent(d.seed, d.i);
    let got: Buffer | string;
    try {
      got = fs.readFileSync(path.join(root, d.rel));
    } catch (e) {
      got = (e as NodeJS.ErrnoException).code ?? String(e);
    }
    if (typeof got === 'string' || !got.equals(want)) {
      if (bad++ < 5) t.fail(`${label}: fsync'd ${d.rel} (${want.length} bytes): ${typeof got === 'string' ? got : `${got.length} bytes, content differs`}`);
    }
  }
  t.is(bad, 0, `${label}: ${durable.length} fsync'd files intact`);
}

function pidGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return true;
  }
  try {
    return /^\d+ \(.*\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

test.serial('kfs mount -o nosupervisor: SIGKILL of the server during writes, repeatedly; fsync\'d files intact, e2fsck clean', async (t) => {
  t.log(`KFS_SEED=${SEED}`);
  const r = rng(SEED);
  const work = tempDir(t, 'sigkill-mount');
  const image = makeImage(t, { size: '512M', mkfs: 'kfs', dir: work });
  const dir = path.join(work, 'mnt');
  t.teardown(() => {
    if (isMountPoint(dir)) spawnSync('umount', ['-l', dir]);
  });
  // The workload child takes the PRNG from the compiled helper.
  const helper = require.resolve('./helpers/rng');
  const durable: Durable[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const seed = SEED + round;
    const delay = 300 + Math.floor(r() * 2500);
    t.log(`round ${round}: kill after ${delay} ms`);
    const m = await mountKfs(t, image, dir, { options: ['nosupervisor'], teardown: false });
    fs.mkdirSync(path.join(dir, `r${round}`));
    const child = spawn(process.execPath, ['-e', MOUNT_WORKLOAD, path.join(dir, `r${round}`), String(seed), helper], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<void>((res) => child.on('exit', () => res()));
    await new Promise((res) => setTimeout(res, delay));
    t.true(child.exitCode === null, `round ${round}: the workload was still running at the kill (${err.trim().split('\n').pop()})`);
    process.kill(m.pid, 'SIGKILL');
    await exited;
    t.true(await waitFor(() => pidGone(m.pid), 10_000), 'the server is gone');
    spawnSync('umount', ['-l', dir]);
    const fsynced = out.split('\n').filter((l) => l.startsWith('F ')).map((l) => Number(l.slice(2)));
    t.true(/ENOTCONN|ECONNABORTED|Transport endpoint/.test(err), `round ${round}: the workload stopped on the dead mount (${err.trim().split('\n').pop()})`);
    for (const i of fsynced) durable.push({ rel: `r${round}/f${i}`, seed, i });
    t.log(`round ${round}: ${fsynced.length} files fsync'd before the kill`);
    const again = await mountKfs(t, image, dir, { teardown: false });
    verifyHost(t, dir, durable, `round ${round} after remount`);
    await again.unmount();
    assertFsckClean(t, image, `round ${round}: e2fsck -fn after replay and a clean unmount`);
  }
  t.true(durable.length > ROUNDS, `${durable.length} fsync'd files checked`);
});

// ---------------------------------------------------------------- kfsd

class Killed extends Error {}

async function startKfsd(image: string, socket: string): Promise<{ backend: Backend; fe: VhostFrontend }> {
  if (fs.existsSync(socket)) fs.rmSync(socket);
  const backend = spawnKfsd(['--image', image], socket);
  if (!(await waitFor(() => fs.existsSync(socket) || !backend.running, 30_000)) || !backend.running) {
    throw new Error(`kfsd did not start:\n${backend.output}`);
  }
  const fe = await VhostFrontend.start({ socketPath: socket });
  await fe.fuse.init();
  return { backend, fe };
}

async function lookupPath(fe: VhostFrontend, rel: string): Promise<number> {
  let node = ROOT;
  for (const part of rel.split('/')) node = (await fe.fuse.lookup(node, part)).nodeid;
  return node;
}

async function readAll(fe: VhostFrontend, node: number): Promise<Buffer> {
  const size = Number((await fe.fuse.getattr(node)).size);
  const fh = await fe.fuse.open(node, fs.constants.O_RDONLY);
  const parts: Buffer[] = [];
  for (let o = 0; o < size; o += 65536) parts.push(await fe.fuse.read(node, fh, o, Math.min(65536, size - o)));
  await fe.fuse.release(node, fh);
  return Buffer.concat(parts);
}

test.serial('kfsd --image: SIGKILL of kfsd during writes, repeatedly; every answered fsync intact after restart, e2fsck clean', async (t) => {
  t.log(`KFS_SEED=${SEED}`);
  const r = rng(SEED + 77);
  const work = tempDir(t, 'sigkill-kfsd');
  const image = makeImage(t, { size: '512M', mkfs: 'kfs', dir: work });
  const socket = path.join(work, 'vhost.sock');
  const durable: Durable[] = [];
  let current: { backend: Backend; fe: VhostFrontend } | null = null;
  t.teardown(async () => {
    current?.fe.close();
    await current?.backend.stop();
  });
  for (let round = 0; round < ROUNDS; round++) {
    const seed = SEED + 1000 + round;
    const delay = 300 + Math.floor(r() * 2500);
    t.log(`round ${round}: kill after ${delay} ms`);
    current = await startKfsd(image, socket);
    const { backend, fe } = current;
    const killedAt = new Promise<never>((_res, rej) => void backend.exited.then(() => rej(new Killed('kfsd died'))));
    killedAt.catch(() => undefined);
    const call = <T>(p: Promise<T>): Promise<T> => Promise.race([p, killedAt]);
    const dirNode = (await fe.fuse.mkdir(ROOT, `r${round}`)).nodeid;
    const timer = setTimeout(() => backend.proc.kill('SIGKILL'), delay);
    const w = rng(seed);
    const loose: { i: number; name: string }[] = [];
    let fsynced = 0;
    try {
      for (let i = 0; ; i++) {
        const data = fileContent(seed, i);
        const { entry, fh } = await call(fe.fuse.create(dirNode, `f${i}`, 0o644));
        for (let o = 0; o < data.length; o += 65536) await call(fe.fuse.write(entry.nodeid, fh, o, data.subarray(o, o + 65536)));
        if (w() < 0.4) {
          await call(fe.fuse.fsync(entry.nodeid, fh));
          durable.push({ rel: `r${round}/f${i}`, seed, i });
          fsynced++;
        } else loose.push({ i, name: `f${i}` });
        await call(fe.fuse.release(entry.nodeid, fh));
        const x = w();
        if (x < 0.15 && loose.length > 1) await call(fe.fuse.unlink(dirNode, loose.splice(Math.floor(w() * loose.length), 1)[0].name));
        else if (x < 0.25 && loose.length > 1) {
          const k = Math.floor(w() * loose.length);
          await call(fe.fuse.rename(dirNode, loose[k].name, dirNode, `${loose[k].name}.moved`));
          loose.splice(k, 1);
        } else if (x < 0.3) await call(fe.fuse.mkdir(dirNode, `d${i}`));
      }
    } catch (e) {
      // The front-end sees the kill as the exit, or first as its connection closing.
      if (!(e instanceof Killed) && !(e instanceof ConnectionClosedError)) throw e;
    } finally {
      clearTimeout(timer);
    }
    await backend.exited;
    t.is(backend.exitStatus?.signal, 'SIGKILL', `round ${round}: kfsd was killed`);
    fe.close();
    await backend.stop();
    t.log(`round ${round}: ${fsynced} files fsync'd before the kill`);
    // Restart on the same image: replay, then every answered fsync must be there.
    current = await startKfsd(image, socket);
    let bad = 0;
    for (const d of durable) {
      let got: Buffer | string;
      try {
        got = await readAll(current.fe, await lookupPath(current.fe, d.rel));
      } catch (e) {
        if (!(e instanceof FuseReplyError)) throw e;
        got = e.message;
      }
      const want = fileContent(d.seed, d.i);
      if (typeof got === 'string' || !got.equals(want)) {
        if (bad++ < 5) t.fail(`round ${round}: fsync'd ${d.rel} (${want.length} bytes): ${typeof got === 'string' ? got : `${got.length} bytes, content differs`}`);
      }
    }
    t.is(bad, 0, `round ${round}: ${durable.length} fsync'd files intact after the restart`);
    current.fe.close();
    const exit = await current.backend.stop();
    current = null;
    t.is(exit.code, 0, 'kfsd stopped cleanly');
    assertFsckClean(t, image, `round ${round}: e2fsck -fn after the restart and a clean stop`);
  }
  t.true(durable.length > ROUNDS, `${durable.length} fsync'd files checked`);
});
