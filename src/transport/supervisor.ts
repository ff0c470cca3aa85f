/**
 * A host mount that survives its server's death (Linux >= 6.9: FUSE_NOTIFY_RESEND).
 *
 * `kfs mount` runs two processes: this supervisor, which opens /dev/fuse and holds it for the
 * mount's whole life, and a server (`kfs mount ... --server-fds 3,4,5`), which does the work on
 * the inherited fd: the first server mounts it (mount(2) with fd=3), later ones adopt it. The
 * kernel keeps a FUSE connection alive as long as some process holds its fd, so a server can
 * die (any signal, any exit without unmount) and the mount stays; requests wait in the
 * kernel's queue. The supervisor then starts a new server, which opens the image (replaying
 * the journal), adopts the INIT parameters the supervisor kept (the kernel never sends INIT
 * twice) and writes FUSE_NOTIFY_RESEND, so requests the dead server had read but not answered
 * are queued again (with bit 63 of unique set; resend-guard.ts deduplicates those that are not
 * idempotent). Replies are held until the changes behind them are in the image
 * (reply-gate.ts), so nothing acknowledged dies with the server; fd 5 is the shared memory
 * those commits go to (src/ext4/journal/shared-log.ts), which the next server reads.
 *
 * Server -> supervisor, one JSON object per line on fd 4:
 *   {"t":"mounted"}    mount(2) done (first server only)
 *   {"t":"init", ...}  INIT negotiated (sent before the INIT reply is written, so the
 *                      supervisor knows the parameters whenever the kernel does)
 *   {"t":"serving"}    requests are being read
 *   {"t":"error","message"}  start-up failed
 *   {"t":"unmounted"}  the kernel ended the connection: the server closes the image, exits 0
 */
