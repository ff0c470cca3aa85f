/**
 * Test helpers around real ext4 images and the host's oracles: temporary directories and
 * images (mkfs.ext4, or kfs's own mkfs CLI when it is built), kernel loop mounts that are
 * always undone, e2fsck and debugfs.
 *
 * Everything here is synchronous on purpose: the oracles are short external commands, and a
 * test that mounts an image should not interleave with another test touching the same image.
 * Mounting needs root; requireRoot() fails a test with a clear message otherwise.
 */
import type { ExecutionContext } from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

// ---------- running commands ----------

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a command to completion; never throws for a non-zero exit (look at code). */
export function runCmd(cmd: string, args: string[], opts: { input?: string | Buffer; cwd?: string; env?: NodeJS.ProcessEnv } = {}): RunResult {
  const r = spawnSync(cmd, args, { input: opts.input, cwd: opts.cwd, env: opts.env, maxBuffer: 512 * 1024 * 1024 });
  if (r.error) throw new Error(`cannot run ${cmd}: ${r.error.message}`);
  return {
    code: r.status ?? (r.signal ? 128 : 1),
    stdout: r.stdout?.toString() ?? '',
    stderr: r.stderr?.toString() ?? '',
  };
}

/** Run a command that must succeed; returns stdout, throws with stderr and the command line otherwise. */
export function mustRun(cmd: string, args: string[], opts: { input?: string | Buffer; cwd?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const r = runCmd(cmd, args, opts);
  if (r.code !== 0) {
    const line = [cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
    throw new Error(`command failed (exit ${r.code}): ${line}\n${(r.stderr + r.stdout).trim().slice(0, 4000)}`);
  }
  return r.stdout;
}

/** Run a bash script with `set -euo pipefail`; returns stdout, throws on failure. */
export function bash(script: string, opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): string {
  return mustRun('bash', ['-c', `set -euo pipefail\n${script}`], opts);
}

// ---------- temporary directories ----------

const TMP_BASE = join(tmpdir(), 'kfs-test');

/** A fresh temporary directory, removed (recursively) when the test ends. */
export function tempDir(t: ExecutionContext, prefix = 'tmp'): string {
  mkdirSync(TMP_BASE, { recursive: true });
  const dir = mkdtempSync(join(TMP_BASE, `${prefix.replace(/[^\w.-]/g, '_')}-`));
  t.teardown(() => {
    // Never remove a directory something is still mounted on (its contents would go with it).
    for (const m of activeMounts) if (m.dir.startsWith(dir + '/') || m.dir === dir) m.unmount();
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

// ---------- images ----------

export type MkfsTool = 'mkfs.ext4' | 'kfs' | 'auto';

export interface MakeImageOptions {
  /** Image size: bytes, or a string with a K/M/G/T suffix as mkfs.ext4 takes it ("64M", "2G"). */
  size: number | string;
  blockSize?: 1024 | 2048 | 4096;
  /** Minimum number of inodes (-N). */
  inodes?: number;
  /** More arguments for the formatter, placed before the image path (e.g. ['-O', '^has_journal']). */
  extraArgs?: string[];
  /**
   * Which formatter: 'mkfs.ext4' (default, or $KFS_TEST_MKFS), 'kfs' (kfs's own `kfs mkfs`;
   * fails if dist/src/cli/kfs.js is not built) or 'auto' (kfs when built, else mkfs.ext4).
   */
  mkfs?: MkfsTool;
  /** Directory for the image (default: a fresh tempDir removed at teardown). */
  dir?: string;
  /** File name of the image inside dir (default "fs.img"). */
  name?: string;
}

/** dist/src/cli/kfs.js when it has been built, else null. */
export function kfsCliPath(): string | null {
  // This file runs from dist/test/helpers/image.js; the CLI lives at dist/src/cli/kfs.js.
  const p = resolve(__dirname, '..', '..', 'src', 'cli', 'kfs.js');
  return existsSync(p) ? p : null;
}

function sizeArg(size: number | string): string {
  return typeof size === 'number' ? `${Math.floor(size / 1024)}k` : size;
}

function sizeBytes(size: number | string): number {
  if (typeof size === 'number') return size;
  const m = /^(\d+)([kmgt]?)$/i.exec(size.trim());
  if (!m) throw new Error(`bad image size ${size}`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Number(m[1]) * mult;
}

/** Which formatter makeImage would use for `tool`. */
export function resolveMkfs(tool?: MkfsTool): 'mkfs.ext4' | 'kfs' {
  const want = tool ?? (process.env.KFS_TEST_MKFS as MkfsTool | undefined) ?? 'mkfs.ext4';
  if (want === 'mkfs.ext4') return 'mkfs.ext4';
  if (want === 'kfs') {
    if (!kfsCliPath()) throw new Error('kfs mkfs requested but dist/src/cli/kfs.js is not built (npx tsc -p .)');
    return 'kfs';
  }
  if (want === 'auto') return kfsCliPath() ? 'kfs' : 'mkfs.ext4';
  throw new Error(`unknown mkfs tool ${String(want)}`);
}

/** Make a sparse ext4 image; returns its path. */
export function makeImage(t: ExecutionContext, opts: MakeImageOptions): string {
  const dir = opts.dir ?? tempDir(t, 'img');
  const img = join(dir, opts.name ?? 'fs.img');
  const tool = resolveMkfs(opts.mkfs);
  const common = [
    ...(opts.blockSize ? ['-b', String(opts.blockSize)] : []),
    ...(opts.inodes ? ['-N', String(opts.inodes)] : []),
    ...(opts.extraArgs ?? []),
  ];
  if (tool === 'mkfs.ext4') {
    mustRun('mkfs.ext4', ['-q', '-F', ...common, img, sizeArg(opts.size)]);
  } else {
    // The image file is created sparse at its full size first, so either size syntax works.
    writeFileSync(img, '');
    mustRun('truncate', ['-s', String(sizeBytes(opts.size)), img]);
    mustRun(process.execPath, [kfsCliPath()!, 'mkfs', '-q', '-F', '--size', String(sizeBytes(opts.size)), ...common, img]);
  }
  return img;
}

// ---------- e2fsprogs ----------

export interface FsckResult {
  code: number;
  output: string;
}

/** e2fsck (default -fn: force a full check, change nothing). Exit 0 means clean. */
export function fsck(image: string, args: string[] = ['-fn']): FsckResult {
  const r = runCmd('e2fsck', [...args, image]);
  return { code: r.code, output: (r.stdout + r.stderr).trim() };
}

/** Assert a clean e2fsck -fn, showing its output otherwise. */
export function assertFsckClean(t: ExecutionContext, image: string, label = 'e2fsck -fn'): FsckResult {
  const r = fsck(image);
  t.is(r.code, 0, `${label} exited ${r.code}:\n${r.output}`);
  return r;
}

/**
 * Run debugfs requests and return stdout (stderr is dropped: it carries the banner). Read-only
 * requests run in catastrophic mode (-c: bitmaps are not read), so that inspecting an image
 * still works when its bitmaps are damaged.
 */
export function debugfs(image: string, requests: string | string[], opts: { write?: boolean } = {}): string {
  const reqs = Array.isArray(requests) ? requests : [requests];
  const r = runCmd('debugfs', [opts.write ? '-w' : '-c', '-f', '-', image], { input: reqs.join('\n') + '\n' });
  if (r.code !== 0) throw new Error(`debugfs failed (exit ${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** dumpe2fs -h fields as a map ("Block size" -> "4096"). */
export function superblockInfo(image: string): Map<string, string> {
  const out = mustRun('dumpe2fs', ['-h', image]);
  const m = new Map<string, string>();
  for (const line of out.split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) m.set(line.slice(0, i).trim(), line.slice(i + 1).trim());
  }
  return m;
}

/** Fields of debugfs's `stat` of one inode: "File ACL" -> "1234", "Fast link dest" -> "...", etc. */
export function inodeStat(image: string, path: string): Map<string, string> {
  const out = debugfs(image, `stat "${path}"`);
  const m = new Map<string, string>();
  for (const line of out.split('\n')) {
    for (const part of line.split(/\s{2,}/)) {
      const i = part.indexOf(':');
      if (i > 0 && !m.has(part.slice(0, i).trim())) m.set(part.slice(0, i).trim(), part.slice(i + 1).trim());
    }
  }
  return m;
}

export interface ExtentInfo {
  /** Tree depth (0: extents in the inode). */
  depth: number;
  /** Leaf extents. */
  extents: number;
  /** Index (interior) entries. */
  indexEntries: number;
}

/** Shape of a file's extent tree according to debugfs's dump_extents. */
export function extentInfo(image: string, path: string): ExtentInfo {
  const out = debugfs(image, `dump_extents "${path}"`);
  let depth = 0;
  let extents = 0;
  let indexEntries = 0;
  for (const line of out.split('\n')) {
    const m = /^\s*(\d+)\/\s*(\d+)\s+\d+\/\s*\d+\s/.exec(line);
    if (!m) continue;
    const level = Number(m[1]);
    depth = Number(m[2]);
    if (level === depth) extents++;
    else indexEntries++;
  }
  return { depth, extents, indexEntries };
}

/** htree "Indirect levels" of a directory per debugfs htree_dump (-1: not indexed). */
export function htreeLevels(image: string, path: string): number {
  const out = debugfs(image, `htree_dump "${path}"`);
  const m = /Indirect levels:\s*(\d+)/.exec(out);
  return m ? Number(m[1]) : -1;
}

// ---------- kernel mounts ----------

export interface Mount {
  dir: string;
  image: string;
  readOnly: boolean;
  /** Unmount now (idempotent); throws if the kernel refuses even a lazy unmount. */
  unmount(): void;
}

const activeMounts = new Set<Mount>();
let exitHookInstalled = false;

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/** Fail early and clearly when the test cannot mount (not root). */
export function requireRoot(t: ExecutionContext): void {
  if (!isRoot()) t.fail('this test loop-mounts images with the kernel ext4 driver and must run as root');
}

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Loop-mount an image with the kernel's ext4 (as root). The mount is undone at test teardown
 * even if the test fails; unmount() undoes it earlier. Options: readOnly, and extra mount
 * options (default ["noatime"] so that reading files for a snapshot does not change atimes).
 */
export function loopMount(t: ExecutionContext, image: string, opts: { readOnly?: boolean; options?: string[]; dir?: string } = {}): Mount {
  requireRoot(t);
  const dir = opts.dir ?? mkdtempSync(join(TMP_BASE + '-mnt-'));
  mkdirSync(dir, { recursive: true });
  const options = ['loop', opts.readOnly ? 'ro' : 'rw', ...(opts.options ?? ['noatime'])];
  mustRun('mount', ['-t', 'ext4', '-o', options.join(','), image, dir]);
  let mounted = true;
  const m: Mount = {
    dir,
    image,
    readOnly: !!opts.readOnly,
    unmount: () => {
      if (!mounted) return;
      let last = '';
      for (let attempt = 0; attempt < 20; attempt++) {
        const r = runCmd('umount', [dir]);
        if (r.code === 0) {
          last = '';
          break;
        }
        last = r.stderr.trim();
        if (!/busy/i.test(last)) break;
        sleepMs(100);
      }
      if (last) {
        // Keep the host clean even when something still holds the mount.
        const r = runCmd('umount', ['-l', dir]);
        if (r.code !== 0) throw new Error(`cannot unmount ${dir}: ${last}; lazy: ${r.stderr.trim()}`);
      }
      mounted = false;
      activeMounts.delete(m);
      rmSync(dir, { recursive: true, force: true });
      if (last) throw new Error(`unmount of ${dir} needed a lazy unmount: ${last}`);
    },
  };
  activeMounts.add(m);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // A worker that dies between mount and teardown must not leave loop mounts behind.
    process.on('exit', () => {
      for (const a of [...activeMounts]) {
        try {
          a.unmount();
        } catch {
          // nothing more can be done at exit
        }
      }
    });
  }
  t.teardown(() => m.unmount());
  return m;
}

/** After kfs closed `img`: e2fsck -fn must pass, then `check` runs on the kernel's read-only loop mount of it. */
export function fsckCleanAndKernelSees(t: ExecutionContext, img: string, check: (dir: string) => void): void {
  const r = fsck(img);
  t.is(r.code, 0, `e2fsck -fn exited ${r.code}:\n${r.output}`);
  kernelMounted(t, img, check, { readOnly: true });
}

/** Loop-mount img with the kernel, run fn on the mount point, and unmount whatever fn did. */
export function kernelMounted<T>(t: ExecutionContext, img: string, fn: (dir: string) => T, opts: { readOnly?: boolean } = {}): T {
  const k = loopMount(t, img, opts);
  try {
    return fn(k.dir);
  } finally {
    k.unmount();
  }
}
