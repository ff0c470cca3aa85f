/**
 * The host mount that survives its server (src/transport/supervisor.ts), against the real
 * kernel (FUSE_NOTIFY_RESEND, Linux >= 6.9): `kfs mount --foreground` (commit_before_reply is the default) is
 * the supervisor; the server it starts is named by --pid-file and killed here with SIGKILL.
 *
 *  - tar -x of a tree of ~1500 entries (some files of several MiB, hard links, symlinks) into
 *    the mount while the server is killed several times at random moments (each restart applies
 *    the log-only commits its predecessor left in the shared memory): tar succeeds, the
 *    tree is identical to the source, the mount is the same mount throughout (same mount id,
 *    never ENOTCONN), e2fsck -fn is clean after the unmount; the time from a kill to the next
 *    request served is reported.
 *  - Resent requests whose effect was committed before the death (the server is made to die
 *    between commit and reply): mkdir, create, unlink, rename, link, symlink come out as if
 *    nothing had happened.
 *  - A server killed while INIT is read and unanswered: the next one answers the resent INIT.
 *  - Normal unmount ends server and supervisor with exit 0; SIGTERM to the supervisor
 *    unmounts cleanly.
 *
 * KFS_SEED=n replays the kill schedule. Needs root, /dev/fuse, tar, e2fsprogs.
 */