import { spawn, ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { log } from '../util/log';
import { readMountInfo } from '../util/mountinfo';
import { FsError } from '../util/errors';
import { native } from '../native';
import { InitFlag, FuseOpcode, FUSE_UNIQUE_RESEND } from '../fuse/abi';
import { FuseSession, Negotiated, Reply } from '../fuse/dispatcher';
import { readInitIn } from '../fuse/structs';
import { ByteCursor } from '../util/cursor';
import { FuseDevice } from './fusedev';
import { unmountFuse, fusermountUnmount } from './fusermount';
import { ResendGuard } from './resend-guard';

/** fd numbers in the server (stdio slots 3, 4 and 5). */
const SERVER_DEV_FD = 3;
const SERVER_STATUS_FD = 4;
const SERVER_SHARED_LOG_FD = 5;
/**
 * The shared memory for the servers' log-only commits (src/ext4/journal/shared-log.ts): a
 * sparse memfd of two 32 MiB regions; a server fills the active one from the start again
 * after each durable commit, compacts into the other when it is full (at about 1600 commits of
 * five blocks), and makes a durable commit only when the latest copies of all it holds do not
 * fit a region (more than a transaction of the log can take, anyway). Only the pages written
 * are memory.
 */
export const SHARED_LOG_BYTES = 64 << 20;
/** FUSE_NOTIFY_RESEND and FUSE_UNIQUE_RESEND arrived with protocol 7.40 (Linux 6.9). */
const RESEND_MINOR = 40;
/** Give up after this many servers in a row that died before serving. */
const MAX_FAILED_STARTS = 5;

type StatusMessage =
  | { t: 'mounted' }
  | { t: 'init'; major: number; minor: number; flags: string; maxWrite: number; maxPages: number; kernelMinor: number; resend: boolean }
  /** note: what the user should know about the mount (it fell back to read-only, and why). */
  | { t: 'serving'; note?: string }
  | { t: 'error'; message: string }
  | { t: 'unmounted' };

export interface SuperviseArgs {
  image: string;
  mountpoint: string;
  /** The server's command line after `kfs`, without the hidden server options. */
  serverArgs: string[];
  /**
   * Without root the supervisor mounts first (fusermount3) and returns the /dev/fuse fd it got;
   * the first server then finds the connection mounted and answers the kernel's INIT.
   */
  premount?: () => number;
}

// ------------------------------------------------------------------------------ supervisor

/**
 * Test hook (KFS_TEST_FAULT=shared-log-bytes:N): a smaller shared log, so that a test's
 * workload fills and compacts it many times within one server's life.
 */
function testSharedLogBytes(): number | undefined {
  const m = testFaults().map((f) => /^shared-log-bytes:(\d+)$/.exec(f)).find((x) => x);
  return m && Number(m[1]) >= 64 << 10 ? Number(m[1]) : undefined;
}

/** The test hooks asked for (KFS_TEST_FAULT, comma-separated). */
function testFaults(): string[] {
  return (process.env.KFS_TEST_FAULT ?? '').split(',');
}

export async function superviseMount(a: SuperviseArgs, ready: (err?: string, note?: string) => void): Promise<number> {
  const premounted = !!a.premount;
  const devFd = a.premount ? a.premount() : FuseDevice.openDevice();
  // It outlives every server: what one commits there, the next finds (the memfd is the mount's).
  const sharedLogFd = native.memfdCreate('kfs-shared-log', testSharedLogBytes() ?? SHARED_LOG_BYTES);
  let negotiated: Extract<StatusMessage, { t: 'init' }> | null = null;
  let mounted = premounted;
  let readySent = false;
  let stopping = false;
  let failedStarts = 0;
  let current: ChildProcess | null = null;
  let deathAt = 0;

  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    log.info(`supervisor: ${sig}: unmounting ${a.mountpoint}`);
    if (!mounted) {
      current?.kill('SIGTERM');
      return;
    }
    try {
      unmountFuse(a.mountpoint);
    } catch (e) {
      if ((e as { code?: string }).code !== 'EINVAL') log.error(`supervisor: unmount failed: ${(e as Error).message}`);
    }
  };
  const onInt = () => stop('SIGINT');
  const onTerm = () => stop('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);

  try {
    for (let generation = 0; ; generation++) {
      const extra = ['--server-fds', `${SERVER_DEV_FD},${SERVER_STATUS_FD},${SERVER_SHARED_LOG_FD}`, '--server-generation', String(generation)];
      if (mounted) extra.push('--adopt', negotiated ? JSON.stringify(negotiated) : 'none');
      // KFS_SERVER_NODE_ARGS: node flags for the server process only (e.g. --cpu-prof for profiling).
      const nodeArgs = (process.env.KFS_SERVER_NODE_ARGS ?? '').split(' ').filter(Boolean);
      const child = spawn(process.execPath, [...nodeArgs, process.argv[1], ...a.serverArgs, ...extra], {
        stdio: ['ignore', 'inherit', 'inherit', devFd, 'pipe', sharedLogFd],
      });
      current = child;
      let unmounted = false;
      let startError = '';
      let serving = false;
      const lines = readLines(child.stdio[4] as NodeJS.ReadableStream, (m: StatusMessage) => {
        switch (m.t) {
          case 'mounted':
            mounted = true;
            break;
          case 'init':
            negotiated = m;
            if (!m.resend) {
              log.warn(`supervisor: the kernel speaks FUSE 7.${m.kernelMinor} without FUSE_NOTIFY_RESEND (7.40, Linux 6.9): ` +
                'if the server dies, the requests it had read but not answered are never answered, and the processes that made them ' +
                'hang (uninterruptibly, even SIGKILL waits: the kernel waits out a request already read) while holding their locks, ' +
                'until the connection is aborted (/sys/fs/fuse/connections/N/abort, or the supervisor exits); other requests are served');
            }
            break;
          case 'serving':
            serving = true;
            failedStarts = 0;
            if (deathAt) log.warn(`supervisor: server ${child.pid} serving ${a.mountpoint} again, ${(performance.now() - deathAt).toFixed(0)} ms after the previous one died`);
            deathAt = 0;
            if (!readySent) {
              readySent = true;
              ready(undefined, m.note);
            }
            break;
          case 'error':
            startError = m.message;
            break;
          case 'unmounted':
            unmounted = true;
            break;
        }
      });
      const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
        child.on('exit', (code, signal) => resolve({ code, signal }));
      });
      await lines;
      current = null;
      if (unmounted && exit.code === 0) {
        log.info(`supervisor: ${a.mountpoint} unmounted; server ${child.pid} exited`);
        return 0;
      }
      const how = exit.signal ? `killed by ${exit.signal}` : `exited with code ${exit.code}`;
      if (premounted && generation === 0 && !serving) {
        // The first server could not start (a bad image...): the mount made for it goes too.
        detach(a.mountpoint);
        throw new FsError('EIO', startError || `the server ${how} before serving`);
      }
      if (!mounted) {
        // Nothing is mounted: there is nothing to keep alive.
        // The caller reports it (ready) and exits 1.
        throw new FsError('EIO', startError || `the server ${how} before mounting`);
      }
      if (stopping && !isMounted(a.mountpoint)) return 0;
      deathAt = performance.now();
      if (!serving && ++failedStarts >= MAX_FAILED_STARTS) {
        log.error(`supervisor: ${MAX_FAILED_STARTS} servers in a row died before serving (last: ${startError || how}); detaching ${a.mountpoint}`);
        detach(a.mountpoint);
        if (!readySent) ready(startError || `the server ${how}`);
        return 1;
      }
      log.warn(`supervisor: server ${child.pid} ${how} without an unmount; starting another on the same connection`);
    }
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
    fs.closeSync(devFd);
    fs.closeSync(sharedLogFd);
  }
}

