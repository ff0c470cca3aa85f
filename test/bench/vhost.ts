/**
 * Load generator for virtio-fs back-ends, side by side in one run: the test front-end
 * (test/helpers/vhost-frontend.ts) plays QEMU and the guest kernel and drives the same FUSE
 * workloads, N requests in flight, against
 *   kfsd-image      kfsd --image A
 *   virtiofsd-ext4  the C virtiofsd on a kernel ext4 loop mount of B, a sparse copy of A
 *   kfsd-dir        kfsd --shared-dir on a fresh directory of the host filesystem
 *   virtiofsd-dir   the C virtiofsd on a fresh directory of the same filesystem
 *
 *   node dist/test/bench/vhost.js [--quick] [--inflight N] [--queues Q] [--targets LIST]
 *        [--workloads LIST] [--ops N] [--dir DIR] [--size 2G] [--out bench-results/vhost.json] [--keep]
 *        [--repeat N]
 *
 * Workloads (each target starts from an empty filesystem; setup steps and a warm-up of each
 * workload's requests are not timed):
 *   getattr    GETATTR of one file
 *   lookup     LOOKUP of random names in a directory of 1000 files
 *   create     CREATE + 4 KiB WRITE + RELEASE of new files
 *   randread   4 KiB READs at random offsets of a 64 MiB file
 *   read128k   128 KiB READs at random offsets of it
 *   seqwrite   1 MiB WRITEs filling a new file, then FSYNC
 *   seqread    1 MiB READs of that file
 * No drop_caches: every back-end serves from whatever it caches (kfsd its block cache,
 * virtiofsd the host page cache), as it would for a guest whose own cache missed.
 * Besides the rate, each workload reports the back-end's CPU time per operation (the sum of
 * its threads' run time from /proc/PID/task/TID/schedstat, in µs): on a shared 2-core machine
 * it is steadier than the rate, and it is what a guest's vCPUs compete with.
 * Needs root (loop mount, virtiofsd).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnKfsd, spawnVirtiofsd, VhostFrontend, type Backend, VIRTIOFSD } from '../helpers/vhost-frontend';
import { kfsdPath } from '../helpers/vhost-frontend/backends';
import { cpuTicks, forEachOption, now, median, pool, roundsSummary, stealNote, stealPercent, timed } from './lib/proc';

type TargetKind = 'kfsd-image' | 'virtiofsd-ext4' | 'kfsd-dir' | 'virtiofsd-dir';
const ALL_TARGETS: TargetKind[] = ['kfsd-image', 'virtiofsd-ext4', 'kfsd-dir', 'virtiofsd-dir'];

interface Config {
  quick: boolean;
  inflight: number;
  queues: number;
  targets: TargetKind[];
  workloads: string[];
  dir: string;
  size: string;
  out: string;
  keep: boolean;
  ops: number;
  files: number;
  seqMiB: number;
  repeat: number;
}

const usage = (): string => `usage: node dist/test/bench/vhost.js [--quick] [--inflight N] [--queues Q] [--targets LIST]
       [--workloads LIST] [--ops N] [--dir DIR] [--size 2G] [--out bench-results/vhost.json] [--keep]
  --inflight N     requests in flight (default 16)
  --ops N          operations of the getattr, lookup and randread workloads (default 20000, --quick 2000)
  --queues Q       request queues to use where the back-end offers them (default 1)
  --targets LIST   default ${ALL_TARGETS.join(',')}
  --workloads LIST default all: ${WORKLOAD_KEYS.join(',')} (setup a workload needs still runs)
  --repeat N       N rounds of every target (fresh images each round); each figure is the median
                   of the rounds (every round, and the median of those with under 5% steal, in the JSON)
`;

function parseArgs(argv: string[]): Config {
  const c: Config = { quick: false, inflight: 16, queues: 1, targets: ALL_TARGETS, workloads: WORKLOAD_KEYS, dir: os.tmpdir(), size: '2G', out: path.join('bench-results', 'vhost.json'), keep: false, ops: 20000, files: 4000, seqMiB: 256, repeat: 1 };
  let opsOverride: number | undefined;
  forEachOption(argv, (a, v) => {
    if (a === '--quick') c.quick = true;
    else if (a === '--inflight') c.inflight = Number(v());
    else if (a === '--queues') c.queues = Number(v());
    else if (a === '--targets') {
      const t = v().split(',').filter(Boolean);
      for (const k of t) if (!ALL_TARGETS.includes(k as TargetKind)) throw new Error(`unknown target ${k}`);
      c.targets = t as TargetKind[];
    } else if (a === '--workloads') {
      const w = v().split(',').filter(Boolean);
      for (const k of w) if (!WORKLOAD_KEYS.includes(k)) throw new Error(`unknown workload ${k}`);
      c.workloads = w;
    } else if (a === '--dir') c.dir = v();
    else if (a === '--size') c.size = v();
    else if (a === '--out') c.out = v();
    else if (a === '--keep') c.keep = true;
    else if (a === '--ops') opsOverride = Number(v());
    else if (a === '--repeat') {
      c.repeat = Number(v());
      if (!(Number.isInteger(c.repeat) && c.repeat >= 1)) throw new Error('--repeat needs a positive integer');
    }
    else if (a === '-h' || a === '--help') {
      process.stdout.write(usage());
      process.exit(0);
    } else throw new Error(`unknown argument ${a}\n${usage()}`);
  });
  if (!(c.inflight >= 1 && c.queues >= 1)) throw new Error('--inflight and --queues need positive integers');
  if (c.quick) Object.assign(c, { ops: 2000, files: 500, seqMiB: 32 });
  if (opsOverride !== undefined) {
    if (!(opsOverride >= 8)) throw new Error('--ops needs an integer of at least 8');
    c.ops = opsOverride;
  }
  return c;
}

interface Workload {
  key: string;
  label: (c: Config) => string;
  unit: string;
}

const WORKLOADS: Workload[] = [
  { key: 'getattr', label: (c) => `getattr x ${c.ops}`, unit: 'ops/s' },
  { key: 'lookup', label: (c) => `lookup x ${c.ops} (dir of 1000)`, unit: 'ops/s' },
  { key: 'create', label: (c) => `create + 4 KiB write x ${c.files}`, unit: 'files/s' },
  { key: 'randread', label: (c) => `randread 4 KiB x ${c.ops}`, unit: 'IOPS' },
  { key: 'read128k', label: (c) => `read 128 KiB x ${Math.ceil(c.ops / 8)}`, unit: 'MiB/s' },
  { key: 'seqwrite', label: (c) => `seq write ${c.seqMiB} MiB (1 MiB) + fsync`, unit: 'MiB/s' },
  { key: 'seqread', label: (c) => `seq read ${c.seqMiB} MiB (1 MiB)`, unit: 'MiB/s' },
];

const WORKLOAD_KEYS = WORKLOADS.map((w) => w.key);

const log = (s: string): void => void process.stderr.write(`${s}\n`);

/**
 * CPU seconds the process `pid` has run so far: all its live threads together, and its main
 * thread alone (tid = pid). For kfsd the rest is V8's compiler and GC helpers and libuv's
 * threadpool; for virtiofsd, its queue and pool threads.
 */
