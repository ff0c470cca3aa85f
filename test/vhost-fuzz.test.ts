/**
 * Fuzzing kfsd through the vhost-user test front-end: malformed vhost-user messages, malformed
 * descriptor chains and malformed FUSE requests, hand-picked and seeded-random
 * (KFS_FUZZ_SEED=n replays a random run; KFS_FUZZ_ROUNDS scales it).
 *
 * Acceptable outcomes of one malformed input (virtio 1.2 §2.7 lets a device either return a bad
 * chain or mark itself as needing a reset; vhost-user lets a back-end refuse a message or drop
 * the connection):
 *   answered  the connection lives and a normal request still works afterwards;
 *   broken    the device says it needs a reset (GET_STATUS NEEDS_RESET, or kfsd logs that the
 *             queue stopped); the front-end reconnects (kfsd runs with --reconnect);
 *   dropped   kfsd closed the connection; it must still be running and accept a new one.
 * Never: a crash, a hang (the test's timeout), a used length beyond the chain's writable bytes,
 * or a write outside the chain's writable buffers (guard bytes around them). At the end kfsd
 * exits cleanly on SIGTERM and the image passes e2fsck -fn.
 */
import test, { type ExecutionContext } from 'ava';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { constants } from 'node:os';
import { join } from 'node:path';
import { FuseOpcode, SIZE } from '../src/fuse/abi';
import { ByteCursor } from '../src/util/cursor';
import { assertFsckClean, debugfs, makeImage, tempDir } from './helpers/image';
import {
  bit,
  ConnectionClosedError,
  cstr,
  DESC_SIZE,
  encodeHeader,
  encodeMessage,
  FuseClient,
  memTable,
  orDisconnect,
  ProtocolFeature,
  spawnKfsd,
  u64Payload,
  VhostFrontend,
  VhostUserRequest as R,
  VirtioStatus,
  VRING_DESC_F_INDIRECT as INDIRECT,
  VRING_DESC_F_NEXT as NEXT,
  VRING_DESC_F_WRITE as WRITE,
  VRING_NOFD,
  vringAddr,
  vringState,
  writeDesc,
  type Backend,
  type RawDesc,
} from './helpers/vhost-frontend';
import { rng } from './helpers/rng';

const ROOT = 1;
const GUARD = 64;
const GUARD_BYTE = 0xa5;
const BROKEN_LOG = /queue \d+ (stopped|broken)|must reset/i;

type Outcome = 'answered' | 'broken' | 'dropped';

/** KFS_FUZZ_VERBOSE=1 names each case on stderr as it starts (to find the one that hangs). */
const trace = (name: string): void => void (process.env.KFS_FUZZ_VERBOSE && process.stderr.write(`fuzz case: ${name}\n`));


class Target {
  backend!: Backend;
  image!: string;
  socket!: string;
  outcomes: Record<Outcome, number> = { answered: 0, broken: 0, dropped: 0 };

  constructor(private readonly t: ExecutionContext) {}

  async start(): Promise<void> {
    const work = tempDir(this.t, 'vhost-fuzz');
    this.socket = join(work, 'vhost.sock');
    this.image = makeImage(this.t, { size: '128M', mkfs: 'kfs', dir: work });
    this.backend = spawnKfsd(['--image', this.image], this.socket, ['--reconnect']);
    this.t.teardown(() => this.backend.stop());
  }

  /** A started device with FUSE INIT done. */
  async session(opts: { queueSize?: number } = {}): Promise<VhostFrontend> {
    // kfsd serves one front-end at a time and refuses (closes) a connection made before it has
    // seen the previous one end: retry those.
    for (let attempt = 0; ; attempt++) {
      this.assertAlive('before a new session');
      try {
        const fe = await VhostFrontend.start({ socketPath: this.socket, queueSize: opts.queueSize ?? 64, ackAll: true });
        this.t.teardown(() => fe.close());
        await fe.fuse.init();
        return fe;
      } catch (e) {
        if (!(e instanceof ConnectionClosedError) || attempt >= 100) throw e;
        await sleep(20);
      }
    }
  }

  assertAlive(when: string): void {
    if (!this.backend.running) throw new Error(`kfsd exited ${when}: ${JSON.stringify(this.backend.exitStatus)}\n${this.backend.output.slice(-4000)}`);
  }

