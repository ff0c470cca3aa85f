/**
 * `kfs mount disk.img dir/` and `kfs umount dir/`. Without --foreground the command returns once
 * the mount is live (exit 0) or has failed (one line, exit 1): a detached child serves the
 * mount and reports readiness over a pipe. That child (and --foreground) is a supervisor that
 * holds /dev/fuse and restarts the serving process if it dies (transport/supervisor.ts), unless
 * -o nosupervisor.
 */
import { Command, Option } from 'commander';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { FsError } from '../util/errors';
import { log, setLogLevel, logToFile } from '../util/log';
import { native } from '../native';
import { Ext4Fs } from '../ext4/fs';
import { Ext4FuseFs, toNode } from '../ext4/fuse-adapter';
import { notifyInvalEntry } from '../fuse/reply';
import { openSnapshotFs } from '../snapshot/view';
import { FuseSession } from '../fuse/dispatcher';
import { FuseDevice } from '../transport/fusedev';
import { canMountDirectly, fusermountMount, fusermountUnmount } from '../transport/fusermount';
import { superviseMount, parseServerLink, serveSupervised, report, ServerLink } from '../transport/supervisor';
import { SharedSoftLog } from '../ext4/journal/shared-log';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from '../ext4/file-io';
import { startControlServer } from '../control';
import { lockHolders } from '../control/registry';
import { readMountInfo } from '../util/mountinfo';
import { action, UsageError } from './common';

const MountOptionsSchema = z.object({
  ro: z.boolean().default(false),
  allow_other: z.boolean().default(true),
  default_permissions: z.boolean().default(true),
  writeback_cache: z.boolean().default(false),
  noatime: z.boolean().default(false),
  relatime: z.boolean().default(true),
  entry_timeout: z.number().nonnegative().default(3600),
  attr_timeout: z.number().nonnegative().default(3600),
  // The image is this process's alone: a name that is absent stays absent until a request
  // through this mount creates it, which the kernel sees. Cache negative lookups like ext4.
  negative_timeout: z.number().nonnegative().default(3600),
  cache_size: z.number().int().positive().default(256 << 20),
  // Metadata written in place without the jbd2 journal (for measuring the journal's cost).
  nojournal: z.boolean().default(false),
  // Serve without a supervisor: the mount dies with its serving process (see transport/supervisor.ts).
  nosupervisor: z.boolean().default(false),
  // Under the supervisor: hold each reply until the changes behind it are committed to the
  // supervisor's shared memory (ext4/journal/shared-log.ts), so a server death loses nothing
  // acknowledged and the kernel's view (names, sizes, handles) never runs ahead of the
  // filesystem (transport/reply-gate.ts). The commit is log-only (no barrier: a process death
  // is not a power loss) and costs O(changes): ~100 µs of CPU per entry of an rm -rf, a create
  // ~30% slower; nocommit_before_reply buys that back at the price of losing what was
  // acknowledged since the last commit (<= 5 s) when the server dies.
  commit_before_reply: z.boolean().default(true),
  // Keep reading /dev/fuse this many µs after the last reply before sleeping (FuseDevice.
  // pollAfterReplyUs): a client's next request then finds the server awake. At most that much
  // CPU per reply; 0 turns it off.
  busy_poll_us: z.number().int().nonnegative().max(10_000).default(50),
  // Read-ahead of this mount's backing device (its bdi, /sys/class/bdi/MAJ:MIN/read_ahead_kb),
  // which caps the kernel's READ requests for sequential reads: the 128 KiB default makes a
  // 512 MiB cold read 4096 requests, 1024 makes it 512 (FuseDevice.setReadAhead). 0 leaves it.
  read_ahead_kb: z.number().int().nonnegative().max(1 << 20).default(1024),
  // Serve regular files without OPEN and RELEASE requests (FileSystem.noOpen): two requests
  // fewer for every open(2)/close(2) pair. `-o open` brings them back (and ATOMIC_O_TRUNC).
  no_open: z.boolean().default(true),
}).strict();
type MountOpts = z.infer<typeof MountOptionsSchema>;

