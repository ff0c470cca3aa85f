/**
 * Device side of a split virtqueue (virtio 1.2 §2.7). Layout in guest memory:
 *   descriptor table  num x {le64 addr; le32 len; le16 flags; le16 next}
 *   available ring    {le16 flags; le16 idx; le16 ring[num]; le16 used_event}
 *   used ring         {le16 flags; le16 idx; {le32 id; le32 len} ring[num]; le16 avail_event}
 * The guest owns the descriptor table and the available ring and may change them at any
 * moment: every index read from them is checked before use, a chain is bounded by the table
 * size (no loops), indirect tables are checked for length and nesting, and every buffer is
 * translated through GuestMemory, which refuses anything outside guest memory.
 *
 * Notification suppression with VIRTIO_F_EVENT_IDX (§2.7.10): after publishing used entries,
 * a full fence orders the store of used.idx before the load of used_event (the guest does the
 * mirror image: store avail.idx, fence, load avail_event). Without the fence both sides can
 * miss each other's update and the queue stalls.
 */
import { native } from '../native';
import { FsError } from '../util/errors';
import { GuestMemory } from './guest-memory';

const DESC_SIZE = 16;
const F_NEXT = 1;
const F_WRITE = 2;
const F_INDIRECT = 4;
const AVAIL_F_NO_INTERRUPT = 1;
export const MAX_QUEUE_SIZE = 32768;
/** A chain longer than this in either direction is refused: FUSE needs max_write + headers. */
const MAX_CHAIN_BYTES = 16 << 20;

export interface DescriptorChain {
  head: number;
  /** Device-readable buffers (the request), in order. */
  readable: Buffer[];
  readableBytes: number;
  /** Device-writable buffers (the reply), in order. */
  writable: Buffer[];
  writableBytes: number;
}

/** A DataView over a Buffer's bytes: its little-endian accessors inline where Buffer's methods validate. */
function viewOf(b: Buffer): DataView {
  return new DataView(b.buffer, b.byteOffset, b.length);
}

export class SplitVirtqueue {
  num = 0;
  private desc: DataView | null = null;
  private avail: DataView | null = null;
  private used: DataView | null = null;
  addrs: { desc: number; avail: number; used: number } | null = null;
  lastAvail = 0;
  private usedIdx = 0;
  private signalledUsed = 0;
  private signalledValid = false;
  eventIdx = false;
  kickFd = -1;
  callFd = -1;
  errFd = -1;
  /** SET_VRING_ENABLE (rings start enabled when PROTOCOL_FEATURES was not negotiated). */
  enabled = false;
  /** Between SET_VRING_KICK and GET_VRING_BASE. */
  started = false;
  /** Set when the guest broke the ring's rules; nothing more is taken from it until reset. */
  broken: string | null = null;
  inflight = 0;

  constructor(readonly index: number) {}

  get ready(): boolean {
    return this.started && this.enabled && this.desc !== null && !this.broken;
  }

  setNum(num: number): void {
    if (num === 0 || num > MAX_QUEUE_SIZE || (num & (num - 1)) !== 0) {
      throw new FsError('EINVAL', `queue ${this.index}: size ${num} is not a power of two up to ${MAX_QUEUE_SIZE}`);
    }
    this.num = num;
  }

  /** Resolve the ring addresses (front-end virtual addresses) through guest memory. */
  map(mem: GuestMemory): void {
    if (!this.addrs) return;
    if (this.num === 0) throw new FsError('EINVAL', `queue ${this.index}: ring address set before its size`);
    const { desc, avail, used } = this.addrs;
    if (desc % 16 || avail % 2 || used % 4) throw new FsError('EINVAL', `queue ${this.index}: misaligned ring addresses`);
    this.desc = viewOf(mem.uvaView(desc, this.num * DESC_SIZE));
    this.avail = viewOf(mem.uvaView(avail, 6 + 2 * this.num));
    this.used = viewOf(mem.uvaView(used, 6 + 8 * this.num));
    this.usedIdx = this.used.getUint16(2, true);
    this.signalledValid = false;
  }

