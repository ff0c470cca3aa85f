/**
 * A vhost-user front-end of our own that plays QEMU 7.2's part for vhost-user-fs-pci: memfd
 * guest memory, the handshake, split virtqueues (kicks and calls over eventfds) and a FUSE
 * client on top. Used to test kfsd (and the C virtiofsd, the reference peer) without a VM, to
 * fuzz them, and as a load generator.
 *
 * Handshake as QEMU 7.2 does it (hw/virtio/vhost.c, vhost-user.c, vhost-user-fs.c):
 *   GET_FEATURES; GET_PROTOCOL_FEATURES / SET_PROTOCOL_FEATURES (when the back-end offers
 *   VHOST_USER_F_PROTOCOL_FEATURES); GET_QUEUE_NUM (with MQ); GET_MAX_MEM_SLOTS (with
 *   CONFIGURE_MEM_SLOTS); SET_OWNER; then at device start SET_FEATURES, SET_MEM_TABLE (or one
 *   ADD_MEM_REG per region with CONFIGURE_MEM_SLOTS, which is what QEMU uses then), per queue
 *   SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL, and
 *   SET_VRING_ENABLE when protocol features were negotiated. GET_VRING_BASE stops a queue.
 *
 * DAX (the "VIRTIO Shared Memory Regions" series, not in a QEMU release yet): when the back-end
 *   offers SHMEM, also BACKEND_REQ and BACKEND_SEND_FD; SET_BACKEND_REQ_FD (one end of a socket
 *   pair) before SET_OWNER, as QEMU sets up the backend channel at backend init; then
 *   GET_SHMEM_CONFIG sizes the cache window (region 0), served by ./vhost-frontend/cache-window.ts.
 *
 * Pieces: ./vhost-frontend/{protocol,connection,memory,virtqueue,fuse-client,cache-window,backends}.ts.
 */
import { closeSync } from 'node:fs';
import { BackendChannelServer, CacheWindow } from './vhost-frontend/cache-window';
import { ConnectionClosedError, VhostUserConnection } from './vhost-frontend/connection';
import { FuseClient } from './vhost-frontend/fuse-client';
import { DEFAULT_REGIONS, GuestMemory, type RegionSpec } from './vhost-frontend/memory';
import {
  bit,
  memRegMsg,
  memTable,
  ProtocolFeature,
  readShmemConfig,
  readU64Payload,
  readVringState,
  u64Payload,
  VhostUserRequest as R,
  VirtioFeature,
  vringAddr,
  vringState,
} from './vhost-frontend/protocol';
import { SplitVirtqueue } from './vhost-frontend/virtqueue';

export { ConnectionClosedError, VhostUserConnection } from './vhost-frontend/connection';
export { FuseClient, FuseReplyError, cstr, type FuseReply } from './vhost-frontend/fuse-client';
export { GuestMemory, DEFAULT_REGIONS, type RegionSpec } from './vhost-frontend/memory';
export * from './vhost-frontend/protocol';
export { SplitVirtqueue, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, DESC_SIZE, writeDesc, type RawDesc } from './vhost-frontend/virtqueue';
export * from './vhost-frontend/backends';
export { vn } from './vhost-frontend/native';
export { BackendChannelServer, CacheWindow, DAX_SHMID, type ShmemEvent, type WindowMapping } from './vhost-frontend/cache-window';

export interface FrontendOptions {
  socketPath: string;
  /** Descriptors per queue (QEMU's queue-size; power of two, at most 32768). Default 128. */
  queueSize?: number;
  /** Request queues to set up (hiprio comes on top); capped by what the back-end reports. Default 1. */
  requestQueues?: number;
  /** Negotiate VIRTIO_RING_F_EVENT_IDX when offered. Default true. */
  eventIdx?: boolean;
  /** Send FUSE requests through indirect descriptor tables (needs INDIRECT_DESC). Default false. */
  indirect?: boolean;
  /** Use ADD_MEM_REG instead of SET_MEM_TABLE when CONFIGURE_MEM_SLOTS is offered. Default false. */
  memSlots?: boolean;
  /** Ask for a REPLY_ACK on every request that has no reply of its own. Default false (QEMU: SET_MEM_TABLE only). */
  ackAll?: boolean;
  regions?: RegionSpec[];
  /** Initial ring index (SET_VRING_BASE; the rings' idx fields start there too). */
  ringBase?: number;
  /** Protocol features to ask for (masked with the offer). Default MQ, REPLY_ACK, CONFIGURE_MEM_SLOTS, STATUS. */
  wantProtocol?: bigint;
  /**
   * Provide a cache window (DAX) when the back-end offers SHMEM: negotiate SHMEM, BACKEND_REQ and
   * BACKEND_SEND_FD on top of wantProtocol. Default true; false plays a front-end without the feature.
   */
  dax?: boolean;
  /** Set up the backend channel even without DAX (as QEMU 7.2 does whenever BACKEND_REQ is offered). Default false. */
  backendChannel?: boolean;
}