function cpuSeconds(pid: number): { all: number; main: number } {
  let ns = 0;
  let main = 0;
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const t = Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      ns += t;
      if (Number(tid) === pid) main = t;
    } catch {
      // the thread ended between readdir and read
    }
  }
  return { all: ns / 1e9, main: main / 1e9 };
}

/** One workload's rate and the back-end's CPU µs per operation. */
interface Measured {
  rates: Record<string, number>;
  cpuUsPerOp: Record<string, number>;
  /** The same, the main thread only. */
  mainCpuUsPerOp: Record<string, number>;
  /** Kicks the front-end sent and calls (interrupts) it received, per operation. */
  kicksPerOp: Record<string, number>;
  callsPerOp: Record<string, number>;
  /** % of the machine's CPU time the hypervisor took for other guests during each workload (steal). */
  stealPct: Record<string, number>;
}

const ROOT = 1;
/**
 * Untimed requests of the same kind before each timed workload (creates: twice the timed
 * count; an eighth as many 128 KiB reads): the figures are the servers' steady state, not kfsd's
 * JIT compiling the code path during the first second of a workload.
 */
const WARMUP = 2000;

/** The workloads against one started front-end served by process `pid`. */
async function runWorkloads(c: Config, fe: VhostFrontend, pid: number): Promise<Measured> {
  const fuse = fe.fuse;
  const init = await fuse.init();
  const chunk = Math.min(1 << 20, init.maxWrite);
  const out: Record<string, number> = {};
  const cpuUsPerOp: Record<string, number> = {};
  const mainCpuUsPerOp: Record<string, number> = {};
  const kicksPerOp: Record<string, number> = {};
  const callsPerOp: Record<string, number> = {};
  const stealPct: Record<string, number> = {};
  const n = c.inflight;
  const notifications = (): [number, number] => [fe.queues.reduce((a, q) => a + q.kicks, 0), fe.queues.reduce((a, q) => a + q.calls, 0)];
  const want = (k: string): boolean => c.workloads.includes(k);
  /** Time fn (ops operations); `rate` turns the seconds into the figure reported. */
  const measure = async (key: string, ops: number, fn: () => Promise<void>, rate = (sec: number) => ops / sec): Promise<void> => {
    const cpu0 = cpuSeconds(pid);
    const [k0, c0] = notifications();
    const ticks0 = cpuTicks();
    const sec = await timed(fn);
    stealPct[key] = stealPercent(ticks0, cpuTicks());
    const cpu1 = cpuSeconds(pid);
    cpuUsPerOp[key] = ((cpu1.all - cpu0.all) * 1e6) / ops;
    mainCpuUsPerOp[key] = ((cpu1.main - cpu0.main) * 1e6) / ops;
    const [k1, c1] = notifications();
    kicksPerOp[key] = (k1 - k0) / ops;
    callsPerOp[key] = (c1 - c0) / ops;
    out[key] = rate(sec);
  };

  const { entry: f, fh } = await fuse.create(ROOT, 'attr-target', 0o644);
  // Warm-up (JIT on both sides, first-touch of guest memory), not timed.
  await pool(WARMUP, n, () => fuse.getattr(f.nodeid));
  if (want('getattr')) await measure('getattr', c.ops, () => pool(c.ops, n, () => fuse.getattr(f.nodeid)));
  await fuse.release(f.nodeid, fh);

  if (want('lookup')) {
    const dir = await fuse.mkdir(ROOT, 'lookup-dir');
    await pool(1000, n, async (i) => {
      const r = await fuse.create(dir.nodeid, `f${i}`, 0o644);
      await fuse.release(r.entry.nodeid, r.fh);
    });
    const lookup = (i: number) => fuse.lookup(dir.nodeid, `f${(i * 7919) % 1000}`);
    await pool(WARMUP, n, lookup);
    await measure('lookup', c.ops, () => pool(c.ops, n, lookup));
  }

  const mib = randomBytes(chunk);
  if (want('create')) {
    const small = randomBytes(4096);
    const createIn = (parent: number) => async (i: number) => {
      const r = await fuse.create(parent, `n${i}`, 0o644);
      await fuse.write(r.entry.nodeid, r.fh, 0, small);
      await fuse.release(r.entry.nodeid, r.fh);
    };
    // Twice as many untimed creates as timed ones, in a directory of their own. kfsd's V8 keeps
    // compiling the create path (and the commit's, which runs a few times a second) well past the
    // first thousands: after 2000 its compiler threads still took 30-45 µs of CPU per create in
    // the timed part, after 8000 under 10 µs (2026-11-22). The timed part is the steady state of
    // a server that has run a while. Both directories together stay under the 20000 inodes
    // kfsd's inode cache holds (a trim in the timed part would measure the trim).
    await pool(2 * c.files, n, createIn((await fuse.mkdir(ROOT, 'create-warmup')).nodeid));
    const cdir = await fuse.mkdir(ROOT, 'create-dir');
    await measure('create', c.files, () => pool(c.files, n, createIn(cdir.nodeid)));
  }

  if (want('randread') || want('read128k')) {
    const dataMiB = 64;
    const d = await fuse.create(ROOT, 'data', 0o644);
    await pool((dataMiB << 20) / chunk, n, (i) => fuse.write(d.entry.nodeid, d.fh, i * chunk, mib));
    await fuse.fsync(d.entry.nodeid, d.fh);
    const blocks4k = (dataMiB << 20) / 4096;
    if (want('randread')) {
      const read4k = (i: number) => fuse.read(d.entry.nodeid, d.fh, ((i * 2654435761) % blocks4k) * 4096, 4096);
      await pool(WARMUP, n, (i) => read4k(i + c.ops));
      await measure('randread', c.ops, () => pool(c.ops, n, read4k));
    }
    const reads128 = Math.ceil(c.ops / 8);
    const blocks128 = (dataMiB << 20) / (128 << 10);
    if (want('read128k')) {
      await pool(WARMUP / 8, n, (i) => fuse.read(d.entry.nodeid, d.fh, ((i * 40503) % blocks128) * (128 << 10), 128 << 10));
      await measure('read128k', reads128, () => pool(reads128, n, (i) => fuse.read(d.entry.nodeid, d.fh, ((i * 2654435761) % blocks128) * (128 << 10), 128 << 10)), (sec) => reads128 / 8 / sec);
    }
    await fuse.release(d.entry.nodeid, d.fh);
  }

  if (want('seqwrite') || want('seqread')) {
    const s = await fuse.create(ROOT, 'seq', 0o644);
    const count = (c.seqMiB << 20) / chunk;
    const write = async (): Promise<void> => {
      await pool(count, n, (i) => fuse.write(s.entry.nodeid, s.fh, i * chunk, mib));
      await fuse.fsync(s.entry.nodeid, s.fh);
    };
    if (want('seqwrite')) await measure('seqwrite', count, write, (sec) => c.seqMiB / sec);
    else await write();
    if (want('seqread')) {
      await measure('seqread', count, () => pool(count, n, async (i) => {
        const b = await fuse.read(s.entry.nodeid, s.fh, i * chunk, chunk);
        if (b.length !== chunk) throw new Error(`short read at ${i * chunk}: ${b.length}`);
      }), (sec) => c.seqMiB / sec);
    }
    await fuse.release(s.entry.nodeid, s.fh);
  }
  await fe.stop();
  return { rates: out, cpuUsPerOp, mainCpuUsPerOp, kicksPerOp, callsPerOp, stealPct };
}

