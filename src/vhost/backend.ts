/**
 * The vhost-user back-end state machine for one front-end connection (QEMU
 * docs/interop/vhost-user.rst): feature negotiation, guest memory, and the rings, handed to a
 * virtio device (VirtioDevice) that serves them. Messages are handled one at a time, in order;
 * ring kicks are served meanwhile.
 *
 * Offered: VERSION_1, INDIRECT_DESC, EVENT_IDX, PROTOCOL_FEATURES; protocol features MQ,
 * REPLY_ACK, BACKEND_REQ, BACKEND_SEND_FD, CONFIGURE_MEM_SLOTS, SHMEM when the device wants a
 * shared-memory region (the virtio-fs DAX window), and CONFIG only when the
 * device has a config space to give (QEMU 7.x must never see CONFIG for vhost-user-fs: it
 * would then ask the back-end for the tag).
 *
 * A message that fails validation changes nothing; with REPLY_ACK it is answered with a
 * failure, otherwise it is logged. Framing errors end the connection (channel.ts).
 */
import { native, FdPollerHandle } from '../native';
import { FsError } from '../util/errors';
import { log } from '../util/log';
import { ByteCursor } from '../util/cursor';
import { MessageChannel, VhostMessage, closeQuietly } from './channel';
import { GuestMemory, RegionDesc } from './guest-memory';
import { SplitVirtqueue } from './virtqueue';
import {
  FrontendRequest as R, FLAG_NEED_REPLY, VirtioFeature, ProtocolFeature, VringState, VringAddr,
  MemoryRegionDesc, MemoryTableHead, MAX_TABLE_REGIONS, MAX_MEM_SLOTS, VRING_IDX_MASK, VRING_NOFD_MASK,
  MAX_SHMEM_REGIONS, requestName,
} from './protocol';

export interface VirtioDevice {
  /** Virtqueues the device has (virtio-fs: hiprio + request queues). */
  readonly numQueues: number;
  /** Device-specific virtio feature bits to offer besides the transport's. */
  readonly deviceFeatures: bigint;
  /** The config space, or null when the front-end provides it itself (no CONFIG feature). */
  config(): Buffer | null;
  /** Serve what the guest made available on q. */
  process(q: SplitVirtqueue, mem: GuestMemory): void;
  /** Resolves once no request taken from q is still being served. */
  drain(q: SplitVirtqueue): Promise<void>;
  /** The backend channel (SET_BACKEND_REQ_FD) arrived (replyAck: requests on it get replies) or went away. */
  setBackendChannel?(fd: number | null, replyAck: boolean): void;
  /** Sizes of the shared-memory regions the device wants (virtio-fs: [DAX window]); empty for none. */
  shmemSizes?(): number[];
  /** Whether the front-end will provide those regions (SHMEM negotiated). */
  setShmemAvailable?(available: boolean): void;
}

const UV_READABLE = 1;
/** Requests answered with a reply of their own (never with REPLY_ACK). */
const HAS_OWN_REPLY = new Set<number>([
  R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.GET_QUEUE_NUM, R.GET_VRING_BASE, R.GET_MAX_MEM_SLOTS,
  R.GET_CONFIG, R.GET_INFLIGHT_FD, R.GET_STATUS, R.GET_SHMEM_CONFIG,
]);
const TRANSPORT_FEATURES = VirtioFeature.VERSION_1 | VirtioFeature.RING_INDIRECT_DESC | VirtioFeature.RING_EVENT_IDX | VirtioFeature.PROTOCOL_FEATURES;

export class VhostUserBackend {
  readonly mem = new GuestMemory();
  readonly queues: SplitVirtqueue[];
  private kickPollers: (FdPollerHandle | null)[];
  private offeredProtocol: bigint;
  private ackedFeatures = 0n;
  private ackedProtocol = 0n;
  private owned = false;
  /** The backend channel's fd when the device does not take it (it then owns and closes it). */
  private backendFd = -1;
  private work: Promise<void> = Promise.resolve();
  private channel: MessageChannel;
  /** Resolves when the connection has ended and every queue is stopped. */
  readonly done: Promise<string>;
  private resolveDone!: (reason: string) => void;

