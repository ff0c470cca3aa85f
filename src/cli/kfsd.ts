#!/usr/bin/env node
/**
 * `kfsd`: the vhost-user virtio-fs backend. QEMU's vhost-user-fs-pci connects to
 * --socket-path; the guest mounts `-t virtiofs TAG`. It serves an ext4 image (--image) through
 * the same Ext4Fs and FUSE dispatcher as `kfs mount`, or a host directory (--shared-dir),
 * confined to it. Option names follow virtiofsd's where they mean the same thing.
 */
import { Command, CommanderError, Option } from 'commander';
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { FsError } from '../util/errors';
import { log, setLogLevel, logToFile } from '../util/log';
import { Ext4Fs } from '../ext4/fs';
import { Ext4FuseFs } from '../ext4/fuse-adapter';
import { FuseSession, SessionOptions } from '../fuse/dispatcher';
import { FileSystem } from '../fuse/filesystem';
import { VhostUserServer } from '../vhost/server';
import { warmUpKfsd } from './warmup';
import { VirtioFsDevice } from '../vhost/virtio-fs';
import { startControlServer } from '../control';
import type { VhostStatus } from '../control/protocol';
import { action, applyCliConventions, UsageError } from './common';

/** Request queues offered (GET_QUEUE_NUM answers this + hiprio); QEMU's num-request-queues may not exceed it. */
const MAX_REQUEST_QUEUES = 16;

const KfsdOptionsSchema = z.object({
  image: z.string().min(1).optional(),
  sharedDir: z.string().min(1).optional(),
  socketPath: z.string().min(1),
  tag: z.string().min(1).max(36).optional(),
  threadPoolSize: z.coerce.number().int().min(1).max(1024).optional(),
  cache: z.enum(['auto', 'always', 'never']).optional(),
  readonly: z.boolean().default(false),
  logLevel: z.enum(['error', 'warn', 'info', 'debug']).default('warn'),
  logFile: z.string().optional(),
  socketGroup: z.string().min(1).optional(),
  reconnect: z.boolean().default(false),
  cacheSize: z.coerce.number().int().positive().default(256 << 20),
  open: z.boolean().optional(),
  daxWindow: z.string().regex(/^\d+[KMG]?$/, 'a size such as 1G, 512M or 0').optional(),
  // At most 1 ms: the spin holds up the event loop (other queues, vhost-user messages, timers).
  pollUs: z.coerce.number().int().min(0).max(1000).default(500),
  jitWarmup: z.boolean().default(true),
}).strict();
type KfsdOptions = z.infer<typeof KfsdOptionsSchema>;

/** Seconds the guest may cache names and attributes: 'always' suits an image kfsd owns alone. */
const TIMEOUTS = { always: 3600, auto: 1, never: 0 } as const;

/** What kfsd serves; `noOpen`: OPEN of a regular file is answered ENOSYS (the JIT warm-up serves its scratch alike). */
interface Served { fs: FileSystem; close: () => Promise<void>; readOnly: boolean; noOpen: boolean; ext4?: Ext4Fs }

async function openFileSystem(o: KfsdOptions): Promise<Served> {
  if (o.image) {
    if (!fs.existsSync(o.image)) throw new FsError('ENOENT', `image ${o.image} does not exist; create one with: kfs mkfs ${o.image} --size 1G`);
    const ext4 = await Ext4Fs.open(o.image, { readOnly: o.readonly, cacheBytes: o.cacheSize });
    const fuseFs = new Ext4FuseFs(ext4);
    // no_open (as `kfs mount`): OPEN of a regular file answers ENOSYS once, and the guest's
    // kernel sends no more OPEN or RELEASE: two requests fewer per open(2)/close(2). Not on a
    // read-only image: there an OPEN for writing must fail (EROFS) at open(2), not at the write.
    fuseFs.noOpen = !o.open && !ext4.readOnly;
    return { fs: fuseFs, close: () => ext4.close(), readOnly: ext4.readOnly, noOpen: fuseFs.noOpen, ext4 };
  }
  const dir = o.sharedDir!;
  const st = fs.statSync(dir, { throwIfNoEntry: false });
  if (!st) throw new FsError('ENOENT', `--shared-dir ${dir} does not exist; create it first (mkdir -p ${dir}) or name the directory to share`);
  if (!st.isDirectory()) throw new FsError('ENOTDIR', `--shared-dir ${dir} is not a directory; name the directory to share`);
  const { PassthroughFs } = await import('../passthrough/passthrough-fs');
  const pfs = await PassthroughFs.open(dir, { readOnly: o.readonly });
  return { fs: pfs, close: () => pfs.destroy(), readOnly: o.readonly, noOpen: false };
}

