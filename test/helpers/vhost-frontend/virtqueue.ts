/**
 * Split virtqueue, driver side (virtio 1.2 §2.7; layouts as linux/virtio_ring.h):
 *   descriptor table  16 bytes each: le64 addr, le32 len, le16 flags, le16 next
 *   available ring    le16 flags, le16 idx, le16 ring[size], le16 used_event
 *   used ring         le16 flags, le16 idx, {le32 id, le32 len}[size], le16 avail_event
 * Indices are free-running u16; the slot is idx % size.
 *
 * With VIRTIO_RING_F_EVENT_IDX the driver kicks only when the new avail idx passes the
 * device's avail_event, and publishes used_event = last used idx seen so the device calls
 * only after that. Publishing the avail idx and reading avail_event are ordered by a full
 * fence (mb), as are writing used_event and re-reading used idx; otherwise either side can
 * miss the other's update and a request hangs.
 *
 * The descriptor table sits in the last region and the rings in the first, so a back-end that
 * translates ring addresses with the wrong region (or as GPAs) reads garbage.
 */
import { closeSync } from 'node:fs';
import type { FdPollerHandle } from '../../../src/native';
import { ByteCursor } from '../../../src/util/cursor';
import type { GuestMemory } from './memory';
import { vn } from './native';

export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;
export const VRING_USED_F_NO_NOTIFY = 1;
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
export const DESC_SIZE = 16;

/** One buffer of a chain: device-readable (driver → device) or device-writable. */
export interface Segment {
  gpa: number;
  len: number;
  writable: boolean;
}

/** A descriptor exactly as written, for fuzzing. */
export interface RawDesc {
  addr: number;
  len: number;
  flags: number;
  next: number;
}

export interface VirtqueueOptions {
  eventIdx: boolean;
  /** Initial avail/used index (as after a migration); exercises u16 wrap-around. */
  base?: number;
}

interface ChainState {
  descs: number[];
  tables: number[];
  onUsed: (len: number) => void;
  onFail: (e: Error) => void;
}

const u16 = (v: number): number => v & 0xffff;

export function writeDesc(buf: Buffer, off: number, d: RawDesc): void {
  new ByteCursor(buf, off, off + DESC_SIZE).putU64(d.addr).putU32(d.len).putU16(d.flags).putU16(d.next);
}

export class SplitVirtqueue {
  readonly descGpa: number;
  readonly availGpa: number;
  readonly usedGpa: number;
  readonly kickFd: number;
  readonly callFd: number;
  /** Anomalies seen on the used ring (ids never made available, lengths beyond the chain). */
  readonly deviceErrors: string[] = [];
  /** Calls received and kicks sent (to check EVENT_IDX suppression does something). */
  calls = 0;
  kicks = 0;

  private readonly desc: Buffer;
  private readonly avail: Buffer;
  private readonly used: Buffer;
  private readonly freeDescs: number[] = [];
  private readonly chains = new Map<number, ChainState>();
  private readonly descWaiters: (() => void)[] = [];
  private availIdx: number;
  private publishedIdx: number;
  private lastUsed: number;
  private flushScheduled = false;
  private poller: FdPollerHandle | null = null;
  /** Set once the device is gone: every chain still out, and every later submit, rejects with it. */
  private failure: Error | null = null;

