/**
 * The vhost-user socket, front-end side: send requests (with fds), await replies, notice the
 * back-end dropping the connection. Reads happen on the event loop (FdPoller), so a back-end
 * that never answers leaves the test waiting on a promise, not blocked in a syscall.
 *
 * Replies come only to requests that ask for one (GET_*, or need_reply with REPLY_ACK), in
 * order, so waiters form a FIFO. The same class serves the other direction, the backend channel
 * (SET_BACKEND_REQ_FD): there the back-end sends requests, which go to a handler, and we reply.
 */
import { closeSync, existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FdPollerHandle } from '../../../src/native';
import { vn } from './native';
import { encodeHeader, encodeMessage, parseMessages, VHOST_USER_FLAG_REPLY, VHOST_USER_VERSION, type VhostUserMessage } from './protocol';

export class ConnectionClosedError extends Error {
  constructor(reason: string) {
    super(`vhost-user connection closed: ${reason}`);
    this.name = 'ConnectionClosedError';
  }
}

export class VhostUserConnection {
  private readonly poller: FdPollerHandle;
  private pending = Buffer.alloc(0);
  private pendingFds: number[] = [];
  private readonly inbox: VhostUserMessage[] = [];
  private readonly waiters: { resolve: (m: VhostUserMessage) => void; reject: (e: Error) => void }[] = [];
  private readonly recvBuf = Buffer.alloc(64 * 1024);
  private closedReason: string | null = null;
  private readonly closeWaiters: (() => void)[] = [];

  /** handler: take every incoming message (backend channel) instead of queueing it for recv(). */
  private constructor(readonly fd: number, private readonly handler?: (m: VhostUserMessage) => void) {
    this.poller = new vn.FdPoller(fd, (_events, status) => this.onReadable(status));
    this.poller.start(1);
  }

  /** Connect to a back-end's socket, waiting for it to appear (the back-end may still be starting). */
  static async connect(path: string, attempts = 300): Promise<VhostUserConnection> {
    let last: unknown = null;
    for (let i = 0; i < attempts; i++) {
      if (existsSync(path)) {
        try {
          return new VhostUserConnection(vn.unixConnect(path));
        } catch (e) {
          last = e;
        }
      }
      await sleep(50);
    }
    throw new Error(`cannot connect to vhost-user socket ${path}: ${String(last ?? 'it never appeared')}`);
  }

  /** Wrap a connected socket we already hold (the front-end's end of the backend channel). */
  static fromFd(fd: number, handler?: (m: VhostUserMessage) => void): VhostUserConnection {
    return new VhostUserConnection(fd, handler);
  }

  get closed(): boolean {
    return this.closedReason !== null;
  }

  /** Why the connection closed (null while it is open). */
  get closeReason(): string | null {
    return this.closedReason;
  }

  /** Resolves when the back-end has closed the connection (or we did). */
  whenClosed(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => this.closeWaiters.push(resolve));
  }

  /** Send one request; the payload is sent as is (its length is the header's size). */
  send(request: number, payload: Buffer, fds: number[] = [], needReply = false): void {
    this.sendRaw(encodeMessage(request, payload, needReply), fds);
  }

  /** Answer a request of the peer's (flags: version | REPLY). */
  reply(request: number, payload: Buffer): void {
    this.sendRaw(Buffer.concat([encodeHeader(request, VHOST_USER_VERSION | VHOST_USER_FLAG_REPLY, payload.length), payload]));
  }

  /** Send arbitrary bytes (fuzzing: lying headers, truncated messages). */
  sendRaw(bytes: Buffer, fds: number[] = []): void {
    if (this.closed) throw new ConnectionClosedError(this.closedReason!);
    try {
      vn.sendMsg(this.fd, bytes, fds);
    } catch (e) {
      this.markClosed(`send failed: ${(e as Error).message}`);
      throw new ConnectionClosedError(this.closedReason!);
    }
  }

  /** The next message from the back-end (rejects with ConnectionClosedError at end of stream). */
  recv(): Promise<VhostUserMessage> {
    const m = this.inbox.shift();
    if (m) return Promise.resolve(m);
    if (this.closed) return Promise.reject(new ConnectionClosedError(this.closedReason!));
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Send a request and await its reply, checking that the reply answers it. */
  async call(request: number, payload: Buffer, fds: number[] = [], needReply = false): Promise<VhostUserMessage> {
    const p = this.recv();
    try {
      this.send(request, payload, fds, needReply);
    } catch (e) {
      p.catch(() => undefined);
      throw e;
    }
    const reply = await p;
    if (reply.request !== request || (reply.flags & VHOST_USER_FLAG_REPLY) === 0) {
      throw new Error(`vhost-user reply mismatch: sent request ${request}, got request ${reply.request} flags 0x${reply.flags.toString(16)}`);
    }
    return reply;
  }

  private onReadable(status: number): void {
    if (status < 0) {
      this.markClosed(`poll error ${status}`);
      return;
    }
    let r: { bytes: number; fds: number[] } | null;
    try {
      r = vn.recvMsg(this.fd, this.recvBuf, 0, this.recvBuf.length);
    } catch (e) {
      this.markClosed(`recv failed: ${(e as Error).message}`);
      return;
    }
    if (r === null) return;
    if (r.bytes === 0) {
      this.markClosed('end of stream from the back-end');
      return;
    }
    this.pending = Buffer.concat([this.pending, this.recvBuf.subarray(0, r.bytes)]);
    this.pendingFds.push(...r.fds);
    const { messages, consumed } = parseMessages(this.pending);
    this.pending = this.pending.subarray(consumed);
    for (const m of messages) {
      const msg: VhostUserMessage = { ...m, fds: this.pendingFds };
      this.pendingFds = [];
      if (this.handler) {
        this.handler(msg);
        continue;
      }
      const w = this.waiters.shift();
      if (w) w.resolve(msg);
      else this.inbox.push(msg);
    }
  }

  private markClosed(reason: string): void {
    if (this.closedReason !== null) return;
    this.closedReason = reason;
    this.poller.close();
    try {
      closeSync(this.fd);
    } catch {
      // already gone
    }
    for (const fd of this.pendingFds) closeSync(fd);
    this.pendingFds = [];
    for (const w of this.waiters.splice(0)) w.reject(new ConnectionClosedError(reason));
    for (const c of this.closeWaiters.splice(0)) c();
  }

  close(): void {
    this.markClosed('closed by the front-end');
  }
}
