/**
 * The virtio-fs cache window (DAX) as a front-end provides it: shared-memory region 0 of the
 * device, sized by GET_SHMEM_CONFIG, into which the back-end maps ranges of its own files with
 * BACKEND_SHMEM_MAP / BACKEND_SHMEM_UNMAP on the backend channel (QEMU's "VIRTIO Shared Memory
 * Regions" series, docs/interop/vhost-user.rst; not in any QEMU release yet).
 *
 * QEMU reserves the region as anonymous memory and mmaps the passed fd over part of it; an
 * unmap puts fresh anonymous memory back, so the range reads as zeros again. Without MAP_FIXED
 * in the addon, the window here is a sparse memfd (what the guest sees where nothing is mapped)
 * plus a list of separate mappings of the passed fds; reads and writes "through the window"
 * resolve each byte to the mapping covering it, else to the memfd. What QEMU refuses, this
 * refuses too (non-zero reply): an unknown shmid, a range outside the region, an overlap with
 * a live mapping, unaligned offsets, an unmap that names no mapping exactly, a map without fd.
 *
 * The back-end's requests are recorded in order (events) so tests can check what was mapped,
 * and when; replies can be held back (hold/release) to see what the back-end does while it
 * waits for one.
 */
import { closeSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserConnection } from './connection';
import { vn, type MappedRegion } from './native';
import {
  BackendRequest,
  readShmemMap,
  SHMEM_MAP_FLAG_RW,
  SHMEM_MAP_SIZE,
  u64Payload,
  VHOST_USER_FLAG_NEED_REPLY,
  type ShmemMapMsg,
  type VhostUserMessage,
} from './protocol';

const PAGE = 4096;
export const DAX_SHMID = 0;

export interface WindowMapping {
  shmOffset: number;
  len: number;
  fdOffset: number;
  writable: boolean;
  region: MappedRegion;
}

/** Copy [off, off+len) of a mapped region into dst at dstOff (regions come in 1 GiB chunks). */
function copyOut(r: MappedRegion, off: number, len: number, dst: Buffer, dstOff: number): void {
  while (len > 0) {
    const chunk = r.chunks[Math.floor(off / r.chunkSize)];
    const at = off % r.chunkSize;
    const n = Math.min(len, chunk.length - at);
    chunk.copy(dst, dstOff, at, at + n);
    off += n;
    dstOff += n;
    len -= n;
  }
}

function copyIn(r: MappedRegion, off: number, src: Buffer): void {
  let done = 0;
  while (done < src.length) {
    const chunk = r.chunks[Math.floor(off / r.chunkSize)];
    const at = off % r.chunkSize;
    const n = Math.min(src.length - done, chunk.length - at);
    src.copy(chunk, at, done, done + n);
    off += n;
    done += n;
  }
}

export class CacheWindow {
  /** Live mappings, sorted by shmOffset, never overlapping. */
  readonly mappings: WindowMapping[] = [];
  private readonly backingFd: number;
  private readonly backing: MappedRegion;

  constructor(readonly size: number) {
    if (size <= 0 || size % PAGE) throw new Error(`cache window of ${size} bytes: not a positive multiple of the page size`);
    this.backingFd = vn.memfdCreate('kfs-cache-window', size);
    try {
      this.backing = vn.mmap(this.backingFd, 0, size, true);
    } catch (e) {
      closeSync(this.backingFd);
      throw e;
    }
  }

  /** SHMEM_MAP: null on success, else why it was refused. The fd is not consumed. */
  map(m: ShmemMapMsg, fd: number | undefined): string | null {
    const shmOffset = Number(m.shmOffset);
    const len = Number(m.len);
    const fdOffset = Number(m.fdOffset);
    const bad = this.checkRange(m) ?? (fd === undefined ? 'no fd came with SHMEM_MAP' : null) ??
      (m.fdOffset % BigInt(PAGE) !== 0n ? `fd_offset ${m.fdOffset} is not page aligned` : null) ??
      (m.flags & ~SHMEM_MAP_FLAG_RW ? `unknown flags 0x${m.flags.toString(16)}` : null);
    if (bad) return bad;
    const clash = this.mappings.find((x) => x.shmOffset < shmOffset + len && shmOffset < x.shmOffset + x.len);
    if (clash) return `range ${shmOffset}+${len} overlaps the mapping at ${clash.shmOffset}+${clash.len}`;
    const writable = (m.flags & SHMEM_MAP_FLAG_RW) !== 0n;
    let region: MappedRegion;
    try {
      region = vn.mmap(fd!, fdOffset, len, writable);
    } catch (e) {
      return `mmap of the passed fd at ${fdOffset}+${len} failed: ${(e as Error).message}`;
    }
    const i = this.mappings.findIndex((x) => x.shmOffset > shmOffset);
    this.mappings.splice(i < 0 ? this.mappings.length : i, 0, { shmOffset, len, fdOffset, writable, region });
    return null;
  }

