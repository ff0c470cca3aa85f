/**
 * kfsd's JIT warm-up (src/fuse/warmup.ts, src/cli/warmup.ts): the guest's everyday requests
 * served to a scratch filesystem while no front-end has sent any.
 *
 *  - warmUp() itself, on a kfs image the test keeps: every request it sends succeeds (it ends
 *    'done'), its FORGETs and RELEASEs give back every reference and handle its replies gave,
 *    and afterwards the image is e2fsck-clean with nothing left in it, every inode and block
 *    it used free again.
 *  - shouldStop ends it between two requests, and the scratch filesystem is still closed.
 *  - kfsd --image and --shared-dir: the warm-up runs before any front-end, logs what it did,
 *    leaves nothing in /dev/shm, and the served image or directory is untouched.
 *  - The first request of a front-end ends a warm-up that would otherwise go on
 *    (KFS_WARMUP_ROUNDS), and is answered; SIGTERM ends it too; --no-jit-warmup runs none.
 *  - Scratch directories of dead kfsd processes are removed at start-up.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { assertFsckClean, debugfs, makeImage, tempDir } from './helpers/image';
import { spawnKfsd, VhostFrontend, type Backend } from './helpers/vhost-frontend';
import { waitFor } from './posix/util';
import { Ext4Fs } from '../src/ext4/fs';
import { Ext4FuseFs } from '../src/ext4/fuse-adapter';
import { warmUp, type WarmupOptions } from '../src/fuse/warmup';
import { GUEST_INIT_FLAGS } from '../src/fuse/request-encode';

const ROOT = 1;
const LINE = /JIT warm-up on a scratch (image|directory): (\d+) requests in \d+ ms \(([^)]*)\)/;

/** debugfs "stats": free inodes and blocks of the whole filesystem. */
function freeCounts(image: string): { inodes: number; blocks: number } {
  const out = debugfs(image, 'stats');
  return { inodes: Number(/Free inodes:\s+(\d+)/.exec(out)![1]), blocks: Number(/Free blocks:\s+(\d+)/.exec(out)![1]) };
}

/** What the adapter still held when the warm-up closed it: lookup references, open files and directories. */
interface Held { lookups: number; files: number; dirs: number }

async function scratchOn(image: string, held: Held[] = []): Promise<{ fs: Ext4FuseFs; commit: () => Promise<void>; close: () => Promise<void> }> {
  const ext4 = await Ext4Fs.open(image, { commitIntervalMs: 0 });
  const fs = new Ext4FuseFs(ext4);
  fs.noOpen = true;
  // The adapter's own tables (private): what a kernel would still hold after these requests.
  const tables = fs as unknown as { lookups: Map<number, number>; files: Map<number, unknown>; dirs: Map<number, unknown> };
  return {
    fs,
    commit: () => ext4.sync(false),
    close: () => {
      held.push({ lookups: tables.lookups.size, files: tables.files.size, dirs: tables.dirs.size });
      return ext4.close();
    },
  };
}

const options = (o: Partial<WarmupOptions>): WarmupOptions => ({
  files: 40, rounds: 2, shouldStop: () => false, session: { entryTimeout: 3600, attrTimeout: 3600, negativeTimeout: 3600 },
  initMinor: 38, initFlags: GUEST_INIT_FLAGS, ...o,
});

test('warmUp: every request succeeds, and the scratch image is left clean, empty and with everything freed', async (t) => {
  const image = makeImage(t, { size: '256M', mkfs: 'kfs' });
  const before = freeCounts(image);
  const held: Held[] = [];
  const r = await warmUp(await scratchOn(image, held), options({}));
  t.is(r.ended, 'done');
  // Its FORGETs gave back every reference its replies handed out, and every handle was released.
  t.deepEqual(held, [{ lookups: 0, files: 0, dirs: 0 }]);
  // Per file and round at least: LOOKUP, CREATE, GETXATTR, WRITE, RELEASE, GETATTR, LOOKUP, OPEN, READ, UNLINK.
  t.true(r.requests >= 2 * 40 * 10, `${r.requests} requests`);
  assertFsckClean(t, image);
  t.deepEqual(debugfs(image, 'ls -p /').split('\n').filter((l) => l.startsWith('/')).map((l) => l.split('/')[5]).filter((n) => n !== '.' && n !== '..'), ['lost+found']);
  t.deepEqual(freeCounts(image), before, 'every inode and block the warm-up used is free again');
});