/** Parse `-o a,b=c` into the validated option set; unknown options are a usage error. */
export function parseMountOptions(list: string[]): MountOpts {
  const raw: Record<string, boolean | number> = {};
  for (const item of list.flatMap((s) => s.split(',')).filter(Boolean)) {
    const [k, v] = item.split('=', 2);
    if (k === 'rw') raw.ro = false;
    else if (k === 'ro') raw.ro = true;
    else if (k === 'nocommit_before_reply' && v === undefined) raw.commit_before_reply = false;
    else if (k === 'open' && v === undefined) raw.no_open = false;
    else if (v === undefined) raw[k] = true;
    else if (/^\d+(\.\d+)?[KMG]?$/.test(v)) raw[k] = parseNumber(v);
    else throw new UsageError(`mount option ${k} needs a number, got ${v}`);
  }
  // allow_other is the default for root; a user gets it only by asking (fusermount3 then
  // requires user_allow_other in /etc/fuse.conf).
  if (raw.allow_other === undefined && !canMountDirectly()) raw.allow_other = false;
  const r = MountOptionsSchema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0];
    const key = issue.code === 'unrecognized_keys' ? issue.keys.join(', ') : issue.path.join('.');
    throw new UsageError(`unknown or bad mount option: ${key}; known: ro, rw, noatime, relatime, allow_other, default_permissions, writeback_cache, entry_timeout=S, attr_timeout=S, negative_timeout=S, cache_size=N[KMG], nojournal, nosupervisor, commit_before_reply (default), nocommit_before_reply, busy_poll_us=N (default 50), read_ahead_kb=N (default 1024), no_open (default), open`);
  }
  return r.data;
}

function parseNumber(v: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMG]?)$/.exec(v)!;
  const mult = { '': 1, K: 1024, M: 1 << 20, G: 1 << 30 }[m[2] as '' | 'K' | 'M' | 'G'];
  return Number(m[1]) * mult;
}

interface MountCliValues {
  options?: string[];
  foreground?: boolean;
  logFile?: string;
  logLevel?: string;
  pidFile?: string;
  readyFd?: string;
  serverFds?: string;
  serverGeneration?: string;
  adopt?: string;
  /** Mount this snapshot's read-only view instead of the live filesystem. */
  snapshot?: string;
}

/**
 * The supervisor's shared memory for log-only commits, mapped (undefined without one: they
 * then go to the image's journal as soft transactions).
 */
function mapSharedLog(link: ServerLink): SharedSoftLog | undefined {
  if (link.sharedLogFd === null) return undefined;
  try {
    const fd = link.sharedLogFd;
    const region = native.mmap(fd, 0, fs.fstatSync(fd).size, true);
    // Pages given back when idle: a hole punched in the memfd (its size stays).
    return new SharedSoftLog(region.chunks[0], (offset, length) => native.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length));
  } catch (e) {
    log.warn(`fuse: the supervisor's shared log cannot be used (${(e as Error).message}); log-only commits go to the journal`);
    return undefined;
  }
}