  /**
   * After a malformed input: wait until a normal request is answered, the device reports that it
   * needs a reset, or the connection drops — whichever comes first. Hanging here is a failure.
   */
  async probe(fe: VhostFrontend, label: string, logMark: number): Promise<Outcome> {
    let done = false;
    const answered = fe.fuse.getattr(ROOT).then(
      (a) => {
        if ((a.mode & 0o170000) !== 0o040000) throw new Error(`${label}: root is no longer a directory`);
        return 'answered' as const;
      },
      (e) => {
        if (e instanceof ConnectionClosedError) return 'dropped' as const;
        throw e;
      },
    );
    const dropped = fe.conn.whenClosed().then(() => 'dropped' as const);
    const broken = (async (): Promise<Outcome> => {
      const status = fe.hasProtocol(ProtocolFeature.STATUS);
      while (!done) {
        if (BROKEN_LOG.test(this.backend.output.slice(logMark))) return 'broken';
        if (status && !fe.conn.closed) {
          const s = await orDisconnect(fe.getStatus());
          if ('value' in s && (s.value & VirtioStatus.NEEDS_RESET) !== 0) return 'broken';
        }
        await sleep(50);
      }
      return 'broken';
    })();
    const outcome = await Promise.race([answered, dropped, broken]);
    done = true;
    this.outcomes[outcome]++;
    // kfsd must survive whatever happened to this connection.
    await sleep(outcome === 'answered' ? 0 : 20);
    this.assertAlive(`after ${label} (${outcome})`);
    return outcome;
  }
}

/** A writable buffer with guard bytes on both sides; check() says whether the guards survived. */
function guarded(fe: VhostFrontend, len: number): { gpa: number; check(): boolean } {
  const base = fe.mem.alloc(len + 2 * GUARD);
  fe.mem.view(base, len + 2 * GUARD).fill(GUARD_BYTE);
  return {
    gpa: base + GUARD,
    check: () => {
      const v = fe.mem.view(base, len + 2 * GUARD);
      for (let i = 0; i < GUARD; i++) if (v[i] !== GUARD_BYTE || v[GUARD + len + i] !== GUARD_BYTE) return false;
      return true;
    },
  };
}

/** A well-formed GETATTR(root) request in guest memory; returns its gpa and length. */
function getattrMsg(fe: VhostFrontend, patch?: (b: Buffer) => void): { gpa: number; len: number } {
  const b = Buffer.concat([FuseClient.header(SIZE.IN_HEADER + SIZE.GETATTR_IN, FuseOpcode.GETATTR, fe.fuse.nextUnique(), ROOT), Buffer.alloc(SIZE.GETATTR_IN)]);
  patch?.(b);
  const gpa = fe.mem.alloc(b.length);
  fe.mem.write(gpa, b);
  return { gpa, len: b.length };
}

interface ChainCase {
  name: string;
  descs: number;
  /** Build the descriptors; `w` is a guarded writable buffer of 4096 bytes. */
  build(fe: VhostFrontend, ids: number[], w: { gpa: number }): RawDesc[];
  /** The chain must come back with a FUSE error reply in `w`: true for any errno, or this one. */
  errorReply?: true | number;
}

const OUTSIDE = 0x2000_0000; // below the first region (which starts at 1 GiB)