interface TargetReport {
  kind: TargetKind;
  command: string;
  results: Record<string, number>;
  /** Back-end CPU µs per operation (per 1 MiB request for seqwrite/seqread, per 128 KiB read for read128k). */
  cpuUsPerOp: Record<string, number>;
  /** The main thread's share of cpuUsPerOp. */
  mainCpuUsPerOp?: Record<string, number>;
  kicksPerOp?: Record<string, number>;
  callsPerOp?: Record<string, number>;
  stealPct?: Record<string, number>;
  /** With --repeat: the median of the rounds with under 5% steal, and how many those were. */
  quietMedian?: Record<string, { value: number; of: string }>;
  exit?: string;
  fsck?: string;
  error?: string;
  backendLogTail?: string;
}

function sh(cmd: string, args: string[]): { code: number; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return { code: r.status ?? 1, out: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}

async function runTarget(c: Config, kind: TargetKind, work: string, imageA: string, imageB: string): Promise<TargetReport> {
  const socket = path.join(work, `${kind}.sock`);
  const mnt = path.join(work, 'ext4-mnt');
  const shared = path.join(work, `shared-${kind}`);
  let backend: Backend;
  let mounted = false;
  const report: TargetReport = { kind, command: '', results: {}, cpuUsPerOp: {} };
  if (kind === 'kfsd-image') backend = spawnKfsd(['--image', imageA], socket);
  else if (kind === 'kfsd-dir') {
    fs.mkdirSync(shared);
    backend = spawnKfsd(['--shared-dir', shared], socket);
  } else if (kind === 'virtiofsd-dir') {
    fs.mkdirSync(shared);
    backend = spawnVirtiofsd(shared, socket);
  } else {
    fs.mkdirSync(mnt, { recursive: true });
    execFileSync('mount', ['-o', 'loop', imageB, mnt]);
    mounted = true;
    backend = spawnVirtiofsd(mnt, socket);
  }
  report.command = backend.proc.spawnargs.join(' ');
  let fe: VhostFrontend | null = null;
  try {
    // A back-end that dies must fail its target, not leave the front-end waiting for replies.
    const died = backend.exited.then((st) => Promise.reject(new Error(`${backend.name} exited during the run: ${JSON.stringify(st)}; ${backend.output.slice(-500)}`)));
    died.catch(() => undefined);
    fe = await Promise.race([VhostFrontend.start({ socketPath: socket, queueSize: 256, requestQueues: c.queues }), died]);
    const m = await Promise.race([runWorkloads(c, fe, backend.proc.pid!), died]);
    report.results = m.rates;
    report.cpuUsPerOp = m.cpuUsPerOp;
    report.mainCpuUsPerOp = m.mainCpuUsPerOp;
    report.kicksPerOp = m.kicksPerOp;
    report.callsPerOp = m.callsPerOp;
    report.stealPct = m.stealPct;
  } catch (e) {
    report.error = (e as Error).message;
    report.backendLogTail = backend.output.slice(-2000);
  } finally {
    fe?.close();
    const exit = await backend.stop();
    report.exit = JSON.stringify(exit);
    if (mounted) execFileSync('umount', [mnt]);
  }
  if (kind === 'kfsd-image') report.fsck = sh('e2fsck', ['-fn', imageA]).code === 0 ? 'clean' : 'ERRORS';
  if (kind === 'virtiofsd-ext4') report.fsck = sh('e2fsck', ['-fn', imageB]).code === 0 ? 'clean' : 'ERRORS';
  return report;
}

function fmt(v: number | undefined): string {
  if (v === undefined) return '-';
  return v >= 100 ? Math.round(v).toLocaleString('en-US') : v.toFixed(1);
}

/** The rate table, or with `cpu` the back-end CPU µs per operation (lower is better). */
function table(c: Config, reports: TargetReport[], cpu = false): string {
  const kinds = reports.map((r) => r.kind);
  const ratio = (a: TargetKind, b: TargetKind): string[] => (kinds.includes(a) && kinds.includes(b) ? [`${a.split('-')[1]}: kfsd/virtiofsd`] : []);
  const head = ['workload', cpu ? 'CPU per' : 'unit', ...kinds, ...ratio('kfsd-image', 'virtiofsd-ext4'), ...ratio('kfsd-dir', 'virtiofsd-dir')];
  const val = (k: TargetKind, w: string): number | undefined => {
    const r = reports.find((t) => t.kind === k);
    return cpu ? r?.cpuUsPerOp[w] : r?.results[w];
  };
  // Both tables read "> 1: kfsd better": rate kfsd/virtiofsd, CPU virtiofsd/kfsd.
  const x = (a: number | undefined, b: number | undefined): string => (a && b ? `${(cpu ? b / a : a / b).toFixed(2)}x` : '-');
  const cell = (k: TargetKind, w: string): string => {
    const v = val(k, w);
    if (!cpu) return fmt(v);
    const main = reports.find((t) => t.kind === k)?.mainCpuUsPerOp?.[w];
    return v === undefined ? '-' : `${v.toFixed(1)} µs${main === undefined ? '' : ` (${main.toFixed(1)})`}`;
  };
  const body = WORKLOADS.filter((w) => c.workloads.includes(w.key)).map((w) => [
    w.label(c),
    cpu ? (w.key.startsWith('seq') ? '1 MiB' : w.key === 'read128k' ? '128 KiB' : 'op') : w.unit,
    ...kinds.map((k) => (reports.find((r) => r.kind === k)?.error ? 'FAIL' : cell(k, w.key))),
    ...(ratio('kfsd-image', 'virtiofsd-ext4').length ? [x(val('kfsd-image', w.key), val('virtiofsd-ext4', w.key))] : []),
    ...(ratio('kfsd-dir', 'virtiofsd-dir').length ? [x(val('kfsd-dir', w.key), val('virtiofsd-dir', w.key))] : []),
  ]);
  const wd = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]): string => cells.map((s, i) => (i < 2 ? s.padEnd(wd[i]) : s.padStart(wd[i]))).join(' | ');
  return [line(head), wd.map((n) => '-'.repeat(n)).join('-|-'), ...body.map(line)].join('\n');
}

