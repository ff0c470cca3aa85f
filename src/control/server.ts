/**
 * The control server of a serving process (kfs mount, kfsd): a unix stream socket created
 * mode 0600 in the control directory (see registry.ts), with the peer's credentials checked
 * on every connection (SO_PEERCRED: root or the serving process's own uid only; the file
 * mode is the first fence, this the second). No TCP.
 *
 * Messages are the line-delimited JSON of protocol.ts. Nothing a client sends can stop the
 * server: unparsable lines, wrong versions, unknown commands and bad arguments get an error
 * reply and the connection goes on; a line longer than MAX_REQUEST_BYTES gets an error reply
 * and is skipped up to its newline; a failing command answers with its errno.
 * Requests on one connection run one after another; connections are independent.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { z } from 'zod';
import { native } from '../native';
import { log } from '../util/log';
import { FsError } from '../util/errors';
import type { Ext4Fs } from '../ext4/fs';
import type { FuseSession } from '../fuse/dispatcher';
import { COMMANDS, CommandName, ControlError, MAX_REQUEST_BYTES, PROTOCOL_VERSION, Reply, RequestEnvelopeSchema, TransportStatus, VhostStatus } from './protocol';
import { RequestStats } from './request-stats';
import { controlDir, ensureControlDir, entryBase, writeEntry } from './registry';
import { runCommand, ServedFs } from './service';

const MAX_CONNECTIONS = 32;

export interface ControlServerOptions {
  kind: 'mount' | 'kfsd';
  image: string | null;
  fs: Ext4Fs | null;
  mountpoint?: string | null;
  vhostSocket?: string | null;
  /** A session to measure now (host mounts); kfsd passes each new one to track(). */
  session?: FuseSession | null;
  frontEndConnected?: () => boolean;
  /** A host mount: tell the kernel a name changed (snapshot restore of a path; ServedFs.invalidateEntry). */
  invalidateEntry?: ((parentIno: number, name: Buffer) => Promise<void>) | null;
  /** A host mount: its /dev/fuse transport counters (ServedFs.transport). */
  transport?: (() => TransportStatus) | null;
  /** kfsd: the current front-end connection's counters (ServedFs.vhost). */
  vhost?: (() => VhostStatus | null) | null;
  /** Default: <control dir>/<hash>-<pid>.sock. */
  socketPath?: string;
  /** Socket file mode (default 0600). */
  socketMode?: number;
}

export class ControlServer {
  readonly stats = new RequestStats();
  private server: net.Server | null = null;
  private sockets = new Set<net.Socket>();
  private files: string[] = [];
  private served: ServedFs;
  private readonly ownerUid = process.getuid?.() ?? 0;

  constructor(private o: ControlServerOptions, readonly socketPath: string) {
    this.served = {
      kind: o.kind, image: o.image ? path.resolve(o.image) : null, fs: o.fs, mountpoint: o.mountpoint ? path.resolve(o.mountpoint) : null,
      vhostSocket: o.vhostSocket ? path.resolve(o.vhostSocket) : null, startedAt: Date.now(), stats: this.stats,
      frontEndConnected: o.frontEndConnected ?? null, controlConnections: () => this.sockets.size,
      invalidateEntry: o.invalidateEntry ?? null, transport: o.transport ?? null, vhost: o.vhost ?? null,
    };
    if (o.session) this.stats.track(o.session);
  }

  /** Measure the requests of a session (kfsd makes one per front-end connection). */
  track(session: FuseSession): FuseSession {
    return this.stats.track(session);
  }

  get listening(): boolean {
    return this.server !== null;
  }