const chainCases: ChainCase[] = [
  { name: 'readable descriptor outside guest memory', descs: 2, build: (_fe, ids, w) => [{ addr: OUTSIDE, len: 64, flags: NEXT, next: ids[1] }, { addr: w.gpa, len: 4096, flags: WRITE, next: 0 }] },
  { name: 'writable descriptor outside guest memory', descs: 2, build: (fe, ids) => [{ ...at(getattrMsg(fe)), flags: NEXT, next: ids[1] }, { addr: 0x7_0000_0000, len: 4096, flags: WRITE, next: 0 }] },
  { name: 'descriptor straddling the end of a region', descs: 2, build: (fe, ids, w) => [{ addr: fe.mem.regions[0].guestPhysAddr + fe.mem.regions[0].size - 16, len: 64, flags: NEXT, next: ids[1] }, { addr: w.gpa, len: 4096, flags: WRITE, next: 0 }] },
  { name: 'descriptor address near 2^64 (wraps)', descs: 2, build: (_fe, ids, w) => [{ addr: 2 ** 64 - 4096, len: 8192, flags: NEXT, next: ids[1] }, { addr: w.gpa, len: 4096, flags: WRITE, next: 0 }] },
  { name: 'huge length (4 GiB - 1)', descs: 2, build: (fe, ids, w) => [{ addr: getattrMsg(fe).gpa, len: 0xffffffff, flags: NEXT, next: ids[1] }, { addr: w.gpa, len: 4096, flags: WRITE, next: 0 }] },
  { name: 'huge writable length', descs: 2, build: (fe, ids, w) => [{ ...at(getattrMsg(fe)), flags: NEXT, next: ids[1] }, { addr: w.gpa, len: 0xfffffff0, flags: WRITE, next: 0 }] },
  { name: 'descriptor loop (next points back)', descs: 2, build: (fe, ids) => [{ ...at(getattrMsg(fe)), flags: NEXT, next: ids[1] }, { addr: getattrMsg(fe).gpa, len: 16, flags: NEXT, next: ids[0] }] },
  { name: 'self loop', descs: 1, build: (fe, ids) => [{ ...at(getattrMsg(fe)), flags: NEXT, next: ids[0] }] },
  { name: 'next index beyond the table', descs: 1, build: (fe) => [{ ...at(getattrMsg(fe)), flags: NEXT, next: 0xfff0 }] },
  { name: 'writable descriptor where the request is expected', descs: 1, build: (_fe, _ids, w) => [{ addr: w.gpa, len: 4096, flags: WRITE, next: 0 }] },
  { name: 'readable after writable', descs: 3, build: (fe, ids, w) => [{ addr: w.gpa, len: 2048, flags: WRITE | NEXT, next: ids[1] }, { ...at(getattrMsg(fe)), flags: NEXT, next: ids[2] }, { addr: w.gpa + 2048, len: 2048, flags: WRITE, next: 0 }] },
  { name: 'zero-length descriptors', descs: 2, build: (fe, ids) => [{ addr: getattrMsg(fe).gpa, len: 0, flags: NEXT, next: ids[1] }, { addr: fe.mem.regions[1].guestPhysAddr, len: 0, flags: WRITE, next: 0 }] },
  { name: 'no room for the reply (no writable descriptor)', descs: 1, build: (fe) => [{ ...at(getattrMsg(fe)), flags: 0, next: 0 }] },
  { name: 'reply buffer shorter than fuse_out_header', descs: 2, build: (fe, ids, w) => [{ ...at(getattrMsg(fe)), flags: NEXT, next: ids[1] }, { addr: w.gpa, len: 8, flags: WRITE, next: 0 }] },
  { name: 'short FUSE header (20 bytes)', descs: 2, build: (fe, ids, w) => [{ addr: getattrMsg(fe).gpa, len: 20, flags: NEXT, next: ids[1] }, { addr: w.gpa, len: 4096, flags: WRITE, next: 0 }] },
  { name: 'FUSE len larger than the request', errorReply: true, descs: 2, build: (fe, ids, w) => [{ ...at(getattrMsg(fe, (b) => b.writeUInt32LE(1 << 20, 0))), flags: NEXT, next: ids[1] }, { addr: w.gpa, len: 4096, flags: WRITE, next: 0 }] },
  { name: 'FUSE len smaller than its header', errorReply: true, descs: 2, build: (fe, ids, w) => [{ ...at(getattrMsg(fe, (b) => b.writeUInt32LE(8, 0))), flags: NEXT, next: ids[1] }, { addr: w.gpa, len: 4096, flags: WRITE, next: 0 }] },
  { name: 'unknown FUSE opcode', errorReply: constants.errno.ENOSYS, descs: 2, build: (fe, ids, w) => [{ ...at(getattrMsg(fe, (b) => b.writeUInt32LE(9999, 4))), flags: NEXT, next: ids[1] }, { addr: w.gpa, len: 4096, flags: WRITE, next: 0 }] },
  { name: 'FUSE READ asking for 1 GiB into a 4 KiB buffer', descs: 2, build: (fe, ids, w) => [{ ...at(readMsg(fe, 1 << 30)), flags: NEXT, next: ids[1] }, { addr: w.gpa, len: 4096, flags: WRITE, next: 0 }] },
  { name: 'indirect table length not a multiple of 16', descs: 1, build: (fe, _ids, w) => [{ addr: indirectTable(fe, w, 2), len: 24, flags: INDIRECT, next: 0 }] },
  { name: 'indirect table of length 0', descs: 1, build: (fe, _ids, w) => [{ addr: indirectTable(fe, w, 2), len: 0, flags: INDIRECT, next: 0 }] },
  { name: 'indirect table outside guest memory', descs: 1, build: () => [{ addr: OUTSIDE, len: 32, flags: INDIRECT, next: 0 }] },
  { name: 'indirect table longer than the queue', descs: 1, build: (fe, _ids, w) => [{ addr: indirectTable(fe, w, 65), len: 65 * DESC_SIZE, flags: INDIRECT, next: 0 }] },
  { name: 'indirect table with INDIRECT inside (nested)', descs: 1, build: (fe, _ids, w) => [{ addr: indirectTable(fe, w, 2, true), len: 32, flags: INDIRECT, next: 0 }] },
  { name: 'INDIRECT together with NEXT', descs: 2, build: (fe, ids, w) => [{ addr: indirectTable(fe, w, 2), len: 32, flags: INDIRECT | NEXT, next: ids[1] }, { addr: w.gpa, len: 16, flags: WRITE, next: 0 }] },
  { name: 'indirect table whose next loops', descs: 1, build: (fe, _ids, w) => [{ addr: indirectTable(fe, w, 2, false, true), len: 32, flags: INDIRECT, next: 0 }] },
];

