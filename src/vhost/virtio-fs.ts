/**
 * The virtio-fs device (virtio 1.2 §5.11): queue 0 is hiprio (FORGET, BATCH_FORGET,
 * INTERRUPT), queues 1..N carry ordinary requests. Each request is one descriptor chain:
 * device-readable buffers hold the FUSE request (header, arguments, WRITE data), device-
 * writable buffers receive the reply. Requests go to the same FuseSession (dispatcher) as a
 * host mount; requests from every queue are served concurrently on the event loop and given
 * back in completion order.
 *
 * Config space (when the front-end asks the back-end, i.e. CONFIG was offered):
 * {u8 tag[36]; le32 num_request_queues}.
 */
import { performance } from 'node:perf_hooks';
import { log } from '../util/log';
import { native } from '../native';
import { FuseSession, Reply } from '../fuse/dispatcher';
import { inPlaceLength } from '../fuse/reply';
import { LargeRequestPool } from '../fuse/request-pool';
import { VirtioDevice } from './backend';
import { GuestMemory } from './guest-memory';
import { SplitVirtqueue, DescriptorChain } from './virtqueue';
import { BackendChannel } from './backend-channel';
import { DaxWindow, DaxSource } from './dax-window';

const TAG_SIZE = 36;
const OUT_HEADER_SIZE = 16;
const EIO = 5;
/**
 * Requests up to this size are offered to the session's synchronous path (GETATTR is 56 bytes,
 * LOOKUP at most 296, READ 80, a BATCH_FORGET of 253 nodes 4096).
 */
const SYNC_REQUEST_MAX = 4096;
/**
 * When the guest is signalled about replies answered on the synchronous path:
 * - With EVENT_IDX, as soon as each one is in the used ring. The guest then takes the replies
 *   (and queues new requests) while kfsd serves the rest of the kick, instead of the two taking
 *   turns; used_event keeps this to one call per guest wake-up (the guest re-arms it only when
 *   it has caught up). Test front-end, 16 in flight (bench:vhost): GETATTR 54-57k → 65-79k/s,
 *   LOOKUP 47-58k → 84-107k/s; the QEMU guest's steps (one request at a time) unchanged.
 * - Without EVENT_IDX every signal is a call: once per kick, and early once this many reply
 *   bytes are waiting, so that the guest copies large READ replies while kfsd reads the next
 *   ones (sequential 1 MiB reads: 1.2-2x).
 */
const SIGNAL_EARLY_BYTES = 256 << 10;

export interface VirtioFsOptions {
  /** Request queues besides hiprio (QEMU's num-request-queues may be at most this). */
  numRequestQueues: number;
  /** Offer a config space with this tag (needs a front-end that reads it: not QEMU 7.x). */
  tag: string | null;
  /** DAX: the cache window to ask the front-end for (bytes, 0 = none) and what maps into it. */
  daxWindowSize?: number;
  daxSource?: DaxSource | null;
  /** Watch an idle request queue this long after answering before sleeping on its kick (µs; 0 = off). */
  pollUs?: number;
}

/** Longest a queue is served in one go when polling (ms). */
const POLL_BUDGET_MS = 2;
/** Smallest poll window (µs): below it the window is 0 until a quick request doubles it again. */
const POLL_MIN_US = 10;
/**
 * A queue is polled only when, since it last went idle, it never held more than this many
 * requests at once (in flight, or made available and not yet taken): a
 * guest waiting on each answer. One that keeps several going spreads a kick over many requests
 * and has no wake-up to hide, and on a machine with few CPUs a spin then takes the CPU its
 * producer needs (front-end bench, 16 in flight: create 20-30% slower with polling, kfsd's CPU
 * per getattr 2-3x).
 */
const POLL_SERIAL_MAX = 2;

/** A request queue's polling: its window (µs), when it went idle (ms), the most requests it held at once since. */
interface PollState {
  window: number;
  idleSince: number;
  peak: number;
}

