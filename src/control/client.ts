/**
 * The client side of the control protocol (protocol.ts): connect to a control socket, send
 * requests, validate every reply line and each command's result with the shared schemas.
 */
import net from 'node:net';
import { z } from 'zod';
import { CommandName, ControlError, PROTOCOL_VERSION, Reply, ReplySchema, ResultOf, ResultSchemas, ArgsOf } from './protocol';

/** Longest reply line accepted (a block map of 65536 cells fits easily). */
const MAX_REPLY_BYTES = 64 << 20;

export type ProgressHandler = (phase: string, done: number, total: number) => void;

export class ControlClient {
  private nextId = 1;
  private buf = '';
  private waiters = new Map<number, { resolve: (r: unknown) => void; reject: (e: Error) => void; progress?: ProgressHandler; command: CommandName }>();
  private closedError: Error | null = null;

  private constructor(private sock: net.Socket, readonly socketPath: string) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('close', () => this.failAll(new ControlError('ECONNRESET', `control socket ${socketPath} closed the connection`)));
    sock.on('error', (e) => this.failAll(new ControlError((e as NodeJS.ErrnoException).code ?? 'EIO', `control socket ${socketPath}: ${e.message}`)));
  }

  static connect(socketPath: string): Promise<ControlClient> {
    return new Promise((resolve, reject) => {
      const sock = net.createConnection({ path: socketPath });
      sock.once('connect', () => {
        sock.removeAllListeners('error');
        resolve(new ControlClient(sock, socketPath));
      });
      sock.once('error', (e: NodeJS.ErrnoException) => {
        const why = e.code === 'EACCES' ? 'permission denied (the socket belongs to the serving user; run as root or that user)'
          : e.code === 'ECONNREFUSED' ? 'nobody is listening (the serving process is gone)'
            : e.code === 'ENOENT' ? 'no such socket' : e.message;
        reject(new ControlError(e.code ?? 'EIO', `cannot connect to control socket ${socketPath}: ${why}`));
      });
    });
  }

  /** Send one request and wait for its result (progress replies go to `progress`). */
  request<C extends CommandName>(command: C, args: ArgsOf<C>, progress?: ProgressHandler): Promise<ResultOf<C>> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    const p = new Promise<unknown>((resolve, reject) => this.waiters.set(id, { resolve, reject, progress, command }));
    this.sock.write(JSON.stringify({ version: PROTOCOL_VERSION, id, command, args }) + '\n');
    return p as Promise<ResultOf<C>>;
  }

  /** Send raw bytes (tests: malformed input). Replies not matching a request are dropped. */
  sendRaw(data: string | Buffer): void {
    this.sock.write(data);
  }

  /** Replies with no request waiting for them (errors about malformed input), in order. */
  readonly unsolicited: Reply[] = [];

  close(): void {
    this.sock.destroy();
  }

  private onData(d: string): void {
    this.buf += d;
    if (this.buf.length > MAX_REPLY_BYTES) {
      this.failAll(new ControlError('E2BIG', 'reply from the control socket is too large'));
      this.sock.destroy();
      return;
    }
    for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
      const text = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      this.onLine(text);
    }
  }

  private onLine(text: string): void {
    let reply: Reply;
    try {
      const r = ReplySchema.safeParse(JSON.parse(text));
      if (!r.success) throw new Error(r.error.issues[0]?.message ?? 'invalid');
      reply = r.data;
    } catch (e) {
      this.failAll(new ControlError('EPROTO', `malformed reply from the control socket: ${(e as Error).message}`));
      this.sock.destroy();
      return;
    }
    if (reply.version !== PROTOCOL_VERSION) {
      this.failAll(new ControlError('EPROTONOSUPPORT', `the server speaks control protocol version ${reply.version}; this kfsctl speaks ${PROTOCOL_VERSION}`));
      this.sock.destroy();
      return;
    }
    const w = reply.id !== null ? this.waiters.get(reply.id) : undefined;
    if (!w) {
      this.unsolicited.push(reply);
      // An error for "no request" (refused connection) fails whatever waits.
      if (reply.type === 'error' && reply.error.code === 'EACCES') this.failAll(new ControlError(reply.error.code, reply.error.message));
      return;
    }
    if (reply.type === 'progress') {
      w.progress?.(reply.phase, reply.done, reply.total);
      return;
    }
    this.waiters.delete(reply.id!);
    if (reply.type === 'error') {
      w.reject(new ControlError(reply.error.code, reply.error.message));
      return;
    }
    const schema = ResultSchemas[w.command] as z.ZodTypeAny;
    const r = schema.safeParse(reply.result);
    if (!r.success) w.reject(new ControlError('EPROTO', `invalid ${w.command} result from the server: ${r.error.issues[0]?.path.join('.')}: ${r.error.issues[0]?.message}`));
    else w.resolve(r.data);
  }

  private failAll(e: Error): void {
    this.closedError ??= e;
    for (const w of this.waiters.values()) w.reject(e);
    this.waiters.clear();
  }
}