function at(m: { gpa: number; len: number }): { addr: number; len: number } {
  return { addr: m.gpa, len: m.len };
}

function readMsg(fe: VhostFrontend, size: number): { gpa: number; len: number } {
  const arg = Buffer.alloc(SIZE.READ_IN);
  new ByteCursor(arg).putU64(1).putU64(0).putU32(size);
  const b = Buffer.concat([FuseClient.header(SIZE.IN_HEADER + SIZE.READ_IN, FuseOpcode.READ, fe.fuse.nextUnique(), ROOT), arg]);
  const gpa = fe.mem.alloc(b.length);
  fe.mem.write(gpa, b);
  return { gpa, len: b.length };
}

/** An indirect table of n entries: a GETATTR request then writable room (optionally nested or looping). */
function indirectTable(fe: VhostFrontend, w: { gpa: number }, n: number, nested = false, loop = false): number {
  const gpa = fe.mem.alloc(n * DESC_SIZE, 16);
  const table = fe.mem.view(gpa, n * DESC_SIZE);
  const req = getattrMsg(fe);
  for (let i = 0; i < n; i++) {
    const last = i === n - 1;
    const d: RawDesc = i === 0 ? { addr: req.gpa, len: req.len, flags: NEXT, next: 1 } : { addr: w.gpa, len: Math.floor(4096 / n), flags: WRITE | (last ? 0 : NEXT), next: i + 1 };
    if (nested && i === 0) d.flags |= INDIRECT;
    if (loop && last) {
      d.flags |= NEXT;
      d.next = 0;
    }
    writeDesc(table, i * DESC_SIZE, d);
  }
  return gpa;
}

/** Run one chain case on a session; returns the outcome and checks memory exposure rules. */
async function runChain(target: Target, fe: VhostFrontend, c: ChainCase): Promise<Outcome> {
  const w = guarded(fe, 4096);
  const mark = target.backend.output.length;
  const q = fe.queues[1];
  let writable = 0;
  const returned = q.submitRaw(c.descs, (ids) => {
    const d = c.build(fe, ids, w);
    for (const x of d) if (x.flags & WRITE) writable += x.len;
    return d;
  });
  let usedLen: number | null = null;
  // It rejects if the connection drops (the probe then says 'dropped').
  void returned.then((n) => (usedLen = n), () => undefined);
  const outcome = await target.probe(fe, c.name, mark);
  // A device that keeps working must give every chain back (a guest would wait for it forever).
  if (outcome === 'answered') usedLen = await returned;
  if (c.errorReply !== undefined && outcome === 'answered') {
    const hdr = fe.mem.view(w.gpa, SIZE.OUT_HEADER);
    const error = hdr.readInt32LE(4);
    if (usedLen! < SIZE.OUT_HEADER || error >= 0) throw new Error(`expected a FUSE error reply, got used length ${usedLen}, error ${error}`);
    if (c.errorReply !== true && error !== -c.errorReply) throw new Error(`expected FUSE error -${c.errorReply}, got ${error}`);
  }
  if (usedLen !== null && usedLen > Math.max(writable, 4096)) throw new Error(`used length ${usedLen} beyond the chain's ${writable} writable bytes`);
  if (!w.check()) throw new Error('kfsd wrote outside the chain\'s writable buffer');
  if (q.deviceErrors.length > 0) throw new Error(`used ring: ${q.deviceErrors.join('; ')}`);
  return outcome;
}

interface MessageCase {
  name: string;
  /** Send the malformed message(s); resolve when the back-end answered (ack) or dropped. */
  send(fe: VhostFrontend): Promise<unknown>;
  /** The stream is left mid-message: close it instead of probing. */
  closeAfter?: boolean;
}

/**
 * Send raw bytes that must be answered (a GET_* request, or need_reply with REPLY_ACK), followed
 * at once by GET_FEATURES. Replies come in order, so if the first reply is GET_FEATURES' the
 * back-end skipped one: QEMU would wait forever. A dropped connection is fine.
 */