export class VirtioFsDevice implements VirtioDevice {
  readonly numQueues: number;
  readonly deviceFeatures = 0n;
  private drainWaiters = new Map<SplitVirtqueue, (() => void)[]>();
  private interruptPending = new Set<SplitVirtqueue>();
  /**
   * Requests served, bad descriptor chains; and the idle moments of request queues where
   * polling was decided (pollUs > 0): `pollSerial` with at most POLL_SERIAL_MAX requests held at
   * once since the last (watched, if the window was open), `pollBusy` with more (not watched);
   * `pollCaught`: watches that found the next request (it came with the guest's kick suppressed).
   */
  readonly stats = { requests: 0, badChains: 0, pollSerial: 0, pollBusy: 0, pollCaught: 0 };

  /** VirtioFsOptions.pollUs: the largest poll window (0: no polling, and none of its bookkeeping). */
  private readonly maxPollUs: number;

  constructor(private session: FuseSession, private opts: VirtioFsOptions) {
    this.numQueues = 1 + opts.numRequestQueues;
    this.maxPollUs = opts.pollUs ?? 0;
    this.largeRequests = new LargeRequestPool(session.bufferSize);
  }

  /** The DAX window, once the front-end has provided one and the backend channel. */
  dax: DaxWindow | null = null;
  private shmemAvailable = false;
  private backendChannel: BackendChannel | null = null;

  shmemSizes(): number[] {
    return this.opts.daxSource && this.opts.daxWindowSize ? [this.opts.daxWindowSize] : [];
  }

  setShmemAvailable(available: boolean): void {
    this.shmemAvailable = available;
    if (!available && this.shmemSizes().length > 0) log.info('virtio-fs: the front-end provides no shared-memory window (SHMEM not negotiated): DAX is off');
  }

  setBackendChannel(fd: number | null, replyAck: boolean): void {
    this.dax?.close();
    this.dax = null;
    this.backendChannel?.close();
    this.backendChannel = null;
    this.session.dax = null;
    if (fd === null) return;
    this.backendChannel = new BackendChannel(fd, replyAck);
    if (this.shmemAvailable && this.opts.daxSource && this.opts.daxWindowSize) {
      this.dax = new DaxWindow(this.opts.daxWindowSize, this.backendChannel, this.opts.daxSource);
      this.session.dax = this.dax;
      log.info(`virtio-fs: DAX window of ${this.opts.daxWindowSize} bytes`);
    }
  }

  config(): Buffer | null {
    if (this.opts.tag === null) return null;
    const b = Buffer.alloc(TAG_SIZE + 4);
    Buffer.from(this.opts.tag, 'utf8').copy(b, 0, 0, TAG_SIZE);
    b.writeUInt32LE(this.opts.numRequestQueues, TAG_SIZE);
    return b;
  }

  process(q: SplitVirtqueue, mem: GuestMemory): void {
    const started = performance.now();
    this.adaptPollWindow(q, started);
    try {
      do this.processAvailable(q, mem);
      while (this.pollAvail(q, started));
    } catch (e) {
      q.rearmKick(); // a poll may have left kicks suppressed: the queue must not go deaf
      throw e;
    }
    if (q.inflight === 0 && this.maxPollUs > 0) this.pollStateOf(q).idleSince = performance.now();
  }

  // ---- polling an idle request queue (VirtioFsOptions.pollUs) ----
  //
  // A guest with one request at a time sends its next one soon after it takes our reply, and a
  // kick costs it a VM exit (expensive under TCG) and us an eventfd wake-up. So after answering,
  // with nothing in flight, we watch the ring for a while with the guest's kicks suppressed
  // (SplitVirtqueue.suppressKicks). The window adapts as haltpoll's does: a request that came
  // within pollUs of the queue going idle doubles it (polling would have caught it), a longer
  // gap halves it, so a queue that goes quiet soon costs no spinning.

  private readonly pollStates = new WeakMap<SplitVirtqueue, PollState>();

  private pollStateOf(q: SplitVirtqueue): PollState {
    let st = this.pollStates.get(q);
    if (!st) this.pollStates.set(q, (st = { window: this.maxPollUs, idleSince: -1, peak: 0 }));
    return st;
  }