  unmap(): void {
    this.desc = this.avail = this.used = null;
  }

  setBase(base: number): void {
    this.lastAvail = base & 0xffff;
  }

  /** Stop (GET_VRING_BASE): the index to resume from. */
  stop(): number {
    // Kicks re-armed for whoever takes the ring over (a poll may have suppressed them).
    if (this.eventIdx && this.used) {
      try {
        this.setAvailEvent(this.lastAvail);
      } catch {
        // the memory is gone already: nobody can kick into it
      }
    }
    this.started = false;
    return this.lastAvail;
  }

  reset(): void {
    this.unmap();
    this.addrs = null;
    this.num = 0;
    this.lastAvail = 0;
    this.usedIdx = 0;
    this.signalledValid = false;
    this.enabled = false;
    this.started = false;
    this.broken = null;
  }

  /** Guest has made buffers available that we have not taken. */
  hasAvail(): boolean {
    return this.ready && this.avail!.getUint16(2, true) !== this.lastAvail;
  }

  /** Chains the guest has made available and we have not taken (at most the ring's size: the index is the guest's). */
  get availCount(): number {
    if (!this.ready) return 0;
    return Math.min((this.avail!.getUint16(2, true) - this.lastAvail) & 0xffff, this.num);
  }

  /** The chain pop() fills: most requests are answered before the next one is taken. */
  private readonly scratch: DescriptorChain & { error?: string } = { head: 0, readable: [], readableBytes: 0, writable: [], writableBytes: 0, error: undefined };

  /**
   * Take the next available chain, or null. A chain that breaks the rules is still consumed
   * and given back used with length 0 by the caller (`chain.readable` empty, `error` set), so
   * one bad request cannot hang the guest; an impossible ring (head out of range, index
   * jumping past the ring) marks the queue broken. The chain object is the queue's and is
   * overwritten by the next pop(); its buffer lists are new each time and may be kept.
   */
  pop(mem: GuestMemory): (DescriptorChain & { error?: string }) | null {
    if (!this.ready) return null;
    const avail = this.avail!;
    const availIdx = avail.getUint16(2, true);
    if (availIdx === this.lastAvail) return null;
    if (((availIdx - this.lastAvail) & 0xffff) > this.num) {
      this.broken = `avail index ${availIdx} is more than ${this.num} ahead of ${this.lastAvail}`;
      return null;
    }
    const head = avail.getUint16(4 + 2 * (this.lastAvail % this.num), true);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    if (head >= this.num) {
      this.broken = `descriptor head ${head} is outside a queue of ${this.num}`;
      return null;
    }
    const chain = this.scratch;
    chain.head = head;
    // Fresh lists, not `length = 0`: truncating an array is a runtime call, allocating one is not.
    chain.readable = [];
    chain.writable = [];
    chain.readableBytes = chain.writableBytes = 0;
    chain.error = undefined;
    try {
      this.walk(mem, chain);
    } catch (e) {
      chain.error = (e as Error).message;
      chain.readable = [];
      chain.writable = [];
      chain.readableBytes = chain.writableBytes = 0;
    }
    return chain;
  }