async function answeredOrDropped(fe: VhostFrontend, request: number, bytes: Buffer, fds: number[] = []): Promise<Buffer | 'dropped'> {
  const first = orDisconnect(fe.conn.recv());
  const second = orDisconnect(fe.conn.recv());
  try {
    fe.conn.sendRaw(bytes, fds);
    fe.conn.sendRaw(encodeMessage(R.GET_FEATURES, Buffer.alloc(0), false));
  } catch (e) {
    if (!(e instanceof ConnectionClosedError)) throw e;
  }
  const r1 = await first;
  if ('closed' in r1) return 'dropped';
  if (r1.value.request !== request) throw new Error(`no reply to request ${request} (next reply was for ${r1.value.request}): a front-end waiting for it would hang`);
  const r2 = await second;
  if ('value' in r2 && r2.value.request !== R.GET_FEATURES) throw new Error(`an extra reply (request ${r2.value.request}) after request ${request}`);
  return r1.value.payload;
}

/**
 * A malformed request with need_reply set: a failure ack (non-zero u64) or a dropped connection.
 * `acceptable` lets a request whose payload a back-end may reasonably accept be acked with 0.
 */
async function ack(fe: VhostFrontend, request: number, payload: Buffer, fds: number[] = [], acceptable = false): Promise<void> {
  const r = await answeredOrDropped(fe, request, encodeMessage(request, payload, true), fds);
  if (r === 'dropped') return;
  if (r.length !== 8) throw new Error(`REPLY_ACK of ${r.length} bytes (a u64 expected)`);
  if (!acceptable && r.readBigUInt64LE(0) === 0n) throw new Error('accepted (ack 0): a malformed request must be refused');
}

function rawTable(regions: [bigint, bigint, bigint, bigint][], nregions = regions.length): Buffer {
  const b = Buffer.alloc(8 + 32 * regions.length);
  const c = new ByteCursor(b).putU32(nregions).putU32(0);
  for (const r of regions) for (const v of r) c.putU64(v);
  return b;
}

