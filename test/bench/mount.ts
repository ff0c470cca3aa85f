/**
 * Side-by-side benchmark of the mounted filesystem: kfs (`kfs mount`, FUSE) vs fuse2fs
 * (e2fsprogs' FUSE ext4) vs the kernel's ext4 on a loop device (the ceiling).
 *
 *   node dist/test/bench/mount.js [--out bench-results/mount.json] [--quick]
 *        [--dir /tmp] [--size 4G] [--targets kfs,kfs-async,fuse2fs,kernel] [--mkfs kfs|mke2fs]
 *        [--no-remount] [--kfs-opts writeback_cache,...] [--kfs-log-level info] [--keep]
 *        [--no-snapshot] [--repeat N] [--only create,ls,...]
 *
 * One image is made with `kfs mkfs IMG --size 4G -q` (mke2fs defaults; --mkfs mke2fs uses
 * mkfs.ext4 instead) and copied (sparse) to a fresh image per filesystem, so all three start from
 * the same bytes. Workloads, in this order, each against each filesystem:
 *  1. create FILES x 4 KiB files in DIRS directories (writeFileSync in a node child), then syncfs;
 *  2. `ls -lR` of that tree, cold;
 *  3. read them all back (readFileSync, content checked), cold;
 *  4. untar a large tree (/usr/include, /usr/share/perl*, ...; tarball made once, uncompressed,
 *     read into the host page cache before each run), then syncfs;
 *  5. sequential write: dd if=/dev/zero bs=1M count=N conv=fsync;
 *  6. sequential read of it, cold: dd of=/dev/null bs=1M;
 *  7. fio random 4 KiB reads (cold) then random 4 KiB writes on a laid-out file
 *     (psync, buffered, time based, fsync_on_close=1);
 *  8. `rm -rf` of the untarred tree, then syncfs.
 * "Cold" means: unmount (waiting until a FUSE server has flushed and exited), `sync; echo 3 >
 * /proc/sys/vm/drop_caches`, mount again. The remount empties the FUSE servers' own caches (kfs
 * keeps up to 256 MiB of blocks), which drop_caches cannot reach; --no-remount only drops the
 * kernel's caches. The time each unmount took (the servers flush dirty data then) is reported too.
 * Every measured part starts after a host-wide `sync` (not timed): otherwise the image's pages
 * an earlier part left dirty in the host's page cache are written during the next part, and
 * an fsync there (seqwrite's conv=fsync) waits for them, which charges a filesystem that
 * finished the earlier part sooner (less of its data had been written back by the host).
 * After the run each image is checked with e2fsck -fn. --repeat N runs N rounds in turn on fresh
 * images and reports each filesystem's median per workload (all values are in the JSON), and
 * also the geometric mean over the "quiet" medians, those of the rounds run with under 5% CPU
 * steal (lib/proc.ts roundsSummary: why that is not the headline).
 *
 * kfs runs from a private copy of dist/ taken at the start (--no-snapshot: in place), so that a
 * rebuild during the run cannot mix builds or break an unmount.
 *
 * Needs root (mounts, drop_caches), fuse2fs, fio, tar, dd. Mounts are undone on every exit path
 * (finally blocks, SIGINT/SIGTERM/SIGHUP, process exit).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cleanupAll, cleanupAllSync, isMounted, Kind, KFS_CLI, KINDS, Target } from './lib/mounts';
import { snapshotKfs } from './lib/snapshot';
import { checkInterrupt, cpuTicks, forEachOption, interrupt, interrupted, Interrupted, now, roundsSummary, run, runOk, stealNote, stealPercent } from './lib/proc';

// ------------------------------------------------------------------ options

interface Config {
  quick: boolean;
  out: string;
  dir: string;
  imageSize: string;
  mkfs: 'kfs' | 'mke2fs';
  targets: Kind[];
  files: number;
  dirs: number;
  fileBytes: number;
  tarSources: string[];
  seqMiB: number;
  fioMiB: number;
  fioRuntimeSec: number;
  remount: boolean;
  timeoutSec: number;
  kfsOptions: string[];
  kfsLogLevel?: string;
  keep: boolean;
  snapshot: boolean;
  repeat: number;
  /** workloads to measure (null: all); the ones they need still run, unmeasured */
  only: Set<string> | null;
  /** the kfs CLI used (the snapshot's, or this checkout's) */
  kfsCli: string;
}

const FULL_TAR = ['/usr/include', '/usr/share/perl*', '/usr/lib/python3*', '/usr/share/icons', '/usr/share/cmake-*'];
const QUICK_TAR = ['/usr/include/linux', '/usr/share/perl5'];

