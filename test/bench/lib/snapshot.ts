/**
 * A private copy of the built kfs (dist/src, dist/mkfs, the native addon, package.json; with
 * node_modules linked) so that a benchmark run uses one build from start to end even if dist/ is
 * rebuilt meanwhile (a half-written dist/ would otherwise break a mount or unmount mid-run).
 */
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/** The project root: dist/test/bench/lib -> ../../../.. */
export const PROJECT_ROOT = path.join(__dirname, '..', '..', '..', '..');

function hashTree(dir: string, h: ReturnType<typeof createHash>): void {
  for (const e of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) hashTree(p, h);
    else if (e.isFile() && !e.name.endsWith('.map')) {
      h.update(path.relative(dir, p));
      h.update(fs.readFileSync(p));
    }
  }
}

export interface Snapshot {
  /** dist/src/cli/kfs.js inside the copy */
  cli: string;
  /** sha256 (first 16 hex digits) of the copied .js files and the addon */
  fingerprint: string;
}

/**
 * Copy the build into `dest` and check that it loads (`kfs --version` requires every module);
 * a copy taken while tsc was writing is retried.
 */
export function snapshotKfs(dest: string): Snapshot {
  const addon = path.join(PROJECT_ROOT, 'native', 'build', 'Release', 'kfs_native.node');
  let lastErr = '';
  for (let attempt = 0; attempt < 10; attempt++) {
    fs.rmSync(dest, { recursive: true, force: true });
    fs.mkdirSync(path.join(dest, 'dist'), { recursive: true });
    for (const d of ['src', 'mkfs']) fs.cpSync(path.join(PROJECT_ROOT, 'dist', d), path.join(dest, 'dist', d), { recursive: true });
    fs.mkdirSync(path.join(dest, 'native', 'build', 'Release'), { recursive: true });
    fs.copyFileSync(addon, path.join(dest, 'native', 'build', 'Release', 'kfs_native.node'));
    fs.copyFileSync(path.join(PROJECT_ROOT, 'package.json'), path.join(dest, 'package.json'));
    fs.symlinkSync(path.join(PROJECT_ROOT, 'node_modules'), path.join(dest, 'node_modules'));
    const cli = path.join(dest, 'dist', 'src', 'cli', 'kfs.js');
    const r = spawnSync(process.execPath, [cli, '--version'], { encoding: 'utf8' });
    if (r.status === 0) {
      const h = createHash('sha256');
      hashTree(path.join(dest, 'dist'), h);
      h.update(fs.readFileSync(addon));
      return { cli, fingerprint: h.digest('hex').slice(0, 16) };
    }
    lastErr = (r.stderr || r.stdout).trim().split('\n').slice(0, 3).join(' | ');
    spawnSync('sleep', ['2']);
  }
  throw new Error(`the kfs build in ${PROJECT_ROOT}/dist does not load: ${lastErr}`);
}