  constructor(readonly mem: GuestMemory, readonly index: number, readonly size: number, readonly opts: VirtqueueOptions) {
    const last = mem.regions.length - 1;
    this.descGpa = mem.alloc(DESC_SIZE * size, 16, last);
    this.availGpa = mem.alloc(6 + 2 * size, 2, 0);
    this.usedGpa = mem.alloc(6 + 8 * size, 4, 0);
    this.desc = mem.view(this.descGpa, DESC_SIZE * size);
    this.avail = mem.view(this.availGpa, 6 + 2 * size);
    this.used = mem.view(this.usedGpa, 6 + 8 * size);
    this.desc.fill(0);
    this.avail.fill(0);
    this.used.fill(0);
    const base = u16(opts.base ?? 0);
    this.availIdx = this.publishedIdx = this.lastUsed = base;
    this.avail.writeUInt16LE(base, 2);
    this.used.writeUInt16LE(base, 2);
    if (opts.eventIdx) this.avail.writeUInt16LE(base, 4 + 2 * size);
    for (let i = size - 1; i >= 0; i--) this.freeDescs.push(i);
    this.kickFd = vn.eventfd(0, true);
    this.callFd = vn.eventfd(0, true);
  }

  /** Start listening for calls from the device. */
  start(): void {
    if (this.poller) return;
    this.poller = new vn.FdPoller(this.callFd, () => {
      if (vn.eventfdRead(this.callFd) > 0) this.calls++;
      this.processUsed();
    });
    this.poller.start(1);
  }

  get inFlight(): number {
    return this.chains.size;
  }

  /** Avail idx as published to the device (what GET_VRING_BASE should report once all is consumed). */
  get availIndex(): number {
    return this.publishedIdx;
  }

  get usedIndex(): number {
    return this.lastUsed;
  }

  /** Wait until `n` descriptors are free. */
  private async takeDescs(n: number): Promise<number[]> {
    if (n > this.size) throw new Error(`chain of ${n} descriptors does not fit a queue of ${this.size}`);
    for (;;) {
      if (this.failure) throw this.failure;
      if (this.freeDescs.length >= n) break;
      await new Promise<void>((r) => this.descWaiters.push(r));
    }
    return this.freeDescs.splice(this.freeDescs.length - n, n);
  }

  /**
   * Make one chain available and resolve with the byte count the device reports in the used
   * ring. Readable segments must precede writable ones (virtio 1.2 §2.7.4.2). With `indirect`
   * the chain goes into an indirect table and takes one ring descriptor.
   */
  async submit(segs: Segment[], indirect = false): Promise<number> {
    if (segs.length === 0) throw new Error('empty chain');
    const ids = await this.takeDescs(indirect ? 1 : segs.length);
    return new Promise((resolve, reject) => {
      const tables: number[] = [];
      if (indirect) {
        const tgpa = this.mem.alloc(DESC_SIZE * segs.length, 16);
        tables.push(tgpa);
        const table = this.mem.view(tgpa, DESC_SIZE * segs.length);
        segs.forEach((s, i) => {
          const more = i + 1 < segs.length;
          writeDesc(table, i * DESC_SIZE, { addr: s.gpa, len: s.len, flags: (s.writable ? VRING_DESC_F_WRITE : 0) | (more ? VRING_DESC_F_NEXT : 0), next: more ? i + 1 : 0 });
        });
        writeDesc(this.desc, ids[0] * DESC_SIZE, { addr: tgpa, len: DESC_SIZE * segs.length, flags: VRING_DESC_F_INDIRECT, next: 0 });
      } else {
        segs.forEach((s, i) => {
          const more = i + 1 < segs.length;
          writeDesc(this.desc, ids[i] * DESC_SIZE, { addr: s.gpa, len: s.len, flags: (s.writable ? VRING_DESC_F_WRITE : 0) | (more ? VRING_DESC_F_NEXT : 0), next: more ? ids[i + 1] : 0 });
        });
      }
      this.makeAvailable(ids[0], { descs: ids, tables, onUsed: resolve, onFail: reject });
    });
  }

  /**
   * Fuzzing: take `count` descriptors, let `build` write whatever it likes into them (it gets
   * their indices, for next pointers), and make ids[0] available. Resolves if the device ever
   * returns the chain.
   */
  async submitRaw(count: number, build: (ids: number[]) => RawDesc[], tables: number[] = []): Promise<number> {
    const ids = await this.takeDescs(count);
    const descs = build(ids);
    descs.forEach((d, i) => writeDesc(this.desc, ids[i] * DESC_SIZE, d));
    return new Promise((resolve, reject) => this.makeAvailable(ids[0], { descs: ids, tables, onUsed: resolve, onFail: reject }));
  }