const USAGE = `usage: node dist/test/bench/mount.js [--out FILE.json] [--quick] [--dir DIR] [--size 4G]
       [--targets kfs,kfs-async,fuse2fs,kernel] [--mkfs kfs|mke2fs] [--no-remount]
       [--kfs-opts OPT,...] [--kfs-log-level LEVEL] [--keep] [--no-snapshot] [--repeat N]
       [--only create,ls,read,untar,seqwrite,seqread,randread,randwrite,rm]
  --out FILE         JSON report (default bench-results/mount.json)
  --quick            small sizes, a smoke run of a minute or two
  --dir DIR          where the images, mount points and tarball go (default ${os.tmpdir()})
  --size SIZE        image size (default 4G)
  --targets LIST     which filesystems, in this order (default kfs,kfs-async,fuse2fs,kernel);
                     kfs-async is kfs with -o nocommit_before_reply: replies go out before the
                     log-only commit, as fuse2fs and the kernel reply before anything is durable
  --mkfs kfs|mke2fs  how the image is made (default kfs: kfs mkfs IMG --size SIZE -q)
  --no-remount       "cold" = drop_caches only, without remounting (FUSE servers keep their caches)
  --kfs-opts LIST    extra kfs mount -o options, e.g. writeback_cache
  --kfs-log-level L  kfs server log level (its log is scanned for warnings and errors)
  --keep             keep the work directory (images, logs)
  --no-snapshot      run dist/ in place instead of a private copy taken at the start
  --repeat N         N rounds (kfs, kfs-async, fuse2fs, kernel, kfs, ...), each on fresh images; the table
                     shows each filesystem's median (a full round takes ~5 minutes on 2 cores)
  --only LIST        measure only these workloads; what they need (the files ls and read use,
                     the tree rm removes...) is still made, unmeasured
`;