async function kfsdAction(values: Record<string, unknown>): Promise<number> {
  const parsed = KfsdOptionsSchema.safeParse(values);
  if (!parsed.success) {
    const i = parsed.error.issues[0];
    throw new UsageError(`--${i.path.join('.').replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())}: ${i.message}`);
  }
  const o = parsed.data;
  if (!o.image === !o.sharedDir) throw new UsageError('give exactly one of --image IMAGE or --shared-dir DIR');
  checkSocketPath(o.socketPath);
  setLogLevel(o.logLevel);
  // libuv sizes its thread pool (image and host-file I/O) on first use: set it before any I/O,
  // a log file's stream (which opens the file on the pool) included.
  if (o.threadPoolSize) process.env.UV_THREADPOOL_SIZE = String(o.threadPoolSize);
  if (o.logFile) logToFile(o.logFile);

  const daxWindowSize = parseSize(o.daxWindow ?? (o.image ? '1G' : '0'));
  if (daxWindowSize % (2 << 20)) throw new UsageError('--dax-window must be a multiple of 2M (the guest maps 2 MiB ranges)');
  if (daxWindowSize && o.sharedDir) throw new UsageError('--dax-window works with --image only');
  if (o.open && o.sharedDir) throw new UsageError('--open works with --image only (a shared directory is always served with handles)');
  // From here on a signal ends kfsd through the clean path (the image flushed), whenever it comes.
  let stopping = false;
  let server: VhostUserServer | null = null;
  const stop = (sig: string) => {
    if (stopping) {
      // A second signal: the user will not wait for the first (a long journal replay, a flush).
      log.warn(`${sig} again: exiting at once, without flushing`);
      process.exit(1);
    }
    log.info(`${sig}: stopping`);
    stopping = true;
    server?.close(sig);
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  const served = await openFileSystem(o);
  const timeout = TIMEOUTS[o.cache ?? (o.image ? 'always' : 'auto')];
  const sessionOpts: SessionOptions = {
    entryTimeout: timeout, attrTimeout: timeout, negativeTimeout: o.image ? timeout : 0, readOnly: served.readOnly,
  };
  const listening = new VhostUserServer({ socketPath: o.socketPath, socketGroup: o.socketGroup });
  try {
    listening.listen();
  } catch (e) {
    await served.close();
    throw e;
  }
  server = listening;
  if (stopping) listening.close('stopping');
  // The device serving the connected front-end (one per connection), for kfsctl status.
  let device: VirtioFsDevice | null = null;
  const counts = (): VhostStatus | null => {
    const st = device?.stats;
    return st ? { requests: st.requests, badChains: st.badChains, pollUs: o.pollUs, idleSerial: st.pollSerial, idleBusy: st.pollBusy, watchesFound: st.pollCaught } : null;
  };
  const control = await startControlServer({
    kind: 'kfsd', image: o.image ?? null, fs: served.ext4 ?? null, vhostSocket: o.socketPath, frontEndConnected: () => listening.connected, vhost: counts,
  });
  // While QEMU starts and the guest boots, compile the request paths (fuse/warmup.ts); the
  // first request of a front-end, or shutdown, ends it.
  let requestSeen = false;
  let exiting = false; // the serving loop has ended (a signal, or a front-end gone without --reconnect)
  const warmup = o.jitWarmup
    ? warmUpKfsd({ kind: o.image ? 'image' : 'shared-dir', noOpen: served.noOpen, cacheBytes: o.cacheSize }, sessionOpts,
      () => {
        if ((device?.stats.requests ?? 0) > 0) requestSeen = true; // sticky: the device goes at a disconnect
        return stopping || exiting ? 'shutdown' : requestSeen ? 'the first request' : null;
      })
    : Promise.resolve();
  try {
    do {
      device = null;
      const reason = await listening.serveOne(() => (device = new VirtioFsDevice(control.track(new FuseSession(served.fs, sessionOpts)), {
        numRequestQueues: MAX_REQUEST_QUEUES, tag: o.tag ?? null, daxWindowSize, daxSource: served.ext4 ? (served.fs as Ext4FuseFs) : null,
        pollUs: o.pollUs,
      })));
      const c = counts();
      log.info(`front-end gone: ${reason}${c ? `; ${c.requests} requests, ${c.badChains} bad chains; polling: ${c.idleSerial} idle moments after at most two requests at once, ${c.idleBusy} after more; ${c.watchesFound} requests found by watching` : ''}`);
      device = null;
      // A guest that is gone cannot release what it held; its unlinked-but-open files are freed now.
      await served.fs.releaseAll?.();
    } while (o.reconnect && !stopping);
  } finally {
    listening.close('exit');
    control.close();
    exiting = true;
    await warmup;
    await served.close();
  }
  log.info('image flushed; exiting');
  return 0;
}

/** Before the image is opened: a socket path that cannot be bound is a usage error, said plainly. */
function checkSocketPath(p: string): void {
  // sockaddr_un.sun_path: 108 bytes with the terminating NUL.
  if (Buffer.byteLength(p) > 107) throw new UsageError(`--socket-path ${p}: longer than the 107 bytes a unix socket path may have; choose a shorter one`);
  const dir = path.dirname(path.resolve(p));
  const st = fs.statSync(dir, { throwIfNoEntry: false });
  if (!st) throw new UsageError(`--socket-path ${p}: directory ${dir} does not exist; create it first (mkdir -p ${dir})`);
  if (!st.isDirectory()) throw new UsageError(`--socket-path ${p}: ${dir} is not a directory`);
}

function parseSize(v: string): number {
  const m = /^(\d+)([KMG]?)$/.exec(v)!;
  return Number(m[1]) * { '': 1, K: 1 << 10, M: 1 << 20, G: 1 << 30 }[m[2] as '' | 'K' | 'M' | 'G'];
}

const program = new Command('kfsd')
  .description('vhost-user virtio-fs backend serving a kfs image (or a host directory) to a QEMU guest')
  .addOption(new Option('--image <path>', 'ext4 image to serve'))
  .addOption(new Option('--shared-dir <dir>', 'serve a host directory instead, confined to it'))
  .requiredOption('--socket-path <path>', 'vhost-user unix socket to listen on (created mode 0600)')
  .option('--socket-group <group>', 'let this group connect too (socket mode 0660)')
  .option('--tag <tag>', 'offer a config space with this tag (for front-ends that read it from the backend; QEMU 7.x takes tag= on its -device instead)')
  .option('--thread-pool-size <n>', 'threads for file I/O (libuv pool)')
  .addOption(new Option('--cache <mode>', 'guest caching of names and attributes: always (default for --image), auto (1 s, default for --shared-dir), never').choices(['auto', 'always', 'never']))
  .option('--readonly', 'refuse every change')
  .option('--reconnect', 'after the front-end disconnects, wait for a new connection instead of exiting')
  .option('--cache-size <bytes>', 'metadata cache size for --image')
  .option('--open', 'with --image: serve OPEN and RELEASE of regular files (a handle per open) instead of answering OPEN with ENOSYS, after which the guest sends neither (no_open, the default on a writable image)')
  .option('--poll-us <µs>', 'after answering, watch an idle request queue up to this long for the next request instead of waiting for its kick (default 500, adapting to the guest; 0 = off)')
  .option('--no-jit-warmup', 'do not warm the JIT up on a scratch filesystem while waiting for the first request (see README)')
  .option('--dax-window <size>', 'DAX cache window to ask the front-end for (default 1G with --image; 0 = no DAX); used only by front-ends that negotiate SHMEM')
  .addOption(new Option('--log-level <level>', 'error, warn (default), info, debug').choices(['error', 'warn', 'info', 'debug']))
  .option('--log-file <file>', 'write the log here')
  .action(action('kfsd', (values: Record<string, unknown>) => kfsdAction(values)));

applyCliConventions(program, 'kfsd', 'kfsd');
program.parseAsync(process.argv).then(() => {
  // Pollers are closed by now; exit even if a stray handle lingers.
  process.exit(process.exitCode ?? 0);
}, (e: unknown) => {
  // Commander's usage errors are printed already (applyCliConventions); help and version exit 0.
  if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : 2);
  process.stderr.write(`kfsd: unexpected failure: ${e instanceof Error ? e.message : String(e)}; please report it\n`);
  process.exit(1);
});