/** Serve the mount in this process until it is unmounted or signalled. */
export async function serveMount(image: string, mountpoint: string, o: MountOpts, values: MountCliValues, ready: (err?: string, note?: string) => void): Promise<number> {
  if (values.snapshot) o = { ...o, ro: true };
  const link = values.serverFds ? parseServerLink(values.serverFds, values.serverGeneration, values.adopt) : null;
  const sharedLog = link && o.commit_before_reply && !o.ro && !values.snapshot ? mapSharedLog(link) : undefined;
  const ext4 = values.snapshot
    ? (await openSnapshotFs(image, values.snapshot, { cacheBytes: o.cache_size })).fs
    : await Ext4Fs.open(image, { readOnly: o.ro, cacheBytes: o.cache_size, noJournal: o.nojournal, sharedLog, keepOrphans: link?.restart });
  ext4.noAtime = o.noatime;
  const fuseFs = new Ext4FuseFs(ext4);
  fuseFs.noOpen = o.no_open;
  const session = new FuseSession(fuseFs, {
    entryTimeout: o.entry_timeout, attrTimeout: o.attr_timeout, negativeTimeout: o.negative_timeout,
    writebackCache: o.writeback_cache, readOnly: o.ro || ext4.readOnly,
  });
  let dev: FuseDevice;
  try {
    dev = link?.restart ? FuseDevice.adopt(link.devFd, path.resolve(mountpoint), session) : FuseDevice.mount(path.resolve(mountpoint), session, {
      readOnly: o.ro || ext4.readOnly, allowOther: o.allow_other, defaultPermissions: o.default_permissions, source: path.resolve(image), noAtime: o.noatime,
    }, link?.devFd);
  } catch (e) {
    await ext4.close();
    throw e;
  }
  // A restarted server's mount is its predecessor's: its bdi was set then.
  if (!link?.restart && o.read_ahead_kb > 0) dev.setReadAhead(o.read_ahead_kb);
  if (link && !link.restart) report(link, { t: 'mounted' });
  if (link && o.commit_before_reply && !ext4.readOnly) dev.commitBeforeReply(() => ext4.commitToLog());
  if (link) (session.fs as Ext4FuseFs).handleGeneration(link.generation);
  dev.pollAfterReplyUs = o.busy_poll_us;
  dev.start();
  if (link) serveSupervised(link, dev, session, () => ext4.commitToLog(), o.commit_before_reply && !ext4.readOnly);
  // Snapshot views get no control socket: kfsctl's target is the live filesystem.
  const control = values.snapshot ? null : await startControlServer({
    kind: 'mount', image, fs: ext4, mountpoint, session,
    // Written from the thread pool, not with a blocking write: the kernel takes the parent's
    // lock for the invalidation, and a request it holds that lock for must still be answered
    // by this event loop. ENOENT: the name was not cached.
    invalidateEntry: (parentIno, name) => new Promise<void>((resolve) => {
      fs.write(dev.fd, notifyInvalEntry(toNode(parentIno), name), (e) => {
        if (e && e.code !== 'ENOENT') log.warn(`fuse: invalidating ${name.toString()} failed: ${e.message}`);
        resolve();
      });
    }),
    transport: () => {
      const c = dev.replyCommits;
      return {
        requests: dev.stats.requests, readWhilePolling: dev.stats.polled, busyPollUs: dev.pollAfterReplyUs,
        replyCommits: c && { commits: c.commits, released: c.released, avgUs: c.commits ? Math.round((c.commitMs * 1000) / c.commits * 10) / 10 : null },
      };
    },
  });
  if (values.pidFile) fs.writeFileSync(values.pidFile, `${process.pid}\n`);
  const stop = (sig: string) => {
    log.info(`${sig}: unmounting ${mountpoint}`);
    try {
      dev.unmount();
    } catch (e) {
      log.error(`unmount failed: ${(e as Error).message}`);
    }
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  log.info(`serving ${image} at ${mountpoint}`);
  // Asked for read-write but read-only (unknown ro_compat features, ext2/ext3): the
  // user is told at mount time, not at the first EROFS.
  ready(undefined, !o.ro && ext4.readOnly ? `${image}: mounted ${ext4.vol.readOnlyReason ?? 'read-only'}` : undefined);
  await dev.done;
  if (link) report(link, { t: 'unmounted' });
  // Let requests already read finish before the image is closed.
  for (let i = 0; i < 200 && dev.pending > 0; i++) await new Promise((r) => setTimeout(r, 10));
  dev.close();
  control?.close();
  // The kernel forgets nothing at unmount: what it still referred to is let go of here.
  await session.fs.releaseAll?.();
  await ext4.close();
  if (values.pidFile) fs.rmSync(values.pidFile, { force: true });
  log.info(`${image} closed`);
  return 0;
}

/** The supervised server's command line (the supervisor adds the fds and the INIT it keeps). */
function serverArgs(image: string, mountpoint: string, values: MountCliValues): string[] {
  const args = ['mount', image, mountpoint, '--foreground'];
  for (const opt of values.options ?? []) args.push('-o', opt);
  if (values.logFile) args.push('--log-file', values.logFile);
  if (values.logLevel) args.push('--log-level', values.logLevel);
  if (values.pidFile) args.push('--pid-file', values.pidFile);
  if (values.snapshot) args.push('--snapshot', values.snapshot);
  return args;
}

async function mountAction(image: string, mountpoint: string, values: MountCliValues): Promise<number> {
  const o = parseMountOptions(values.options ?? []);
  if (values.logLevel) setLogLevel(values.logLevel);
  if (!fs.existsSync(image)) throw new FsError('ENOENT', `image ${image} does not exist; create one with: kfs mkfs ${image} --size 1G`);
  if (values.foreground) {
    if (values.logFile) logToFile(values.logFile);
    if (values.serverFds) {
      const link = parseServerLink(values.serverFds, values.serverGeneration, values.adopt);
      try {
        return await serveMount(image, mountpoint, o, values, (err, note) => report(link, err ? { t: 'error', message: err } : { t: 'serving', note }));
      } catch (e) {
        report(link, { t: 'error', message: (e as Error).message.replace(/^E[A-Z]+: /, '') });
        throw e;
      }
    }
    const readyFd = values.readyFd ? Number(values.readyFd) : null;
    const ready = (err?: string, note?: string) => {
      if (readyFd === null) return; // --foreground: the note was logged where the volume opened
      try {
        // One line: "ready", "ready <note>" or "error <message>".
        fs.writeSync(readyFd, err ? `error ${err.replace(/\n/g, ' ')}\n` : note ? `ready ${note.replace(/\n/g, ' ')}\n` : 'ready\n');
        fs.closeSync(readyFd);
      } catch {
        /* parent gone */
      }
    };
    try {
      if (!o.nosupervisor) {
        const mp = path.resolve(mountpoint);
        // Without root, mount(2) is fusermount3's: the supervisor mounts before its first server.
        const premount = canMountDirectly() ? undefined : () => fusermountMount(mp, {
          readOnly: o.ro || !!values.snapshot, allowOther: o.allow_other, defaultPermissions: o.default_permissions,
          noAtime: o.noatime, source: path.resolve(image),
        });
        return await superviseMount({ image, mountpoint: mp, serverArgs: serverArgs(image, mountpoint, values), premount }, ready);
      }
      return await serveMount(image, mountpoint, o, values, ready);
    } catch (e) {
      ready((e as Error).message.replace(/^E[A-Z]+: /, ''));
      throw e;
    }
  }
  // Background: a detached child serves; we wait for its word.
  const args = [process.argv[1], 'mount', image, mountpoint, '--foreground', '--ready-fd', '3'];
  for (const opt of values.options ?? []) args.push('-o', opt);
  if (values.logFile) args.push('--log-file', values.logFile);
  if (values.logLevel) args.push('--log-level', values.logLevel);
  if (values.pidFile) args.push('--pid-file', values.pidFile);
  if (values.snapshot) args.push('--snapshot', values.snapshot);
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', 'ignore', 'ignore', 'pipe'] });
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  const word = await new Promise<string>((resolve) => {
    let text = '';
    pipe.on('data', (d: Buffer) => {
      text += d.toString();
      if (text.includes('\n')) resolve(text.trim());
    });
    child.on('exit', (code) => resolve(text.trim() || `error the mount process exited with code ${code}`));
  });
  if (word === 'ready' || word.startsWith('ready ')) {
    if (word !== 'ready') process.stderr.write(`kfs mount: ${word.slice('ready '.length)}\n`);
    child.unref();
    (pipe as unknown as { destroy(): void }).destroy();
    return 0;
  }
  throw new FsError('EIO', word.replace(/^error /, ''));
}

/** How long `kfs umount` waits for the server to flush (a large dirty cache on a slow disk). */
const UMOUNT_FLUSH_WAIT_MS = 300_000;

/** Wait until process `pid` no longer holds a lock on `image` (it has closed it, or exited). */
async function waitForRelease(image: string, pid: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 5; lockHolders(image).some((l) => l.pid === pid); delay = Math.min(delay * 2, 200)) {
    if (Date.now() > deadline) {
      throw new FsError('ETIMEDOUT', `unmounted, but the server (pid ${pid}) has not let go of ${image} after ${timeoutMs / 1000} s; wait for it to exit before using the image`);
    }
    await new Promise((r) => setTimeout(r, delay));
  }
}