function parseArgs(argv: string[]): Config {
  const c: Config = {
    quick: false, out: path.join('bench-results', 'mount.json'), dir: os.tmpdir(), imageSize: '4G', mkfs: 'kfs',
    targets: ['kfs', 'kfs-async', 'fuse2fs', 'kernel'], files: 8000, dirs: 8, fileBytes: 4096, tarSources: FULL_TAR,
    seqMiB: 512, fioMiB: 256, fioRuntimeSec: 15, remount: true, timeoutSec: 300, kfsOptions: [], keep: false,
    snapshot: true, repeat: 1, only: null, kfsCli: KFS_CLI,
  };
  forEachOption(argv, (a, v) => {
    if (a === '--out') c.out = v();
    else if (a === '--quick') c.quick = true;
    else if (a === '--dir') c.dir = v();
    else if (a === '--size') c.imageSize = v();
    else if (a === '--mkfs') {
      const m = v();
      if (m !== 'kfs' && m !== 'mke2fs') throw new Error('--mkfs is kfs or mke2fs');
      c.mkfs = m;
    } else if (a === '--targets') {
      const t = v().split(',').filter(Boolean);
      for (const k of t) if (!(KINDS as readonly string[]).includes(k)) throw new Error(`unknown target ${k} (one of ${KINDS.join(', ')})`);
      c.targets = t as Kind[];
    } else if (a === '--no-remount') c.remount = false;
    else if (a === '--kfs-opts') c.kfsOptions.push(...v().split(',').filter(Boolean));
    else if (a === '--kfs-log-level') c.kfsLogLevel = v();
    else if (a === '--keep') c.keep = true;
    else if (a === '--no-snapshot') c.snapshot = false;
    else if (a === '--repeat') c.repeat = Number(v());
    else if (a === '--only') {
      const keys = v().split(',').filter(Boolean);
      for (const k of keys) if (!WORKLOADS.some((w) => w.key === k)) throw new Error(`unknown workload ${k} (one of ${WORKLOADS.map((w) => w.key).join(',')})`);
      c.only = new Set(keys);
    }
    else if (a === '-h' || a === '--help') {
      process.stdout.write(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument ${a}\n${USAGE}`);
  });
  if (!(Number.isInteger(c.repeat) && c.repeat >= 1)) throw new Error('--repeat needs a positive integer');
  if (c.quick) {
    Object.assign(c, { files: 1000, dirs: 4, tarSources: QUICK_TAR, seqMiB: 64, fioMiB: 32, fioRuntimeSec: 3, timeoutSec: 90 });
  }
  return c;
}

// ------------------------------------------------------------------ results

interface WorkloadDef {
  key: string;
  label: (c: Config, tarEntries: number) => string;
  unit: string;
  higherIsBetter: boolean;
}

const WORKLOADS: WorkloadDef[] = [
  { key: 'create', label: (c) => `1 create ${c.files} x ${c.fileBytes / 1024} KiB files (${c.dirs} dirs) + syncfs`, unit: 'files/s', higherIsBetter: true },
  { key: 'ls', label: () => '2 ls -lR of that tree, cold', unit: 's', higherIsBetter: false },
  { key: 'read', label: () => '3 read them all back, cold', unit: 'files/s', higherIsBetter: true },
  { key: 'untar', label: (_c, n) => `4 untar ${n} entries + syncfs`, unit: 's', higherIsBetter: false },
  { key: 'seqwrite', label: (c) => `5 seq write ${c.seqMiB} MiB (dd bs=1M conv=fsync)`, unit: 'MiB/s', higherIsBetter: true },
  { key: 'seqread', label: (c) => `6 seq read ${c.seqMiB} MiB, cold`, unit: 'MiB/s', higherIsBetter: true },
  { key: 'randread', label: (c) => `7a fio randread 4k (${c.fioMiB}M, ${c.fioRuntimeSec}s), cold`, unit: 'IOPS', higherIsBetter: true },
  { key: 'randwrite', label: (c) => `7b fio randwrite 4k (${c.fioMiB}M, ${c.fioRuntimeSec}s)`, unit: 'IOPS', higherIsBetter: true },
  { key: 'rm', label: () => '8 rm -rf the untarred tree + syncfs', unit: 's', higherIsBetter: false },
];

interface Measurement {
  value?: number;
  /** wall seconds of the measured part */
  seconds?: number;
  error?: string;
  /** CPU seconds the FUSE server used during the measured part (user, system) */
  serverCpu?: { user: number; sys: number };
  /** % of the machine's CPU time the hypervisor took for other guests during it (steal) */
  stealPct?: number;
  detail?: Record<string, unknown>;
}

const round3 = (x: number): number => Math.round(x * 1000) / 1000;

interface TargetReport {
  kind: Kind;
  round?: number;
  mountCommand: string;
  results: Record<string, Measurement>;
  /** seconds each unmount took (unmount + FUSE server flush and exit), by the step before it */
  unmountSeconds: Record<string, number>;
  fsck?: string;
  serverLog?: { lines: number; warnings: number; errors: number; samples: string[] };
  error?: string;
  seconds?: number;
}

const log = (s: string): void => void process.stderr.write(`${s}\n`);

// ------------------------------------------------------------------ helpers

async function dropCaches(): Promise<void> {
  await runOk('sync', []);
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3\n');
}

function expandSources(patterns: string[]): string[] {
  const out: string[] = [];
  for (const p of patterns) {
    if (!p.includes('*')) {
      if (fs.existsSync(p)) out.push(p);
      continue;
    }
    const dir = path.dirname(p);
    const re = new RegExp(`^${path.basename(p).replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
    if (!fs.existsSync(dir)) continue;
    for (const e of fs.readdirSync(dir).sort()) if (re.test(e)) out.push(path.join(dir, e));
  }
  return out;
}

async function makeTarball(c: Config, tarball: string): Promise<{ sources: string[]; entries: number; bytes: number }> {
  const sources = expandSources(c.tarSources);
  if (!sources.length) throw new Error(`none of ${c.tarSources.join(' ')} exist`);
  const rel = sources.map((s) => path.relative('/', s));
  const r = await run('tar', ['-cf', tarball, '--ignore-failed-read', '-C', '/', ...rel], { timeoutSec: 600 });
  if (r.code !== 0 && r.code !== 1) throw new Error(`tar -cf failed: ${r.stderr.trim()}`);
  const list = await runOk('tar', ['-tf', tarball], { timeoutSec: 600 });
  return { sources, entries: list.stdout.split('\n').filter(Boolean).length, bytes: fs.statSync(tarball).size };
}

function fioJob(o: Record<string, string | number | boolean>): string[] {
  return Object.entries(o).map(([k, v]) => (v === true ? `--${k}` : `--${k}=${v}`));
}

function parseFio(stdout: string, dir: 'read' | 'write'): { iops: number; clatMeanUs: number; bwKiB: number } {
  const j = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<Record<string, { iops: number; bw: number; clat_ns?: { mean: number } }>> };
  const d = j.jobs[0][dir];
  return { iops: d.iops, clatMeanUs: (d.clat_ns?.mean ?? 0) / 1000, bwKiB: d.bw };
}

async function fsck(img: string): Promise<string> {
  const r = await run('e2fsck', ['-fn', img], { timeoutSec: 600, force: true });
  if (r.code === 0) return 'clean';
  const lines = (r.stdout + r.stderr).split('\n').filter((l) => l && !/^Pass \d|^e2fsck \d/.test(l));
  return `e2fsck -fn exit ${r.code}: ${lines.slice(0, 8).join(' | ')}`;
}

function scanLog(file: string): TargetReport['serverLog'] | undefined {
  if (!fs.existsSync(file)) return undefined;
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
  const warn = lines.filter((l) => /\bwarn/i.test(l));
  const err = lines.filter((l) => /\berror\b|\bEIO\b|exception/i.test(l));
  const seen = new Set<string>();
  const samples: string[] = [];
  for (const l of [...err, ...warn]) {
    const key = l.replace(/\d+/g, 'N').slice(0, 120);
    if (seen.has(key) || samples.length >= 8) continue;
    seen.add(key);
    samples.push(l.slice(0, 300));
  }
  return { lines: lines.length, warnings: warn.length, errors: err.length, samples };
}

interface MachineInfo {
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  platform: string;
  node: string;
  date: string;
  fuse2fs: string;
  fio: string;
  e2fsprogs: string;
  kfs: string;
  kfsBuildFingerprint: string;
  workDirFs?: string;
  loadAvgAtStart: number[];
}

function machine(workDir: string, kfsCli: string, fingerprint: string): MachineInfo {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
  const sh = (cmd: string, args: string[]): string => {
    const r = spawnSync(cmd, args, { encoding: 'utf8' });
    return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  };
  let kfsVersion = 'unknown';
  try {
    kfsVersion = execFileSync(process.execPath, [kfsCli, '--version'], { encoding: 'utf8' }).trim();
  } catch {
    /* not built */
  }
  const gitHead = sh('git', ['-C', path.join(__dirname, '..', '..', '..'), 'rev-parse', '--short', 'HEAD']);
  const gitDirty = sh('git', ['-C', path.join(__dirname, '..', '..', '..'), 'status', '--porcelain', '--', 'src', 'mkfs', 'native']).length > 0;
  const diffStat = gitDirty ? sh('git', ['-C', path.join(__dirname, '..', '..', '..'), 'diff', '--shortstat', '--', 'src', 'mkfs', 'native']) : '';
  return {
    cpuModel: /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()}`,
    platform: `${os.platform()} ${os.arch()}`,
    node: process.version,
    date: new Date().toISOString(),
    fuse2fs: sh('fuse2fs', ['-V']).split('\n').filter((l) => /fuse2fs|FUSE library/.test(l)).join('; '),
    fio: sh('fio', ['--version']),
    e2fsprogs: sh('mke2fs', ['-V']).split('\n')[0],
    kfs: `${kfsVersion} (git ${gitHead}${gitDirty ? `, uncommitted changes in src/mkfs/native: ${diffStat || 'new files'}` : ''})`,
    kfsBuildFingerprint: fingerprint,
    workDirFs: sh('df', ['--output=fstype,source', workDir]).split('\n').pop()?.trim(),
    loadAvgAtStart: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

// ------------------------------------------------------------------ one filesystem

const SMALLFILES = path.join(__dirname, 'lib', 'smallfiles.js');

async function benchTarget(kind: Kind, c: Config, work: string, template: string, tarball: string, tarEntries: number): Promise<TargetReport> {
  const img = path.join(work, `${kind}.img`);
  const mnt = path.join(work, `mnt-${kind}`);
  fs.mkdirSync(mnt, { recursive: true });
  await runOk('cp', ['--sparse=always', template, img]);
  fs.rmSync(path.join(work, `${kind}.log`), { force: true }); // one round's log at a time
  const t = new Target(kind, img, mnt, work, { kfsOptions: c.kfsOptions, kfsLogLevel: c.kfsLogLevel, kfsCli: c.kfsCli });
  const rep: TargetReport = { kind, mountCommand: t.describe(), results: {}, unmountSeconds: {} };
  const T0 = now();
  const to = c.timeoutSec;

  const measured = (key: string): boolean => !c.only || c.only.has(key);
  const needed = (...keys: string[]): boolean => keys.some(measured);
  const step = async (key: string, fn: () => Promise<Measurement>): Promise<void> => {
    checkInterrupt();
    const def = WORKLOADS.find((w) => w.key === key)!;
    if (!measured(key)) {
      await fn();
      log(`  [${kind}] ${key}: done, not measured (a measured workload needs it)`);
      return;
    }
    try {
      await runOk('sync', [], { timeoutSec: to });
      const cpu0 = t.serverCpu();
      const ticks0 = cpuTicks();
      const m = await fn();
      m.stealPct = stealPercent(ticks0, cpuTicks());
      const cpu1 = t.serverCpu();
      if (cpu0 && cpu1) m.serverCpu = { user: round3(cpu1.user - cpu0.user), sys: round3(cpu1.sys - cpu0.sys) };
      rep.results[key] = m;
      log(`  [${kind}] ${def.label(c, tarEntries)}: ${fmtValue(m.value)} ${def.unit}${def.unit === 's' ? '' : ` (${m.seconds?.toFixed(2)} s)`}, steal ${m.stealPct}%`);
    } catch (e) {
      if (e instanceof Interrupted) throw e;
      const msg = (e as Error).message;
      rep.results[key] = { error: msg };
      log(`  [${kind}] ${def.label(c, tarEntries)}: FAILED: ${msg}`);
      if (!isMounted(mnt)) throw new Error(`the mount went away during ${key}`);
    }
  };
  const cold = async (after: string): Promise<void> => {
    if (c.remount) rep.unmountSeconds[after] = await t.unmount();
    await dropCaches();
    if (c.remount) await t.mount();
  };
  const syncfs = (): Promise<unknown> => runOk('sync', ['-f', mnt], { timeoutSec: to });
  const small = path.join(mnt, 'small');
  const tree = path.join(mnt, 'tree');
  const seq = path.join(mnt, 'seq.dat');
  const fioFile = path.join(mnt, 'fio.dat');
  const smallFiles = async (mode: 'create' | 'read'): Promise<Measurement> => {
    const r = await runOk(process.execPath, [SMALLFILES, mode, small, String(c.files), String(c.dirs), String(c.fileBytes)], { timeoutSec: to });
    const { seconds } = JSON.parse(r.stdout.trim().split('\n').pop()!) as { seconds: number };
    return { value: c.files / seconds, seconds };
  };
  const fioCommon = { filename: fioFile, size: `${c.fioMiB}M`, bs: '4k', ioengine: 'psync', runtime: c.fioRuntimeSec, time_based: true, direct: 0, fsync_on_close: 1, randrepeat: 1, 'output-format': 'json' };

  try {
    await t.mount();
    if (needed('create', 'ls', 'read')) await step('create', () => smallFiles('create'));
    if (needed('ls')) {
      await cold('create');
      await step('ls', async () => {
        const r = await runOk('ls', ['-lR', small], { timeoutSec: to, captureStdout: false });
        return { value: r.seconds, seconds: r.seconds };
      });
    }
    if (needed('read')) {
      await cold('ls');
      await step('read', () => smallFiles('read'));
    }
    if (needed('untar', 'rm')) await step('untar', async () => {
      await runOk('cat', [tarball], { captureStdout: false }); // into the host page cache
      fs.mkdirSync(tree);
      const t0 = now();
      await runOk('tar', ['-xf', tarball, '-C', tree], { timeoutSec: to });
      await syncfs();
      const s = now() - t0;
      return { value: s, seconds: s };
    });
    if (needed('seqwrite', 'seqread')) await step('seqwrite', async () => {
      const r = await runOk('dd', ['if=/dev/zero', `of=${seq}`, 'bs=1M', `count=${c.seqMiB}`, 'conv=fsync'], { timeoutSec: to });
      return { value: c.seqMiB / r.seconds, seconds: r.seconds };
    });
    if (needed('seqread')) await cold('seqwrite');
    if (needed('seqread')) await step('seqread', async () => {
      const r = await runOk('dd', [`if=${seq}`, 'of=/dev/null', 'bs=1M'], { timeoutSec: to });
      const bytes = Number(/(\d+) bytes/.exec(r.stderr)?.[1] ?? NaN);
      if (bytes !== c.seqMiB * 2 ** 20) throw new Error(`read ${bytes} bytes, expected ${c.seqMiB * 2 ** 20}`);
      return { value: c.seqMiB / r.seconds, seconds: r.seconds };
    });
    // fio lays its file out (random data, 1 MiB writes) before the cold random reads.
    let layoutSeconds: number | undefined;
    if (needed('randread', 'randwrite')) {
      try {
        const t0 = now();
        await runOk('fio', fioJob({ name: 'layout', filename: fioFile, size: `${c.fioMiB}M`, bs: '1M', rw: 'randread', create_only: 1 }), { timeoutSec: to });
        await syncfs();
        layoutSeconds = now() - t0;
        if (fs.statSync(fioFile).size !== c.fioMiB * 2 ** 20) throw new Error(`fio laid out ${fs.statSync(fioFile).size} bytes`);
        log(`  [${kind}] fio layout of ${c.fioMiB} MiB: ${layoutSeconds.toFixed(2)} s`);
      } catch (e) {
        if (e instanceof Interrupted) throw e;
        log(`  [${kind}] fio layout FAILED: ${(e as Error).message}`);
      }
      await cold('fio-layout');
    }
    for (const rw of ['randread', 'randwrite'] as const) {
      if (needed(rw)) await step(rw, async () => {
        const r = await runOk('fio', fioJob({ name: rw, rw, ...fioCommon }), { timeoutSec: c.fioRuntimeSec + to });
        const f = parseFio(r.stdout, rw === 'randread' ? 'read' : 'write');
        return { value: f.iops, seconds: r.seconds, detail: { clatMeanUs: f.clatMeanUs, bwKiB: f.bwKiB, layoutSeconds } };
      });
    }
    if (needed('rm')) await step('rm', async () => {
      const t0 = now();
      await runOk('rm', ['-rf', tree], { timeoutSec: to });
      await syncfs();
      const s = now() - t0;
      return { value: s, seconds: s };
    });
    rep.unmountSeconds.final = await t.unmount();
  } catch (e) {
    if (e instanceof Interrupted) throw e;
    rep.error = (e as Error).message;
    log(`  [${kind}] aborted: ${rep.error}`);
  } finally {
    await t.unmount().catch((e: Error) => log(`  [${kind}] unmount failed: ${e.message}`));
    if (kind !== 'kernel') rep.serverLog = scanLog(t.logFile);
  }
  if (!interrupted()) {
    log(`  [${kind}] e2fsck -fn...`);
    rep.fsck = await fsck(img);
    if (rep.fsck !== 'clean') log(`  [${kind}] image NOT clean: ${rep.fsck}`);
  }
  if (!c.keep) fs.rmSync(img, { force: true });
  rep.seconds = now() - T0;
  return rep;
}

// ------------------------------------------------------------------ report

/** One report per filesystem: per workload the round with the median value (all values in detail.runs). */
function mergeRounds(rounds: TargetReport[]): TargetReport[] {
  const kinds = [...new Set(rounds.map((r) => r.kind))];
  return kinds.map((kind) => {
    const mine = rounds.filter((r) => r.kind === kind);
    if (mine.length === 1) return mine[0];
    const merged: TargetReport = {
      kind, mountCommand: mine[0].mountCommand, results: {}, unmountSeconds: {},
      fsck: mine.map((r) => r.fsck).find((f) => f !== undefined && f !== 'clean') ?? mine.find((r) => r.fsck)?.fsck,
      error: mine.map((r) => r.error).filter(Boolean).join('; ') || undefined,
      seconds: mine.reduce((s, r) => s + (r.seconds ?? 0), 0),
    };
    for (const def of WORKLOADS) {
      const ok = mine.map((r) => r.results[def.key]).filter((m): m is Measurement & { value: number } => m?.value !== undefined).sort((a, b) => a.value - b.value);
      const runs = mine.map((r) => r.results[def.key]?.value ?? null);
      const runsStealPct = mine.map((r) => r.results[def.key]?.stealPct ?? null);
      const sum = roundsSummary(ok);
      if (sum) {
        const med = ok[Math.floor((ok.length - 1) / 2)];
        merged.results[def.key] = { ...med, detail: { ...med.detail, runs, runsStealPct, median: sum.median, quietMedian: sum.quietMedian, quietOf: sum.quietNote } };
        merged.results[def.key].value = merged.results[def.key].detail!.median as number;
      } else {
        const err = mine.map((r) => r.results[def.key]?.error).find(Boolean);
        if (err) merged.results[def.key] = { error: err, detail: { runs } };
      }
    }
    for (const k of Object.keys(mine[0].unmountSeconds)) {
      const xs = mine.map((r) => r.unmountSeconds[k]).filter((x) => x !== undefined).sort((a, b) => a - b);
      merged.unmountSeconds[k] = xs[Math.floor((xs.length - 1) / 2)];
    }
    const logs = mine.map((r) => r.serverLog).filter((l): l is NonNullable<TargetReport['serverLog']> => !!l);
    if (logs.length) {
      merged.serverLog = {
        lines: logs.reduce((s, l) => s + l.lines, 0), warnings: logs.reduce((s, l) => s + l.warnings, 0),
        errors: logs.reduce((s, l) => s + l.errors, 0), samples: [...new Set(logs.flatMap((l) => l.samples))].slice(0, 8),
      };
    }
    return merged;
  });
}

function fmtValue(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return '-';
  if (v >= 1000) return Math.round(v).toLocaleString('en-US');
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

const rate = (m: Measurement | undefined, def: WorkloadDef): number | undefined =>
  m?.value === undefined || !(m.value > 0) ? undefined : def.higherIsBetter ? m.value : 1 / m.value;

interface Row {
  key: string;
  workload: string;
  unit: string;
  higherIsBetter: boolean;
  values: Partial<Record<Kind, number | null>>;
  errors: Partial<Record<Kind, string>>;
  kfsOverFuse2fs?: number;
  kfsAsyncOverFuse2fs?: number;
  kernelOverKfs?: number;
  /** wall seconds of the measured part, and the FUSE servers' CPU seconds (user+sys) in it */
  seconds: Partial<Record<Kind, number | null>>;
  serverCpuSeconds: Partial<Record<Kind, number | null>>;
}

function rows(c: Config, reports: TargetReport[], tarEntries: number): Row[] {
  return WORKLOADS.map((def) => {
    const get = (k: Kind): Measurement | undefined => reports.find((r) => r.kind === k)?.results[def.key];
    const row: Row = { key: def.key, workload: def.label(c, tarEntries), unit: def.unit, higherIsBetter: def.higherIsBetter, values: {}, errors: {}, seconds: {}, serverCpuSeconds: {} };
    for (const r of reports) {
      const m = r.results[def.key];
      row.values[r.kind] = m?.value ?? null;
      row.seconds[r.kind] = m?.seconds ?? null;
      if (r.kind !== 'kernel') row.serverCpuSeconds[r.kind] = m?.serverCpu ? round3(m.serverCpu.user + m.serverCpu.sys) : null;
      if (m?.error) row.errors[r.kind] = m.error;
    }
    const k = rate(get('kfs'), def);
    const f = rate(get('fuse2fs'), def);
    const n = rate(get('kernel'), def);
    const a = rate(get('kfs-async'), def);
    if (k !== undefined && f !== undefined) row.kfsOverFuse2fs = k / f;
    if (a !== undefined && f !== undefined) row.kfsAsyncOverFuse2fs = a / f;
    if (k !== undefined && n !== undefined) row.kernelOverKfs = n / k;
    return row;
  });
}

function geomean(xs: number[]): number | undefined {
  return xs.length ? Math.exp(xs.reduce((s, x) => s + Math.log(x), 0) / xs.length) : undefined;
}

function table(rs: Row[], kinds: Kind[]): string {
  const withAsync = kinds.includes('kfs-async');
  const head = ['workload', 'unit', ...kinds, 'kfs/fuse2fs', ...(withAsync ? ['kfs-async/fuse2fs'] : []), 'kernel/kfs'];
  const cell = (r: Row, k: Kind): string => (r.errors[k] ? (/timed out/.test(r.errors[k]!) ? 'timeout' : 'FAIL') : fmtValue(r.values[k] ?? undefined));
  const x = (v: number | undefined): string => (v === undefined ? '-' : `${v.toFixed(2)}x`);
  const body = rs.map((r) => [r.workload, r.unit, ...kinds.map((k) => cell(r, k)), x(r.kfsOverFuse2fs), ...(withAsync ? [x(r.kfsAsyncOverFuse2fs)] : []), x(r.kernelOverKfs)]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]): string => cells.map((s, i) => (i < 2 ? s.padEnd(w[i]) : s.padStart(w[i]))).join(' | ');
  return [line(head), w.map((n) => '-'.repeat(n)).join('-|-'), ...body.map(line)].join('\n');
}

function cpuTable(rs: Row[], kinds: Kind[]): string {
  const fuse = kinds.filter((k) => k !== 'kernel');
  const head = ['workload', ...fuse.map((k) => `${k} cpu/wall s`)];
  const cell = (r: Row, k: Kind): string => {
    const cpu = r.serverCpuSeconds[k];
    const wall = r.seconds[k];
    return cpu === null || cpu === undefined || !wall ? '-' : `${cpu.toFixed(2)} / ${wall.toFixed(2)} (${Math.round((100 * cpu) / wall)}%)`;
  };
  const body = rs.map((r) => [r.workload, ...fuse.map((k) => cell(r, k))]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]): string => cells.map((x, i) => (i === 0 ? x.padEnd(w[i]) : x.padStart(w[i]))).join(' | ');
  return [line(head), w.map((n) => '-'.repeat(n)).join('-|-'), ...body.map(line)].join('\n');
}

// ------------------------------------------------------------------ main

async function main(): Promise<number> {
  let c: Config;
  try {
    c = parseArgs(process.argv.slice(2));
  } catch (e) {
    // A mistake on the command line: one line, not a stack.
    process.stderr.write(`mount benchmark: ${(e as Error).message.split('\n')[0]}; see --help\n`);
    return 2;
  }
  if (process.getuid?.() !== 0) throw new Error('needs root (mounts, /proc/sys/vm/drop_caches)');
  if (!fs.existsSync(KFS_CLI)) throw new Error(`${KFS_CLI} is missing; build first (npx tsc -p .)`);
  for (const tool of ['fio', 'tar', 'dd', 'e2fsck', ...(c.targets.includes('fuse2fs') ? ['fuse2fs'] : [])]) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`${tool} is not installed`);
  }

  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    signals++;
    if (signals === 1) {
      log(`\n${sig}: stopping; unmounting (a second ${sig} forces a lazy unmount and exits)`);
      interrupt(sig);
    } else {
      cleanupAllSync();
      process.exit(130);
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);
  process.on('exit', cleanupAllSync);

  const T0 = now();
  const work = fs.mkdtempSync(path.join(c.dir, 'kfs-bench-mount-'));
  let fingerprint = 'in place (--no-snapshot)';
  if (c.snapshot) {
    try {
      const snap = snapshotKfs(path.join(work, 'kfs-build'));
      c.kfsCli = snap.cli;
      fingerprint = snap.fingerprint;
    } catch (e) {
      fs.rmSync(work, { recursive: true, force: true });
      throw e;
    }
  }
  const info = machine(work, c.kfsCli, fingerprint);
  const rounds: TargetReport[] = [];
  const notes: string[] = [];
  let tar = { sources: [] as string[], entries: 0, bytes: 0 };
  let features = '';
  let failed: unknown = null;
  try {
    log(`work directory ${work}; ${c.quick ? 'quick' : 'full'} run; targets ${c.targets.join(', ')}`);
    const template = path.join(work, 'template.img');
    if (c.mkfs === 'kfs') await runOk(process.execPath, [c.kfsCli, 'mkfs', template, '--size', c.imageSize, '-q'], { timeoutSec: 300 });
    else await runOk('mkfs.ext4', ['-q', '-F', template, c.imageSize], { timeoutSec: 300 });
    features = /Filesystem features:\s*(.+)/.exec((await runOk('dumpe2fs', ['-h', template])).stdout)?.[1]?.trim() ?? '';
    log(`image: ${c.mkfs === 'kfs' ? 'kfs mkfs' : 'mkfs.ext4'} --size ${c.imageSize}; features: ${features}`);
    const tarball = path.join(work, 'tree.tar');
    tar = await makeTarball(c, tarball);
    log(`tarball: ${tar.entries} entries, ${(tar.bytes / 2 ** 20).toFixed(0)} MiB, from ${tar.sources.join(' ')}`);
    for (let round = 1; round <= c.repeat; round++) {
      for (const kind of c.targets) {
        log(c.repeat > 1 ? `${kind} (round ${round} of ${c.repeat}):` : `${kind}:`);
        const r = await benchTarget(kind, c, work, template, tarball, tar.entries);
        r.round = round;
        rounds.push(r);
        log(`  [${kind}] done in ${r.seconds!.toFixed(1)} s`);
      }
    }
  } catch (e) {
    failed = e;
  } finally {
    await cleanupAll();
    const stillMounted = c.targets.map((k) => path.join(work, `mnt-${k}`)).filter((d) => fs.existsSync(d) && isMounted(d));
    if (stillMounted.length) log(`NOT removing ${work}: still mounted: ${stillMounted.join(' ')}`);
    else if (c.keep) log(`kept ${work}`);
    else fs.rmSync(work, { recursive: true, force: true });
  }

  if (failed && !(failed instanceof Interrupted)) throw failed;
  if (failed) notes.push(`interrupted (${interrupted()}): partial results`);
  if (!rounds.length) return failed ? 130 : 1;
  const reports = mergeRounds(rounds);

  const kinds = reports.map((r) => r.kind);
  const rs = rows(c, reports, tar.entries);
  const speedups = rs.map((r) => r.kfsOverFuse2fs).filter((x): x is number => x !== undefined);
  const gm = geomean(speedups);
  // The same over the quiet medians (roundsSummary), with rounds.
  const quiet = (k: Kind, key: string): number | undefined => {
    const m = reports.find((r) => r.kind === k)?.results[key];
    const v = (m?.detail?.quietMedian as number | undefined) ?? m?.value;
    return v === undefined || !(v > 0) ? undefined : v;
  };
  const quietSpeedups = c.repeat > 1 ? WORKLOADS.map((def) => {
    const k = quiet('kfs', def.key);
    const f = quiet('fuse2fs', def.key);
    return k === undefined || f === undefined ? undefined : def.higherIsBetter ? k / f : f / k;
  }).filter((x): x is number => x !== undefined) : [];
  const gmQuiet = geomean(quietSpeedups);
  const asyncSpeedups = rs.map((r) => r.kfsAsyncOverFuse2fs).filter((x): x is number => x !== undefined);
  const gmAsync = geomean(asyncSpeedups);
  const gmKernel = geomean(rs.map((r) => r.kernelOverKfs).filter((x): x is number => x !== undefined));
  if (c.remount) notes.push('cold = unmount (waiting for the FUSE server to flush and exit) + sync + drop_caches + mount; FUSE servers restart with empty caches (and kfs, a node process, with a cold JIT, which weighs most in --quick runs)');
  else notes.push('cold = sync + drop_caches only: FUSE servers keep their own caches (kfs: up to cache_size, 256 MiB by default)');
  notes.push('syncfs (sync -f) flushes only the kernel side for FUSE mounts (no FUSE_SYNCFS): data a FUSE server buffers is written at unmount; see unmountSeconds');
  notes.push('kernel ext4 on a loop device is the ceiling, not a like-for-like comparison (page cache, dcache, no user-space round trips)');
  notes.push(`load average at start ${info.loadAvgAtStart.join(' ')}, at end ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}: other work on the machine makes the numbers noisy`);
  const stolen = stealNote(rounds.flatMap((r) => Object.entries(r.results)
    .map(([key, m]) => ({ name: `${r.kind}${c.repeat > 1 ? ` round ${r.round}` : ''} ${key}`, stealPct: m.stealPct ?? 0 }))));
  if (stolen) notes.push(stolen);
  for (const r of reports) {
    if (r.error) notes.push(`${r.kind}: aborted: ${r.error}`);
    if (r.fsck && r.fsck !== 'clean') notes.push(`${r.kind}: image not clean after the run: ${r.fsck}`);
    if (r.serverLog && (r.serverLog.warnings || r.serverLog.errors)) notes.push(`${r.kind}: server log has ${r.serverLog.errors} error and ${r.serverLog.warnings} warning lines, e.g. ${r.serverLog.samples.slice(0, 2).join(' || ')}`);
  }

  const report = {
    benchmark: 'mount',
    machine: { ...info, loadAvgAtEnd: os.loadavg().map((x) => Math.round(x * 100) / 100) },
    config: {
      quick: c.quick, imageSize: c.imageSize, mkfs: c.mkfs === 'kfs' ? `kfs mkfs IMG --size ${c.imageSize} -q` : `mkfs.ext4 -q -F IMG ${c.imageSize}`, features,
      files: c.files, dirs: c.dirs, fileBytes: c.fileBytes, tar, seqMiB: c.seqMiB, fioMiB: c.fioMiB, fioRuntimeSec: c.fioRuntimeSec,
      repeat: c.repeat, workloads: c.only ? [...c.only] : 'all',
      cold: c.remount ? 'remount+drop_caches' : 'drop_caches', timeoutSec: c.timeoutSec, kfsOptions: c.kfsOptions,
      mountCommands: Object.fromEntries(reports.map((r) => [r.kind, r.mountCommand])),
    },
    totalSeconds: now() - T0,
    table: rs,
    geomeanKfsOverFuse2fs: gm,
    geomeanKfsOverFuse2fsQuietRounds: gmQuiet,
    geomeanKfsAsyncOverFuse2fs: gmAsync,
    geomeanKernelOverKfs: gmKernel,
    targets: reports,
    rounds: c.repeat > 1 ? rounds : undefined,
    notes,
  };

  const m = report.machine;
  process.stdout.write(`\nkfs mount benchmark (${m.cpuModel}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.kernel}, node ${m.node}, ${c.quick ? 'quick' : 'full'} run)\n\n`);
  process.stdout.write(`${table(rs, kinds)}\n\n`);
  if (kinds.some((k) => k !== 'kernel')) process.stdout.write(`FUSE server CPU (user+sys) during each measured part, vs its wall time:\n${cpuTable(rs, kinds)}\n\n`);
  if (gm !== undefined) process.stdout.write(`geometric mean kfs/fuse2fs speedup: ${gm.toFixed(2)}x over ${speedups.length} workloads (>1: kfs faster)\n`);
  if (gmQuiet !== undefined) process.stdout.write(`the same over the medians of the rounds with < 5% steal where there are any: ${gmQuiet.toFixed(2)}x\n`);
  if (gmAsync !== undefined) process.stdout.write(`geometric mean kfs-async/fuse2fs:  ${gmAsync.toFixed(2)}x over ${asyncSpeedups.length} workloads\n`);
  if (gmKernel !== undefined) process.stdout.write(`geometric mean kernel/kfs ratio:    ${gmKernel.toFixed(2)}x (>1: kernel faster)\n`);
  for (const r of reports) {
    const u = Object.entries(r.unmountSeconds).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ');
    process.stdout.write(`${r.kind}: fsck ${r.fsck ?? '-'}; unmount(+flush) seconds after: ${u || '-'}\n`);
  }
  for (const n of notes) process.stdout.write(`note: ${n}\n`);
  fs.mkdirSync(path.dirname(path.resolve(c.out)), { recursive: true });
  fs.writeFileSync(c.out, `${JSON.stringify(report, null, 2)}\n`);
  process.stdout.write(`\nresults written to ${c.out} (total ${report.totalSeconds.toFixed(1)} s)\n`);
  return failed ? 130 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  async (e) => {
    process.stderr.write(`mount benchmark failed: ${(e as Error).stack ?? e}\n`);
    await cleanupAll().catch(() => undefined);
    process.exitCode = 1;
  },
);