const messageCases: MessageCase[] = [
  { name: 'short header, then end of stream', closeAfter: true, send: async (fe) => fe.conn.sendRaw(Buffer.from([1, 0, 0, 0, 1, 0])) },
  { name: 'payload shorter than its size, then end of stream', closeAfter: true, send: async (fe) => fe.conn.sendRaw(Buffer.concat([encodeHeader(R.SET_FEATURES, 1, 8), Buffer.alloc(4)])) },
  {
    // Version 2 in the flags: any reply, or a dropped connection.
    name: 'wrong version',
    send: (fe) => answeredOrDropped(fe, R.GET_FEATURES, encodeHeader(R.GET_FEATURES, 2 | 8, 0)),
  },
  {
    // Nothing sends 256 MiB of payload: waiting for it would let a peer pin the back-end.
    name: 'size beyond any message (256 MiB)',
    send: (fe) => {
      fe.conn.sendRaw(encodeHeader(R.SET_FEATURES, 1 | 8, 256 << 20));
      return fe.conn.whenClosed();
    },
  },
  { name: 'unknown request 99 with need_reply', send: (fe) => ack(fe, 99, Buffer.alloc(8)) },
  { name: 'request 0', send: (fe) => ack(fe, 0, Buffer.alloc(0)) },
  { name: 'request 0xffffffff', send: (fe) => ack(fe, 0xffffffff, Buffer.alloc(16)) },
  { name: 'SET_FEATURES with a short payload', send: (fe) => ack(fe, R.SET_FEATURES, Buffer.alloc(3)) },
  { name: 'SET_VRING_NUM not a power of two', send: (fe) => ack(fe, R.SET_VRING_NUM, vringState(1, 100)) },
  { name: 'SET_VRING_NUM above 32768', send: (fe) => ack(fe, R.SET_VRING_NUM, vringState(1, 65536)) },
  { name: 'SET_VRING_NUM 0', send: (fe) => ack(fe, R.SET_VRING_NUM, vringState(1, 0)) },
  { name: 'SET_VRING_NUM queue index out of range', send: (fe) => ack(fe, R.SET_VRING_NUM, vringState(200, 64)) },
  { name: 'SET_VRING_BASE queue index 0xffffffff', send: (fe) => ack(fe, R.SET_VRING_BASE, vringState(0xffffffff, 0)) },
  { name: 'GET_VRING_BASE queue index out of range', send: (fe) => answeredOrDropped(fe, R.GET_VRING_BASE, encodeMessage(R.GET_VRING_BASE, vringState(1000, 0), false)) },
  { name: 'GET_VRING_BASE with a short payload', send: (fe) => answeredOrDropped(fe, R.GET_VRING_BASE, encodeMessage(R.GET_VRING_BASE, Buffer.alloc(2), false)) },
  { name: 'GET_QUEUE_NUM with a stray payload', send: (fe) => answeredOrDropped(fe, R.GET_QUEUE_NUM, encodeMessage(R.GET_QUEUE_NUM, Buffer.alloc(64, 0xff), false)) },
  { name: 'SET_VRING_KICK index out of range (with an fd)', send: (fe) => ack(fe, R.SET_VRING_KICK, u64Payload(77), [fe.queues[1].kickFd]) },
  { name: 'SET_VRING_CALL without fd and without the no-fd flag', send: (fe) => ack(fe, R.SET_VRING_CALL, u64Payload(1)) },
  { name: 'SET_VRING_KICK with the no-fd flag but an fd attached', send: (fe) => ack(fe, R.SET_VRING_KICK, u64Payload(1 | VRING_NOFD), [fe.queues[1].kickFd], true) },
  {
    name: 'SET_VRING_ADDR outside the memory table',
    send: (fe) => ack(fe, R.SET_VRING_ADDR, vringAddr({ index: 1, flags: 0, desc: 0x1000, used: 0x2000, avail: 0x3000, log: 0 })),
  },
  {
    name: 'SET_VRING_ADDR with a ring running off the end of a region',
    send: (fe) => {
      const r = fe.mem.regions[0];
      const end = r.userspaceAddr + r.size - 64;
      return ack(fe, R.SET_VRING_ADDR, vringAddr({ index: 1, flags: 0, desc: end, used: end, avail: end, log: 0 }));
    },
  },
  { name: 'SET_VRING_ADDR at GPAs instead of userspace addresses', send: (fe) => ack(fe, R.SET_VRING_ADDR, vringAddr({ index: 1, flags: 0, desc: fe.queues[1].descGpa, used: fe.queues[1].usedGpa, avail: fe.queues[1].availGpa, log: 0 })) },
  { name: 'SET_MEM_TABLE with 9 regions', send: (fe) => ack(fe, R.SET_MEM_TABLE, memTable(Array.from({ length: 9 }, (_, i) => ({ ...fe.mem.table()[0], guestPhysAddr: 0x10_0000_0000 * (i + 1) }))), Array(9).fill(fe.mem.regions[0].fd)) },
  { name: 'SET_MEM_TABLE claiming 1000 regions', send: (fe) => ack(fe, R.SET_MEM_TABLE, memTable(fe.mem.table(), 1000), fe.mem.fds()) },
  { name: 'SET_MEM_TABLE with fewer fds than regions', send: (fe) => ack(fe, R.SET_MEM_TABLE, memTable(fe.mem.table()), [fe.mem.regions[0].fd]) },
  {
    name: 'SET_MEM_TABLE with overlapping regions',
    send: (fe) => {
      const [a, b] = fe.mem.table();
      return ack(fe, R.SET_MEM_TABLE, memTable([a, { ...b, guestPhysAddr: a.guestPhysAddr + 4096 }]), fe.mem.fds());
    },
  },
  {
    name: 'SET_MEM_TABLE with a region wrapping past 2^64',
    send: (fe) => ack(fe, R.SET_MEM_TABLE, rawTable([[0xffff_ffff_ffff_f000n, 0x10000n, 0x7f00_0000_0000n, 0n]]), [fe.mem.regions[0].fd]),
  },
  {
    name: 'SET_MEM_TABLE with a region larger than its memfd',
    send: (fe) => ack(fe, R.SET_MEM_TABLE, rawTable([[0x4000_0000n, 1n << 36n, 0x7f12_3400_0000n, 0n]]), [fe.mem.regions[0].fd]),
  },
  {
    name: 'SET_MEM_TABLE with mmap_offset past the memfd',
    send: (fe) => ack(fe, R.SET_MEM_TABLE, rawTable([[0x4000_0000n, 1n << 20n, 0x7f12_3400_0000n, 1n << 40n]]), [fe.mem.regions[0].fd]),
  },
  { name: 'SET_MEM_TABLE with a non-memory fd (an eventfd)', send: (fe) => ack(fe, R.SET_MEM_TABLE, memTable(fe.mem.table().slice(0, 1)), [fe.queues[1].callFd]) },
  { name: 'ADD_MEM_REG with a short payload', send: (fe) => ack(fe, R.ADD_MEM_REG, Buffer.alloc(16), [fe.mem.regions[0].fd]) },
  { name: 'REM_MEM_REG of a region that does not exist', send: (fe) => ack(fe, R.REM_MEM_REG, Buffer.concat([Buffer.alloc(8), rawTable([[0x9_0000_0000n, 4096n, 0x1000n, 0n]]).subarray(8)])) },
  { name: 'SET_LOG_BASE (logging never offered)', send: (fe) => ack(fe, R.SET_LOG_BASE, Buffer.alloc(16)) },
  { name: 'SET_PROTOCOL_FEATURES with every bit', send: (fe) => ack(fe, R.SET_PROTOCOL_FEATURES, u64Payload(0xffff_ffff_ffff_ffffn)) },
  { name: 'SET_FEATURES with bits never offered', send: (fe) => ack(fe, R.SET_FEATURES, u64Payload(bit(63) | bit(34) | bit(32))) },
];