function readLines(stream: NodeJS.ReadableStream, onMessage: (m: StatusMessage) => void): Promise<void> {
  return new Promise((resolve) => {
    let text = '';
    stream.on('data', (d: Buffer) => {
      text += d.toString();
      let i: number;
      while ((i = text.indexOf('\n')) >= 0) {
        const line = text.slice(0, i);
        text = text.slice(i + 1);
        try {
          onMessage(JSON.parse(line) as StatusMessage);
        } catch {
          log.warn(`supervisor: unreadable status line from the server: ${line}`);
        }
      }
    });
    stream.on('close', () => resolve());
    stream.on('end', () => resolve());
    stream.on('error', () => resolve());
  });
}

function isMounted(dir: string): boolean {
  return readMountInfo().some((m) => m.mountpoint === dir);
}

function detach(dir: string): void {
  try {
    if (process.geteuid?.() !== 0) fusermountUnmount(dir, true);
    else native.umount2(dir, native.MS.MNT_DETACH);
  } catch (e) {
    log.error(`supervisor: detaching ${dir} failed: ${(e as Error).message}`);
  }
}

// ------------------------------------------------------------------------------ server side

/** What a supervised server got from its supervisor (the hidden --server-fds / --adopt options). */
export interface ServerLink {
  devFd: number;
  statusFd: number;
  /** The supervisor's shared memory for log-only commits (null from an older supervisor). */
  sharedLogFd: number | null;
  generation: number;
  /** A restart: the connection is mounted already. */
  restart: boolean;
  /** INIT as the supervisor kept it (null: the previous server died before INIT). */
  negotiated: Negotiated | null;
  /** The kernel has FUSE_NOTIFY_RESEND (unknown before INIT: try it). */
  kernelResend: boolean;
}