const DEFAULT_PROTOCOL = bit(ProtocolFeature.MQ) | bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.CONFIGURE_MEM_SLOTS) | bit(ProtocolFeature.STATUS);

/** The virtio features a Linux guest's virtio-fs driver acks (the transport features it knows). */
const DRIVER_FEATURES = bit(VirtioFeature.VERSION_1) | bit(VirtioFeature.RING_INDIRECT_DESC) | bit(VirtioFeature.RING_EVENT_IDX);

export class VhostFrontend {
  readonly mem: GuestMemory;
  readonly queues: SplitVirtqueue[] = [];
  fuse!: FuseClient;
  /** What the back-end offered. */
  features = 0n;
  protocolFeatures = 0n;
  /** What was negotiated. */
  ackedFeatures = 0n;
  ackedProtocol = 0n;
  /** GET_QUEUE_NUM's answer (0 without MQ). */
  queueNum = 0;
  maxMemSlots = 0;
  /** GET_SHMEM_CONFIG's answer (region sizes; empty without SHMEM). */
  shmemSizes: number[] = [];
  /** The cache window (shmid 0), when SHMEM was negotiated and the back-end asked for one. */
  window: CacheWindow | null = null;
  /** Our end of the backend channel, when BACKEND_REQ was negotiated. */
  backendChannel: BackendChannelServer | null = null;

  /** Set by close(): the queues are ours to tear down, not the back-end's doing. */
  private closing = false;

  private constructor(readonly conn: VhostUserConnection, readonly opts: FrontendOptions) {
    this.mem = new GuestMemory(opts.regions ?? DEFAULT_REGIONS);
    // A back-end that exits or drops the connection never gives back the chains it holds (a CI
    // run once sat in an idle event loop until ava's timeout after virtiofsd went away): every
    // request still out fails with the reason instead.
    void conn.whenClosed().then(() => {
      if (this.closing) return;
      const e = new ConnectionClosedError(conn.closeReason ?? 'closed');
      for (const q of this.queues) q.fail(e);
    });
  }

  /** Connect, negotiate, set up memory and queues; FUSE INIT is left to the caller. */
  static async start(opts: FrontendOptions): Promise<VhostFrontend> {
    const conn = await VhostUserConnection.connect(opts.socketPath);
    const fe = new VhostFrontend(conn, opts);
    try {
      await fe.negotiate();
      await fe.startDevice();
    } catch (e) {
      fe.close();
      throw e;
    }
    return fe;
  }

  /** Connect and create guest memory only: the caller drives every message (fuzzing). */
  static async connectRaw(opts: FrontendOptions): Promise<VhostFrontend> {
    return new VhostFrontend(await VhostUserConnection.connect(opts.socketPath), opts);
  }

  hasProtocol(f: number): boolean {
    return (this.ackedProtocol & bit(f)) !== 0n;
  }

  hasFeature(f: number): boolean {
    return (this.ackedFeatures & bit(f)) !== 0n;
  }

  /**
   * Send a request that has no reply of its own; with REPLY_ACK and `ack` (or ackAll), ask for
   * one and return its u64 (0 = success). Returns null when no ack was asked for.
   */
  async message(request: number, payload: Buffer, fds: number[] = [], ack = this.opts.ackAll ?? false): Promise<bigint | null> {
    if (ack && this.hasProtocol(ProtocolFeature.REPLY_ACK)) {
      return readU64Payload(await this.conn.call(request, payload, fds, true));
    }
    this.conn.send(request, payload, fds);
    return null;
  }