  constructor(fd: number, private device: VirtioDevice) {
    this.queues = Array.from({ length: device.numQueues }, (_, i) => new SplitVirtqueue(i));
    this.kickPollers = this.queues.map(() => null);
    this.offeredProtocol = ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.BACKEND_REQ |
      ProtocolFeature.BACKEND_SEND_FD | ProtocolFeature.CONFIGURE_MEM_SLOTS;
    if (device.config() !== null) this.offeredProtocol |= ProtocolFeature.CONFIG;
    if ((device.shmemSizes?.() ?? []).length > 0) this.offeredProtocol |= ProtocolFeature.SHMEM;
    this.done = new Promise((r) => (this.resolveDone = r));
    this.channel = new MessageChannel(fd, (m) => this.enqueue(m), (reason) => void this.teardown(reason));
  }

  start(): void {
    this.channel.start();
  }

  /** Close the connection from our side (SIGTERM). */
  close(reason: string): void {
    this.channel.close(reason);
  }

  private enqueue(m: VhostMessage): void {
    this.work = this.work.then(() => this.handle(m));
  }

  private async handle(m: VhostMessage): Promise<void> {
    const name = requestName(m.request);
    let ackable = true;
    let ok = true;
    try {
      ackable = await this.dispatch(m);
    } catch (e) {
      ok = false;
      log.warn(`vhost-user ${name}: ${(e as Error).message}`);
      if (HAS_OWN_REPLY.has(m.request)) {
        // The front-end is waiting for this reply and has no way to learn of a failure: end
        // the connection rather than leave it waiting forever.
        this.channel.close(`${name} failed`);
        ackable = false;
      }
    } finally {
      for (const fd of m.fds) closeQuietly(fd);
    }
    // REPLY_ACK (§"REPLY_ACK"): a u64, 0 for success, for requests without a reply of their own.
    if ((m.flags & FLAG_NEED_REPLY) && (this.ackedProtocol & ProtocolFeature.REPLY_ACK) && ackable) {
      this.replyU64(m.request, ok ? 0n : 1n);
    }
  }