  /** A kick woke us: grow or shrink the poll window by how long the queue was idle before it. */
  private adaptPollWindow(q: SplitVirtqueue, now: number): void {
    const max = this.maxPollUs;
    if (max <= 0) return;
    const st = this.pollStateOf(q);
    if (st.idleSince < 0) return;
    const gapUs = (now - st.idleSince) * 1000;
    st.idleSince = -1;
    if (gapUs <= max) st.window = Math.min(max, Math.max(2 * st.window, POLL_MIN_US));
    else st.window = st.window / 2 < POLL_MIN_US ? 0 : st.window / 2;
  }

  /**
   * Watch an idle request queue for up to its poll window: true when a chain came (kicks are
   * then still suppressed: the caller serves it, and processAvailable re-arms them). Not the
   * hiprio queue (FORGETs need no quick answer, and a spin there would hold up a kick on the
   * request queue, where the guest waits). Bounded: after POLL_BUDGET_MS of serving in one go,
   * back to the event loop first.
   */
  private pollAvail(q: SplitVirtqueue, started: number): boolean {
    if (this.maxPollUs <= 0 || q.index === 0 || !q.eventIdx || q.inflight > 0 || q.broken || !q.ready) return false;
    const st = this.pollStateOf(q);
    const serial = st.peak <= POLL_SERIAL_MAX;
    st.peak = 0; // the queue is idle: count afresh from its next request
    if (serial) this.stats.pollSerial++;
    else this.stats.pollBusy++;
    const us = st.window;
    if (us <= 0 || !serial) return false;
    const now = performance.now();
    if (now - started > POLL_BUDGET_MS) {
      // Served long enough in one go: let the event loop run (other queues, timers, the
      // front-end's messages), then watch on. Kicks stay armed meanwhile.
      this.pollLater(q);
      return false;
    }
    q.suppressKicks();
    const end = now + us / 1000;
    do
      if (q.hasAvail()) {
        this.stats.pollCaught++;
        return true;
      }
    while (performance.now() < end);
    return q.rearmKick();
  }

  /**
   * The last request in flight was answered on the ordinary (asynchronous) path, or process()
   * used up its budget: poll for the guest's next request as process() does. One that comes is
   * served through the queue's own kick eventfd (process() needs the backend's current memory
   * table).
   */
  private pollAfterCompletion(q: SplitVirtqueue): void {
    const now = performance.now();
    this.pollStateOf(q).idleSince = now;
    if (!this.pollAvail(q, now)) return;
    try {
      native.eventfdWrite(q.kickFd, 1);
    } catch {
      q.rearmKick(); // the queue is being stopped: leave it as a kick would find it
    }
  }

  private processAvailable(q: SplitVirtqueue, mem: GuestMemory): void {
    let answered = false; // chains given back since the last interrupt
    let bytes = 0; // and the reply bytes in them
    let peak = 0; // the most requests held at once: in flight, this one, and those waiting behind it
    do {
      for (let chain = q.pop(mem); chain; chain = q.pop(mem)) {
        // An answered one no longer counts: a guest whose next request comes while this loop
        // still runs (kfsd keeping up with it) is still one request at a time.
        const held = q.inflight + 1 + q.availCount;
        if (held > peak) peak = held;
        if (chain.error) {
          this.stats.badChains++;
          log.warn(`virtio-fs: queue ${q.index}: bad descriptor chain ${chain.head}: ${chain.error}`);
          q.putUsed(chain.head, 0);
          this.scheduleInterrupt(q);
          continue;
        }
        // Idle: nothing in flight, no reply waiting for its interrupt, no other chain available;
        // a READ may then wait for the disk right here (FileSystem.readSync) instead of the pool.
        const written = this.serveSync(q, chain, q.inflight === 0 && !answered && !q.hasAvail());
        if (written < 0) {
          this.serve(q, chain);
        } else if ((bytes += written) >= SIGNAL_EARLY_BYTES || q.eventIdx) {
          // Let the guest take these replies (READ data) while the next ones are read.
          this.signalSafely(q);
          answered = false;
          bytes = 0;
        } else {
          answered = true;
        }
      }
      if (q.broken) {
        log.error(`virtio-fs: queue ${q.index} stopped: ${q.broken}; the guest must reset the device`);
        break;
      }
    } while (q.rearmKick());
    // One interrupt for everything answered during this kick, without waiting for the loop.
    if (answered) this.signalSafely(q);
    if (this.maxPollUs > 0) {
      const st = this.pollStateOf(q);
      if (peak > st.peak) st.peak = peak;
    }
  }