  /** Like message(), but a non-zero ack is an error. */
  private async must(request: number, payload: Buffer, fds: number[] = [], ack?: boolean): Promise<void> {
    const r = await this.message(request, payload, fds, ack);
    if (r !== null && r !== 0n) throw new Error(`vhost-user request ${request} refused by the back-end (ack ${r})`);
  }

  async getU64(request: number): Promise<bigint> {
    return readU64Payload(await this.conn.call(request, Buffer.alloc(0)));
  }

  async negotiate(): Promise<void> {
    this.features = await this.getU64(R.GET_FEATURES);
    if ((this.features & bit(VirtioFeature.PROTOCOL_FEATURES)) !== 0n) {
      this.protocolFeatures = await this.getU64(R.GET_PROTOCOL_FEATURES);
      let want = this.opts.wantProtocol ?? DEFAULT_PROTOCOL;
      const channel = bit(ProtocolFeature.BACKEND_REQ) | bit(ProtocolFeature.BACKEND_SEND_FD);
      if ((this.opts.dax ?? true) && (this.protocolFeatures & bit(ProtocolFeature.SHMEM)) !== 0n) want |= bit(ProtocolFeature.SHMEM) | channel;
      if (this.opts.backendChannel) want |= channel;
      this.ackedProtocol = this.protocolFeatures & want;
      this.conn.send(R.SET_PROTOCOL_FEATURES, u64Payload(this.ackedProtocol));
      if (this.hasProtocol(ProtocolFeature.MQ)) this.queueNum = Number(await this.getU64(R.GET_QUEUE_NUM));
      if (this.hasProtocol(ProtocolFeature.CONFIGURE_MEM_SLOTS)) this.maxMemSlots = Number(await this.getU64(R.GET_MAX_MEM_SLOTS));
      if (this.hasProtocol(ProtocolFeature.BACKEND_REQ)) await this.setupBackendChannel();
    }
    await this.must(R.SET_OWNER, Buffer.alloc(0));
    if (this.hasProtocol(ProtocolFeature.SHMEM)) {
      this.shmemSizes = readShmemConfig(await this.conn.call(R.GET_SHMEM_CONFIG, Buffer.alloc(0)));
      // Region 0 of virtio-fs is the DAX cache window (virtio 1.2 §5.11.5).
      if (this.shmemSizes.length > 0 && this.shmemSizes[0] > 0) this.window = new CacheWindow(this.shmemSizes[0]);
    }
  }

  /** SET_BACKEND_REQ_FD with one end of a socket pair; the other end serves the back-end's requests. */
  private async setupBackendChannel(): Promise<void> {
    const [ours, theirs] = BackendChannelServer.socketPair();
    this.backendChannel = new BackendChannelServer(ours, () => this.window);
    try {
      // QEMU asks for an ack here when REPLY_ACK is negotiated (vhost_setup_backend_channel).
      await this.must(R.SET_BACKEND_REQ_FD, Buffer.alloc(0), [theirs], true);
    } finally {
      closeSync(theirs);
    }
  }

  /** What the guest reads at [off, off+len) of the cache window. */
  windowRead(off: number, len: number): Buffer {
    if (!this.window) throw new Error('no cache window (SHMEM not negotiated)');
    return this.window.read(off, len);
  }

  /** A guest store into the cache window. */
  windowWrite(off: number, data: Buffer): void {
    if (!this.window) throw new Error('no cache window (SHMEM not negotiated)');
    this.window.write(off, data);
  }