  async listen(registryDir: string | null): Promise<void> {
    fs.rmSync(this.socketPath, { force: true });
    // native.unixListen creates the socket with its final mode: never a window with wider permissions.
    const fd = native.unixListen(this.socketPath, 16, this.o.socketMode ?? 0o600);
    this.files.push(this.socketPath);
    const server = net.createServer((s) => this.accept(s));
    server.maxConnections = MAX_CONNECTIONS;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (e) => log.error(`control socket ${this.socketPath}: ${e.message}`));
    this.server = server;
    if (registryDir) {
      const base = path.basename(this.socketPath, '.sock');
      this.files.push(writeEntry(registryDir, base, {
        version: 1, pid: process.pid, uid: this.ownerUid, kind: this.o.kind, image: this.served.image, mountpoint: this.served.mountpoint,
        vhostSocket: this.served.vhostSocket, socket: this.socketPath, started: new Date().toISOString(),
      }));
    }
    log.info(`control socket: ${this.socketPath}`);
  }

  close(): void {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    this.server?.close();
    this.server = null;
    for (const f of this.files) fs.rmSync(f, { force: true });
    this.files = [];
  }

  private accept(sock: net.Socket): void {
    const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
    let cred: { pid: number; uid: number; gid: number };
    try {
      if (typeof fd !== 'number' || fd < 0) throw new Error('no descriptor');
      cred = native.peerCred(fd);
    } catch (e) {
      log.warn(`control socket: cannot read peer credentials (${(e as Error).message}); connection refused`);
      sock.destroy();
      return;
    }
    if (cred.uid !== 0 && cred.uid !== this.ownerUid) {
      log.warn(`control socket: refused pid ${cred.pid} uid ${cred.uid}`);
      // Half-close after the answer and drain what the client sends: closing with unread data
      // would reset the connection and could drop the answer before the client reads it.
      sock.on('error', () => sock.destroy());
      sock.setTimeout(5000, () => sock.destroy());
      sock.resume();
      sock.end(line({ version: PROTOCOL_VERSION, id: null, type: 'error', error: { code: 'EACCES', message: `uid ${cred.uid} may not use this control socket (root or uid ${this.ownerUid} only)` } }));
      return;
    }
    this.sockets.add(sock);
    sock.setTimeout(10 * 60_000, () => sock.destroy());
    sock.on('close', () => this.sockets.delete(sock));
    sock.on('error', () => sock.destroy());
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let discarding = false;
    let queue = Promise.resolve();
    const send = (r: Reply) => {
      if (!sock.destroyed && sock.writable) sock.write(line(r));
    };
    sock.on('data', (chunk: Buffer) => {
      let start = 0;
      for (let nl = chunk.indexOf(10, start); nl >= 0; nl = chunk.indexOf(10, start)) {
        const piece = chunk.subarray(start, nl);
        start = nl + 1;
        if (discarding) {
          discarding = false;
          continue;
        }
        const size = pendingBytes + piece.length;
        const text = size > MAX_REQUEST_BYTES ? null : Buffer.concat([...pending, piece]).toString('utf8');
        pending = [];
        pendingBytes = 0;
        if (text === null) send(tooBig());
        else queue = queue.then(() => this.handleLine(text, send)).catch((e) => void log.error(`control socket: ${(e as Error).stack ?? String(e)}`));
      }
      if (start < chunk.length && !discarding) {
        pending.push(chunk.subarray(start));
        pendingBytes += chunk.length - start;
        if (pendingBytes > MAX_REQUEST_BYTES) {
          pending = [];
          pendingBytes = 0;
          discarding = true;
          send(tooBig());
        }
      }
    });
  }

  private async handleLine(text: string, send: (r: Reply) => void): Promise<void> {
    if (!text.trim()) return;
    let id: number | null = null;
    const fail = (code: string, message: string) => send({ version: PROTOCOL_VERSION, id, type: 'error', error: { code, message } });
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      return fail('EBADMSG', 'request is not JSON');
    }
    const maybeId = (raw as { id?: unknown })?.id;
    if (typeof maybeId === 'number' && Number.isInteger(maybeId) && maybeId >= 0) id = maybeId;
    const env = RequestEnvelopeSchema.safeParse(raw);
    if (!env.success) return fail('EPROTO', `bad request: ${describeZod(env.error)}`);
    const req = env.data;
    if (req.version !== PROTOCOL_VERSION) return fail('EPROTONOSUPPORT', `protocol version ${req.version} is not supported; this server speaks version ${PROTOCOL_VERSION}`);
    if (!(COMMANDS as readonly string[]).includes(req.command)) return fail('ENOSYS', `unknown command ${JSON.stringify(req.command)}; known: ${COMMANDS.join(', ')}`);
    let lastProgress = 0;
    try {
      const result = await runCommand(this.served, req.command as CommandName, req.args, (phase, done, total) => {
        const now = Date.now();
        if (now - lastProgress < 100 && done < total) return;
        lastProgress = now;
        send({ version: PROTOCOL_VERSION, id, type: 'progress', phase, done, total });
      });
      send({ version: PROTOCOL_VERSION, id, type: 'result', result });
    } catch (e) {
      if (e instanceof z.ZodError) return fail('EINVAL', `bad arguments for ${req.command}: ${describeZod(e)}`);
      if (e instanceof ControlError) return fail(e.code, e.message);
      if (e instanceof FsError) return fail(e.code, e.message.replace(/^E[A-Z]+: /, ''));
      log.error(`control ${req.command}: ${(e as Error).stack ?? String(e)}`);
      return fail('EIO', `${req.command} failed: ${(e as Error).message}`);
    }
  }
}

function tooBig(): Reply {
  return { version: PROTOCOL_VERSION, id: null, type: 'error', error: { code: 'E2BIG', message: `request longer than ${MAX_REQUEST_BYTES} bytes; skipped up to its end of line` } };
}

function line(r: Reply): string {
  return JSON.stringify(r) + '\n';
}

export function describeZod(e: z.ZodError): string {
  const i = e.issues[0];
  if (!i) return 'invalid';
  const where = i.path.length ? i.path.join('.') : 'message';
  return `${where}: ${i.message}`;
}

/**
 * Start the control socket of a serving process. Failing to start it never stops the
 * filesystem from being served: the failure is logged and a server that is not listening
 * (close() still safe) is returned.
 */
export async function startControlServer(o: ControlServerOptions): Promise<ControlServer> {
  const served = o.image ?? o.mountpoint ?? o.vhostSocket ?? `pid-${process.pid}`;
  let dir: string | null = null;
  let socketPath = o.socketPath;
  try {
    dir = ensureControlDir(controlDir());
    socketPath ??= path.join(dir, `${entryBase(served)}.sock`);
  } catch (e) {
    log.warn(`control socket disabled: ${(e as Error).message}`);
    return new ControlServer(o, socketPath ?? '');
  }
  const srv = new ControlServer(o, socketPath);
  try {
    await srv.listen(dir);
  } catch (e) {
    log.warn(`control socket ${socketPath} disabled: ${(e as Error).message}`);
    srv.close();
  }
  return srv;
}
