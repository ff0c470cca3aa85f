/**
 * Guest benchmark: one QEMU guest workload, the same for each back-end in one run:
 *   kfsd --image (a fresh kfs image), kfsd --shared-dir and the C virtiofsd (fresh host
 *   directories on the same host filesystem), and as the ceiling the guest kernel's own ext4
 *   on a virtio-blk disk (a fresh mkfs.ext4 image).
 * The steps run inside the guest with kfs-guest-tool (C, timed with CLOCK_MONOTONIC; built into
 * the guest's initramfs by images/build.sh) so busybox
 * process start-up under TCG does not drown the filesystem's cost; caches are dropped before
 * the cold steps. Prints a table (median of --repeat rounds) and writes JSON.
 *
 *   node dist/test/bench/guest.js [--repeat N] [--files N] [--mib N] [--out FILE] [--targets LIST]
 *
 * --targets: any of kfsd-image, kfsd-shared, virtiofsd, guest-ext4 (the default: all four) and
 * kfsd-image-open (kfsd --image --open: files opened with OPEN and RELEASE requests, as before
 * no_open became kfsd's default).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runGuest, guestAvailable, guestKernelVersion } from '../helpers/guest';
import { startKfsd, startVirtiofsd, Backend } from '../helpers/backends';
import { mustRun } from '../helpers/image';
import { median } from './lib/proc';

const KFS = path.join(__dirname, '..', '..', 'src', 'cli', 'kfs.js');

const ALL_KINDS = ['kfsd-image', 'kfsd-image-open', 'kfsd-shared', 'virtiofsd', 'guest-ext4'];
const DEFAULT_KINDS = ['kfsd-image', 'kfsd-shared', 'virtiofsd', 'guest-ext4'];

interface Config {
  repeat: number;
  kinds: string[];
  files: number;
  mib: number;
  out: string;
}

function parseArgs(argv: string[]): Config {
  const c: Config = { repeat: 1, kinds: DEFAULT_KINDS, files: 2000, mib: 128, out: path.join('bench-results', 'guest.json') };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    switch (argv[i]) {
      case '--repeat': c.repeat = Number(v); i++; break;
      case '--files': c.files = Number(v); i++; break;
      case '--mib': c.mib = Number(v); i++; break;
      case '--out': c.out = v; i++; break;
      case '--targets':
        c.kinds = (v ?? '').split(',').filter(Boolean);
        i++;
        for (const k of c.kinds) {
          if (!ALL_KINDS.includes(k)) {
            process.stderr.write(`bench/guest: unknown target ${k}; known: ${ALL_KINDS.join(', ')}\n`);
            process.exit(2);
          }
        }
        break;
      default:
        process.stderr.write(`bench/guest: unknown option ${argv[i]}; known: --repeat N --files N --mib N --out FILE --targets LIST\n`);
        process.exit(2);
    }
  }
  return c;
}

interface Step { name: string; unit: string; value: (secs: number, count: number) => number }
const STEPS: Step[] = [
  { name: 'create', unit: 'files/s', value: (s, n) => n / s },
  { name: 'stat-cold', unit: 'entries/s', value: (s, n) => n / s },
  { name: 'stat-warm', unit: 'entries/s', value: (s, n) => n / s },
  { name: 'read-cold', unit: 'files/s', value: (s, n) => n / s },
  { name: 'seqwrite', unit: 'MiB/s', value: (s, n) => n / s },
  { name: 'seqread', unit: 'MiB/s', value: (s, n) => n / (1 << 20) / s },
  { name: 'randread', unit: 'IOPS', value: (s, n) => n / s },
  { name: 'rm', unit: 'entries/s', value: (s, n) => n / s },
];

function script(c: Config, root: string): string {
  return `
set -e
T=kfs-guest-tool
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
r() { echo "RESULT $1 $2"; }
mkdir -p ${root}/b
r create "$($T mkfiles ${root}/b/small ${c.files} 4096)"
drop
r stat-cold "$($T statall ${root}/b/small)"
r stat-warm "$($T statall ${root}/b/small)"
drop
r read-cold "$($T readall ${root}/b/small)"
r seqwrite "$($T seqwrite ${root}/b/big ${c.mib})"
drop
r seqread "$($T seqread ${root}/b/big)"
drop
r randread "$($T randread ${root}/b/big 4000)"
r rm "$($T rmtree ${root}/b/small)"
`;
}

type Result = Record<string, number>;

function parseResults(console: string): Result {
  const out: Result = {};
  for (const line of console.split(/\r?\n/)) {
    const m = /^RESULT (\S+) ([\d.]+) (\d+)$/.exec(line.trim());
    if (!m) continue;
    const step = STEPS.find((s) => s.name === m[1]);
    if (step) out[m[1]] = step.value(Number(m[2]), Number(m[3]));
  }
  return out;
}

async function runOne(kind: string, c: Config, work: string): Promise<Result> {
  const sock = path.join(work, `${kind}.sock`);
  let backend: Backend | null = null;
  let disk: string | undefined;
  let root = '/mnt';
  if (kind === 'kfsd-image' || kind === 'kfsd-image-open') {
    const img = path.join(work, 'kfs.img');
    fs.rmSync(img, { force: true });
    mustRun(process.execPath, [KFS, 'mkfs', img, '--size', '2G']);
    backend = await startKfsd(sock, ['--image', img, '--log-level', 'warn', ...(kind === 'kfsd-image-open' ? ['--open'] : [])]);
  } else if (kind === 'kfsd-shared' || kind === 'virtiofsd') {
    const dir = path.join(work, kind);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir);
    backend = kind === 'virtiofsd' ? await startVirtiofsd(sock, dir) : await startKfsd(sock, ['--shared-dir', dir, '--log-level', 'warn']);
  } else {
    disk = path.join(work, 'guest-ext4.img');
    fs.rmSync(disk, { force: true });
    mustRun('mkfs.ext4', ['-q', '-F', disk, '2G']);
    root = '/mnt/blk';
  }
  const pre = disk ? 'mkdir -p /mnt/blk && mount -t ext4 /dev/vda /mnt/blk\n' : '';
  try {
    const r = await runGuest({
      socketPath: backend?.socketPath, mount: !disk, disk, script: pre + script(c, root),
      // A round takes 1-3 minutes under TCG; a guest that hangs (the C virtiofsd once left the
      // guest's umount blocked forever) should cost a round, not the run.
      memMiB: 1024, timeoutMs: 8 * 60_000,
    });
    if (r.exit !== '0') throw new Error(`${kind}: guest exit ${r.exit}\n${r.console.slice(-2000)}\n${backend?.output.slice(-2000) ?? ''}`);
    return parseResults(r.console);
  } finally {
    await backend?.stop();
  }
}

async function main(): Promise<void> {
  const c = parseArgs(process.argv.slice(2));
  guestAvailable();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kfs-bench-guest-'));
  const kinds = c.kinds;
  const rounds: Record<string, Result[]> = Object.fromEntries(kinds.map((k) => [k, []]));
  /** Runs that failed (guest error, hang, crash): reported, and left out of the medians. */
  const failures: { round: number; kind: string; error: string }[] = [];
  try {
    for (let i = 0; i < c.repeat; i++) {
      for (const k of kinds) {
        process.stderr.write(`round ${i + 1}/${c.repeat}: ${k}...\n`);
        try {
          rounds[k].push(await runOne(k, c, work));
        } catch (e) {
          const error = (e as Error).message;
          failures.push({ round: i + 1, kind: k, error });
          process.stderr.write(`round ${i + 1}/${c.repeat}: ${k} FAILED (left out of the medians): ${error.split('\n')[0]}\n`);
        }
      }
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  const med: Record<string, Result> = {};
  for (const k of kinds) med[k] = Object.fromEntries(STEPS.map((s) => [s.name, median(rounds[k].map((r) => r[s.name] ?? NaN)) ?? NaN]));
  const fmt = (v: number) => (Number.isFinite(v) ? (v >= 100 ? Math.round(v).toLocaleString('en-US') : v.toFixed(1)) : '-');
  // Ratios to virtiofsd for the kfsd targets present (and of the two kfsd --image modes).
  const pairs: [string, string][] = [];
  if (kinds.includes('virtiofsd')) for (const k of ['kfsd-shared', 'kfsd-image', 'kfsd-image-open']) if (kinds.includes(k)) pairs.push([k, 'virtiofsd']);
  if (kinds.includes('kfsd-image') && kinds.includes('kfsd-image-open')) pairs.push(['kfsd-image', 'kfsd-image-open']);
  const header = ['step', 'unit', ...kinds, ...pairs.map(([a, b]) => `${a}/${b}`)];
  const rows = STEPS.map((s) => [
    s.name, s.unit, ...kinds.map((k) => fmt(med[k][s.name])),
    ...pairs.map(([a, b]) => (med[a][s.name] / med[b][s.name]).toFixed(2) + 'x'),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((v, i) => (i < 2 ? v.padEnd(widths[i]) : v.padStart(widths[i]))).join('  ');
  process.stdout.write(`${line(header)}\n${rows.map(line).join('\n')}\n`);
  if (failures.length) {
    process.stdout.write(`\nfailed runs, left out of the medians: ${failures.map((f) => `round ${f.round} ${f.kind}`).join(', ')} (errors in the JSON)\n`);
    // Medians without any round of some target are no measurement.
    if (kinds.some((k) => rounds[k].length === 0)) process.exitCode = 1;
  }
  const report = {
    date: new Date().toISOString(), host: os.hostname(), cpus: os.cpus().length, load: os.loadavg(),
    guestKernel: guestKernelVersion(), config: c, median: med, rounds, failures,
  };
  fs.mkdirSync(path.dirname(c.out), { recursive: true });
  fs.writeFileSync(c.out, `${JSON.stringify(report, null, 2)}\n`);
  process.stdout.write(`\nJSON: ${c.out}\n`);
}

main().catch((e: Error) => {
  process.stderr.write(`bench/guest: ${e.message}\n`);
  process.exit(1);
});