  /** SHMEM_UNMAP of exactly one live mapping: null on success, else why it was refused. */
  unmap(m: ShmemMapMsg): string | null {
    const bad = this.checkRange(m);
    if (bad) return bad;
    const i = this.mappings.findIndex((x) => x.shmOffset === Number(m.shmOffset) && x.len === Number(m.len));
    if (i < 0) return `no mapping is exactly ${m.shmOffset}+${m.len}`;
    const [gone] = this.mappings.splice(i, 1);
    gone.region.unmap();
    // QEMU maps fresh anonymous memory over the range: it reads as zeros again.
    vn.fallocate(this.backingFd, vn.FALLOC_FL.PUNCH_HOLE | vn.FALLOC_FL.KEEP_SIZE, gone.shmOffset, gone.len);
    return null;
  }

  private checkRange(m: ShmemMapMsg): string | null {
    if (m.shmid !== DAX_SHMID) return `unknown shared-memory region ${m.shmid}`;
    if (m.len === 0n || m.shmOffset % BigInt(PAGE) !== 0n || m.len % BigInt(PAGE) !== 0n) return `range ${m.shmOffset}+${m.len} is empty or not page aligned`;
    if (m.shmOffset + m.len > BigInt(this.size)) return `range ${m.shmOffset}+${m.len} is outside the ${this.size}-byte region`;
    return null;
  }

  /** The mapping covering window offset off, if any. */
  mappingAt(off: number): WindowMapping | undefined {
    return this.mappings.find((x) => off >= x.shmOffset && off < x.shmOffset + x.len);
  }

  /** Walk [off, off+len) as pieces: a mapping (with the offset inside it) or the unmapped window. */
  private pieces(off: number, len: number, fn: (m: WindowMapping | null, at: number, n: number, done: number) => void): void {
    if (!Number.isSafeInteger(off) || !Number.isSafeInteger(len) || off < 0 || len < 0 || off + len > this.size) {
      throw new RangeError(`window range ${off}+${len} is outside the ${this.size}-byte window`);
    }
    let done = 0;
    while (done < len) {
      const pos = off + done;
      const m = this.mappingAt(pos);
      if (m) {
        const n = Math.min(len - done, m.shmOffset + m.len - pos);
        fn(m, pos - m.shmOffset, n, done);
        done += n;
      } else {
        const next = this.mappings.find((x) => x.shmOffset > pos);
        const n = Math.min(len - done, (next ? next.shmOffset : this.size) - pos);
        fn(null, pos, n, done);
        done += n;
      }
    }
  }

  /** What the guest reads at [off, off+len) of the window. */
  read(off: number, len: number, into: Buffer = Buffer.allocUnsafe(len)): Buffer {
    this.pieces(off, len, (m, at, n, done) => copyOut(m ? m.region : this.backing, at, n, into, done));
    return into.subarray(0, len);
  }

  /** A guest store at off. A store into a read-only mapping would fault the guest: refused here before any byte moves. */
  write(off: number, data: Buffer): void {
    this.pieces(off, data.length, (m, at) => {
      if (m && !m.writable) throw new Error(`window offset ${m.shmOffset + at} is mapped read-only`);
    });
    this.pieces(off, data.length, (m, at, n, done) => copyIn(m ? m.region : this.backing, at, data.subarray(done, done + n)));
  }

  close(): void {
    for (const m of this.mappings.splice(0)) m.region.unmap();
    this.backing.unmap();
    closeSync(this.backingFd);
  }
}

export interface ShmemEvent {
  /** Order among all backend-channel requests. */
  seq: number;
  request: number;
  map: ShmemMapMsg | null;
  needReply: boolean;
  /** Why the request was refused, or null. */
  refused: string | null;
}

/**
 * The front-end's end of the backend channel: serves SHMEM_MAP / SHMEM_UNMAP against the
 * window and answers u64 0 (done) or 1 (refused) when the back-end asked for a reply.
 */