test.serial('kfsd survives malformed vhost-user messages', async (t) => {
  const target = new Target(t);
  await target.start();
  // AVA stops a test at its first failed assertion: collect, so one run reports every bad case.
  const failures: string[] = [];
  for (const c of messageCases) {
    trace(c.name);
    const fe = await target.session();
    try {
      const mark = target.backend.output.length;
      await c.send(fe);
      if (c.closeAfter) {
        fe.close();
        continue;
      }
      t.log(`${c.name}: ${await target.probe(fe, c.name, mark)}`);
    } catch (e) {
      failures.push(`${c.name}: ${(e as Error).message}`);
    } finally {
      fe.close();
    }
  }
  t.deepEqual(failures, []);
  // And a normal session still works at the end.
  const fe = await target.session();
  t.is((await fe.fuse.getattr(ROOT)).mode & 0o170000, 0o040000);
  fe.close();
  const exit = await target.backend.stop();
  t.is(exit.code, 0, `kfsd exit ${JSON.stringify(exit)}\n${target.backend.output.slice(-4000)}`);
  assertFsckClean(t, target.image);
});

test.serial('kfsd survives malformed descriptor chains and FUSE requests', async (t) => {
  const target = new Target(t);
  await target.start();
  const failures: string[] = [];
  for (const c of chainCases) {
    trace(c.name);
    const fe = await target.session();
    try {
      t.log(`${c.name}: ${await runChain(target, fe, c)}`);
    } catch (e) {
      failures.push(`${c.name}: ${(e as Error).message}`);
    } finally {
      fe.close();
    }
  }
  // Ring-level breakage: a head index beyond the queue, an avail index far ahead of what exists.
  for (const [name, act] of [
    ['avail ring names a head beyond the queue', (fe: VhostFrontend) => fe.queues[1].publishRawHead(1000)],
    ['avail idx jumps past the ring', (fe: VhostFrontend) => fe.queues[1].setAvailIdxRaw(fe.queues[1].availIndex + 500)],
  ] as const) {
    trace(name);
    const fe = await target.session();
    try {
      const mark = target.backend.output.length;
      act(fe);
      t.log(`${name}: ${await target.probe(fe, name, mark)}`);
    } catch (e) {
      failures.push(`${name}: ${(e as Error).message}`);
    } finally {
      fe.close();
    }
  }
  t.deepEqual(failures, []);
  const exit = await target.backend.stop();
  t.is(exit.code, 0, `kfsd exit ${JSON.stringify(exit)}\n${target.backend.output.slice(-4000)}`);
  assertFsckClean(t, target.image);
});

