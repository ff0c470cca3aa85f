/**
 * `kfs mkfs <image>`: mke2fs-style front end to mkfs/format.ts. Parses and validates the
 * options (mkfs/options.ts), shows a progress bar on a terminal when formatting is slow, prints
 * mke2fs's summary, and turns failures into one line on stderr:
 *   kfs mkfs: <what is wrong>; <what to do>
 * with exit code 2 for bad options and 1 for everything else.
 */
import { Command } from 'commander';
import { SingleBar, Presets } from 'cli-progress';
import { FsError } from '../util/errors';
import { formatImage, MkfsResult } from '../../mkfs/format';
import { mkfsOptionsFromCli, MkfsCliValues, MkfsUsageError } from '../../mkfs/options';

const EXIT_ERROR = 1;
const EXIT_USAGE = 2;
/** Formatting that finishes sooner than this never shows a progress bar. */
const PROGRESS_DELAY_MS = 500;

const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

export function registerMkfs(program: Command): Command {
  return program
    .command('mkfs')
    .description('create an ext4 filesystem (what Debian 12 mkfs.ext4 makes) in an image file or block device')
    .argument('<image>', 'image file (created if missing, with --size) or block device')
    .option('--size <size>', 'filesystem size in bytes or with a K/M/G/T suffix (default: the file or device size)')
    .option('-b, --block-size <bytes>', 'block size: 1024, 2048 or 4096 (default: 1024 below 512M, else 4096)')
    .option('-N, --inodes <count>', 'number of inodes (rounded up to fill inode-table blocks)')
    .option('-i, --bytes-per-inode <bytes>', 'one inode per this many bytes (default by size: 4096 to 65536)')
    .option('-L, --label <label>', 'volume label, at most 16 bytes')
    .option('-U, --uuid <uuid>', 'filesystem UUID: random, time or xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx')
    .option('-O, --features <list>', 'feature edits, e.g. ^has_journal,^64bit (repeatable)', collect)
    .option('-m, --reserved-percent <pct>', 'percentage of blocks reserved for root, 0-50 (default 5)')
    .option('-J, --journal <options>', 'journal options: size=<MiB> (repeatable)', collect)
    .option('-q, --quiet', 'print nothing but errors')
    .option('-F, --force', 'overwrite an existing ext2/3/4 filesystem')
    .action(async (image: string, values: MkfsCliValues) => {
      await runMkfs(image, values);
    });
}

async function runMkfs(image: string, values: MkfsCliValues): Promise<void> {
  let opts;
  try {
    opts = mkfsOptionsFromCli(values);
  } catch (e) {
    fail(e);
    return;
  }
  const progress = new DelayedProgress(!values.quiet && process.stderr.isTTY === true);
  let result: MkfsResult;
  try {
    result = await formatImage(image, opts, (done, total) => progress.update(done, total));
  } catch (e) {
    progress.stop();
    fail(e);
    return;
  }
  progress.stop();
  if (values.quiet) return;
  for (const w of result.warnings) process.stderr.write(`kfs mkfs: warning: ${w}\n`);
  process.stdout.write(summary(result));
}

/** mke2fs's closing report. */
function summary(r: MkfsResult): string {
  const lines = [
    `Creating filesystem with ${r.blocksCount} ${r.blockSize / 1024}k blocks and ${r.inodesCount} inodes`,
    `Filesystem UUID: ${r.uuid}`,
  ];
  if (r.label) lines.push(`Filesystem volume name: ${r.label}`);
  if (r.superblockBackups.length) lines.push(`Superblock backups stored on blocks: ${r.superblockBackups.join(', ')}`);
  lines.push(r.journalBlocks ? `Journal: ${r.journalBlocks} blocks` : 'Journal: none');
  lines.push(`Features: ${r.features.join(' ')}`);
  return `${lines.join('\n')}\n`;
}

/** One line, "kfs mkfs: <what is wrong>; <what to do>", and the exit code for the kind of failure. */
function fail(e: unknown): void {
  let message: string;
  if (e instanceof FsError) message = e.message.replace(new RegExp(`^${e.code}: `), '');
  else message = `unexpected failure: ${e instanceof Error ? e.message : String(e)}; please report it with the command line used`;
  process.stderr.write(`kfs mkfs: ${message.replace(/\s*\n\s*/g, ' ')}\n`);
  process.exitCode = e instanceof MkfsUsageError ? EXIT_USAGE : EXIT_ERROR;
}

/** A cli-progress bar on stderr that only appears once formatting has taken PROGRESS_DELAY_MS. */
class DelayedProgress {
  private bar: SingleBar | null = null;
  private readonly started = Date.now();

  constructor(private readonly enabled: boolean) {}

  update(done: number, total: number): void {
    if (!this.enabled) return;
    if (!this.bar) {
      if (Date.now() - this.started < PROGRESS_DELAY_MS || done >= total) return;
      this.bar = new SingleBar({ format: 'Writing groups [{bar}] {value}/{total}', stream: process.stderr, hideCursor: true, clearOnComplete: true }, Presets.shades_classic);
      this.bar.start(total, done);
      return;
    }
    this.bar.setTotal(total);
    this.bar.update(done);
  }

  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}
