/**
 * Library-level benchmark of Ext4Fs (no FUSE), with the kernel's ext4 as a reference ceiling.
 *
 *   node dist/test/bench/ext4-lib.js [--out bench-results/ext4-lib.json] [--files 10000]
 *                                    [--mib 1024] [--dir /tmp]
 *
 * Workloads, each on a fresh image (mkfs.ext4, and `kfs mkfs` when dist/src/cli/kfs.js exists):
 *  - create N small files (4 KiB each) in one directory, then sync;
 *  - stat them all (lookup + getattr): in the same session, and after a reopen;
 *  - unlink them all, then sync;
 *  - sequential write of M MiB in 1 MiB chunks, then sync;
 *  - sequential read of it back: cold (host page cache dropped with /proc/sys/vm/drop_caches
 *    and the filesystem reopened) and warm (read again).
 * The reference runs the same workloads with node:fs on the kernel's ext4 through a loop mount
 * of an identical fresh mkfs.ext4 image; it has the kernel page cache and dcache, so it is the
 * ceiling, not a like-for-like comparison. Needs root (loop mount, drop_caches).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Ext4Fs } from '../../src/ext4/fs';
import { forEachOption, now, timed } from './lib/proc';

// ------------------------------------------------------------------ options

interface Options {
  out: string;
  files: number;
  mib: number;
  dir: string;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { out: path.join('bench-results', 'ext4-lib.json'), files: 10000, mib: 1024, dir: os.tmpdir() };
  forEachOption(argv, (a, v) => {
    if (a === '--out') o.out = v();
    else if (a === '--files') o.files = Number(v());
    else if (a === '--mib') o.mib = Number(v());
    else if (a === '--dir') o.dir = v();
    else if (a === '-h' || a === '--help') {
      process.stdout.write('usage: node dist/test/bench/ext4-lib.js [--out file.json] [--files N] [--mib N] [--dir DIR]\n');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  });
  if (!(o.files > 0) || !(o.mib > 0)) throw new Error('--files and --mib must be positive');
  return o;
}

// ------------------------------------------------------------------ results

interface Result {
  target: string;
  workload: string;
  ops: number;
  bytes: number;
  seconds: number;
  opsPerSec: number;
  mibPerSec: number;
}

const SMALL = 4096;
const CHUNK = 1 << 20;

function result(target: string, workload: string, ops: number, bytes: number, seconds: number): Result {
  return { target, workload, ops, bytes, seconds, opsPerSec: ops / seconds, mibPerSec: bytes / 2 ** 20 / seconds };
}

function dropCaches(): boolean {
  try {
    execFileSync('sync');
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3\n');
    return true;
  } catch {
    return false;
  }
}

function mkfsExt4(img: string, bytes: number): void {
  fs.rmSync(img, { force: true });
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', img, `${Math.floor(bytes / 2 ** 20)}M`], { stdio: 'pipe' });
}

const KFS_CLI = path.join(__dirname, '..', '..', 'src', 'cli', 'kfs.js');

function mkfsKfs(img: string, bytes: number): void {
  fs.rmSync(img, { force: true });
  const r = spawnSync(process.execPath, [KFS_CLI, 'mkfs', '-q', '-F', '-b', '4096', '--size', `${Math.floor(bytes / 2 ** 20)}M`, img], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`kfs mkfs failed (${r.status}): ${r.stderr.trim() || r.stdout.trim()}`);
}

function fsck(img: string): string {
  const r = spawnSync('e2fsck', ['-fn', img], { encoding: 'utf8' });
  return r.status === 0 ? 'clean' : `e2fsck -fn exit ${r.status}: ${(r.stdout + r.stderr).split('\n').filter((l) => l && !l.startsWith('Pass ')).slice(0, 6).join(' | ')}`;
}

const fileName = (i: number): Buffer => Buffer.from(`file-${String(i).padStart(6, '0')}.dat`);

// ------------------------------------------------------------------ the library

async function benchLibrary(target: string, img: string, o: Options, notes: string[]): Promise<Result[]> {
  const out: Result[] = [];
  const small = randomBytes(SMALL);
  const chunk = randomBytes(CHUNK);
  let f = await Ext4Fs.open(img);
  try {
    const dir = await f.mkdir(2, Buffer.from('many'), 0o755, 0, 0);
    const inos: number[] = [];
    let s = await timed(async () => {
      for (let i = 0; i < o.files; i++) {
        const a = await f.create(dir.ino, fileName(i), 0o644, 0, 0);
        await f.open(a.ino);
        await f.write(a.ino, 0, small);
        await f.release(a.ino);
        inos.push(a.ino);
      }
      await f.sync();
    });
    out.push(result(target, `create ${o.files} x 4 KiB files + sync`, o.files, o.files * SMALL, s));

    const statAll = async (): Promise<void> => {
      for (let i = 0; i < o.files; i++) {
        const a = await f.lookup(dir.ino, fileName(i));
        const g = await f.getattr(a.ino);
        if (g.size !== SMALL) throw new Error(`file ${i} has size ${g.size}`);
      }
    };
    s = await timed(statAll);
    out.push(result(target, `stat ${o.files} files (lookup+getattr), warm`, o.files, 0, s));
    await f.close();
    f = await Ext4Fs.open(img);
    s = await timed(statAll);
    out.push(result(target, `stat ${o.files} files after reopen`, o.files, 0, s));

    s = await timed(async () => {
      for (let i = 0; i < o.files; i++) await f.unlink(dir.ino, fileName(i));
      await f.sync();
    });
    out.push(result(target, `unlink ${o.files} files + sync`, o.files, 0, s));

    const big = await f.create(2, Buffer.from('big.dat'), 0o644, 0, 0);
    await f.open(big.ino);
    s = await timed(async () => {
      for (let i = 0; i < o.mib; i++) await f.write(big.ino, i * CHUNK, chunk);
      await f.fsync(big.ino);
    });
    await f.release(big.ino);
    out.push(result(target, `sequential write ${o.mib} MiB (1 MiB chunks) + sync`, o.mib, o.mib * CHUNK, s));

    const readAll = async (): Promise<void> => {
      await f.open(big.ino);
      for (let i = 0; i < o.mib; i++) {
        const d = await f.read(big.ino, i * CHUNK, CHUNK);
        if (d.length !== CHUNK || ((i === 0 || i === o.mib - 1) && !d.equals(chunk))) throw new Error(`read back of chunk ${i} differs`);
      }
      await f.release(big.ino);
    };
    await f.close();
    const cold = dropCaches();
    if (!cold) notes.push(`${target}: /proc/sys/vm/drop_caches is not writable; the "cold" read is not cold`);
    f = await Ext4Fs.open(img);
    s = await timed(readAll);
    out.push(result(target, `sequential read ${o.mib} MiB, cold`, o.mib, o.mib * CHUNK, s));
    s = await timed(readAll);
    out.push(result(target, `sequential read ${o.mib} MiB, warm`, o.mib, o.mib * CHUNK, s));
  } finally {
    await f.close().catch(() => undefined);
  }
  const state = fsck(img);
  if (state !== 'clean') notes.push(`${target}: image not clean after the run: ${state}`);
  return out;
}

// ------------------------------------------------------------------ the kernel (reference)

async function benchKernel(target: string, img: string, mnt: string, o: Options, notes: string[]): Promise<Result[]> {
  const out: Result[] = [];
  const small = randomBytes(SMALL);
  const chunk = randomBytes(CHUNK);
  const mount = (): void => void execFileSync('mount', ['-o', 'loop', img, mnt], { stdio: 'pipe' });
  const umount = (): void => void execFileSync('umount', [mnt], { stdio: 'pipe' });
  const syncfs = (): void => void execFileSync('sync', ['-f', mnt], { stdio: 'pipe' });
  mount();
  let mounted = true;
  try {
    const dir = path.join(mnt, 'many');
    fs.mkdirSync(dir);
    const p = (i: number): string => path.join(dir, fileName(i).toString());
    let s = await timed(() => {
      for (let i = 0; i < o.files; i++) {
        const fd = fs.openSync(p(i), 'wx', 0o644);
        fs.writeSync(fd, small, 0, SMALL, 0);
        fs.closeSync(fd);
      }
      syncfs();
    });
    out.push(result(target, `create ${o.files} x 4 KiB files + sync`, o.files, o.files * SMALL, s));
    const statAll = (): void => {
      for (let i = 0; i < o.files; i++) if (fs.lstatSync(p(i)).size !== SMALL) throw new Error(`file ${i} has the wrong size`);
    };
    s = await timed(statAll);
    out.push(result(target, `stat ${o.files} files (lookup+getattr), warm`, o.files, 0, s));
    umount();
    mounted = false;
    mount();
    mounted = true;
    s = await timed(statAll);
    out.push(result(target, `stat ${o.files} files after reopen`, o.files, 0, s));
    s = await timed(() => {
      for (let i = 0; i < o.files; i++) fs.unlinkSync(p(i));
      syncfs();
    });
    out.push(result(target, `unlink ${o.files} files + sync`, o.files, 0, s));

    const big = path.join(mnt, 'big.dat');
    s = await timed(() => {
      const fd = fs.openSync(big, 'wx', 0o644);
      for (let i = 0; i < o.mib; i++) fs.writeSync(fd, chunk, 0, CHUNK, i * CHUNK);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
    });
    out.push(result(target, `sequential write ${o.mib} MiB (1 MiB chunks) + sync`, o.mib, o.mib * CHUNK, s));
    const readAll = (): void => {
      const fd = fs.openSync(big, 'r');
      const buf = Buffer.allocUnsafe(CHUNK);
      for (let i = 0; i < o.mib; i++) {
        const n = fs.readSync(fd, buf, 0, CHUNK, i * CHUNK);
        if (n !== CHUNK || ((i === 0 || i === o.mib - 1) && !buf.equals(chunk))) throw new Error(`read back of chunk ${i} differs`);
      }
      fs.closeSync(fd);
    };
    umount();
    mounted = false;
    if (!dropCaches()) notes.push(`${target}: /proc/sys/vm/drop_caches is not writable; the "cold" read is not cold`);
    mount();
    mounted = true;
    s = await timed(readAll);
    out.push(result(target, `sequential read ${o.mib} MiB, cold`, o.mib, o.mib * CHUNK, s));
    s = await timed(readAll);
    out.push(result(target, `sequential read ${o.mib} MiB, warm`, o.mib, o.mib * CHUNK, s));
  } finally {
    if (mounted) umount();
  }
  return out;
}

// ------------------------------------------------------------------ report

function machine(): Record<string, unknown> {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown';
  let tmpFs = 'unknown';
  try {
    tmpFs = execFileSync('df', ['--output=fstype', os.tmpdir()], { encoding: 'utf8' }).trim().split('\n').pop() ?? 'unknown';
  } catch {
    /* df missing */
  }
  return {
    cpuModel: model,
    cores: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    kernel: os.release(),
    platform: `${os.platform()} ${os.arch()}`,
    imageHostFs: tmpFs,
    date: new Date().toISOString(),
  };
}