test('warmUp: shouldStop ends it between two requests; the scratch filesystem is still closed', async (t) => {
  const image = makeImage(t, { size: '256M', mkfs: 'kfs' });
  let asked = 0;
  const r = await warmUp(await scratchOn(image), options({ shouldStop: () => ++asked > 100 }));
  t.is(r.ended, 'stopped');
  t.is(r.requests, 100);
  // Closed (the image would fail e2fsck -fn while still open with changes pending: no orphans, no dirty bitmaps).
  assertFsckClean(t, image);
});

/** The root directory's ctime and mtime lines from debugfs: a warm-up that created anything there changes them. */
const rootTimes = (image: string): string[] => debugfs(image, 'stat /').split('\n').filter((l) => /^\s*(ctime|mtime):/.test(l));

/** kfsd's descriptors that still point at a scratch file or directory. */
function scratchFds(pid: number | undefined): string[] {
  const dir = `/proc/${pid}/fd`;
  return readdirSync(dir).map((fd) => { try { return readlinkSync(join(dir, fd)); } catch { return ''; } }).filter((l) => l.includes('kfs-warmup-'));
}

function shmLeft(pid: number | undefined): string[] {
  return readdirSync('/dev/shm').filter((n) => n.startsWith(`kfs-warmup-${pid}-`));
}

