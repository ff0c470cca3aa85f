/**
 * The POSIX behaviour suite (test/posix/suite.ts) run twice per case: on a kfs FUSE mount and on
 * the kernel's ext4 (a loop mount of an image of the same geometry: both images are copies of
 * one mkfs.ext4 image). The observations must be identical, and the tree each case leaves
 * behind must look the same after the dentry/inode caches are dropped (so that kfs is asked
 * again instead of the kernel's FUSE attribute cache answering). At the end, kfs's image must
 * pass e2fsck -fn.
 *
 * Mount options are matched: kfs's FUSE mounts are nosuid,nodev,relatime, so the kernel mount
 * is made nosuid,nodev,relatime too. Needs root, /dev/fuse, python3, setfacl/getfacl, fallocate.
 */
import test from 'ava';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mustRun, runCmd, fsck } from './helpers/image';
import { mountKfs, KfsMount, attachLogOnFailure, isMountPoint } from './helpers/mount';
import { snapshotHost, NodeSnap } from './helpers/tree';
import { posixCases, Observations } from './posix/suite';
import { dropCaches } from './posix/util';

interface Env {
  base: string;
  kernelImg: string;
  kfsImg: string;
  kernelDir: string;
  kfsDir: string;
  kfs: KfsMount;
}

let env: Env | undefined;
let setupError: string | undefined;

test.before(async (t) => {
  if (process.getuid?.() !== 0) {
    setupError = 'must run as root (loop mounts, /dev/fuse, other uids)';
    return;
  }
  const base = fs.mkdtempSync(join(tmpdir(), 'kfs-posix-'));
  fs.chmodSync(base, 0o755); // other uids must reach the mounts
  const kernelImg = join(base, 'kernel.img');
  const kfsImg = join(base, 'kfs.img');
  mustRun('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', kernelImg, '1G']);
  mustRun('cp', ['--sparse=always', kernelImg, kfsImg]);
  const kernelDir = join(base, 'kernel');
  const kfsDir = join(base, 'kfs');
  fs.mkdirSync(kernelDir);
  mustRun('mount', ['-t', 'ext4', '-o', 'loop,rw,nosuid,nodev,relatime', kernelImg, kernelDir]);
  // If the worker dies before the after.always hook, do not leave the loop mount behind.
  process.on('exit', () => {
    if (isMountPoint(kernelDir)) runCmd('umount', ['-l', kernelDir]);
  });
  try {
    const kfs = await mountKfs(t, kfsImg, kfsDir, { teardown: false });
    env = { base, kernelImg, kfsImg, kernelDir, kfsDir, kfs };
  } catch (e) {
    runCmd('umount', [kernelDir]);
    setupError = (e as Error).message;
  }
});

test.afterEach.always((t) => attachLogOnFailure(t, env?.kfs));

test.after.always(async () => {
  if (!env) return;
  try {
    await env.kfs.unmount();
  } finally {
    if (isMountPoint(env.kernelDir)) {
      if (runCmd('umount', [env.kernelDir]).code !== 0) runCmd('umount', ['-l', env.kernelDir]);
    }
    fs.rmSync(env.base, { recursive: true, force: true });
  }
});

/**
 * What a case left behind, comparable between the two filesystems. Left out: inode numbers and
 * times (the cases compare the times they set themselves), and directories' sizes and block
 * counts (how many blocks a directory has depends on its history of insertions and removals).
 */
function normalizedTree(dir: string): Record<string, Partial<NodeSnap>> {
  dropCaches();
  const snap = snapshotHost(dir);
  const out: Record<string, Partial<NodeSnap>> = {};
  for (const [path, n] of [...snap].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
    const { ino: _i, atimeNs: _a, mtimeNs: _m, ctimeNs: _c, crtimeNs: _b, ...rest } = n;
    if (n.type === 'dir') {
      delete rest.size;
      delete rest.blocks;
    }
    out[path] = rest;
  }
  return out;
}