function fmt(r: Result | undefined): string {
  if (!r) return '-';
  if (r.bytes > 0 && /read|write/.test(r.workload)) return `${r.mibPerSec.toFixed(1)} MiB/s`;
  return `${Math.round(r.opsPerSec).toLocaleString('en-US')} ops/s`;
}

function table(results: Result[], targets: string[]): string {
  const workloads = [...new Set(results.map((r) => r.workload))];
  const head = ['workload', ...targets];
  const rows = workloads.map((w) => [w, ...targets.map((t) => fmt(results.find((r) => r.target === t && r.workload === w)))]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('-|-'), ...rows.map(line)].join('\n');
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const work = fs.mkdtempSync(path.join(o.dir, 'kfs-bench-'));
  // Room for the big file, the small files and the metadata, with margin.
  const imageBytes = Math.max(512 * 2 ** 20, Math.ceil((o.mib * CHUNK * 1.5 + o.files * SMALL * 2) / 2 ** 20) * 2 ** 20);
  const results: Result[] = [];
  const notes: string[] = [];
  const targets: string[] = [];
  const t0 = now();
  try {
    const img = path.join(work, 'fs.img');
    const log = (s: string): void => void process.stderr.write(`${s}\n`);

    // Warm-up (JIT, first-touch costs), discarded, so that the first target is not penalized.
    mkfsExt4(img, 256 * 2 ** 20);
    await benchLibrary('warm-up', img, { ...o, files: Math.min(o.files, 500), mib: Math.min(o.mib, 16) }, []);

    let target = 'kfs lib (mkfs.ext4 image)';
    log(`${target}...`);
    mkfsExt4(img, imageBytes);
    results.push(...(await benchLibrary(target, img, o, notes)));
    targets.push(target);

    if (fs.existsSync(KFS_CLI)) {
      target = 'kfs lib (kfs mkfs image)';
      log(`${target}...`);
      try {
        mkfsKfs(img, imageBytes);
        results.push(...(await benchLibrary(target, img, o, notes)));
        targets.push(target);
      } catch (e) {
        notes.push(`${target}: skipped: ${(e as Error).message}`);
      }
    } else {
      notes.push(`kfs mkfs: ${KFS_CLI} not built; only mkfs.ext4 images were used`);
    }

    target = 'kernel ext4 loop (ceiling)';
    log(`${target}...`);
    const mnt = path.join(work, 'mnt');
    fs.mkdirSync(mnt);
    try {
      mkfsExt4(img, imageBytes);
      results.push(...(await benchKernel(target, img, mnt, o, notes)));
      targets.push(target);
    } catch (e) {
      notes.push(`${target}: skipped: ${(e as Error).message.split('\n')[0]}`);
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  notes.push('kernel ext4 loop: node:fs on a loop mount of an identical fresh mkfs.ext4 image; it has the kernel page cache and dcache, so it is the ceiling, not a like-for-like comparison');
  const report = {
    machine: machine(),
    config: { files: o.files, smallFileBytes: SMALL, mib: o.mib, chunkBytes: CHUNK, imageBytes, blockSize: 4096 },
    totalSeconds: now() - t0,
    results,
    notes,
  };
  process.stdout.write(`\nkfs library benchmark (${report.machine.cpuModel}, ${report.machine.cores} cores, node ${process.version}, kernel ${os.release()})\n\n`);
  process.stdout.write(`${table(results, targets)}\n\n`);
  for (const n of notes) process.stdout.write(`note: ${n}\n`);
  fs.mkdirSync(path.dirname(path.resolve(o.out)), { recursive: true });
  fs.writeFileSync(o.out, JSON.stringify(report, null, 2) + '\n');
  process.stdout.write(`\nresults written to ${o.out} (total ${report.totalSeconds.toFixed(1)} s)\n`);
}

main().catch((e) => {
  process.stderr.write(`ext4-lib benchmark failed: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