  private walk(mem: GuestMemory, chain: DescriptorChain): void {
    let table = this.desc!;
    let tableNum = this.num;
    let i = chain.head;
    let seen = 0;
    let indirect = false;
    for (;;) {
      if (i >= tableNum) throw new FsError('EINVAL', `descriptor ${i} is outside its table of ${tableNum}`);
      if (++seen > tableNum) throw new FsError('ELOOP', 'descriptor chain loops');
      const off = i * DESC_SIZE;
      const addr = table.getUint32(off, true) + table.getUint32(off + 4, true) * 0x100000000;
      const len = table.getUint32(off + 8, true);
      const flags = table.getUint16(off + 12, true);
      const next = table.getUint16(off + 14, true);
      if (flags & F_INDIRECT) {
        // §2.7.5.3.1: no nesting, no NEXT together with INDIRECT, whole descriptors.
        if (indirect) throw new FsError('EINVAL', 'nested indirect descriptor table');
        if (flags & F_NEXT) throw new FsError('EINVAL', 'indirect descriptor with NEXT set');
        if (len === 0 || len % DESC_SIZE !== 0 || len / DESC_SIZE > MAX_QUEUE_SIZE) {
          throw new FsError('EINVAL', `indirect table of ${len} bytes`);
        }
        const parts: Buffer[] = [];
        mem.slices(addr, len, parts);
        // Copy: the guest may rewrite its table while we walk it; a copy gives one consistent view.
        table = viewOf(Buffer.concat(parts));
        tableNum = len / DESC_SIZE;
        indirect = true;
        i = 0;
        seen = 0;
        continue;
      }
      if (flags & F_WRITE) {
        chain.writableBytes += len;
        if (chain.writableBytes > MAX_CHAIN_BYTES) throw new FsError('E2BIG', 'writable part of the chain is too large');
        mem.slices(addr, len, chain.writable);
      } else {
        if (chain.writable.length > 0) throw new FsError('EINVAL', 'device-readable descriptor after a writable one');
        chain.readableBytes += len;
        if (chain.readableBytes > MAX_CHAIN_BYTES) throw new FsError('E2BIG', 'readable part of the chain is too large');
        mem.slices(addr, len, chain.readable);
      }
      if (!(flags & F_NEXT)) return;
      i = next;
    }
  }

  /** Give a chain back with `len` bytes written. Published to the guest by publish(). */
  putUsed(head: number, len: number): void {
    if (!this.used) return; // ring was reset while the request ran: nothing to give back to
    const slot = 4 + 8 * (this.usedIdx % this.num);
    this.used.setUint32(slot, head, true);
    this.used.setUint32(slot + 4, len, true);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.used.setUint16(2, this.usedIdx, true);
  }

  /** After used entries were published: should the guest be interrupted? */
  needsInterrupt(): boolean {
    if (!this.avail || !this.used) return false;
    native.fence();
    if (!this.eventIdx) return (this.avail.getUint16(0, true) & AVAIL_F_NO_INTERRUPT) === 0;
    const usedEvent = this.avail.getUint16(4 + 2 * this.num, true);
    const old = this.signalledUsed;
    const valid = this.signalledValid;
    this.signalledUsed = this.usedIdx;
    this.signalledValid = true;
    // vring_need_event(event, new, old): (u16)(new - event - 1) < (u16)(new - old)
    return !valid || ((this.usedIdx - usedEvent - 1) & 0xffff) < ((this.usedIdx - old) & 0xffff);
  }

  /**
   * EVENT_IDX: ask the guest to kick once it adds past what we have taken, then look again
   * (the guest may have added buffers before it saw avail_event). True if more is available.
   */
  rearmKick(): boolean {
    if (!this.eventIdx || !this.used || !this.ready) return false;
    this.setAvailEvent(this.lastAvail);
    native.fence();
    return this.avail!.getUint16(2, true) !== this.lastAvail;
  }

  /**
   * EVENT_IDX: ask the guest not to kick while we watch the ring ourselves (avail_event one
   * behind what we have taken: vring_need_event never fires for the entries that follow).
   * rearmKick() undoes it.
   */
  suppressKicks(): void {
    if (!this.eventIdx || !this.used || !this.ready) return;
    this.setAvailEvent((this.lastAvail - 1) & 0xffff);
  }

  /** avail_event, the u16 after the used ring's num elements (virtio 1.x 2.7.10): the guest kicks once it adds past it. */
  private setAvailEvent(idx: number): void {
    this.used!.setUint16(4 + 8 * this.num, idx, true);
  }

  interrupt(): void {
    if (this.callFd >= 0) native.eventfdWrite(this.callFd, 1);
  }
}