  /** Handle one message; returns false when the message had its own reply (no REPLY_ACK). */
  private async dispatch(m: VhostMessage): Promise<boolean> {
    if (log.isDebugEnabled()) log.debug(`vhost-user ${requestName(m.request)} (${m.payload.length} bytes, ${m.fds.length} fds)`);
    const c = new ByteCursor(m.payload);
    switch (m.request) {
      case R.GET_FEATURES:
        this.replyU64(m.request, TRANSPORT_FEATURES | this.device.deviceFeatures);
        return false;
      case R.SET_FEATURES: {
        const f = c.u64n();
        const offered = TRANSPORT_FEATURES | this.device.deviceFeatures;
        if (f & ~offered) throw new FsError('EINVAL', `front-end acked features 0x${f.toString(16)} not offered`);
        this.ackedFeatures = f;
        const eventIdx = (f & VirtioFeature.RING_EVENT_IDX) !== 0n;
        for (const q of this.queues) q.eventIdx = eventIdx;
        return true;
      }
      case R.GET_PROTOCOL_FEATURES:
        this.replyU64(m.request, this.offeredProtocol);
        return false;
      case R.SET_PROTOCOL_FEATURES: {
        const f = c.u64n();
        if (f & ~this.offeredProtocol) throw new FsError('EINVAL', `front-end acked protocol features 0x${f.toString(16)} not offered`);
        this.ackedProtocol = f;
        this.device.setShmemAvailable?.((f & ProtocolFeature.SHMEM) !== 0n);
        return true;
      }
      case R.GET_QUEUE_NUM:
        this.replyU64(m.request, BigInt(this.queues.length));
        return false;
      case R.SET_OWNER:
        this.owned = true;
        return true;
      case R.RESET_OWNER:
        await this.resetDevice();
        this.owned = false;
        return true;
      case R.GET_MAX_MEM_SLOTS:
        this.replyU64(m.request, BigInt(MAX_MEM_SLOTS));
        return false;
      case R.SET_MEM_TABLE:
        this.setMemTable(c, m.fds);
        return true;
      case R.ADD_MEM_REG: {
        c.skip(8);
        const desc = MemoryRegionDesc.read(c) as RegionDesc;
        const fd = takeFd(m, 0);
        if (this.mem.size >= MAX_MEM_SLOTS) {
          closeQuietly(fd);
          throw new FsError('ENOSPC', `more than ${MAX_MEM_SLOTS} memory regions`);
        }
        this.mem.add(desc, fd);
        this.remapQueues();
        return true;
      }
      case R.REM_MEM_REG: {
        c.skip(8);
        const desc = MemoryRegionDesc.read(c) as RegionDesc;
        if (!this.mem.remove(desc)) throw new FsError('ENOENT', `no memory region at 0x${desc.guestPhysAddr.toString(16)}`);
        this.remapQueues();
        return true;
      }
      case R.SET_VRING_NUM: {
        const s = VringState.read(c);
        this.queue(s.index).setNum(s.num);
        return true;
      }
      case R.SET_VRING_ADDR: {
        const a = VringAddr.read(c);
        const q = this.queue(a.index);
        const prev = q.addrs;
        q.addrs = { desc: a.descUserAddr, avail: a.availUserAddr, used: a.usedUserAddr };
        try {
          q.map(this.mem);
        } catch (e) {
          q.addrs = prev;
          throw e;
        }
        return true;
      }
      case R.SET_VRING_BASE: {
        const s = VringState.read(c);
        const q = this.queue(s.index);
        if (s.num > 0xffff) throw new FsError('EINVAL', `ring base ${s.num} is not a 16-bit index`);
        q.setBase(s.num);
        return true;
      }
      case R.GET_VRING_BASE: {
        const s = VringState.read(c);
        const q = this.queue(s.index);
        this.stopKick(q);
        const base = q.stop();
        await this.device.drain(q);
        closeQuietly(q.kickFd);
        q.kickFd = -1;
        const out = Buffer.alloc(VringState.size);
        VringState.encode({ index: s.index, num: base }, out);
        this.channel.reply(m.request, out);
        return false;
      }
      case R.SET_VRING_KICK:
      case R.SET_VRING_CALL:
      case R.SET_VRING_ERR:
        this.setVringFd(m, c.u64());
        return true;
      case R.SET_VRING_ENABLE: {
        const s = VringState.read(c);
        const q = this.queue(s.index);
        if (!(this.ackedFeatures & VirtioFeature.PROTOCOL_FEATURES)) throw new FsError('EINVAL', 'SET_VRING_ENABLE without PROTOCOL_FEATURES');
        q.enabled = s.num === 1;
        if (q.ready) this.device.process(q, this.mem);
        return true;
      }
      case R.SET_BACKEND_REQ_FD: {
        if (!(this.ackedProtocol & ProtocolFeature.BACKEND_REQ)) throw new FsError('EINVAL', 'SET_BACKEND_REQ_FD without BACKEND_REQ');
        closeQuietly(this.backendFd);
        this.backendFd = -1;
        const fd = takeFd(m, 0);
        if (this.device.setBackendChannel) this.device.setBackendChannel(fd, (this.ackedProtocol & ProtocolFeature.REPLY_ACK) !== 0n);
        else this.backendFd = fd;
        return true;
      }
      case R.GET_SHMEM_CONFIG: {
        // VhostUserShMemConfig {u32 nregions; u32 padding; u64 memory_sizes[256]}
        const sizes = this.device.shmemSizes?.() ?? [];
        const out = Buffer.alloc(8 + 8 * MAX_SHMEM_REGIONS);
        out.writeUInt32LE(sizes.length, 0);
        sizes.forEach((sz, i) => out.writeBigUInt64LE(BigInt(sz), 8 + 8 * i));
        this.channel.reply(m.request, out);
        return false;
      }
      case R.GET_CONFIG: {
        // VhostUserConfig {u32 offset; u32 size; u32 flags; u8 region[size]}: answer in the same shape.
        const offset = c.u32();
        const size = c.u32();
        const config = this.device.config();
        const out = Buffer.alloc(12 + size);
        out.writeUInt32LE(offset, 0);
        out.writeUInt32LE(size, 4);
        if (config && offset <= config.length) config.copy(out, 12, offset, Math.min(config.length, offset + size));
        this.channel.reply(m.request, out);
        return false;
      }
      case R.SET_CONFIG:
        throw new FsError('EROFS', 'the virtio-fs config space is read-only');
      default:
        throw new FsError('ENOSYS', `unsupported request ${requestName(m.request)}`);
    }
  }

  private queue(index: number): SplitVirtqueue {
    const q = this.queues[index];
    if (index >= this.queues.length || !q) throw new FsError('EINVAL', `queue ${index} does not exist (device has ${this.queues.length})`);
    return q;
  }