test.serial('kfsd survives seeded random FUSE requests and descriptor chains', async (t) => {
  const seed = Number(process.env.KFS_FUZZ_SEED ?? 20261121);
  const rounds = Number(process.env.KFS_FUZZ_ROUNDS ?? 1);
  t.log(`KFS_FUZZ_SEED=${seed}`);
  const rand = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const target = new Target(t);
  await target.start();

  // 1. Random FUSE requests in well-formed chains: every one must come back.
  let fe = await target.session();
  const opcodes = Object.values(FuseOpcode).filter((o) => o !== FuseOpcode.DESTROY);
  let sent = 0;
  for (let i = 0; i < 1500 * rounds; i += 16) {
    const batch = Array.from({ length: 16 }, async () => {
      const opcode = rand() < 0.9 ? pick(opcodes) : Math.floor(rand() * 0x10000);
      const body = Buffer.alloc(Math.floor(rand() * (rand() < 0.2 ? 2000 : 80)));
      for (let k = 0; k < body.length; k++) body[k] = rand() < 0.5 ? 0 : Math.floor(rand() * 256);
      if (rand() < 0.5 && body.length > 2) body[body.length - 1] = 0; // names usually NUL-terminated
      const nodeid = pick([0, 1, 1, 1, 2, 11, 12, Math.floor(rand() * 2 ** 40)]);
      const hdr = FuseClient.header(SIZE.IN_HEADER + body.length, opcode, fe.fuse.nextUnique(), nodeid);
      if (rand() < 0.1) hdr.writeUInt32LE(Math.floor(rand() * 0x20000), 0); // len lies
      sent++;
      const r = await fe.fuse.submit(1, Buffer.concat([hdr, body]), { replySize: 4096 });
      t.true(r.usedLen <= SIZE.OUT_HEADER + 4096);
    });
    const res = await Promise.race([Promise.all(batch).then(() => 'ok' as const), fe.conn.whenClosed().then(() => 'dropped' as const)]);
    if (res === 'dropped') t.fail(`kfsd dropped the connection on well-formed chains with random FUSE content (seed ${seed}, ~request ${sent})`);
  }
  t.is((await fe.fuse.getattr(ROOT)).mode & 0o170000, 0o040000);
  fe.close();

  // 2. Random descriptor chains: addresses in, at the edge of, and outside guest memory.
  const failures: string[] = [];
  fe = await target.session();
  for (let i = 0; i < 400 * rounds; i++) {
    const r0 = fe.mem.regions[0];
    const r1 = fe.mem.regions[1];
    const addr = (): number =>
      pick([
        () => r0.guestPhysAddr + Math.floor(rand() * r0.size),
        () => r1.guestPhysAddr + Math.floor(rand() * r1.size),
        () => r1.guestPhysAddr + r1.size - Math.floor(rand() * 64),
        () => Math.floor(rand() * 2 ** 48),
        () => 0,
      ])();
    const n = 1 + Math.floor(rand() * 4);
    const c: ChainCase = {
      name: `random chain #${i}`,
      descs: n,
      build: (f, ids, w) =>
        ids.map((_, k) => {
          const kind = rand();
          const d: RawDesc =
            kind < 0.3
              ? { ...at(getattrMsg(f, (b) => rand() < 0.3 && b.writeUInt32LE(Math.floor(rand() * 200), 0))), flags: 0, next: 0 }
              : kind < 0.6
                ? { addr: w.gpa, len: Math.floor(rand() * 4097), flags: WRITE, next: 0 }
                : { addr: addr(), len: pick([0, 16, 40, 4096, 0xffffffff, Math.floor(rand() * 0x100000)]), flags: Math.floor(rand() * 8) & (WRITE | INDIRECT), next: 0 };
          if (k + 1 < n) {
            d.flags |= NEXT;
            d.next = rand() < 0.9 ? ids[k + 1] : pick([ids[0], 0xffff, Math.floor(rand() * 128)]);
          }
          return d;
        }),
    };
    let outcome: Outcome | 'failed';
    try {
      outcome = await runChain(target, fe, c);
    } catch (e) {
      failures.push(`${c.name}: ${(e as Error).message}`);
      outcome = 'failed';
    }
    if (outcome !== 'answered') {
      fe.close();
      fe = await target.session();
    }
  }
  fe.close();
  t.log(`outcomes: ${JSON.stringify(target.outcomes)}`);
  t.deepEqual(failures.slice(0, 20), [], `${failures.length} failing chains (seed ${seed})`);
  const exit = await target.backend.stop();
  t.is(exit.code, 0, `kfsd exit ${JSON.stringify(exit)}\n${target.backend.output.slice(-4000)}`);
  assertFsckClean(t, target.image);
});

test.serial('without --reconnect, kfsd exits 0 after dropping a connection for a protocol error; the image is clean', async (t) => {
  const work = tempDir(t, 'vhost-fuzz-exit');
  const socket = join(work, 'vhost.sock');
  const image = makeImage(t, { size: '64M', mkfs: 'kfs', dir: work });
  const backend = spawnKfsd(['--image', image], socket);
  t.teardown(() => backend.stop());
  const fe = await VhostFrontend.start({ socketPath: socket });
  t.teardown(() => fe.close());
  await fe.fuse.init();
  const { entry, fh } = await fe.fuse.create(ROOT, 'written-before', 0o644);
  t.is(await fe.fuse.write(entry.nodeid, fh, 0, Buffer.alloc(10000, 0x5a)), 10000);
  await fe.fuse.release(entry.nodeid, fh);
  fe.conn.sendRaw(encodeHeader(R.GET_FEATURES, 2, 0)); // version 2
  await fe.conn.whenClosed();
  const exit = await backend.exited;
  t.deepEqual(exit, { code: 0, signal: null }, backend.output.slice(-4000));
  assertFsckClean(t, image);
  const dump = join(work, 'dump');
  debugfs(image, `dump /written-before ${dump}`);
  t.true(readFileSync(dump).equals(Buffer.alloc(10000, 0x5a)));
});