export function parseServerLink(fds: string, generation: string | undefined, adopt: string | undefined): ServerLink {
  const [devFd, statusFd, sharedLogFd] = fds.split(',').map(Number);
  let negotiated: Negotiated | null = null;
  let kernelResend = true;
  if (adopt && adopt !== 'none') {
    const m = JSON.parse(adopt) as Extract<StatusMessage, { t: 'init' }>;
    negotiated = { major: m.major, minor: m.minor, flags: BigInt(m.flags), maxWrite: m.maxWrite, maxPages: m.maxPages };
    kernelResend = m.resend;
  }
  return { devFd, statusFd, sharedLogFd: Number.isInteger(sharedLogFd) ? sharedLogFd : null, generation: Number(generation ?? 0), restart: adopt !== undefined, negotiated, kernelResend };
}

export function report(link: ServerLink, m: StatusMessage): void {
  try {
    fs.writeSync(link.statusFd, JSON.stringify(m) + '\n');
  } catch {
    /* the supervisor is gone: keep serving */
  }
}

/**
 * Wire a started FuseDevice of a supervised server: INIT parameters go to the supervisor
 * before the kernel sees the INIT reply; resent requests pass the ResendGuard; on a restart,
 * the negotiated parameters are adopted and FUSE_NOTIFY_RESEND is sent.
 */
export function serveSupervised(link: ServerLink, dev: FuseDevice, session: FuseSession, commit: () => Promise<void>, commitBeforeReply: boolean): ResendGuard {
  const guard = new ResendGuard(session);
  // Test hooks (KFS_TEST_FAULT, comma-separated): kill-at-init (first server only);
  // kill-before-reply:OPCODE (every server: die after the effect of the first request with this
  // opcode, not a resent one, is committed and before its reply is written); no-resend (act as
  // on a kernel without FUSE_NOTIFY_RESEND).
  const faults = testFaults();
  const fault = link.generation === 0 && faults.includes('kill-at-init') ? 'kill-at-init' : undefined;
  const killOp = faults.map((f) => /^kill-before-reply:(\d+)$/.exec(f)).find((m) => m);
  dev.intercept = (req: Buffer): Promise<Reply> | undefined => {
    if (killOp && req.length >= 16 && req.readUInt32LE(4) === Number(killOp[1]) && !(req.readBigUInt64LE(8) & FUSE_UNIQUE_RESEND)) {
      return session.handle(req).then(async (reply) => {
        await commit();
        process.kill(process.pid, 'SIGKILL');
        return reply;
      });
    }
    if (req.length >= 8 && req.readUInt32LE(4) === FuseOpcode.INIT) {
      // Test hook: die with INIT read and unanswered (what a crash during INIT leaves).
      if (fault === 'kill-at-init') process.kill(process.pid, 'SIGKILL');
      const kin = readInitIn(new ByteCursor(req, 40));
      return session.handle(req).then((reply) => {
        const n = session.negotiated;
        if (n) {
          const resend = kin.minor >= RESEND_MINOR && (kin.flags & InitFlag.HAS_RESEND) !== 0n;
          report(link, { t: 'init', major: n.major, minor: n.minor, flags: n.flags.toString(), maxWrite: n.maxWrite, maxPages: n.maxPages, kernelMinor: kin.minor, resend });
        }
        return reply;
      });
    }
    return guard.check(req);
  };
  // Generation 0 on a connection the supervisor mounted (fusermount3): nothing was lost or
  // left unanswered; the kernel's INIT is still to come.
  if (link.restart && link.generation > 0) {
    if (!commitBeforeReply) {
      log.warn('fuse: restarted after a server mounted with -o nocommit_before_reply: changes the previous server acknowledged after its last commit are lost, ' +
        'and the kernel may still hold names and handles of inodes that no longer exist');
    }
    if (link.negotiated) session.adopt(link.negotiated);
    if (link.kernelResend && !faults.includes('no-resend')) {
      if (dev.resend()) log.info(`fuse: restarted server (generation ${link.generation}) sent FUSE_NOTIFY_RESEND`);
    } else {
      log.warn('fuse: restarted server without FUSE_NOTIFY_RESEND (kernel older than 6.9): requests the previous server had read stay unanswered and their callers blocked');
    }
  }
  return guard;
}
