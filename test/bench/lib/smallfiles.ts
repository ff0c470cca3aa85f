/**
 * Worker for the small-file workloads of the mount benchmark, run in its own process so that the
 * benchmark's event loop stays free (signals) and the timing excludes node's startup:
 *
 *   node dist/test/bench/lib/smallfiles.js create ROOT FILES DIRS SIZE
 *   node dist/test/bench/lib/smallfiles.js read   ROOT FILES DIRS SIZE
 *
 * create: DIRS directories d0..d{DIRS-1} under ROOT, FILES files spread evenly over them (in
 * directory order), each SIZE bytes written with writeFileSync, then `sync -f ROOT` (syncfs).
 * read: readFileSync of every file, checking the size and the per-file header.
 * Prints one JSON line: {"seconds": ..., "files": ...}.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

function main(): void {
  const [mode, root, filesArg, dirsArg, sizeArg] = process.argv.slice(2);
  const files = Number(filesArg);
  const dirs = Number(dirsArg);
  const size = Number(sizeArg);
  if (!(mode === 'create' || mode === 'read') || !root || !(files > 0) || !(dirs > 0) || !(size >= 32)) {
    process.stderr.write('usage: smallfiles.js create|read ROOT FILES DIRS SIZE\n');
    process.exit(2);
  }
  const perDir = Math.ceil(files / dirs);
  const file = (i: number): string => path.join(root, `d${Math.floor(i / perDir)}`, `f${String(i).padStart(6, '0')}`);
  const header = (i: number): string => `kfs-bench file ${String(i).padStart(8, '0')}\n`;
  const t0 = process.hrtime.bigint();
  if (mode === 'create') {
    const body = randomBytes(size);
    for (let d = 0; d < dirs; d++) fs.mkdirSync(path.join(root, `d${d}`), { recursive: true });
    for (let i = 0; i < files; i++) {
      body.write(header(i), 0, 'latin1');
      fs.writeFileSync(file(i), body);
    }
    const r = spawnSync('sync', ['-f', root]);
    if (r.status !== 0) throw new Error(`sync -f ${root} failed: ${r.stderr}`);
  } else {
    for (let i = 0; i < files; i++) {
      const b = fs.readFileSync(file(i));
      const h = header(i);
      if (b.length !== size || b.toString('latin1', 0, h.length) !== h) throw new Error(`${file(i)}: wrong size (${b.length}) or content`);
    }
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  process.stdout.write(`${JSON.stringify({ seconds, files })}\n`);
}

main();