export function registerMount(program: Command): void {
  const collect = (v: string, prev: string[] = []) => [...prev, v];
  program
    .command('mount')
    .description('mount an image on the host through FUSE (as root, or as a user through fusermount3)')
    .argument('<image>', 'image file')
    .argument('<dir>', 'mount point (an existing directory)')
    .option('-o, --options <list>', 'mount options: ro, rw, noatime, relatime (default), allow_other, default_permissions, writeback_cache, entry_timeout=S, attr_timeout=S, negative_timeout=S, cache_size=N[KMG], nojournal, nosupervisor, commit_before_reply (default), nocommit_before_reply, busy_poll_us=N, read_ahead_kb=N, no_open (default), open (repeatable)', collect)
    .option('-f, --foreground', 'serve in this process instead of returning once mounted')
    .option('--log-file <file>', 'write the log here')
    .option('--log-level <level>', 'error, warn, info or debug (default warn)')
    .option('--pid-file <file>', 'write the serving process id here (the current server: a restarted one rewrites it)')
    .option('--snapshot <name>', 'mount this snapshot of the image, read-only (kfsctl snapshot list names them)')
    .addOption(new Option('--ready-fd <fd>').hideHelp())
    .addOption(new Option('--server-fds <dev,status,sharedlog>').hideHelp())
    .addOption(new Option('--server-generation <n>').hideHelp())
    .addOption(new Option('--adopt <init>').hideHelp())
    .action(action('kfs mount', mountAction));
  program
    .command('umount')
    .description('unmount a kfs mount and wait until the serving process has flushed the image and let it go')
    .argument('<dir>', 'mount point')
    .option('-l, --lazy', 'detach now even if busy (returns at once: the server finishes when the last file is closed)')
    .action(action('kfs umount', async (dir: string, opts: { lazy?: boolean }) => {
      const mountpoint = path.resolve(dir);
      // A read-write server holds the image's exclusive flock until it has checkpointed the
      // journal and closed the image; the kernel's unmount only tells it to start. Note who
      // holds it before, wait after. (A read-only mount has nothing to flush.)
      const mount = readMountInfo().find((m) => m.mountpoint === mountpoint && m.fstype.startsWith('fuse.kfs'));
      const holder = mount ? lockHolders(mount.source).find((l) => l.exclusive)?.pid ?? null : null;
      try {
        if (canMountDirectly()) native.umount2(mountpoint, opts.lazy ? native.MS.MNT_DETACH : 0);
        else fusermountUnmount(mountpoint, !!opts.lazy);
      } catch (e) {
        const code = (e as { code?: string }).code;
        if (code === 'EINVAL') throw new FsError('EINVAL', `${dir} is not a mount point`);
        if (code === 'EBUSY') throw new FsError('EBUSY', `${dir} is busy; close files using it or use --lazy`);
        if (code === 'EPERM') throw new FsError('EPERM', `unmounting ${dir} needs root or the user who mounted it`);
        throw e;
      }
      if (mount && holder !== null && !opts.lazy) await waitForRelease(mount.source, holder, UMOUNT_FLUSH_WAIT_MS);
    }));
}