async function kfsd(t: ExecutionContext, source: string[], extra: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<{ backend: Backend; socket: string }> {
  const socket = join(tempDir(t, 'warmup-sock'), 'vhost.sock');
  // spawnKfsd passes this process's environment on.
  const saved = Object.keys(env).map((k) => [k, process.env[k]] as const);
  Object.assign(process.env, env);
  const backend = spawnKfsd(source, socket, ['--log-level', 'info', ...extra]);
  for (const [k, v] of saved) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  t.teardown(() => backend.stop());
  return { backend, socket };
}

test.serial('kfsd --image warms up before any front-end, on a scratch image: the served image is untouched, /dev/shm left empty', async (t) => {
  const image = makeImage(t, { size: '256M', mkfs: 'kfs' });
  const times = rootTimes(image);
  t.is(times.length, 2);
  const { backend, socket } = await kfsd(t, ['--image', image]);
  t.true(await waitFor(() => LINE.test(backend.output), 60_000), backend.output);
  const [, kind, requests, how] = LINE.exec(backend.output)!;
  t.is(kind, 'image');
  t.is(how, 'done');
  t.true(Number(requests) > 10_000, `${requests} requests`);
  t.deepEqual(shmLeft(backend.proc.pid), []);
  t.deepEqual(scratchFds(backend.proc.pid), [], 'no descriptor of the scratch image is left open');
  // The guest sees an empty filesystem.
  const fe = await VhostFrontend.start({ socketPath: socket });
  t.teardown(() => fe.close());
  await fe.fuse.init();
  const names = (await fe.fuse.listDir(ROOT)).map((e) => e.name).filter((n) => n !== '.' && n !== '..');
  t.deepEqual(names, ['lost+found']);
  await fe.close();
  t.deepEqual(await backend.stop(), { code: 0, signal: null });
  assertFsckClean(t, image);
  // Nothing was ever made in it (a warm-up that removed what it made would still change these).
  t.deepEqual(rootTimes(image), times);
});

test.serial('kfsd --shared-dir warms up on a scratch directory and leaves the shared one untouched', async (t) => {
  const dir = join(tempDir(t, 'warmup-shared'), 'shared');
  mkdirSync(dir);
  const before = statSync(dir, { bigint: true });
  const { backend } = await kfsd(t, ['--shared-dir', dir]);
  t.true(await waitFor(() => LINE.test(backend.output), 60_000), backend.output);
  t.is(LINE.exec(backend.output)![1], 'directory');
  t.is(LINE.exec(backend.output)![3], 'done');
  t.deepEqual(readdirSync(dir), []);
  t.deepEqual(shmLeft(backend.proc.pid), []);
  t.deepEqual(scratchFds(backend.proc.pid), [], 'no descriptor of the scratch directory is left open');
  t.deepEqual(await backend.stop(), { code: 0, signal: null });
  const after = statSync(dir, { bigint: true });
  t.deepEqual([after.mtimeNs, after.ctimeNs], [before.mtimeNs, before.ctimeNs], 'nothing was made in the shared directory');
});

test.serial('the first request of a front-end ends the warm-up, and is answered', async (t) => {
  const image = makeImage(t, { size: '256M', mkfs: 'kfs' });
  // A warm-up that would run for minutes: only the front-end's request can end it.
  const { backend, socket } = await kfsd(t, ['--image', image], [], { KFS_WARMUP_ROUNDS: '100000' });
  const fe = await VhostFrontend.start({ socketPath: socket });
  t.teardown(() => fe.close());
  const init = await fe.fuse.init();
  t.is(init.major, 7);
  t.true(await waitFor(() => LINE.test(backend.output), 30_000), backend.output);
  t.is(LINE.exec(backend.output)![3], 'stopped by the first request');
  const d = await fe.fuse.mkdir(ROOT, 'after', 0o755);
  t.true(d.nodeid > 0);
  await fe.close();
  t.deepEqual(await backend.stop(), { code: 0, signal: null });
  t.deepEqual(shmLeft(backend.proc.pid), []);
  assertFsckClean(t, image);
});

test.serial('SIGTERM during the warm-up: kfsd stops it, cleans up and exits 0', async (t) => {
  const image = makeImage(t, { size: '256M', mkfs: 'kfs' });
  const { backend } = await kfsd(t, ['--image', image], [], { KFS_WARMUP_ROUNDS: '100000' });
  t.true(await waitFor(() => /vhost-user: listening/.test(backend.output), 30_000), backend.output);
  t.deepEqual(await backend.stop(), { code: 0, signal: null });
  t.regex(backend.output, /JIT warm-up on a scratch image: \d+ requests in \d+ ms \(stopped by shutdown\)/);
  t.deepEqual(shmLeft(backend.proc.pid), []);
  assertFsckClean(t, image);
});

test.serial('--no-jit-warmup: no warm-up', async (t) => {
  const image = makeImage(t, { size: '256M', mkfs: 'kfs' });
  const { backend, socket } = await kfsd(t, ['--image', image], ['--no-jit-warmup']);
  const fe = await VhostFrontend.start({ socketPath: socket });
  t.teardown(() => fe.close());
  await fe.fuse.init();
  await fe.close();
  t.deepEqual(await backend.stop(), { code: 0, signal: null });
  t.notRegex(backend.output, /warm-up/);
  t.deepEqual(shmLeft(backend.proc.pid), []);
});

test.serial('a scratch directory left by a kfsd that died during its warm-up is removed at the next start; a live one is not', async (t) => {
  const dead = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8')) + 1; // no process can have it
  const stale = mkdtempSync(join('/dev/shm', `kfs-warmup-${dead}-`));
  writeFileSync(join(stale, 'scratch.img'), 'left behind');
  const live = mkdtempSync(join('/dev/shm', `kfs-warmup-${process.pid}-`));
  t.teardown(() => rmSync(live, { recursive: true, force: true }));
  const image = makeImage(t, { size: '256M', mkfs: 'kfs' });
  const { backend } = await kfsd(t, ['--image', image]);
  t.true(await waitFor(() => LINE.test(backend.output), 60_000), backend.output);
  t.false(existsSync(stale), `${stale} removed`);
  t.true(existsSync(live), `${live} (this test's own pid, alive) kept`);
  t.deepEqual(await backend.stop(), { code: 0, signal: null });
});
