/**
 * The backend channel (SET_BACKEND_REQ_FD): back-end → front-end requests. kfsd uses it to
 * map ranges of the image file into the guest's DAX window (SHMEM_MAP / SHMEM_UNMAP, QEMU's
 * "VIRTIO Shared Memory Regions" series, protocol feature SHMEM). With REPLY_ACK every request
 * asks for a reply (u64, 0 = success) and requests are answered in order, so replies are
 * matched to a FIFO of waiters. The front-end closing the channel fails everything pending.
 */
import { FsError } from '../util/errors';
import { MessageChannel, VhostMessage, closeQuietly } from './channel';
import { BackendRequest, FLAG_NEED_REPLY, FLAG_REPLY, ShmemMap, SHMEM_MAP_FLAG_WRITABLE, VERSION } from './protocol';

export interface ShmemRange {
  shmid: number;
  /** Offset in the shared-memory region (the DAX window). */
  shmOffset: number;
  len: number;
}

export class BackendChannel {
  private channel: MessageChannel;
  private waiters: { request: number; resolve: () => void; reject: (e: Error) => void }[] = [];
  private closedReason: string | null = null;

  constructor(fd: number, private replyAck: boolean) {
    this.channel = new MessageChannel(fd, (m) => this.onReply(m), (reason) => this.onClose(reason));
    this.channel.start();
  }

  /** Map [fdOffset, +len) of fd at range.shmOffset; the fd is sent, not consumed. */
  map(range: ShmemRange, fd: number, fdOffset: number, writable: boolean): Promise<void> {
    return this.request(BackendRequest.SHMEM_MAP, range, fdOffset, writable ? SHMEM_MAP_FLAG_WRITABLE : 0, [fd]);
  }

  unmap(range: ShmemRange): Promise<void> {
    return this.request(BackendRequest.SHMEM_UNMAP, range, 0, 0, []);
  }

  private request(code: number, range: ShmemRange, fdOffset: number, flags: number, fds: number[]): Promise<void> {
    if (this.closedReason) return Promise.reject(new FsError('ENOTCONN', `backend channel closed (${this.closedReason})`));
    const payload = Buffer.alloc(ShmemMap.size);
    ShmemMap.encode({ shmid: range.shmid, padding: Buffer.alloc(7), fdOffset, shmOffset: range.shmOffset, len: range.len, flags }, payload);
    const p = this.replyAck
      ? new Promise<void>((resolve, reject) => this.waiters.push({ request: code, resolve, reject }))
      : Promise.resolve();
    this.channel.send(code, VERSION | (this.replyAck ? FLAG_NEED_REPLY : 0), payload, fds);
    return p;
  }

  private onReply(m: VhostMessage): void {
    for (const fd of m.fds) closeQuietly(fd);
    const w = this.waiters.shift();
    if (!w || !(m.flags & FLAG_REPLY) || m.request !== w.request || m.payload.length < 8) {
      w?.reject(new FsError('EPROTO', 'unexpected message on the backend channel'));
      this.channel.close('protocol error on the backend channel');
      return;
    }
    if (m.payload.readBigUInt64LE(0) === 0n) w.resolve();
    else w.reject(new FsError('EIO', `front-end refused ${BackendRequest[m.request] ?? m.request}`));
  }

  private onClose(reason: string): void {
    this.closedReason = reason;
    for (const w of this.waiters.splice(0)) w.reject(new FsError('ENOTCONN', `backend channel closed (${reason})`));
  }

  close(): void {
    this.channel.close('back-end closing');
  }
}