import test, { ExecutionContext } from 'ava';
import { spawn, ChildProcess, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { makeImage, tempDir, kfsCliPath, assertFsckClean, mustRun } from './helpers/image';
import { isMountPoint } from './helpers/mount';
import { snapshotHost, diffSnapshots } from './helpers/tree';
import { sleep, waitFor } from './posix/util';
import { rng } from './helpers/rng';
import { isMutating } from '../src/transport/reply-gate';
import { kfsctlJson } from './helpers/kfsctl';

const MiB = 1 << 20;


interface Supervised {
  proc: ChildProcess;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  dir: string;
  logFile: string;
  pidFile: string;
  serverPid(): number;
  log(): string;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** mountinfo's mount id of what is mounted at dir (null: nothing). */
function mountId(dir: string): string | null {
  for (const l of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = l.split(' ');
    if (f[4] === dir) return f[0];
  }
  return null;
}

/** `kfs mount --foreground` as a child of this test: its exit status is the supervisor's. */
async function startSupervised(t: ExecutionContext, image: string, dir: string, env: Record<string, string> = {}, options: string[] = []): Promise<Supervised> {
  fs.mkdirSync(dir, { recursive: true });
  const base = path.join(path.dirname(image), `sv-${path.basename(dir)}`);
  const logFile = `${base}.log`;
  const pidFile = `${base}.pid`;
  const args = [kfsCliPath()!, 'mount', image, dir, '--foreground', '--log-file', logFile, '--log-level', 'info', '--pid-file', pidFile];
  for (const o of options) args.push('-o', o);
  const proc = spawn(process.execPath, args, {
    stdio: 'ignore', env: { ...process.env, ...env },
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const s: Supervised = {
    proc, exit, dir, logFile, pidFile,
    serverPid: () => Number(fs.readFileSync(pidFile, 'utf8').trim()),
    log: () => (fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '(no log)'),
  };
  t.teardown(async () => {
    if (isMountPoint(dir)) spawnSync('umount', ['-l', dir]);
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    if (!t.passed) t.log(`--- log ---\n${s.log().split('\n').slice(-60).join('\n')}`);
  });
  const ok = await waitFor(() => isMountPoint(dir) && fs.existsSync(pidFile), 30_000);
  if (!ok) throw new Error(`mount did not come up\n${s.log()}`);
  return s;
}

/** Unmount with `kfs umount` (retried while busy) and wait for the supervisor's exit. */
/** A fresh 64 MiB kfs image mounted under the supervisor at `mnt` beside it. */
async function smallMount(t: ExecutionContext, env: Record<string, string> = {}): Promise<{ image: string; dir: string; s: Supervised }> {
  const image = makeImage(t, { size: '64M', mkfs: 'kfs' });
  const dir = path.join(path.dirname(image), 'mnt');
  return { image, dir, s: await startSupervised(t, image, dir, env) };
}

async function unmount(s: Supervised): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const server = s.serverPid();
  for (let i = 0; i < 40 && isMountPoint(s.dir); i++) {
    const u = spawnSync(process.execPath, [kfsCliPath()!, 'umount', s.dir], { encoding: 'utf8' });
    if (u.status === 0) break;
    await sleep(250);
  }
  const r = await s.exit;
  await waitFor(() => !pidAlive(server), 30_000);
  return r;
}

/** Kill the current server; resolve with the time until a request is served again (ms) and the new pid. */
async function killServer(s: Supervised, probe: string): Promise<{ ms: number; pid: number }> {
  const pid = s.serverPid();
  const t0 = performance.now();
  process.kill(pid, 'SIGKILL');
  // An uncached name: the LOOKUP must reach a server (and waits in the kernel meanwhile).
  const code = await fs.promises.stat(probe).then(() => 'exists', (e: NodeJS.ErrnoException) => e.code);
  const ms = performance.now() - t0;
  if (code !== 'ENOENT') throw new Error(`probe ${probe} after killing ${pid}: ${code}`);
  await waitFor(() => s.serverPid() !== pid, 10_000, 10);
  return { ms, pid: s.serverPid() };
}

/** A source tree: `files` small files in nested dirs, a few large ones, links and symlinks. */
function makeTree(root: string, seed: number, files: number, large: number[]): void {
  const r = rng(seed);
  for (let d = 0; d < 24; d++) fs.mkdirSync(path.join(root, `d${d}`), { recursive: true });
  for (let i = 0; i < files; i++) {
    const d = path.join(root, `d${i % 24}`, i % 5 === 0 ? `sub${i % 3}` : '');
    fs.mkdirSync(d, { recursive: true });
    const size = Math.floor(r() * r() * 40000);
    const buf = Buffer.alloc(size, (i * 7 + 1) & 0xff);
    for (let j = 0; j + 8 <= size; j += 4096) buf.writeDoubleLE(i * 1e6 + j, j);
    const p = path.join(d, `f${i}`);
    fs.writeFileSync(p, buf);
    if (i % 7 === 0) fs.chmodSync(p, 0o600 + (i % 8));
    if (i % 97 === 0) fs.symlinkSync(`../d${(i + 1) % 24}/f${i + 1}`, path.join(d, `s${i}`));
    if (i % 101 === 0) fs.linkSync(p, path.join(root, `d${(i + 3) % 24}`, `h${i}`));
  }
  for (const [i, mb] of large.entries()) {
    const fd = fs.openSync(path.join(root, `big${i}`), 'w');
    const chunk = Buffer.alloc(MiB);
    for (let m = 0; m < mb; m++) {
      chunk.fill((m * 31 + i) & 0xff);
      chunk.writeUInt32LE(m, 0);
      fs.writeSync(fd, chunk);
    }
    fs.closeSync(fd);
  }
  fs.mkdirSync(path.join(root, 'empty', 'deeper'), { recursive: true });
}

/**
 * tar -x under repeated SIGKILLs of the server. `sharedLogBytes`: a shared log that small
 * (KFS_TEST_FAULT=shared-log-bytes:N), so that every server fills and compacts it many times
 * and the kills land between and in compactions.
 */
async function tarUnderKills(t: ExecutionContext, sharedLogBytes?: number): Promise<void> {
  t.timeout(20 * 60_000);
  const seed = Number(process.env.KFS_SEED ?? Math.floor(Math.random() * 1e9));
  t.log(`KFS_SEED=${seed}`);
  const r = rng(seed);
  const work = tempDir(t, 'sv-tar');
  const src = path.join(work, 'src');
  makeTree(src, seed, 1500, [12, 6, 20]);
  const tarball = path.join(work, 'src.tar');
  mustRun('tar', ['--format=posix', '-C', src, '-cf', tarball, '.']);
  const image = makeImage(t, { size: '1G', mkfs: 'kfs' });
  const dir = path.join(work, 'mnt');
  const s = await startSupervised(t, image, dir, sharedLogBytes ? { KFS_TEST_FAULT: `shared-log-bytes:${sharedLogBytes}` } : {});
  const id = mountId(dir);
  t.truthy(id);
  const dst = path.join(dir, 'x');
  fs.mkdirSync(dst);

  // tar reads the archive from a pipe that this test feeds in parts, so tar cannot finish
  // before the last kill however fast the machine is. Each kill comes a random moment into a
  // part, or as soon as the pipe has taken all of it, whichever is first: tar is then still
  // extracting what it read (up to a pipe's worth), with requests in flight.
  const tar = spawn('tar', ['-C', dst, '-xpf', '-', '--numeric-owner'], { stdio: ['pipe', 'ignore', 'pipe'] });
  let tarErr = '';
  tar.stderr!.on('data', (d: Buffer) => (tarErr += d.toString()));
  const tarDone = new Promise<number | null>((resolve) => tar.on('exit', (code) => resolve(code)));
  tar.stdin!.on('error', (e) => (tarErr += `stdin: ${e.message}\n`));
  const archive = fs.readFileSync(tarball);
  const feed = (part: Buffer) => new Promise<void>((resolve) => tar.stdin!.write(part, () => resolve()));

  const KILLS = 6;
  const partBytes = Math.ceil(archive.length / (KILLS + 2));
  const recoveries: number[] = [];
  for (let k = 0, at = 0; at < archive.length; k++, at += partBytes) {
    const fed = feed(archive.subarray(at, at + partBytes));
    if (k < KILLS) {
      await Promise.race([sleep(50 + Math.floor(r() * 400)), fed]);
      t.is(tar.exitCode, null, `tar is still running at kill ${k}`);
      const { ms } = await killServer(s, path.join(dir, `probe-${k}`));
      recoveries.push(ms);
      t.is(mountId(dir), id, 'the mount is still the same mount');
    }
    await fed;
  }
  tar.stdin!.end();
  const code = await tarDone;
  t.is(tarErr, '', 'tar wrote no error');
  t.is(code, 0);
  t.log(`killed ${recoveries.length} times; kill -> next request served: ${recoveries.map((m) => m.toFixed(0)).join(', ')} ms`);
  // A server lives less than the 5 s between periodic durable commits here, so each one dies
  // with log-only commits in the supervisor's shared memory, which the next one applies.
  t.regex(s.log(), /applied \d+ log-only commit\(s\) of the previous server from the shared log/, 'a restarted server applied its predecessor\'s log-only commits');
  t.is(mountId(dir), id);

  const want = snapshotHost(src, { xattrs: false });
  const got = snapshotHost(dst, { xattrs: false });
  const diffs = diffSnapshots(want, got, { only: ['type', 'mode', 'uid', 'gid', 'nlink', 'size', 'digest', 'target', 'mtimeNs', 'linkGroup'] });
  t.deepEqual(diffs, [], 'the extracted tree is identical to the source');
  if (sharedLogBytes) {
    // The server serving now: a hundred more files must have filled its small log and compacted it.
    for (let i = 0; i < 100; i++) fs.writeFileSync(path.join(dir, `more-${i}`), `${i}`);
    const a = kfsctlJson<{ journal: { activity: { softCommits: number; sharedCompactions: number } } }>(['-t', dir, 'status']).journal.activity;
    t.true(a.sharedCompactions > 0, `the ${sharedLogBytes}-byte shared log was compacted: ${JSON.stringify(a)}`);
  }

  const exit = await unmount(s);
  t.deepEqual(exit, { code: 0, signal: null }, 'the supervisor exits 0 after the unmount');
  assertFsckClean(t, image);
  t.regex(s.log(), / closed$/m);
}

test.serial('tar -x into the mount survives repeated SIGKILLs of the server: identical tree, same mount, e2fsck clean', (t) => tarUnderKills(t));

test.serial('the same with a 1 MiB shared log, compacted many times between and during the kills', (t) => tarUnderKills(t, 1 << 20));

test.serial('resent requests whose effect was committed before the death get the reply they would have got', async (t) => {
  t.timeout(5 * 60_000);
  const image = makeImage(t, { size: '256M', mkfs: 'kfs' });
  const dir = path.join(path.dirname(image), 'mnt');
  // Every server dies after committing the first (not resent) request of the opcode, before
  // its reply: the kernel resends it to the next server.
  const cases: { name: string; opcode: number; check: () => void }[] = [
    { name: 'mkdir', opcode: 9, check: () => t.true(fs.statSync(path.join(dir, 'd')).isDirectory()) },
    { name: 'create', opcode: 35, check: () => t.is(fs.readFileSync(path.join(dir, 'f'), 'utf8'), 'after the restart') },
    { name: 'symlink', opcode: 6, check: () => t.is(fs.readlinkSync(path.join(dir, 'sl')), 'f') },
    { name: 'link', opcode: 13, check: () => t.is(fs.statSync(path.join(dir, 'f')).nlink, 2) },
    { name: 'rename', opcode: 12, check: () => t.false(fs.existsSync(path.join(dir, 'hl'))) },
    { name: 'unlink', opcode: 10, check: () => t.is(fs.statSync(path.join(dir, 'f')).nlink, 1) },
    { name: 'rmdir', opcode: 11, check: () => t.false(fs.existsSync(path.join(dir, 'd'))) },
  ];
  for (const c of cases) {
    const s = await startSupervised(t, image, dir, { KFS_TEST_FAULT: `kill-before-reply:${c.opcode}` });
    const before = s.serverPid();
    // Run the call in a child (it blocks in the kernel across the restart; this process keeps polling).
    const errno = await runInChild(c.name, dir);
    t.is(errno, 'ok', `${c.name}: the resent request succeeded`);
    t.not(s.serverPid(), before, `${c.name}: the server was restarted`);
    c.check();
    t.regex(s.log(), new RegExp(`resent ${c.name} \\(unique \\d+\\) had taken effect`), `${c.name}: answered from the image`);
    t.deepEqual(await unmount(s), { code: 0, signal: null });
  }
  assertFsckClean(t, image);
});

/** The operations of the resend test, run by a child node process (errno name or 'ok'). */
async function runInChild(op: string, dir: string): Promise<string> {
  const script = `
const fs = require('fs'), p = require('path'), d = ${JSON.stringify(dir)};
const ops = {
  mkdir: () => fs.mkdirSync(p.join(d, 'd')),
  create: () => { const fd = fs.openSync(p.join(d, 'f'), fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY, 0o640); fs.writeSync(fd, 'after the restart'); fs.closeSync(fd); },
  symlink: () => fs.symlinkSync('f', p.join(d, 'sl')),
  link: () => fs.linkSync(p.join(d, 'f'), p.join(d, 'hl')),
  rename: () => fs.renameSync(p.join(d, 'hl'), p.join(d, 'd', 'moved')),
  unlink: () => fs.unlinkSync(p.join(d, 'd', 'moved')),
  rmdir: () => fs.rmdirSync(p.join(d, 'd')),
};
try { ops[${JSON.stringify(op)}](); process.stdout.write('ok'); } catch (e) { process.stdout.write(e.code || String(e)); }`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  await new Promise((resolve) => child.on('exit', resolve));
  return out;
}

test.serial('a server killed with INIT read and unanswered: the next one answers the resent INIT', async (t) => {
  const { image, dir, s } = await smallMount(t, { KFS_TEST_FAULT: 'kill-at-init' });
  fs.writeFileSync(path.join(dir, 'hello'), 'world');
  t.is(fs.readFileSync(path.join(dir, 'hello'), 'utf8'), 'world');
  t.regex(s.log(), /killed by SIGKILL without an unmount/);
  // The server logs the INIT it answered through the log file's stream, which may reach the file
  // after the requests that followed were answered (a CI run read the log first).
  await waitFor(() => /fuse: INIT 7\.\d+ → /.test(s.log()), 10_000);
  t.regex(s.log(), /fuse: INIT 7\.\d+ → /);
  t.deepEqual(await unmount(s), { code: 0, signal: null });
  assertFsckClean(t, image);
});

test.serial('files unlinked while open stay readable across a restart and are freed after their last close', async (t) => {
  const { image, dir, s } = await smallMount(t);
  const freeInodes = () => fs.statfsSync(dir).ffree;
  const freeBlocks = () => fs.statfsSync(dir).bfree;
  const before = { inodes: freeInodes(), blocks: freeBlocks() };
  const content = (c: number) => Buffer.alloc(300_000, c);
  // a: unlinked before the death (on the orphan list the next server finds); b: unlinked after.
  fs.writeFileSync(path.join(dir, 'a'), content(0x41));
  fs.writeFileSync(path.join(dir, 'b'), content(0x42));
  const fa = fs.openSync(path.join(dir, 'a'), 'r');
  const fb = fs.openSync(path.join(dir, 'b'), 'r');
  fs.unlinkSync(path.join(dir, 'a'));
  fs.writeFileSync(path.join(dir, 'sync'), ''); // a changing request: a's unlink is committed with it
  await killServer(s, path.join(dir, 'probe'));
  fs.unlinkSync(path.join(dir, 'b'));
  // New files after the restart: had a or b been freed, their inodes and blocks would be reused.
  for (let i = 0; i < 8; i++) fs.writeFileSync(path.join(dir, `new${i}`), content(0x30 + i));
  const read = (fd: number) => { const b = Buffer.alloc(300_000); t.is(fs.readSync(fd, b, 0, b.length, 0), b.length); return b; };
  t.true(read(fa).equals(content(0x41)), 'a, unlinked before the restart, reads back');
  t.true(read(fb).equals(content(0x42)), 'b, unlinked after the restart, reads back');
  t.regex(s.log(), /kept 1 unlinked inode\(s\) the client may still hold open/);
  fs.closeSync(fa);
  fs.closeSync(fb);
  for (let i = 0; i < 8; i++) fs.unlinkSync(path.join(dir, `new${i}`));
  fs.unlinkSync(path.join(dir, 'sync'));
  // The kernel evicts each closed, unlinked inode and sends its FORGET: then it is freed.
  await waitFor(() => freeInodes() === before.inodes && freeBlocks() === before.blocks, 10_000);
  t.is(freeInodes(), before.inodes, 'the inodes of a and b are free after their last close');
  t.is(freeBlocks(), before.blocks, 'and their blocks');
  t.deepEqual(await unmount(s), { code: 0, signal: null });
  assertFsckClean(t, image);
});

test.serial('O_TMPFILE files survive a restart: both read back, one is linked in afterwards, the other is freed at its close', async (t) => {
  const { image, dir, s } = await smallMount(t);
  const before = { inodes: fs.statfsSync(dir).ffree, blocks: fs.statfsSync(dir).bfree };
  // O_TMPFILE (Linux: __O_TMPFILE | O_DIRECTORY); node:fs passes numeric flags through.
  const O_TMPFILE = 0o20000000 | fs.constants.O_DIRECTORY;
  const content = (c: number) => Buffer.alloc(200_000, c);
  const keep = fs.openSync(dir, O_TMPFILE | fs.constants.O_RDWR, 0o640);
  const drop = fs.openSync(dir, O_TMPFILE | fs.constants.O_RDWR, 0o640);
  fs.writeSync(keep, content(0x4b), 0, 200_000, 0);
  fs.writeSync(drop, content(0x44), 0, 200_000, 0);
  await killServer(s, path.join(dir, 'probe'));
  const read = (fd: number) => { const b = Buffer.alloc(200_000); t.is(fs.readSync(fd, b, 0, b.length, 0), b.length); return b; };
  t.true(read(keep).equals(content(0x4b)), 'the first O_TMPFILE file reads back after the restart');
  t.true(read(drop).equals(content(0x44)), 'and the second');
  // linkat(fd, AT_SYMLINK_FOLLOW) through /proc, as open(2) describes; GNU ln -L does exactly that.
  mustRun('ln', ['-L', `/proc/${process.pid}/fd/${keep}`, path.join(dir, 'linked')]);
  fs.closeSync(keep);
  fs.closeSync(drop);
  t.true(fs.readFileSync(path.join(dir, 'linked')).equals(content(0x4b)), 'the file linked in after the restart has its bytes');
  // The dropped one is freed once the kernel forgets it; the linked one keeps one inode.
  await waitFor(() => fs.statfsSync(dir).ffree === before.inodes - 1, 10_000);
  t.is(fs.statfsSync(dir).ffree, before.inodes - 1, 'only the linked file still holds an inode');
  const st = fs.statfsSync(dir);
  const used = before.blocks - st.bfree;
  const data = Math.ceil(200_000 / st.bsize);
  t.true(used >= data && used <= data + 4, `and only its blocks (${used} of ${st.bsize} bytes in use for 200,000 bytes)`);
  t.deepEqual(await unmount(s), { code: 0, signal: null });
  assertFsckClean(t, image);
});

test.serial('a readdir that goes on across a restart lists every entry once', async (t) => {
  const { image, dir, s } = await smallMount(t);
  const big = path.join(dir, 'big');
  fs.mkdirSync(big);
  const names = Array.from({ length: 3000 }, (_, i) => `entry-${i}-${'x'.repeat(i % 40)}`);
  for (const n of names) fs.writeFileSync(path.join(big, n), '');
  // Remount-free cold start for the listing: the kernel must ask for the entries again.
  mustRun('sh', ['-c', 'echo 2 > /proc/sys/vm/drop_caches']);
  // 64 entries per getdents64 batch: node's Dir asks the kernel for more as it runs out.
  const d = fs.opendirSync(big, { bufferSize: 64 });
  const seen: string[] = [];
  for (let i = 0; i < 500; i++) seen.push(d.readSync()!.name);
  await killServer(s, path.join(dir, 'probe'));
  for (let e = d.readSync(); e; e = d.readSync()) seen.push(e.name);
  d.closeSync();
  t.is(seen.length, names.length, 'as many entries as names');
  t.deepEqual([...seen].sort(), [...names].sort(), 'each name exactly once');
  t.deepEqual(await unmount(s), { code: 0, signal: null });
  assertFsckClean(t, image);
});

/** Bytes of memory the supervisor's shared-log memfd holds, seen through the server's descriptor for it. */
function sharedLogResident(serverPid: number): number {
  for (const fd of fs.readdirSync(`/proc/${serverPid}/fd`)) {
    const link = `/proc/${serverPid}/fd/${fd}`;
    let target = '';
    try {
      target = fs.readlinkSync(link);
    } catch {
      continue;
    }
    if (target.startsWith('/memfd:kfs-shared-log')) return fs.statSync(link).blocks * 512;
  }
  throw new Error(`server ${serverPid} holds no kfs-shared-log memfd`);
}

test.serial('the shared log\'s memory goes back to the system once the mount has been idle for a commit interval', async (t) => {
  t.timeout(2 * 60_000);
  const { image, dir, s } = await smallMount(t);
  for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(dir, `f${i}`), `file ${i}\n`);
  const busy = sharedLogResident(s.serverPid());
  t.true(busy >= 300 * 1024, `300 log-only commits took ${busy} bytes`);
  // The periodic commit (5 s) makes it durable; the next one finds nothing changed and gives it back.
  const released = await waitFor(() => sharedLogResident(s.serverPid()) <= 4096, 20_000);
  t.true(released, `still ${sharedLogResident(s.serverPid())} bytes after 20 s idle`);
  // It serves on as before.
  fs.writeFileSync(path.join(dir, 'after'), 'after\n');
  t.is(fs.readFileSync(path.join(dir, 'f299'), 'utf8'), 'file 299\n');
  t.true(sharedLogResident(s.serverPid()) > 4096, 'the next commit writes to it again');
  t.deepEqual(await unmount(s), { code: 0, signal: null });
  assertFsckClean(t, image);
});

test.serial('normal unmount: server and supervisor exit 0; SIGTERM to the supervisor unmounts cleanly', async (t) => {
  const first = await smallMount(t);
  const { image, dir } = first;
  let s = first.s;
  fs.writeFileSync(path.join(dir, 'a'), 'one');
  const server = s.serverPid();
  t.deepEqual(await unmount(s), { code: 0, signal: null });
  t.false(pidAlive(server));
  t.false(isMountPoint(dir));
  t.regex(s.log(), /supervisor: .* unmounted; server \d+ exited/);
  t.false(fs.existsSync(s.pidFile), 'the server removed its pid file');

  s = await startSupervised(t, image, dir);
  t.is(fs.readFileSync(path.join(dir, 'a'), 'utf8'), 'one');
  fs.writeFileSync(path.join(dir, 'b'), 'two');
  const server2 = s.serverPid();
  s.proc.kill('SIGTERM');
  t.deepEqual(await s.exit, { code: 0, signal: null });
  await waitFor(() => !pidAlive(server2), 30_000);
  t.false(isMountPoint(dir));
  t.regex(s.log(), /supervisor: SIGTERM: unmounting/);
  assertFsckClean(t, image);
});

test('commit before reply gates the requests that can change the image: OPEN only with O_TRUNC', (t) => {
  /** fuse_in_header (40 bytes) with `opcode`, then `body`. */
  const req = (opcode: number, body: Buffer = Buffer.alloc(0)): Buffer => {
    const h = Buffer.alloc(40);
    h.writeUInt32LE(40 + body.length, 0);
    h.writeUInt32LE(opcode, 4);
    return Buffer.concat([h, body]);
  };
  const openIn = (flags: number): Buffer => {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(flags, 0);
    return b;
  };
  const [OPEN, WRITE, GETATTR, READ, CREATE, SETATTR] = [14, 16, 3, 15, 35, 4];
  t.false(isMutating(req(OPEN, openIn(fs.constants.O_RDWR))));
  t.true(isMutating(req(OPEN, openIn(fs.constants.O_WRONLY | fs.constants.O_TRUNC))));
  t.true(isMutating(req(OPEN)), 'an OPEN too short to show its flags counts as changing');
  for (const op of [WRITE, CREATE, SETATTR]) t.true(isMutating(req(op)));
  for (const op of [GETATTR, READ]) t.false(isMutating(req(op)));
  t.false(isMutating(Buffer.alloc(4)));
});