/** One report per back-end: per workload the median of its rounds (roundsSummary; the quiet median in quietMedian). */
function mergeRounds(c: Config, rounds: (TargetReport & { round: number })[]): TargetReport[] {
  return c.targets.map((kind) => {
    const mine = rounds.filter((r) => r.kind === kind);
    const merged: TargetReport = {
      kind, command: mine[0].command, results: {}, cpuUsPerOp: {}, mainCpuUsPerOp: {}, stealPct: {}, quietMedian: {},
      fsck: mine.map((r) => r.fsck).find((f) => f !== undefined && f !== 'clean') ?? mine.find((r) => r.fsck)?.fsck,
      error: mine.map((r) => r.error).filter(Boolean).join('; ') || undefined,
    };
    for (const w of c.workloads) {
      const sum = roundsSummary(mine.filter((r) => r.results[w] !== undefined).map((r) => ({ value: r.results[w], stealPct: r.stealPct?.[w] })));
      if (!sum) continue;
      merged.results[w] = sum.median;
      merged.quietMedian![w] = { value: sum.quietMedian, of: sum.quietNote };
      for (const field of ['cpuUsPerOp', 'mainCpuUsPerOp'] as const) {
        const m = median(mine.map((r) => r[field]?.[w]).filter((x): x is number => x !== undefined));
        if (m !== null) merged[field]![w] = m;
      }
      merged.stealPct![w] = Math.max(...mine.map((r) => r.stealPct?.[w] ?? 0));
    }
    return merged;
  });
}

