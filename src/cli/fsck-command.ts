/**
 * `kfs fsck disk.img [-y]`: replays the journal if the image needs recovery (what any mount
 * would do first; kfs's replay, so e2fsck then checks the state a mount would see), then runs
 * e2fsck, read-only (-n) unless asked to repair. --no-replay leaves the journal to e2fsck
 * (which skips it under -n).
 */
import { Command } from 'commander';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { FsError } from '../util/errors';
import { Volume } from '../ext4/volume';
import { BlockDevice } from '../block/device';
import { action } from './common';

const E2FSCK_CANDIDATES = ['/usr/sbin/e2fsck', '/sbin/e2fsck', '/usr/bin/e2fsck'];

export function findE2fsck(): string | null {
  for (const c of E2FSCK_CANDIDATES) if (fs.existsSync(c)) return c;
  const r = spawnSync('sh', ['-c', 'command -v e2fsck'], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() ? r.stdout.trim() : null;
}

/** Snapshots kept in the image (0 when it has no snapshot store). Takes the image lock briefly. */
function countSnapshots(image: string): number {
  const dev = BlockDevice.open(image, { readOnly: true });
  try {
    return dev.snapshots?.list().length ?? 0;
  } finally {
    void dev.closeNoSync();
  }
}

export function registerFsck(program: Command): void {
  program
    .command('fsck')
    .description('replay the journal if needed, then check an image with e2fsck (read-only by default)')
    .argument('<image>', 'image file')
    .option('-y, --yes', 'repair what e2fsck finds (e2fsck -fy)')
    .option('-v, --verbose', 'show e2fsck output even when clean')
    .option('--no-replay', 'do not replay the journal first (e2fsck -n then checks the image without it)')
    .option('--force', 'repair (-y) even though the image has snapshots, which the repair may corrupt')
    .action(action('kfs fsck', async (image: string, opts: { yes?: boolean; verbose?: boolean; replay?: boolean; force?: boolean }) => {
      if (!fs.existsSync(image)) throw new FsError('ENOENT', `image ${image} does not exist`);
      // e2fsck -y writes blocks in place, past kfs's copy-on-write: blocks a snapshot shares
      // with the live filesystem would change under it (src/snapshot/store.ts).
      if (opts.yes && !opts.force) {
        const snapshots = countSnapshots(image);
        if (snapshots > 0) {
          throw new FsError('EBUSY', `${image} has ${snapshots} snapshot(s), which a repair by e2fsck would corrupt (it writes without copy-on-write); check without -y, delete them (kfsctl -t ${image} snapshot delete NAME), or pass --force`);
        }
      }
      const e2fsck = findE2fsck();
      if (!e2fsck) throw new FsError('ENOENT', 'e2fsck not found; install e2fsprogs (apt-get install e2fsprogs)');
      if (opts.replay !== false && (await Volume.recoverImage(image))) {
        process.stderr.write(`kfs fsck: ${image}: journal replayed\n`);
      }
      const args = ['-f', opts.yes ? '-y' : '-n', image];
      const r = spawnSync(e2fsck, args, { encoding: 'utf8' });
      if (r.error) throw r.error;
      const code = r.status ?? 8;
      if (code !== 0 || opts.verbose) process.stdout.write(r.stdout + r.stderr);
      // e2fsck exit codes: 0 clean, 1 errors corrected, 2 corrected (reboot), 4 uncorrected, 8+ operational.
      const verdict = code === 0 ? 'clean' : code <= 2 ? 'errors were corrected' : code === 4 ? 'errors remain' : 'e2fsck failed';
      process.stderr.write(`kfs fsck: ${image}: ${verdict} (e2fsck exit ${code})\n`);
      return code;
    }));
}