  /** Fuzzing: put an arbitrary head index in the avail ring (it may name no chain at all). */
  publishRawHead(head: number): void {
    this.avail.writeUInt16LE(u16(head), 4 + 2 * (this.availIdx % this.size));
    this.availIdx = u16(this.availIdx + 1);
    this.scheduleFlush();
  }

  /** Fuzzing: set the avail idx to any value (e.g. far ahead of what was filled in). */
  setAvailIdxRaw(idx: number): void {
    this.availIdx = u16(idx);
    this.scheduleFlush();
  }

  private makeAvailable(head: number, state: ChainState): void {
    this.chains.set(head, state);
    this.avail.writeUInt16LE(head, 4 + 2 * (this.availIdx % this.size));
    this.availIdx = u16(this.availIdx + 1);
    this.scheduleFlush();
  }

  /** Requests made in one tick are published with one idx update and at most one kick. */
  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => this.flush());
  }

  flush(): void {
    this.flushScheduled = false;
    const old = this.publishedIdx;
    const now = this.availIdx;
    if (old === now) return;
    vn.fence(); // ring entries before the idx that publishes them
    this.avail.writeUInt16LE(now, 2);
    this.publishedIdx = now;
    vn.fence(); // idx store before the avail_event / flags load
    let kick: boolean;
    if (this.opts.eventIdx) {
      const event = this.used.readUInt16LE(4 + 8 * this.size);
      kick = u16(now - event - 1) < u16(now - old);
    } else {
      kick = (this.used.readUInt16LE(0) & VRING_USED_F_NO_NOTIFY) === 0;
    }
    if (kick) this.kick();
  }

  kick(): void {
    this.kicks++;
    vn.eventfdWrite(this.kickFd, 1);
  }

  /** Collect used entries; safe to call at any time (also without a call). */
  processUsed(): void {
    for (;;) {
      let usedIdx = this.used.readUInt16LE(2);
      while (this.lastUsed !== usedIdx) {
        vn.fence(); // idx load before the element loads
        for (; this.lastUsed !== usedIdx; this.lastUsed = u16(this.lastUsed + 1)) {
          const slot = 4 + 8 * (this.lastUsed % this.size);
          const id = this.used.readUInt32LE(slot);
          const len = this.used.readUInt32LE(slot + 4);
          const chain = this.chains.get(id);
          if (!chain) {
            this.deviceErrors.push(`used id ${id} at used idx ${this.lastUsed} is not an outstanding chain head`);
            continue;
          }
          this.chains.delete(id);
          this.freeDescs.push(...chain.descs);
          for (const t of chain.tables) this.mem.free(t);
          chain.onUsed(len);
        }
        usedIdx = this.used.readUInt16LE(2);
      }
      if (!this.opts.eventIdx) break;
      this.avail.writeUInt16LE(this.lastUsed, 4 + 2 * this.size);
      vn.fence(); // used_event store before re-reading used idx
      if (this.used.readUInt16LE(2) === this.lastUsed) break;
    }
    while (this.descWaiters.length > 0 && this.freeDescs.length > 0) this.descWaiters.shift()!();
  }

  /**
   * The device went away (its connection closed): no chain still out will ever come back, so
   * each one rejects with `e` instead of leaving its caller waiting forever, and so does any
   * later submit.
   */
  fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    const chains = [...this.chains.values()];
    this.chains.clear();
    for (const c of chains) c.onFail(e);
    for (const w of this.descWaiters.splice(0)) w();
  }

  close(): void {
    this.poller?.close();
    this.poller = null;
    closeSync(this.kickFd);
    closeSync(this.callFd);
  }
}