  private setMemTable(c: ByteCursor, fds: number[]): void {
    const head = MemoryTableHead.read(c);
    if (head.nregions === 0 || head.nregions > MAX_TABLE_REGIONS) throw new FsError('EINVAL', `memory table with ${head.nregions} regions`);
    if (fds.length !== head.nregions) throw new FsError('EINVAL', `memory table of ${head.nregions} regions came with ${fds.length} fds`);
    const descs = Array.from({ length: head.nregions }, () => MemoryRegionDesc.read(c) as RegionDesc);
    // Build the new table aside: a bad table leaves the old one in force.
    const next = new GuestMemory();
    try {
      descs.forEach((d, i) => {
        const fd = fds[i];
        fds[i] = -1;
        next.add(d, fd);
      });
    } catch (e) {
      next.clear();
      throw e;
    }
    this.mem.replaceWith(next);
    this.remapQueues();
  }

  private remapQueues(): void {
    for (const q of this.queues) {
      if (!q.addrs) continue;
      try {
        q.map(this.mem);
      } catch (e) {
        q.unmap();
        log.warn(`vhost-user: queue ${q.index} is no longer in guest memory: ${(e as Error).message}`);
      }
    }
  }

  private setVringFd(m: VhostMessage, v: number): void {
    const q = this.queue(v & VRING_IDX_MASK);
    const noFd = (v & VRING_NOFD_MASK) !== 0;
    if (v & ~(VRING_IDX_MASK | VRING_NOFD_MASK)) throw new FsError('EINVAL', `bad vring fd word 0x${v.toString(16)}`);
    if (!noFd && m.fds.length !== 1) throw new FsError('EINVAL', `${requestName(m.request)} needs exactly one fd`);
    const fd = noFd ? -1 : takeFd(m, 0);
    switch (m.request) {
      case R.SET_VRING_CALL:
        closeQuietly(q.callFd);
        q.callFd = fd;
        return;
      case R.SET_VRING_ERR:
        closeQuietly(q.errFd);
        q.errFd = fd;
        return;
      default: // KICK: the ring starts
        if (noFd) throw new FsError('EINVAL', `queue ${q.index}: polling mode (kick without an fd) is not supported`);
        this.stopKick(q);
        closeQuietly(q.kickFd);
        q.kickFd = fd;
        q.started = true;
        if (!(this.ackedFeatures & VirtioFeature.PROTOCOL_FEATURES)) q.enabled = true;
        this.startKick(q);
    }
  }

  private startKick(q: SplitVirtqueue): void {
    const p = new native.FdPoller(q.kickFd, (_ev, status) => {
      if (status < 0) {
        log.warn(`vhost-user: queue ${q.index} kick poll error ${status}`);
        this.stopKick(q);
        return;
      }
      native.eventfdRead(q.kickFd);
      this.device.process(q, this.mem);
    });
    p.start(UV_READABLE);
    this.kickPollers[q.index] = p;
    // Buffers made available before the kick fd arrived.
    if (q.ready) this.device.process(q, this.mem);
  }

  private stopKick(q: SplitVirtqueue): void {
    const p = this.kickPollers[q.index];
    if (!p) return;
    p.stop();
    p.close();
    this.kickPollers[q.index] = null;
  }

  private async resetDevice(): Promise<void> {
    for (const q of this.queues) {
      this.stopKick(q);
      q.stop();
      await this.device.drain(q);
      closeQuietly(q.kickFd);
      closeQuietly(q.callFd);
      closeQuietly(q.errFd);
      q.kickFd = q.callFd = q.errFd = -1;
      q.reset();
    }
    this.mem.clear();
    this.ackedFeatures = 0n;
    this.ackedProtocol = 0n;
    this.device.setBackendChannel?.(null, false);
    closeQuietly(this.backendFd);
    this.backendFd = -1;
  }

  private async teardown(reason: string): Promise<void> {
    await this.work.catch(() => undefined);
    await this.resetDevice();
    this.resolveDone(reason);
  }

  private replyU64(request: number, v: bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(v);
    this.channel.reply(request, b);
  }

  get isOwned(): boolean {
    return this.owned;
  }
}

function takeFd(m: VhostMessage, i: number): number {
  const fd = m.fds[i];
  if (fd === undefined || fd < 0) throw new FsError('EINVAL', `${requestName(m.request)} needs an fd`);
  m.fds[i] = -1;
  return fd;
}
