/**
 * In-process CPU cost of ext4 metadata operations, driven through Ext4FuseFs exactly as
 * `kfs mount` drives it (no FUSE, no kernel): per file LOOKUP (miss), CREATE, GETXATTR
 * (security.capability, which the kernel asks before every write), WRITE 4 KiB, RELEASE; then
 * RENAME and UNLINK of every file and RMDIR of every directory. Like commit_before_reply, each
 * mutating request is followed by ext4.commitToLog() (its cost reported as "commit").
 *
 *   node dist/test/bench/core-meta.js [--files 1000] [--dirs 4] [--no-commit] [--no-shared-log]
 *                                     [--warmup 1] [--out bench-results/core-meta.json] [--dir /tmp] [--keep]
 *
 * Commits go to a shared log in memory, as a supervised `kfs mount` does (the supervisor's
 * memfd; here a Buffer of the same size); --no-shared-log: soft jbd2 transactions in the
 * image's log, as the library without a supervisor does.
 *
 * The image is a fresh `kfs mkfs IMG --size 2G -q`; --warmup rounds of the same workload run
 * untimed first (JIT warm-up). After close the image must pass e2fsck -fn.
 * Reported: process CPU (user + system, process.cpuUsage) per operation, mean over all
 * operations of a kind, in µs (each includes the ~2-3 µs of the two process.cpuUsage calls
 * around it, and any GC that falls in it); also wall time. The periodic commit timer is off so that only
 * the per-request commits run.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Ext4Fs } from '../../src/ext4/fs';
import { Ext4FuseFs } from '../../src/ext4/fuse-adapter';
import type { RequestContext } from '../../src/fuse/filesystem';
import { SharedSoftLog } from '../../src/ext4/journal/shared-log';
import { SHARED_LOG_BYTES } from '../../src/transport/supervisor';
import { forEachOption } from './lib/proc';

interface Options {
  files: number;
  dirs: number;
  commit: boolean;
  sharedLog: boolean;
  out: string;
  dir: string;
  keep: boolean;
  warmup: number;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { files: 1000, dirs: 4, commit: true, sharedLog: true, out: path.join('bench-results', 'core-meta.json'), dir: os.tmpdir(), keep: false, warmup: 1 };
  forEachOption(argv, (a, v) => {
    if (a === '--files') o.files = Number(v());
    else if (a === '--dirs') o.dirs = Number(v());
    else if (a === '--no-commit') o.commit = false;
    else if (a === '--no-shared-log') o.sharedLog = false;
    else if (a === '--out') o.out = v();
    else if (a === '--dir') o.dir = v();
    else if (a === '--keep') o.keep = true;
    else if (a === '--warmup') o.warmup = Number(v());
    else throw new Error(`unknown option ${a}; see the usage at the top of test/bench/core-meta.ts`);
  });
  if (!(o.files > 0 && o.dirs > 0)) throw new Error('--files and --dirs must be positive');
  if (!(o.warmup >= 0)) throw new Error('--warmup must be 0 or more');
  return o;
}

/** CPU µs and count per operation kind. */
class Meter {
  readonly kinds = new Map<string, { n: number; us: number }>();

  async time<T>(kind: string, fn: () => Promise<T>): Promise<T> {
    const c0 = process.cpuUsage();
    const r = await fn();
    const c = process.cpuUsage(c0);
    let k = this.kinds.get(kind);
    if (!k) this.kinds.set(kind, (k = { n: 0, us: 0 }));
    k.n++;
    k.us += c.user + c.system;
    return r;
  }
}