export class BackendChannelServer {
  readonly events: ShmemEvent[] = [];
  readonly conn: VhostUserConnection;
  private held: (() => void)[] | null = null;
  private watchers: { pred: (e: ShmemEvent) => boolean; resolve: (e: ShmemEvent) => void }[] = [];

  /** window: the cache window once GET_SHMEM_CONFIG has sized it (null: maps are refused). */
  constructor(fd: number, private readonly window: () => CacheWindow | null) {
    this.conn = VhostUserConnection.fromFd(fd, (m) => this.onMessage(m));
  }

  /**
   * A connected pair of unix stream sockets (socketpair(2) made of listen + connect + accept on
   * a private temporary path): [ours, the back-end's].
   */
  static socketPair(): [number, number] {
    const dir = mkdtempSync(join(tmpdir(), 'kfs-bch-'));
    const path = join(dir, 's');
    const listener = vn.unixListen(path, 1, 0o600);
    try {
      const theirs = vn.unixConnect(path);
      const ours = vn.accept(listener);
      if (ours < 0) {
        closeSync(theirs);
        throw new Error('backend channel: the connection to our own listener was not pending');
      }
      return [ours, theirs];
    } finally {
      closeSync(listener);
      rmSync(dir, { recursive: true, force: true });
    }
  }

  private onMessage(m: VhostUserMessage): void {
    const needReply = (m.flags & VHOST_USER_FLAG_NEED_REPLY) !== 0;
    let refused: string | null = null;
    let map: ShmemMapMsg | null = null;
    if (m.request === BackendRequest.SHMEM_MAP || m.request === BackendRequest.SHMEM_UNMAP) {
      const w = this.window();
      if (m.payload.length < SHMEM_MAP_SIZE) refused = `payload of ${m.payload.length} bytes, VhostUserMMap needs ${SHMEM_MAP_SIZE}`;
      else {
        map = readShmemMap(m.payload);
        try {
          if (!w) refused = 'no shared-memory region was set up (SHMEM not negotiated)';
          else if (m.request === BackendRequest.SHMEM_MAP) refused = m.fds.length > 1 ? `SHMEM_MAP came with ${m.fds.length} fds` : w.map(map, m.fds[0]);
          else refused = m.fds.length > 0 ? 'SHMEM_UNMAP came with an fd' : w.unmap(map);
        } catch (e) {
          // Runs on the event loop: a throw here would take the test process down.
          refused = `front-end error: ${(e as Error).message}`;
        }
      }
    } else {
      refused = `unsupported backend request ${m.request}`;
    }
    // A mapping holds its own reference to the file.
    for (const fd of m.fds) closeSync(fd);
    const e: ShmemEvent = { seq: this.events.length, request: m.request, map, needReply, refused };
    this.events.push(e);
    for (const w of this.watchers.filter((x) => x.pred(e))) {
      this.watchers.splice(this.watchers.indexOf(w), 1);
      w.resolve(e);
    }
    if (!needReply) return;
    const send = (): void => {
      if (!this.conn.closed) this.conn.reply(m.request, u64Payload(refused === null ? 0 : 1));
    };
    if (this.held) this.held.push(send);
    else send();
  }

  /** Keep replies back until release() (the back-end, waiting for one, must not go on). */
  hold(): void {
    this.held ??= [];
  }

  release(): void {
    const pending = this.held ?? [];
    this.held = null;
    for (const send of pending) send();
  }

  /** The first event from index `from` on that satisfies pred (waits for it if need be, up to timeoutMs: then an error, not a hung test). */
  waitFor(pred: (e: ShmemEvent) => boolean, from = 0, timeoutMs = 30_000): Promise<ShmemEvent> {
    const seen = this.events.slice(from).find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.watchers = this.watchers.filter((w) => w.resolve !== done);
        reject(new Error(`no such backend request from kfsd within ${timeoutMs} ms (events: ${this.events.slice(from).map((e) => e.request).join(', ') || 'none'})`));
      }, timeoutMs);
      const done = (e: ShmemEvent): void => {
        clearTimeout(timer);
        resolve(e);
      };
      this.watchers.push({ pred, resolve: done });
    });
  }

  /** Events since index from (default: all). */
  since(from: number): ShmemEvent[] {
    return this.events.slice(from);
  }

  close(): void {
    this.release();
    this.conn.close();
  }
}
