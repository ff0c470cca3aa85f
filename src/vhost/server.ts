/**
 * The listening side of kfsd: a unix socket (mode 0600, or 0660 for --socket-group) that one
 * front-end at a time connects to. Further connections while one is served are refused
 * (accepted and closed): two front-ends driving one device would corrupt each other's rings.
 */
import fs from 'node:fs';
import { native, FdPollerHandle } from '../native';
import { FsError } from '../util/errors';
import { log } from '../util/log';
import { VhostUserBackend, VirtioDevice } from './backend';
import { closeQuietly } from './channel';

const UV_READABLE = 1;

export interface ServerOptions {
  socketPath: string;
  /** Group (name or gid) allowed to connect; the socket becomes 0660. */
  socketGroup?: string;
}

export class VhostUserServer {
  private listenFd = -1;
  /** close() was called (possibly before serveOne: a signal during start-up). */
  private closed = false;
  private poller: FdPollerHandle | null = null;
  private current: VhostUserBackend | null = null;
  private waiting: ((fd: number) => void) | null = null;

  constructor(private opts: ServerOptions) {}

  listen(): void {
    const p = this.opts.socketPath;
    removeStaleSocket(p);
    const gid = this.opts.socketGroup !== undefined ? resolveGroup(this.opts.socketGroup) : null;
    this.listenFd = native.unixListen(p, 1, gid === null ? 0o600 : 0o660);
    if (gid !== null) fs.chownSync(p, 0, gid);
    this.poller = new native.FdPoller(this.listenFd, (_ev, status) => {
      if (status < 0) return;
      for (let fd = native.accept(this.listenFd); fd >= 0; fd = native.accept(this.listenFd)) {
        if (this.waiting) {
          const w = this.waiting;
          this.waiting = null;
          w(fd);
        } else {
          log.warn('vhost-user: refused a second front-end while one is connected');
          closeQuietly(fd);
        }
      }
    });
    this.poller.start(UV_READABLE);
    log.info(`vhost-user: listening on ${p}`);
  }

  /** Wait for a front-end and serve it until it disconnects; resolves with the reason. */
  async serveOne(makeDevice: () => VirtioDevice): Promise<string> {
    if (this.closed) return 'server closed';
    const fd = await new Promise<number>((resolve) => (this.waiting = resolve));
    if (fd < 0) return 'server closed';
    log.info('vhost-user: front-end connected');
    const backend = new VhostUserBackend(fd, makeDevice());
    this.current = backend;
    backend.start();
    const reason = await backend.done;
    this.current = null;
    return reason;
  }

  /** Stop: end the current connection (its queues drain) and stop listening. */
  close(reason: string): void {
    this.closed = true;
    this.current?.close(reason);
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = null;
      w(-1);
    }
    this.poller?.stop();
    this.poller?.close();
    this.poller = null;
    closeQuietly(this.listenFd);
    this.listenFd = -1;
    fs.rmSync(this.opts.socketPath, { force: true });
  }

  get connected(): boolean {
    return this.current !== null;
  }
}

/** A socket file left by a dead kfsd is removed; a live one (or a non-socket) is an error. */
function removeStaleSocket(p: string): void {
  const st = fs.lstatSync(p, { throwIfNoEntry: false });
  if (!st) return;
  if (!st.isSocket()) throw new FsError('EEXIST', `${p} exists and is not a socket; choose another --socket-path`);
  let live = false;
  try {
    closeQuietly(native.unixConnect(p));
    live = true;
  } catch {
    /* ECONNREFUSED: nobody listens */
  }
  if (live) throw new FsError('EADDRINUSE', `another process is serving ${p}; stop it or choose another --socket-path`);
  fs.rmSync(p);
}

function resolveGroup(g: string): number {
  if (/^\d+$/.test(g)) return Number(g);
  const line = fs.readFileSync('/etc/group', 'utf8').split('\n').find((l) => l.split(':')[0] === g);
  if (!line) throw new FsError('EINVAL', `--socket-group ${g}: no such group`);
  return Number(line.split(':')[2]);
}