  private async startDevice(): Promise<void> {
    let want = DRIVER_FEATURES;
    if (this.opts.eventIdx === false) want &= ~bit(VirtioFeature.RING_EVENT_IDX);
    this.ackedFeatures = (this.features & want) | (this.features & bit(VirtioFeature.PROTOCOL_FEATURES));
    if ((this.ackedFeatures & bit(VirtioFeature.VERSION_1)) === 0n) throw new Error('back-end does not offer VIRTIO_F_VERSION_1');
    if (this.opts.indirect && !this.hasFeature(VirtioFeature.RING_INDIRECT_DESC)) throw new Error('back-end does not offer INDIRECT_DESC');
    await this.must(R.SET_FEATURES, u64Payload(this.ackedFeatures));
    await this.setMemory();
    // Without MQ the back-end still serves hiprio + one request queue (virtiofsd, kfsd).
    const available = this.queueNum > 0 ? this.queueNum - 1 : 1;
    const nreq = Math.max(1, Math.min(this.opts.requestQueues ?? 1, available));
    for (let i = 0; i <= nreq; i++) await this.startQueue(i);
    if (this.hasFeature(VirtioFeature.PROTOCOL_FEATURES)) {
      for (const q of this.queues) await this.must(R.SET_VRING_ENABLE, vringState(q.index, 1));
    }
    this.fuse = new FuseClient(this.mem, this.queues, { indirect: this.opts.indirect });
  }

  async setMemory(): Promise<void> {
    if (this.opts.memSlots && this.hasProtocol(ProtocolFeature.CONFIGURE_MEM_SLOTS)) {
      const table = this.mem.table();
      for (const [i, r] of table.entries()) await this.must(R.ADD_MEM_REG, memRegMsg(r), [this.mem.regions[i].fd], true);
    } else {
      await this.must(R.SET_MEM_TABLE, memTable(this.mem.table()), this.mem.fds(), true);
    }
  }

  private async startQueue(index: number): Promise<void> {
    const size = this.opts.queueSize ?? 128;
    const base = this.opts.ringBase ?? 0;
    const q = new SplitVirtqueue(this.mem, index, size, { eventIdx: this.hasFeature(VirtioFeature.RING_EVENT_IDX), base });
    this.queues.push(q);
    await this.must(R.SET_VRING_NUM, vringState(index, size));
    await this.must(R.SET_VRING_BASE, vringState(index, base));
    await this.must(
      R.SET_VRING_ADDR,
      vringAddr({ index, flags: 0, desc: this.mem.userspaceAddr(q.descGpa), used: this.mem.userspaceAddr(q.usedGpa), avail: this.mem.userspaceAddr(q.availGpa), log: 0 }),
    );
    // CALL before KICK, in QEMU's order (vhost_dev_start sets the guest notifiers first): the
    // kick starts the ring, and a back-end whose queue thread answers a request before it has
    // read the call fd signals fd -1 (virtiofsd: "fv_panic: libvhost-user: Error writing
    // eventfd: Bad file descriptor", which failed this suite now and then).
    await this.must(R.SET_VRING_CALL, u64Payload(index), [q.callFd]);
    await this.must(R.SET_VRING_KICK, u64Payload(index), [q.kickFd]);
    q.start();
  }

  /** GET_VRING_BASE: stops the queue; the back-end answers its next avail index. */
  async getVringBase(index: number): Promise<number> {
    const r = readVringState(await this.conn.call(R.GET_VRING_BASE, vringState(index, 0)));
    if (r.index !== index) throw new Error(`GET_VRING_BASE for queue ${index} answered for queue ${r.index}`);
    return r.num;
  }

  /** Stop every queue as QEMU does at device stop; returns the bases. */
  async stop(): Promise<number[]> {
    const out: number[] = [];
    for (const q of this.queues) out.push(await this.getVringBase(q.index));
    return out;
  }

  /** GET_STATUS (with the STATUS protocol feature): the device status byte. */
  async getStatus(): Promise<number> {
    return Number(await this.getU64(R.GET_STATUS));
  }

  /** True once the back-end has closed the connection. */
  get disconnected(): boolean {
    return this.conn.closed;
  }

  close(): void {
    this.closing = true;
    this.conn.close();
    for (const q of this.queues) q.close();
    this.queues.length = 0;
    this.mem.close();
    this.backendChannel?.close();
    this.backendChannel = null;
    this.window?.close();
    this.window = null;
  }
}

/** Run `fn` and report whether the connection dropped instead of throwing ConnectionClosedError. */
export async function orDisconnect<T>(p: Promise<T>): Promise<{ value: T } | { closed: string }> {
  try {
    return { value: await p };
  } catch (e) {
    if (e instanceof ConnectionClosedError) return { closed: e.message };
    throw e;
  }
}