  /** Views of the first n bytes of the session's syncReply, by n (a view per reply costs more than its copy). */
  private prefixes: Uint8Array[] = [];
  private prefixesOf: Buffer | null = null;

  private replyPrefix(n: number): Uint8Array {
    const reply = this.session.syncReply;
    if (this.prefixesOf !== reply) {
      this.prefixes = [];
      this.prefixesOf = reply;
    }
    return (this.prefixes[n] ??= new Uint8Array(reply.buffer, reply.byteOffset, n));
  }

  /** Requests at most this large are tried on the session's synchronous path. */
  private readonly syncRequest = Buffer.allocUnsafe(SYNC_REQUEST_MAX);

  /**
   * Answer a request the session can answer without I/O (handleSync) at once: the bytes
   * written, or -1 when it must be served the ordinary way. The request is copied out of guest
   * memory first, like every request (the guest may change its buffers at any time).
   */
  private serveSync(q: SplitVirtqueue, chain: DescriptorChain, idle: boolean): number {
    const len = chain.readableBytes;
    if (len > SYNC_REQUEST_MAX) return -1;
    const req = this.syncRequest;
    let at = 0;
    for (const b of chain.readable) {
      req.set(b, at);
      at += b.length;
    }
    const n = this.session.handleSync(req, len, chain.writable, idle);
    if (n < 0) return -1;
    this.stats.requests++;
    let written = 0;
    if (n > 0) {
      if (n > chain.writableBytes) {
        log.warn(`virtio-fs: reply of ${n} bytes does not fit the ${chain.writableBytes} the guest gave`);
        written = chain.writableBytes >= OUT_HEADER_SIZE ? scatter([errorHeader(req, EIO)], chain.writable) : 0;
      } else {
        // The head of the reply; a READ's data is in chain.writable already, after it.
        const head = this.session.syncReplyHead;
        const first = chain.writable[0];
        if (first.length >= head) first.set(this.replyPrefix(head));
        else scatterBytes(this.session.syncReply, head, chain.writable);
        written = n;
      }
    }
    q.putUsed(chain.head, written);
    return written;
  }

  private serve(q: SplitVirtqueue, scratch: DescriptorChain): void {
    // Copy the request out of guest memory: the guest can rewrite its buffers at any time and
    // names or lengths checked once must not change under us.
    const len = scratch.readableBytes;
    const store = this.largeRequests.take(len);
    let req: Buffer;
    if (store) {
      let at = 0;
      for (const b of scratch.readable) {
        store.set(b, at);
        at += b.length;
      }
      req = store.subarray(0, len);
    } else {
      req = Buffer.concat(scratch.readable, len);
    }
    // The reply's part of the chain outlives the queue's scratch chain (overwritten by the next
    // request); its buffer list is made afresh by each pop() and so can be kept.
    const chain: DescriptorChain = { head: scratch.head, readable: [], readableBytes: 0, writable: scratch.writable, writableBytes: scratch.writableBytes };
    this.stats.requests++;
    q.inflight++;
    this.session.handle(req, chain.writable).then(
      (reply) => {
        this.complete(q, chain, req, reply);
        if (store) this.largeRequests.give(store);
      },
      (e) => {
        // handle() never rejects by contract; if it does, answer EIO rather than hang the guest.
        log.error(`virtio-fs: request failed unexpectedly: ${(e as Error).stack ?? String(e)}`);
        this.complete(q, chain, req, errorHeader(req, EIO));
        // Not recycled: whatever failed may still hold the request's bytes.
      },
    );
  }

  /** Copies of large requests (WRITE payloads), reused once answered. */
  private readonly largeRequests: LargeRequestPool;

