/**
 * DAX read throughput: a 256 MiB file of a kfsd --image, read by the test front-end
 * (test/helpers/vhost-frontend.ts, playing QEMU and the guest) in one run, against one kfsd:
 *   fuse-read      FUSE_READ of 1 MiB over the request queue, N in flight (what a guest
 *                  without DAX does)
 *   window-map     per 2 MiB range (the guest's DAX range size): SETUPMAPPING (read), then the
 *                  range's bytes read through the window; N ranges in flight; REMOVEMAPPING of
 *                  all ranges at the end, timed too (a guest meeting the file for the first time)
 *   window-mapped  the same reads with every range already mapped (a guest re-reading a file
 *                  whose ranges are still in its window)
 * "Read through the window" is a copy out of the front-end's mmap of the image fd kfsd passed
 * with SHMEM_MAP, into a guest buffer. Each FUSE_READ reply is copied out of guest memory
 * likewise. The image's pages are in the host page cache for every path (a warm-up pass
 * first): this measures the transport, not the disk. Every read checks the chunk's stamp.
 *
 *   node dist/test/bench/dax.js [--size-mib 256] [--inflight 8] [--runs 3] [--dir DIR]
 *        [--out bench-results/dax.json]
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FUSE_SETUPMAPPING_FLAG_READ } from '../../src/fuse/abi';
import { spawnKfsd, VhostFrontend, type Backend } from '../helpers/vhost-frontend';
import { kfsdPath } from '../helpers/vhost-frontend/backends';
import { forEachOption, now, pool, timed } from './lib/proc';

const MiB = 1 << 20;
const RANGE = 2 * MiB;
const ROOT = 1;

interface Config {
  sizeMiB: number;
  inflight: number;
  runs: number;
  dir: string;
  out: string;
}

const USAGE = `usage: node dist/test/bench/dax.js [--size-mib 256] [--inflight 8] [--runs 3] [--dir DIR] [--out bench-results/dax.json]\n`;

function parseArgs(argv: string[]): Config {
  const c: Config = { sizeMiB: 256, inflight: 8, runs: 3, dir: os.tmpdir(), out: path.join('bench-results', 'dax.json') };
  forEachOption(argv, (a, v) => {
    if (a === '--size-mib') c.sizeMiB = Number(v());
    else if (a === '--inflight') c.inflight = Number(v());
    else if (a === '--runs') c.runs = Number(v());
    else if (a === '--dir') c.dir = v();
    else if (a === '--out') c.out = v();
    else if (a === '-h' || a === '--help') {
      process.stdout.write(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument ${a}\n${USAGE}`);
  });
  if (!(c.sizeMiB >= 2 && c.sizeMiB % 2 === 0 && c.inflight >= 1 && c.runs >= 1)) throw new Error('--size-mib must be an even number >= 2, --inflight and --runs positive');
  return c;
}

const log = (s: string): void => void process.stderr.write(`${s}\n`);

/** Chunk i of the file: shared random bytes with i stamped in its first 8. */
function chunk(base: Buffer, i: number): Buffer {
  const b = Buffer.from(base);
  b.writeBigUInt64LE(BigInt(i), 0);
  return b;
}

