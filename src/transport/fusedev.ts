/**
 * The host transport: /dev/fuse. Opens the device non-blocking, mounts it with mount(2) (as
 * root), and serves requests from the event loop: an FdPoller wakes us when the device is
 * readable, requests are read until EAGAIN and handled concurrently, replies are written with
 * writev. ENODEV from read means the filesystem was unmounted (umount, fusermount3 -u, or
 * abort): the session ends.
 */
import { canMountDirectly, fusermountMount, unmountFuse } from './fusermount';
import fs from 'node:fs';
import { constants } from 'node:os';
import { native, FdPollerHandle } from '../native';
import { log } from '../util/log';
import { readMountInfo } from '../util/mountinfo';
import { FsError } from '../util/errors';
import { FuseSession, Reply } from '../fuse/dispatcher';
import { notifyResend } from '../fuse/reply';
import { ReplyGate, ReplyGateStats, isMutating } from './reply-gate';
import { LargeRequestPool } from '../fuse/request-pool';

export interface MountOptions {
  readOnly?: boolean;
  allowOther?: boolean;
  defaultPermissions?: boolean;
  /** Shown in /proc/mounts as the source. */
  source?: string;
  /** fuse.<subtype> in /proc/mounts. */
  subtype?: string;
  maxRead?: number;
  noAtime?: boolean;
}

const UV_READABLE = 1;
const errno = constants.errno;
/** One drain() serves at most this many requests, or polls at most this long, before the event loop runs again. */
const DRAIN_MAX_REQUESTS = 64;
const DRAIN_MAX_MS = 2;

export class FuseDevice {
  private poller: FdPollerHandle | null = null;
  private buf: Buffer;
  /** Copies of large requests (WRITE payloads), reused once answered (fuse/request-pool.ts). */
  private readonly largeRequests: LargeRequestPool;
  private inflight = 0;
  private ended = false;
  private endResolve!: () => void;
  /** Resolves when the kernel ends the session (unmount or abort). */
  readonly done: Promise<void>;

  private constructor(readonly fd: number, readonly mountpoint: string, private session: FuseSession) {
    this.buf = Buffer.alloc(session.bufferSize);
    this.largeRequests = new LargeRequestPool(session.bufferSize);
    this.syncReplyBuf = Buffer.alloc(session.bufferSize);
    this.syncDest = [this.syncReplyBuf];
    this.done = new Promise((r) => (this.endResolve = r));
  }

  /** `devFd`: an already open /dev/fuse (a supervisor's, inherited); otherwise one is opened here. */
  static mount(mountpoint: string, session: FuseSession, opts: MountOptions = {}, devFd?: number): FuseDevice {
    const st = fs.statSync(mountpoint, { throwIfNoEntry: false });
    if (!st) throw new FsError('ENOENT', `mount point ${mountpoint} does not exist; create it first (mkdir -p ${mountpoint})`);
    if (!st.isDirectory()) throw new FsError('ENOTDIR', `mount point ${mountpoint} is not a directory`);
    if (devFd === undefined && !canMountDirectly()) {
      const fd = fusermountMount(mountpoint, {
        readOnly: opts.readOnly, allowOther: opts.allowOther, defaultPermissions: opts.defaultPermissions, noAtime: opts.noAtime,
        source: opts.source, subtype: opts.subtype,
      });
      return new FuseDevice(fd, mountpoint, session);
    }
    let fd: number;
    try {
      fd = devFd ?? FuseDevice.openDevice();
    } catch (e) {
      throw new FsError('ENODEV', `cannot open /dev/fuse (${(e as Error).message}); load the fuse module (modprobe fuse)`);
    }
    const data = [
      `fd=${fd}`, `rootmode=${(st.mode & 0o170000).toString(8)}`, `user_id=${process.getuid?.() ?? 0}`, `group_id=${process.getgid?.() ?? 0}`,
    ];
    if (opts.allowOther !== false) data.push('allow_other');
    if (opts.defaultPermissions !== false) data.push('default_permissions');
    if (opts.maxRead) data.push(`max_read=${opts.maxRead}`);
    let flags = native.MS.MS_NOSUID | native.MS.MS_NODEV;
    if (opts.readOnly) flags |= native.MS.MS_RDONLY;
    if (opts.noAtime) flags |= native.MS.MS_NOATIME;
    try {
      native.mount(opts.source ?? 'kfs', mountpoint, `fuse.${opts.subtype ?? 'kfs'}`, flags, data.join(','));
    } catch (e) {
      fs.closeSync(fd);
      const code = (e as { code?: string }).code;
      if (code === 'EPERM') throw new FsError('EPERM', `mounting ${mountpoint} needs root (mount(2) was refused)`);
      throw new FsError('EIO', `mount(2) of ${mountpoint} failed: ${(e as Error).message}`);
    }
    return new FuseDevice(fd, mountpoint, session);
  }