/** One round: make the directories, fill them, rename and unlink every file, remove them. */
async function round(ext4: Ext4Fs, fsys: Ext4FuseFs, o: Options, m: Meter, prefix: string): Promise<void> {
  const ctx: RequestContext = { uid: 0, gid: 0, pid: 1 };
  const commit = o.commit ? () => m.time('commit', () => ext4.commitToLog()) : async () => undefined;
  const data = Buffer.alloc(4096, 0x5a);
  const name = (i: number) => Buffer.from(`file-${String(i).padStart(6, '0')}.dat`);
  const renamed = (i: number) => Buffer.from(`moved-${String(i).padStart(6, '0')}.dat`);
  const dirName = (d: number) => Buffer.from(`${prefix}dir-${d}`);

  const dirs: number[] = [];
  for (let d = 0; d < o.dirs; d++) {
    await m.time('lookup-miss', () => fsys.lookupOrNull(ctx, 1, dirName(d)));
    dirs.push((await m.time('mkdir', () => fsys.mkdir(ctx, 1, dirName(d), 0o755, 0o022))).ino);
    await commit();
  }
  // Files round-robin over the directories, as an untar of a tree spreads them.
  const files = o.files * o.dirs;
  for (let i = 0; i < files; i++) {
    const dir = dirs[i % o.dirs];
    const n = name(i);
    const miss = await m.time('lookup-miss', () => fsys.lookupOrNull(ctx, dir, n));
    if (miss) throw new Error(`${n} exists before its create`);
    const e = await m.time('create', () => fsys.create(ctx, dir, n, 0o100644, 0o101, 0o022));
    await commit();
    await m.time('getxattr', () => fsys.getxattrOrNull(ctx, e.ino, 'security.capability'));
    const w = await m.time('write', () => fsys.write(ctx, e.ino, e.fh, 0, data, false));
    if (w !== data.length) throw new Error(`short write ${w}`);
    await commit();
    // RELEASE is not a changing request: the mount's reply gate does not commit for it.
    await m.time('release', () => fsys.release(ctx, e.ino, e.fh));
  }
  for (let i = 0; i < files; i++) {
    await m.time('rename', () => fsys.rename(ctx, dirs[i % o.dirs], name(i), dirs[i % o.dirs], renamed(i), 0));
    await commit();
  }
  for (let i = 0; i < files; i++) {
    await m.time('unlink', () => fsys.unlink(ctx, dirs[i % o.dirs], renamed(i)));
    await commit();
  }
  for (let d = 0; d < o.dirs; d++) {
    await m.time('rmdir', () => fsys.rmdir(ctx, 1, dirName(d)));
    await commit();
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const kfs = path.join(__dirname, '..', '..', 'src', 'cli', 'kfs.js');
  const work = fs.mkdtempSync(path.join(o.dir, 'core-meta-'));
  const img = path.join(work, 'img');
  execFileSync(process.execPath, [kfs, 'mkfs', img, '--size', '2G', '-q'], { stdio: 'inherit' });

  const sharedLog = o.sharedLog ? new SharedSoftLog(Buffer.alloc(SHARED_LOG_BYTES)) : undefined;
  const ext4 = await Ext4Fs.open(img, { commitIntervalMs: 0, sharedLog });
  const fsys = new Ext4FuseFs(ext4);
  // Untimed rounds first (under their own names), so the timed one sees JIT-compiled code as a
  // long-running server does: cold, the same operations cost 2-4 times as much.
  for (let w = 0; w < o.warmup; w++) await round(ext4, fsys, o, new Meter(), `warm${w}-`);
  const m = new Meter();
  const t0 = process.hrtime.bigint();
  const c0 = process.cpuUsage();
  await round(ext4, fsys, o, m, '');
  const cAll = process.cpuUsage(c0);
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  await ext4.close();

  const fsck = spawnSync('e2fsck', ['-fn', img], { encoding: 'utf8' });
  const clean = fsck.status === 0;

  const rows = [...m.kinds].map(([kind, k]) => ({ kind, n: k.n, cpuUsPerOp: Math.round((k.us / k.n) * 10) / 10 }));
  const totalUs = cAll.user + cAll.system;
  const perFile = totalUs / (o.files * o.dirs);
  console.log(`core-meta: ${o.dirs} dirs x ${o.files} files, commit ${o.commit ? `after each mutating request, to ${o.sharedLog ? 'a shared log in memory' : "the image's log (soft)"}` : 'off'}`);
  console.log('kind          count   CPU µs/op');
  for (const r of rows) console.log(`${r.kind.padEnd(12)} ${String(r.n).padStart(6)} ${r.cpuUsPerOp.toFixed(1).padStart(11)}`);
  console.log(`total CPU ${(totalUs / 1e6).toFixed(2)} s (${perFile.toFixed(0)} µs per file, all phases), wall ${wall.toFixed(2)} s, e2fsck -fn ${clean ? 'clean' : 'FAILED'}`);

  fs.mkdirSync(path.dirname(o.out), { recursive: true });
  fs.writeFileSync(o.out, JSON.stringify({
    files: o.files, dirs: o.dirs, commit: o.commit, sharedLog: o.sharedLog, warmup: o.warmup, ops: rows, totalCpuUs: totalUs, cpuUsPerFile: perFile, wallSeconds: wall, fsckClean: clean,
  }, null, 2) + '\n');
  if (!o.keep) fs.rmSync(work, { recursive: true, force: true });
  else console.log(`image kept: ${img}`);
  if (!clean) {
    process.stderr.write(fsck.stdout + fsck.stderr);
    process.exitCode = 1;
  }
}

main().catch((e) => {
  console.error(`core-meta: ${(e as Error).message}`);
  process.exitCode = 1;
});