function checkStamp(b: Buffer, i: number, what: string): void {
  if (b.length < 8 || b.readBigUInt64LE(0) !== BigInt(i)) throw new Error(`${what}: MiB ${i} of the file read back wrong`);
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

interface PathResult {
  key: string;
  label: string;
  mibPerSec: number[];
}

async function measure(c: Config, fe: VhostFrontend): Promise<PathResult[]> {
  const fuse = fe.fuse;
  const init = await fuse.init();
  if (init.maxWrite < MiB) throw new Error(`kfsd allows ${init.maxWrite}-byte writes; the benchmark uses 1 MiB`);
  const window = fe.window;
  if (!window) throw new Error('kfsd offered no DAX window (SHMEM not negotiated)');
  const ranges = c.sizeMiB / 2;
  if (ranges * RANGE > window.size) throw new Error(`a ${c.sizeMiB} MiB file does not fit the ${window.size}-byte window`);

  const { entry, fh } = await fuse.create(ROOT, 'dax-bench', 0o644);
  const node = entry.nodeid;
  const base = randomBytes(MiB);
  await pool(c.sizeMiB, c.inflight, (i) => fuse.write(node, fh, i * MiB, chunk(base, i)));
  await fuse.fsync(node, fh);

  const fuseRead = async (): Promise<void> => {
    await pool(c.sizeMiB, c.inflight, async (i) => {
      const b = await fuse.read(node, fh, i * MiB, MiB);
      if (b.length !== MiB) throw new Error(`short FUSE_READ at MiB ${i}: ${b.length}`);
      checkStamp(b, i, 'FUSE_READ');
    });
  };
  /** Guest buffers the window reads copy into, one per reader. */
  const dest = Array.from({ length: c.inflight }, () => Buffer.alloc(MiB));
  const readRange = (r: number, into: Buffer): void => {
    for (let k = 0; k < 2; k++) {
      window.read(r * RANGE + k * MiB, MiB, into);
      checkStamp(into, 2 * r + k, 'window read');
    }
  };
  const windowMap = async (): Promise<void> => {
    let next = 0;
    const worker = async (w: number): Promise<void> => {
      while (next < ranges) {
        const r = next++;
        await fuse.setupmapping(node, fh, r * RANGE, RANGE, r * RANGE, FUSE_SETUPMAPPING_FLAG_READ);
        readRange(r, dest[w]);
      }
    };
    await Promise.all(Array.from({ length: Math.min(c.inflight, ranges) }, (_, w) => worker(w)));
    // Linux sends at most FUSE_REMOVEMAPPING_MAX_ENTRY ranges per request (PAGE_SIZE / 16 = 256).
    const all = Array.from({ length: ranges }, (_, r) => ({ moffset: r * RANGE, len: RANGE }));
    for (let i = 0; i < all.length; i += 256) await fuse.removemapping(all.slice(i, i + 256));
  };
  const windowMapped = async (): Promise<void> => {
    for (let r = 0; r < ranges; r++) readRange(r, dest[0]);
  };

  // Warm-up, not timed: the image's pages into the host page cache, JIT on both sides.
  await fuseRead();
  await windowMap();

  const results: PathResult[] = [
    { key: 'fuse-read', label: `FUSE_READ 1 MiB, ${c.inflight} in flight`, mibPerSec: [] },
    { key: 'window-map', label: `window: SETUPMAPPING 2 MiB + read, ${c.inflight} in flight, REMOVEMAPPING`, mibPerSec: [] },
    { key: 'window-mapped', label: 'window: ranges already mapped, read', mibPerSec: [] },
  ];
  for (let run = 0; run < c.runs; run++) {
    log(`run ${run + 1}/${c.runs}`);
    results[0].mibPerSec.push(c.sizeMiB / (await timed(fuseRead)));
    results[1].mibPerSec.push(c.sizeMiB / (await timed(windowMap)));
    // Map everything (untimed), then read it all twice: the first pass faults the pages in.
    await pool(ranges, c.inflight, (r) => fuse.setupmapping(node, fh, r * RANGE, RANGE, r * RANGE, FUSE_SETUPMAPPING_FLAG_READ));
    await windowMapped();
    results[2].mibPerSec.push(c.sizeMiB / (await timed(windowMapped)));
    const all = Array.from({ length: ranges }, (_, r) => ({ moffset: r * RANGE, len: RANGE }));
    for (let i = 0; i < all.length; i += 256) await fuse.removemapping(all.slice(i, i + 256));
  }
  await fuse.release(node, fh);
  return results;
}

function sh(cmd: string, args: string[]): { code: number; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return { code: r.status ?? 1, out: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}

function table(results: PathResult[]): string {
  const fuseMed = median(results[0].mibPerSec);
  const head = ['path', 'MiB/s (median)', 'runs', 'vs FUSE_READ'];
  const body = results.map((r) => [r.label, Math.round(median(r.mibPerSec)).toLocaleString('en-US'), r.mibPerSec.map((x) => Math.round(x)).join(' / '), `${(median(r.mibPerSec) / fuseMed).toFixed(2)}x`]);
  const wd = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]): string => cells.map((s, i) => (i === 0 ? s.padEnd(wd[i]) : s.padStart(wd[i]))).join(' | ');
  return [line(head), wd.map((n) => '-'.repeat(n)).join('-|-'), ...body.map(line)].join('\n');
}