  /**
   * Set the read-ahead of this mount's bdi (FUSE gives each mount its own, named after its
   * device number): the kernel sends sequential reads as READ requests of up to that size
   * (and max_pages). Root only (sysfs); a failure is logged and changes nothing else. The
   * device number comes from /proc/self/mountinfo, since a stat of the mount point would be a
   * request to this very process.
   */
  setReadAhead(kb: number): void {
    let dev: string | undefined;
    try {
      for (const m of readMountInfo()) if (m.mountpoint === this.mountpoint) dev = m.majorMinor; // the last one: the mount just made
      if (!dev || !/^\d+:\d+$/.test(dev)) throw new Error(`${this.mountpoint} is not in /proc/self/mountinfo`);
      fs.writeFileSync(`/sys/class/bdi/${dev}/read_ahead_kb`, `${kb}\n`);
      log.debug(`fuse: read-ahead of ${this.mountpoint} (bdi ${dev}) set to ${kb} KiB`);
    } catch (e) {
      log.info(`fuse: could not set the read-ahead of ${this.mountpoint} to ${kb} KiB (${(e as Error).message}); the kernel's default stays`);
    }
  }

  static openDevice(): number {
    return fs.openSync('/dev/fuse', fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  }

  /**
   * Serve a connection that is already mounted (a restarted server on its supervisor's fd). The
   * kernel sends no INIT again: the caller adopts what was negotiated (FuseSession.adopt) and
   * then calls resend() so requests the previous server read but never answered come again.
   */
  static adopt(fd: number, mountpoint: string, session: FuseSession): FuseDevice {
    return new FuseDevice(fd, mountpoint, session);
  }

  /** FUSE_NOTIFY_RESEND (7.40); false when the kernel refused it (no such notification). */
  resend(): boolean {
    try {
      fs.writeSync(this.fd, notifyResend());
      return true;
    } catch (e) {
      log.warn(`fuse: FUSE_NOTIFY_RESEND refused: ${(e as Error).message}`);
      return false;
    }
  }

  start(): void {
    this.poller = new native.FdPoller(this.fd, (_events, status) => {
      if (status < 0) {
        // The kernel signals an ended connection (unmount, abort) as an error on the fd.
        log.info(`fuse: connection to ${this.mountpoint} ended (poll status ${status})`);
        this.finish();
        return;
      }
      this.drain();
    });
    this.poller.start(UV_READABLE);
  }

  /**
   * How long to keep reading /dev/fuse without sleeping once every request is answered (µs;
   * 0: never). A process waiting on each reply sends its next request a few tens of µs later;
   * if this process has gone to sleep in epoll by then, the kernel must wake it, and on a
   * virtual machine waking an idle vCPU (an IPI and a halt exit) costs more than the whole
   * request: 4k random reads, server and client on different vCPUs, went from 150-270 µs to
   * ~45 µs per read with 50 µs of polling. The cost is at most that much CPU per reply.
   */
  pollAfterReplyUs = 0;
  /** Requests read, and of them those read while polling (the server awake: no wakeup needed). */
  readonly stats = { requests: 0, polled: 0 };

  /**
   * Read and serve requests. uv_poll is level-triggered, so one request per readiness event
   * would do; reading on until EAGAIN would cost a failed read(2) per request when requests
   * come one at a time (the common case: a process waiting on each reply). After a reply
   * that leaves nothing in flight, though, it reads on for pollAfterReplyUs (pollAfterReply).
   * A burst is bounded (DRAIN_MAX_REQUESTS, DRAIN_MAX_MS) so that thread-pool completions and
   * timers still get the event loop.
   */
  private drain(pollUntil = 0): void {
    const start = performance.now();
    for (let served = 0; served < DRAIN_MAX_REQUESTS; served++) {
      if (this.ended) return;
      let n: number;
      let polled = false;
      if (pollUntil === 0) n = native.readInto(this.fd, this.buf);
      else {
        const now = performance.now();
        const us = Math.floor(Math.min(pollUntil - now, start + DRAIN_MAX_MS - now) * 1000);
        n = us > 0 ? native.readPolling(this.fd, this.buf, us) : native.readInto(this.fd, this.buf);
        polled = us > 0;
      }
      if (n < 0) {
        const err = -n;
        // EAGAIN: another wakeup took it; EINTR; ENOENT: interrupted before we read it.
        if (err === errno.EAGAIN || err === errno.EINTR || err === errno.ENOENT) return;
        if (err === errno.ENODEV) log.info(`fuse: ${this.mountpoint} was unmounted`);
        else log.error(`fuse: reading /dev/fuse failed: errno ${err}`);
        this.finish();
        return;
      }
      if (n === 0) return;
      this.stats.requests++;
      if (polled) this.stats.polled++;
      // Requests answerable from memory (cached GETATTR/LOOKUP, READ of data in the host's page
      // cache, FORGET) are answered here, with no copy of the request and no promise; not while
      // a change waits for its commit (its reply must go first: reply-gate.ts).
      if (!this.gate || this.gate.quiet) {
        // Nothing else in flight: a READ of data not in the page cache is read here rather than
        // handed to the thread pool, saving two thread switches on a request that waits anyway.
        const len = this.session.handleSync(this.buf, n, this.syncDest, this.inflight === 0);
        if (len >= 0) {
          if (len > 0) this.sendSync(len);
          if (this.inflight !== 0 || this.pollAfterReplyUs <= 0) return;
          pollUntil = performance.now() + this.pollAfterReplyUs / 1000;
          continue;
        }
      }
      // Copy out: the read buffer is reused while this request is served.
      const store = this.largeRequests.take(n);
      let req: Buffer;
      if (store) {
        this.buf.copy(store, 0, 0, n);
        req = store.subarray(0, n);
      } else req = Buffer.from(this.buf.subarray(0, n));
      this.inflight++;
      const handled = this.intercept?.(req) ?? this.session.handle(req);
      if (store) handled.then(() => this.largeRequests.give(store), () => undefined);
      if (this.gate && isMutating(req)) {
        this.gate.started();
        handled.then(this.gate.onMutationReply, this.gate.onMutationCrash);
      } else handled.then(this.onReply, this.onCrash);
      return;
    }
  }

  /** A reply went out: if it was the last one in flight, poll for the next request a while (pollAfterReplyUs). */
  private pollAfterReply(): void {
    // Called from promise callbacks only, never from inside drain(): no re-entry to guard against.
    if (this.pollAfterReplyUs <= 0 || this.inflight !== 0 || this.ended || (this.gate && !this.gate.quiet)) return;
    this.drain(performance.now() + this.pollAfterReplyUs / 1000);
  }

  /**
   * Set by a supervised server: sees each request first (INIT parameters, resent requests) and
   * may answer it instead of the session (undefined: the session handles it).
   */
  intercept: ((req: Buffer) => Promise<Reply> | undefined) | null = null;
  /** Commit-before-reply (see reply-gate.ts); null: replies go out as soon as they are made. */
  private gate: ReplyGate | null = null;

  /** The commits that held replies back (commitBeforeReply), or null without them. */
  get replyCommits(): ReplyGateStats | null {
    return this.gate ? this.gate.stats : null;
  }

  /** Hold replies until `commit` has put the changes behind them into the image. */
  commitBeforeReply(commit: () => Promise<void>): void {
    this.gate = new ReplyGate(commit, (r) => {
      this.inflight--;
      this.send(r);
      this.pollAfterReply();
    }, () => this.inflight);
  }

  // Bound once: a closure and a .finally() promise per request are measurable at ~10k requests/s.
  private readonly onReply = (reply: Reply): void => {
    if (this.gate?.hold(reply)) return;
    this.inflight--;
    this.send(reply);
    this.pollAfterReply();
  };

  private readonly onCrash = (e: unknown): void => {
    this.inflight--;
    log.error(`fuse: handler crashed: ${(e as Error).stack}`);
  };

  private send(reply: Reply): void {
    if (!reply || this.ended) return;
    try {
      if (Array.isArray(reply)) fs.writevSync(this.fd, reply);
      else fs.writeSync(this.fd, reply);
    } catch (e) {
      const code = (e as { code?: string }).code;
      // ENOENT: the request was interrupted/aborted meanwhile; ENODEV: unmounted.
      if (code !== 'ENOENT' && code !== 'ENODEV') log.error(`fuse: writing a reply failed: ${(e as Error).message}`);
    }
  }

  /**
   * Where handleSync puts a READ's data: one buffer for a whole reply, the data after the out
   * header's place (payloadViews), so header and data go out in one write.
   */
  private readonly syncReplyBuf: Buffer;
  private readonly syncDest: Buffer[];

  /** Write handleSync's reply of `len` bytes. */
  private sendSync(len: number): void {
    const head = this.session.syncReplyHead;
    const out = this.session.syncReply;
    if (head === len) return this.send(out.subarray(0, len));
    // A READ: the header is in syncReply, the data already in place in syncReplyBuf.
    out.copy(this.syncReplyBuf, 0, 0, head);
    this.send(this.syncReplyBuf.subarray(0, len));
  }

  /** Write a notification (inval_inode, inval_entry...). */
  notify(msg: Buffer): void {
    this.send(msg);
  }

  private finish(): void {
    if (this.ended) return;
    this.ended = true;
    this.poller?.stop();
    this.poller?.close();
    this.poller = null;
    const served = [...this.session.counts].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ${n}`).join(', ');
    log.info(`fuse: requests served: ${served || 'none'}; ${this.stats.polled} of ${this.stats.requests} read while polling after a reply (busy_poll_us ${this.pollAfterReplyUs})`);
    this.endResolve();
  }

  /** Requests still being served. */
  get pending(): number {
    return this.inflight;
  }

  /** Unmount (lazily when busy) and end the session. */
  unmount(): void {
    try {
      unmountFuse(this.mountpoint);
    } catch (e) {
      if ((e as { code?: string }).code !== 'EINVAL') throw e; // EINVAL: not mounted any more
    }
  }

  close(): void {
    this.finish();
    try {
      fs.closeSync(this.fd);
    } catch {
      /* already closed */
    }
  }
}