async function main(): Promise<number> {
  const c = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('needs root (loop mount, virtiofsd)');
  if (!fs.existsSync(kfsdPath())) throw new Error(`${kfsdPath()} is missing; build first (npx tsc -p .)`);
  if (c.targets.some((t) => t.startsWith('virtiofsd')) && !fs.existsSync(VIRTIOFSD)) throw new Error(`${VIRTIOFSD} is missing (apt-get install qemu-system-x86)`);
  const work = fs.mkdtempSync(path.join(c.dir, 'kfs-bench-vhost-'));
  const loadStart = os.loadavg();
  const rounds: (TargetReport & { round: number })[] = [];
  try {
    for (let round = 1; round <= c.repeat; round++) {
      // Fresh images every round: kfsd-image and virtiofsd-ext4 leave their files behind.
      const dir = c.repeat > 1 ? fs.mkdtempSync(path.join(work, `round${round}-`)) : work;
      const imageA = path.join(dir, 'a.img');
      const imageB = path.join(dir, 'b.img');
      execFileSync(process.execPath, [path.join(path.dirname(kfsdPath()), 'kfs.js'), 'mkfs', '-q', '-F', '--size', c.size, imageA]);
      execFileSync('cp', ['--sparse=always', imageA, imageB]);
      for (const kind of c.targets) {
        log(`${kind}${c.repeat > 1 ? ` (round ${round} of ${c.repeat})` : ''} ...`);
        const r = await runTarget(c, kind, dir, imageA, imageB);
        if (r.error) log(`${kind} FAILED: ${r.error}\n${r.backendLogTail ?? ''}`);
        rounds.push({ ...r, round });
      }
      if (dir !== work) fs.rmSync(dir, { recursive: true, force: true });
    }
  } finally {
    if (!c.keep) fs.rmSync(work, { recursive: true, force: true });
  }
  const reports = c.repeat > 1 ? mergeRounds(c, rounds) : rounds;
  const result = {
    benchmark: 'vhost',
    machine: {
      cpu: /^model name\s*:\s*(.+)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim(),
      cores: os.cpus().length,
      kernel: os.release(),
      node: process.version,
      date: new Date().toISOString(),
      virtiofsd: sh(VIRTIOFSD, ['--version']).out.split('\n')[0],
      git: sh('git', ['-C', path.join(__dirname, '..', '..', '..'), 'rev-parse', '--short', 'HEAD']).out,
      loadAvgAtStart: loadStart.map((x) => Math.round(x * 100) / 100),
      loadAvgAtEnd: os.loadavg().map((x) => Math.round(x * 100) / 100),
    },
    config: { workloads: c.workloads, inflight: c.inflight, queues: c.queues, ops: c.ops, files: c.files, seqMiB: c.seqMiB, imageSize: c.size },
    units: Object.fromEntries(WORKLOADS.map((w) => [w.key, w.unit])),
    targets: reports,
    rounds: c.repeat > 1 ? rounds : undefined,
  };
  process.stdout.write(`${table(c, reports)}\n\nBack-end CPU time per operation, all threads (main thread alone), virtiofsd/kfsd:\n${table(c, reports, true)}\n\n`);
  for (const r of reports) if (r.fsck) process.stdout.write(`${r.kind}: e2fsck -fn ${r.fsck}\n`);
  const stolen = stealNote(rounds.flatMap((r) => Object.entries(r.stealPct ?? {}).map(([w, p]) => ({ name: `${r.kind}${c.repeat > 1 ? ` round ${r.round}` : ''} ${w}`, stealPct: p }))));
  if (stolen) process.stdout.write(`${stolen}\n`);
  fs.mkdirSync(path.dirname(c.out), { recursive: true });
  fs.writeFileSync(c.out, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(`JSON: ${c.out}\n`);
  return reports.some((r) => r.error || r.fsck === 'ERRORS') ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: Error) => {
    process.stderr.write(`bench vhost: ${e.message}\n`);
    process.exit(2);
  },
);