async function observe(run: (root: string) => Promise<Observations>, root: string): Promise<Observations> {
  fs.mkdirSync(root, { mode: 0o755 });
  fs.chmodSync(root, 0o755);
  try {
    return await run(root);
  } catch (e) {
    return { __threw: (e as Error).stack ?? String(e) };
  }
}

/** Differences between two JSON-like values, as "path: a vs b" lines. */
function diffValues(a: unknown, b: unknown, path: string, out: string[]): void {
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null;
  if (isObj(a) && isObj(b) && Array.isArray(a) === Array.isArray(b)) {
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) diffValues(a[k], b[k], path ? `${path}.${k}` : k, out);
    return;
  }
  const show = (v: unknown) => (v === undefined ? 'undefined' : JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x)));
  if (show(a) !== show(b)) out.push(`${path || '(value)'}: ${show(a)}  vs  ${show(b)}`);
}

for (const c of posixCases) {
  test.serial(c.name, async (t) => {
    if (!env) return t.fail(`setup failed: ${setupError}`);
    const t0 = Date.now();
    const kernel = await observe(c.run, join(env.kernelDir, c.name));
    const t1 = Date.now();
    const kfs = await observe(c.run, join(env.kfsDir, c.name));
    const t2 = Date.now();
    t.log(`kernel ${t1 - t0} ms, kfs ${t2 - t1} ms`);
    // Every difference is reported, not just the first.
    const problems: string[] = [];
    if ('__threw' in kernel) problems.push(`the case itself failed on the kernel's ext4: ${String(kernel.__threw)}`);
    if (Object.keys(kernel).length === 0) problems.push('the case observed nothing');
    const d: string[] = [];
    diffValues(kfs, kernel, '', d);
    if (d.length) problems.push(`kfs vs kernel ext4 observations (${d.length}):\n    ${d.join('\n    ')}`);
    const e: string[] = [];
    for (const [k, v] of Object.entries(c.expect ?? {})) {
      diffValues(kernel[k], v, `kernel ${k}`, e);
      diffValues(kfs[k], v, `kfs ${k}`, e);
    }
    if (e.length) problems.push(`expected values (observed vs expected):\n    ${e.join('\n    ')}`);
    const tree: string[] = [];
    diffValues(normalizedTree(join(env.kfsDir, c.name)), normalizedTree(join(env.kernelDir, c.name)), '', tree);
    if (tree.length) problems.push(`tree left behind, kfs vs kernel (after dropping caches) (${tree.length}):\n    ${tree.slice(0, 40).join('\n    ')}`);
    if (!env.kfs.alive()) problems.push('the kfs serving process is gone');
    // A descriptor the case forgot would keep the mounts busy at the end.
    for (const fd of fs.readdirSync('/proc/self/fd')) {
      let target = '';
      try {
        target = fs.readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        continue;
      }
      if (target.startsWith(env.kfsDir + '/') || target.startsWith(env.kernelDir + '/')) {
        problems.push(`the case leaked descriptor ${fd} (${target})`);
        fs.closeSync(Number(fd));
      }
    }
    if (problems.length) t.fail(problems.join('\n'));
    else t.pass();
  });
}

test.serial('kfs image passes e2fsck -fn after the suite, kernel image too', async (t) => {
  if (!env) return t.fail(`setup failed: ${setupError}`);
  await env.kfs.unmount();
  mustRun('umount', [env.kernelDir]);
  const k = fsck(env.kernelImg);
  t.is(k.code, 0, `control: e2fsck of the kernel's image:\n${k.output}`);
  const r = fsck(env.kfsImg);
  t.is(r.code, 0, `e2fsck -fn of kfs's image exited ${r.code}:\n${r.output}`);
});

test.serial('the kfs log has no warnings or errors for valid requests', (t) => {
  if (!env) return t.fail(`setup failed: ${setupError}`);
  // Every request the suite makes is valid (the kernel sent it); an over-long name is the
  // caller's error (ENAMETOOLONG), not a malformed request worth a warning.
  t.deepEqual(env.kfs.logProblems(), []);
});
