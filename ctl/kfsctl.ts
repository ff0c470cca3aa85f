#!/usr/bin/env node
/**
 * `kfsctl`: control of a kfs filesystem, served (kfs mount, kfsd: over its control socket) or
 * offline (the image file, opened read-only here). See ctl/target.ts for -t.
 *
 *   kfsctl [-t TARGET] status [--watch] [--json]
 *   kfsctl [-t TARGET] defrag [PATH] [--check] [--top N] [--json]
 *   kfsctl [-t TARGET] map --svg FILE [--cells N] [--json]
 *
 * defrag without --check moves data (src/ext4/defrag.ts), online through the serving process
 * or offline on the image opened read-write; it prints a before/after table.
 *   kfsctl [-t TARGET] snapshot create NAME | list | delete NAME | restore NAME [--path P] --yes
 * (ctl/snapshot.ts; a whole restore works offline only).
 * Exit codes: 0 ok, 1 error, 2 usage error; every error is one line on stderr.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Command, CommanderError } from 'commander';
import { SingleBar, Presets } from 'cli-progress';
import { setLogLevel } from '../src/util/log';
import { action, applyCliConventions, oneLine, UsageError } from '../src/cli/common';
import { normalizeFsPath } from '../src/ext4/fragmentation';
import { canonical } from '../src/control/registry';
import { Backend, openBackend, resolveTarget } from './target';
import { renderDefrag, renderDefragResult, renderStatus } from './render';
import { renderBlockMapSvg } from './svg';
import { registerSnapshot } from './snapshot';


interface GlobalOpts {
  target?: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function withBackend<T>(program: Command, fn: (b: Backend) => Promise<T>, writable = false): Promise<T> {
  const g = program.opts<GlobalOpts>();
  const b = await openBackend(resolveTarget(g.target), { writable });
  try {
    return await fn(b);
  } finally {
    await b.close();
  }
}

/** A progress bar on a terminal (stderr), nothing otherwise. */
function progressBar(enabled: boolean): { update: (phase: string, done: number, total: number) => void; stop: () => void } {
  if (!enabled || !process.stderr.isTTY) return { update: () => undefined, stop: () => undefined };
  const bar = new SingleBar({ stream: process.stderr, format: ' {phase} [{bar}] {percentage}% {value}/{total}', hideCursor: true, clearOnComplete: true }, Presets.shades_classic);
  let started = false;
  return {
    update: (phase, done, total) => {
      if (!started) {
        bar.start(total, done, { phase });
        started = true;
      } else {
        bar.setTotal(total);
        bar.update(done, { phase });
      }
    },
    stop: () => started && bar.stop(),
  };
}

function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v, null, 2) + '\n');
}

async function statusAction(program: Command, o: { watch?: boolean; json?: boolean }): Promise<void> {
  await withBackend(program, async (b) => {
    const watch = !!o.watch && process.stdout.isTTY;
    for (;;) {
      const s = await b.run('status', {});
      if (o.json) printJson(s);
      else {
        if (watch) process.stdout.write('\x1b[H\x1b[2J');
        process.stdout.write(renderStatus(s));
      }
      if (!watch) return;
      await sleep(1000);
    }
  });
}

/** PATH on the command line → a path inside the filesystem. */
function fsPathOf(arg: string | undefined, mountpoint: string | null): string {
  if (arg === undefined) return '/';
  if (mountpoint) {
    const abs = canonical(path.resolve(arg));
    const mp = canonical(mountpoint);
    if (abs === mp) return '/';
    if (abs.startsWith(mp + '/')) return normalizeFsPath(abs.slice(mp.length));
    if (!path.isAbsolute(arg)) throw new UsageError(`${arg} is not inside the kfs mount at ${mountpoint}`);
  }
  return normalizeFsPath(arg);
}

async function defragAction(program: Command, p: string | undefined, o: { check?: boolean; json?: boolean; top?: string }): Promise<number> {
  const top = o.top === undefined ? 10 : Number(o.top);
  if (!Number.isInteger(top) || top < 1 || top > 10000) throw new UsageError(`--top needs a whole number from 1 to 10000, got ${o.top}`);
  if (!o.check) {
    // Moving data: offline, the image is opened read-write (exclusive lock).
    return withBackend(program, async (b) => {
      const fsPath = fsPathOf(p, b.mountpoint);
      const bar = progressBar(!o.json);
      let r;
      try {
        r = await b.run('defrag', { path: fsPath, top }, bar.update);
      } finally {
        bar.stop();
      }
      if (o.json) printJson(r);
      else process.stdout.write(renderDefragResult(r, b.mountpoint));
      return 0;
    }, true);
  }
  return withBackend(program, async (b) => {
    const fsPath = fsPathOf(p, b.mountpoint);
    const bar = progressBar(!o.json);
    let r;
    try {
      r = await b.run('defrag-check', { path: fsPath, top }, bar.update);
    } finally {
      bar.stop();
    }
    if (o.json) printJson(r);
    else process.stdout.write(renderDefrag(r, b.mountpoint));
    return 0;
  });
}