  private complete(q: SplitVirtqueue, chain: DescriptorChain, req: Buffer, reply: Reply): void {
    let written = 0;
    const inPlace = inPlaceLength(reply);
    if (inPlace > 0) {
      // A READ put its data into chain.writable after the header (dispatcher's `dest`): the
      // header goes in front; payloadViews checked that header and data fit.
      scatter([reply as Buffer], chain.writable);
      written = inPlace;
    } else if (reply !== null) {
      const parts = Array.isArray(reply) ? reply : [reply];
      let total = 0;
      for (const p of parts) total += p.length;
      if (total > chain.writableBytes) {
        log.warn(`virtio-fs: reply of ${total} bytes does not fit the ${chain.writableBytes} the guest gave`);
        written = chain.writableBytes >= OUT_HEADER_SIZE ? scatter([errorHeader(req, EIO)], chain.writable) : 0;
      } else {
        written = scatter(parts, chain.writable);
      }
    }
    q.putUsed(chain.head, written);
    if (--q.inflight > 0) {
      this.scheduleInterrupt(q);
      return;
    }
    // The last request in flight: nothing more of this queue completes in this turn, so the
    // guest (waiting for this answer, if it keeps one request going) is told now rather than
    // after the turn's other callbacks (10-20 µs later).
    const waiters = this.drainWaiters.get(q);
    if (waiters) {
      // Their continuations (GET_VRING_BASE) run after this turn, so after the interrupt below.
      this.drainWaiters.delete(q);
      for (const w of waiters) w();
    }
    this.interruptPending.delete(q);
    // Inside the request's promise callback: a throw would be an unhandled rejection.
    this.signalSafely(q);
    if (this.maxPollUs > 0) this.pollLater(q);
  }

  /** pollAfterCompletion at the end of this turn of the event loop, once per queue. */
  private pollLater(q: SplitVirtqueue): void {
    if (this.pollQueued.has(q)) return;
    this.pollQueued.add(q);
    setImmediate(() => {
      this.pollQueued.delete(q);
      if (q.inflight === 0) this.pollAfterCompletion(q);
    });
  }

  /** Queues whose pollAfterCompletion waits for the end of this turn (pollLater). */
  private pollQueued = new Set<SplitVirtqueue>();

  /** One interrupt for all the completions of this turn of the event loop. */
  private scheduleInterrupt(q: SplitVirtqueue): void {
    if (this.interruptPending.has(q)) return;
    this.interruptPending.add(q);
    setImmediate(() => {
      // Gone from the set: complete() signalled everything when the queue ran empty.
      if (this.interruptPending.delete(q)) this.signalSafely(q);
    });
  }

  /**
   * Interrupt the guest if it asked to be. Every caller runs in a callback (a kick's poller, a
   * promise's, setImmediate) where a throw (the call eventfd failing) would end the process or
   * be an unhandled rejection: logged instead, as the used entries are in place anyway.
   */
  private signalSafely(q: SplitVirtqueue): void {
    try {
      if (q.needsInterrupt()) q.interrupt();
    } catch (e) {
      log.warn(`virtio-fs: queue ${q.index}: interrupt failed: ${(e as Error).message}`);
    }
  }

  drain(q: SplitVirtqueue): Promise<void> {
    if (q.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.drainWaiters.get(q) ?? [];
      list.push(resolve);
      this.drainWaiters.set(q, list);
    });
  }
}

/** Copy src[0, len) into the writable buffers (which hold at least len bytes). */
function scatterBytes(src: Buffer, len: number, writable: Buffer[]): void {
  for (let i = 0, done = 0; done < len; i++) done += src.copy(writable[i], 0, done, len);
}

/** Copy parts into the writable buffers in order; returns the bytes written. */
function scatter(parts: Buffer[], writable: Buffer[]): number {
  let wi = 0;
  let woff = 0;
  let written = 0;
  for (const p of parts) {
    let poff = 0;
    while (poff < p.length && wi < writable.length) {
      const dst = writable[wi];
      const n = p.copy(dst, woff, poff);
      poff += n;
      woff += n;
      written += n;
      if (woff === dst.length) {
        wi++;
        woff = 0;
      }
    }
  }
  return written;
}

/** fuse_out_header {len 16, error -errno, unique} for the request in req. */
function errorHeader(req: Buffer, errno: number): Buffer {
  const b = Buffer.alloc(OUT_HEADER_SIZE);
  b.writeUInt32LE(OUT_HEADER_SIZE, 0);
  b.writeInt32LE(-errno, 4);
  if (req.length >= 16) req.copy(b, 8, 8, 16);
  return b;
}