async function main(): Promise<number> {
  const c = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(kfsdPath())) throw new Error(`${kfsdPath()} is missing; build first (npx tsc -p .)`);
  const work = fs.mkdtempSync(path.join(c.dir, 'kfs-bench-dax-'));
  const loadStart = os.loadavg();
  const image = path.join(work, 'dax.img');
  const socket = path.join(work, 'vhost.sock');
  const imageSize = Math.max(1024, 2 * c.sizeMiB) * MiB;
  const windowSize = Math.max(1024 * MiB, c.sizeMiB * MiB);
  let backend: Backend | null = null;
  let fe: VhostFrontend | null = null;
  let results: PathResult[];
  let fsck = '';
  try {
    fs.writeFileSync(image, '');
    fs.truncateSync(image, imageSize);
    const mk = sh(process.execPath, [path.join(path.dirname(kfsdPath()), 'kfs.js'), 'mkfs', '-q', '-F', '--size', String(imageSize), image]);
    if (mk.code !== 0) throw new Error(`kfs mkfs failed: ${mk.out}`);
    backend = spawnKfsd(['--image', image], socket, ['--dax-window', String(windowSize)]);
    try {
      fe = await VhostFrontend.start({ socketPath: socket, queueSize: 256 });
      results = await measure(c, fe);
    } catch (e) {
      throw new Error(`${(e as Error).message}\nkfsd output:\n${backend.output.slice(-2000)}`);
    } finally {
      fe?.close();
      const exit = await backend.stop();
      if (exit.code !== 0) log(`kfsd exited ${JSON.stringify(exit)}`);
    }
    fsck = sh('e2fsck', ['-fn', image]).code === 0 ? 'clean' : 'ERRORS';
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  const fuseMed = median(results[0].mibPerSec);
  const result = {
    benchmark: 'dax',
    machine: {
      cpu: /^model name\s*:\s*(.+)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim(),
      cores: os.cpus().length,
      kernel: os.release(),
      node: process.version,
      date: new Date().toISOString(),
      git: sh('git', ['-C', path.join(__dirname, '..', '..', '..'), 'rev-parse', '--short', 'HEAD']).out,
      loadAvgAtStart: loadStart.map((x) => Math.round(x * 100) / 100),
      loadAvgAtEnd: os.loadavg().map((x) => Math.round(x * 100) / 100),
    },
    config: { fileMiB: c.sizeMiB, inflight: c.inflight, runs: c.runs, readSize: MiB, daxRange: RANGE, windowSize, imageSize },
    unit: 'MiB/s',
    paths: results.map((r) => ({ ...r, median: median(r.mibPerSec), vsFuseRead: median(r.mibPerSec) / fuseMed })),
    fsck,
  };
  process.stdout.write(`${table(results)}\n\ne2fsck -fn after the run: ${fsck}\n`);
  fs.mkdirSync(path.dirname(c.out), { recursive: true });
  fs.writeFileSync(c.out, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(`JSON: ${c.out}\n`);
  return fsck === 'clean' ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e: Error) => {
    process.stderr.write(`bench dax: ${e.message}\n`);
    process.exit(2);
  },
);
