/**
 * One end of a vhost-user socket: framing of messages (12-byte header, payload, SCM_RIGHTS
 * fds) over a non-blocking unix stream socket polled on the event loop. The header is read
 * on its own so that fds sent with one message are never attributed to the next.
 * Framing errors (wrong version, a payload larger than any message kfsd accepts) end the
 * connection: the stream can no longer be trusted to be in step.
 */
import fs from 'node:fs';
import { native, FdPollerHandle } from '../native';
import { log } from '../util/log';
import { HEADER_SIZE, MAX_PAYLOAD, VERSION, FLAG_VERSION_MASK, FLAG_REPLY } from './protocol';

export interface VhostMessage {
  request: number;
  flags: number;
  payload: Buffer;
  /** Received fds; a handler that keeps one sets its slot to -1, the rest are closed after it. */
  fds: number[];
}

const UV_READABLE = 1;

export class MessageChannel {
  private poller: FdPollerHandle | null = null;
  private header = Buffer.alloc(HEADER_SIZE);
  private have = 0;
  private payload: Buffer | null = null;
  private fds: number[] = [];
  private closed = false;

  constructor(
    readonly fd: number,
    private onMessage: (m: VhostMessage) => void,
    private onClose: (reason: string) => void,
  ) {}

  start(): void {
    this.poller = new native.FdPoller(this.fd, (_events, status) => {
      if (status < 0) return this.close(`socket poll error ${status}`);
      this.readAvailable();
    });
    this.poller.start(UV_READABLE);
  }

  private readAvailable(): void {
    while (!this.closed) {
      const inHeader = this.payload === null;
      const target = inHeader ? this.header : this.payload!;
      let r: { bytes: number; fds: number[] } | null;
      try {
        r = native.recvMsg(this.fd, target, this.have, target.length - this.have);
      } catch (e) {
        return this.close(`receive failed: ${(e as Error).message}`);
      }
      if (r === null) return;
      this.fds.push(...r.fds);
      if (r.bytes === 0) return this.close('peer closed the connection');
      this.have += r.bytes;
      if (this.have < target.length) continue;
      if (inHeader) {
        const flags = this.header.readUInt32LE(4);
        const size = this.header.readUInt32LE(8);
        if ((flags & FLAG_VERSION_MASK) !== VERSION) return this.close(`message with protocol version ${flags & FLAG_VERSION_MASK}`);
        if (size > MAX_PAYLOAD) return this.close(`message payload of ${size} bytes (limit ${MAX_PAYLOAD})`);
        this.payload = Buffer.alloc(size);
        this.have = 0;
        if (size > 0) continue;
      }
      const msg: VhostMessage = {
        request: this.header.readUInt32LE(0),
        flags: this.header.readUInt32LE(4),
        payload: this.payload!,
        fds: this.fds,
      };
      this.payload = null;
      this.have = 0;
      this.fds = [];
      this.onMessage(msg);
    }
  }

  /** Send a reply to `request` (flags: version | REPLY). */
  reply(request: number, payload: Buffer, fds: number[] = []): void {
    this.send(request, VERSION | FLAG_REPLY, payload, fds);
  }

  send(request: number, flags: number, payload: Buffer, fds: number[] = []): void {
    if (this.closed) return;
    const buf = Buffer.alloc(HEADER_SIZE + payload.length);
    buf.writeUInt32LE(request, 0);
    buf.writeUInt32LE(flags, 4);
    buf.writeUInt32LE(payload.length, 8);
    payload.copy(buf, HEADER_SIZE);
    try {
      native.sendMsg(this.fd, buf, fds);
    } catch (e) {
      this.close(`send failed: ${(e as Error).message}`);
    }
  }

  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    log.info(`vhost-user: connection closed (${reason})`);
    this.poller?.stop();
    this.poller?.close();
    for (const fd of this.fds) closeQuietly(fd);
    this.fds = [];
    closeQuietly(this.fd);
    this.onClose(reason);
  }

  get isClosed(): boolean {
    return this.closed;
  }
}

export function closeQuietly(fd: number): void {
  if (fd < 0) return;
  try {
    fs.closeSync(fd);
  } catch {
    /* already closed */
  }
}