async function mapAction(program: Command, o: { svg?: string; cells?: string; json?: boolean }): Promise<number> {
  if (!o.svg) throw new UsageError('map needs --svg FILE');
  const cells = o.cells === undefined ? 4096 : Number(o.cells);
  if (!Number.isInteger(cells) || cells < 1 || cells > 65536) throw new UsageError(`--cells needs a whole number from 1 to 65536, got ${o.cells}`);
  const dir = path.dirname(path.resolve(o.svg));
  if (!fs.existsSync(dir)) throw new UsageError(`directory ${dir} for --svg does not exist`);
  return withBackend(program, async (b) => {
    const bar = progressBar(!o.json);
    let m;
    try {
      m = await b.run('map', { maxCells: cells }, bar.update);
    } finally {
      bar.stop();
    }
    fs.writeFileSync(o.svg!, renderBlockMapSvg(m, `kfs block map: ${b.describe}`));
    if (o.json) printJson({ svg: path.resolve(o.svg!), blocks: m.blocks, blockSize: m.blockSize, blocksPerCell: m.blocksPerCell, cells: m.counts.length, totals: m.totals, inconsistent: m.inconsistent, damaged: m.damaged });
    else {
      const t = Object.entries(m.totals).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(', ');
      process.stdout.write(`wrote ${o.svg}: ${m.counts.length} cells of ${m.blocksPerCell} block(s); ${t}\n`);
    }
    return 0;
  });
}



export function buildProgram(): Command {
  const program = new Command('kfsctl')
    .description('manage a kfs filesystem: status, snapshots, defragmentation, block map')
    .option('-t, --target <target>', 'mount point, control socket or image file (default: the kfs filesystem holding the current directory)')
    .showSuggestionAfterError(true);
  program.command('status')
    .description('image, space, journal, cache, FUSE requests and clients')
    .option('--watch', 'refresh every second (on a terminal)')
    .option('--json', 'machine-readable output')
    .action(action('kfsctl', (o: { watch?: boolean; json?: boolean }) => statusAction(program, o)));
  program.command('defrag')
    .description('move fragmented files into contiguous free space, or only measure fragmentation (--check) like e4defrag -c')
    .argument('[path]', 'file or directory (default: the whole filesystem)')
    .option('--check', 'only report fragmentation')
    .option('--top <n>', 'how many of the worst files to list (default 10)')
    .option('--json', 'machine-readable output')
    .action(action('kfsctl', (p: string | undefined, o: { check?: boolean; json?: boolean; top?: string }) => defragAction(program, p, o)));
  program.command('map')
    .description("draw the image's block map")
    .option('--svg <file>', 'write the map as SVG here')
    .option('--cells <n>', 'at most this many cells (default 4096)')
    .option('--json', 'print the totals as JSON')
    .action(action('kfsctl', (o: { svg?: string; cells?: string; json?: boolean }) => mapAction(program, o)));
  const snap = registerSnapshot(program, { withBackend, progressBar, printJson, fsPathOf });
  for (const cmd of [program, ...program.commands, ...snap.commands]) {
    const name = cmd === program ? 'kfsctl' : `kfsctl ${cmd.parent && cmd.parent !== program ? `${cmd.parent.name()} ` : ''}${cmd.name()}`;
    applyCliConventions(cmd, name, 'kfsctl');
  }
  return program;
}

export async function main(argv = process.argv): Promise<number> {
  setLogLevel(process.env.KFS_LOG_LEVEL ?? 'error');
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    process.stderr.write(`kfsctl: ${oneLine(e)}\n`);
    return 1;
  }
  if (argv.length <= 2) {
    process.stderr.write("kfsctl: no command given; run 'kfsctl --help' for usage\n");
    return 2;
  }
  return typeof process.exitCode === 'number' ? process.exitCode : 0;
}

if (require.main === module) {
  main().then((code) => {
    process.exitCode = code;
    // Offline work closed the image; a control connection is closed too. Exit even if a handle lingers.
    setImmediate(() => process.exit(code));
  });
}

