/**
 * The scratch filesystems kfsd warms its JIT up on (fuse/warmup.ts): a small kfs image, or a
 * host directory, in /dev/shm (memory) where it can, else the temporary directory. Either is
 * gone once the warm-up ends: the image file is unlinked as soon as it is open, the directory
 * removed when the scratch filesystem is closed.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { formatImage } from '../../mkfs/format';
import { Ext4Fs } from '../ext4/fs';
import { Ext4FuseFs } from '../ext4/fuse-adapter';
import { WarmupScratch, WarmupOptions, warmUp } from '../fuse/warmup';
import { GUEST_INIT_FLAGS } from '../fuse/request-encode';
import { SessionOptions } from '../fuse/dispatcher';
import { log } from '../util/log';

/**
 * Sparse, and formatted in milliseconds (inode tables are initialized lazily); as large as a
 * small guest disk so that it has several block groups and a new directory lands outside the
 * first, as on a real image: the allocator then takes the same paths (another group's bitmaps
 * and inode table) as it will for the guest. On a one-group image they stayed cold.
 */
const SCRATCH_IMAGE_BYTES = 1 << 30;
/** A round is what the guest benchmark's create, stat, read and rm steps send per file. */
const WARMUP_FILES = 1000;
/** KFS_WARMUP_ROUNDS overrides it (tests make the warm-up outlast their first request with it). */
const WARMUP_ROUNDS = 3;

function rounds(): number {
  const v = Number(process.env.KFS_WARMUP_ROUNDS);
  return Number.isSafeInteger(v) && v >= 0 ? v : WARMUP_ROUNDS;
}

function scratchDir(): string {
  let root = os.tmpdir();
  try {
    fs.accessSync('/dev/shm', fs.constants.W_OK);
    root = '/dev/shm';
  } catch {
    /* no writable /dev/shm: the temporary directory */
  }
  removeLeftovers(root);
  return fs.mkdtempSync(path.join(root, `kfs-warmup-${process.pid}-`));
}

/**
 * Scratch directories of kfsd processes that died during their warm-up (SIGKILL, a crash).
 * Only directories this user owns that nobody else can write into (as mkdtemp makes them):
 * /dev/shm is writable by everyone, and a recursive removal by root of a directory another
 * user controls could be steered outside it (a subdirectory swapped for a symlink).
 * Best effort: nothing here may cancel the warm-up.
 */
function removeLeftovers(root: string): void {
  try {
    for (const name of fs.readdirSync(root)) {
      const m = /^kfs-warmup-(\d+)-/.exec(name);
      if (!m || Number(m[1]) === process.pid) continue;
      const dir = path.join(root, name);
      const st = fs.lstatSync(dir, { throwIfNoEntry: false });
      if (!st || !st.isDirectory() || st.uid !== process.geteuid?.() || (st.mode & 0o022) !== 0) continue;
      try {
        process.kill(Number(m[1]), 0);
        continue; // alive, or not ours to signal (EPERM)
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ESRCH') continue;
      }
      fs.rmSync(dir, { recursive: true, force: true });
    }
  } catch {
    /* unreadable, or going away meanwhile */
  }
}

/** An Ext4FuseFs on a fresh scratch image, served as kfsd serves its image (no_open or not). */
async function scratchImage(noOpen: boolean, cacheBytes: number): Promise<WarmupScratch> {
  const dir = scratchDir();
  let ext4: Ext4Fs;
  try {
    const image = path.join(dir, 'scratch.img');
    await formatImage(image, { size: SCRATCH_IMAGE_BYTES });
    // No periodic commit of its own: the warm-up runs it after each round.
    ext4 = await Ext4Fs.open(image, { cacheBytes, commitIntervalMs: 0 });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const fuseFs = new Ext4FuseFs(ext4);
  fuseFs.noOpen = noOpen;
  // Thrown away unwritten: the warm-up's end is the first request's start.
  return { fs: fuseFs, commit: () => ext4.sync(false), close: () => ext4.discard() };
}

/** A PassthroughFs on a fresh scratch directory. */
async function scratchSharedDir(): Promise<WarmupScratch> {
  const dir = scratchDir();
  const { PassthroughFs } = await import('../passthrough/passthrough-fs');
  try {
    const pfs = await PassthroughFs.open(dir, {});
    return {
      fs: pfs,
      close: async () => {
        // No syncfs, and the files removed off the event loop: the first request is waiting.
        await pfs.close(false);
        await fs.promises.rm(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/**
 * Warm kfsd's JIT up on a scratch filesystem of the served kind until done or until
 * `stopReason()` names a reason to stop (the first real request, shutdown). Logs what it did;
 * never fails the caller.
 */
export async function warmUpKfsd(
  served: { kind: 'image' | 'shared-dir'; noOpen: boolean; cacheBytes: number }, session: SessionOptions, stopReason: () => string | null,
): Promise<void> {
  const shouldStop = () => stopReason() !== null;
  const kind = served.kind;
  // Writable even when the served filesystem is not: the scratch one is, and its requests must succeed.
  const o: WarmupOptions = { files: WARMUP_FILES, rounds: rounds(), shouldStop, session: { ...session, readOnly: false }, initMinor: 38, initFlags: GUEST_INIT_FLAGS };
  try {
    // Already told to stop (a signal during start-up, a quick front-end): no scratch to build.
    const r = shouldStop()
      ? { requests: 0, ms: 0, ended: 'stopped' }
      : await warmUp(kind === 'image' ? await scratchImage(served.noOpen, served.cacheBytes) : await scratchSharedDir(), o);
    const how = r.ended === 'done' ? 'done' : r.ended === 'stopped' ? `stopped by ${stopReason() ?? 'request'}` : `ended early: ${r.ended}`;
    const line = `JIT warm-up on a scratch ${kind === 'image' ? 'image' : 'directory'}: ${r.requests} requests in ${r.ms.toFixed(0)} ms (${how})`;
    if (r.ended === 'done' || r.ended === 'stopped') log.info(line);
    else log.warn(line);
  } catch (e) {
    log.warn(`JIT warm-up skipped: ${(e as Error).message}`);
  }
}
