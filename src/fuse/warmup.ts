/**
 * JIT warm-up: serve a guest's everyday requests to a scratch filesystem before the real ones
 * come, so that V8 has compiled the paths they take.
 *
 * V8 optimizes a function (TurboFan, on helper threads) only after it has run for a while, and
 * a fresh server runs the create, listing and unlink paths in slow code while those threads
 * compile them on the CPUs the guest (QEMU) needs: in kfsd's front-end benchmark the compiler
 * still took 1.5 s of CPU over its first 12,000 creates. In the guest benchmark, the same
 * guest workload run once beforehand in another directory (so on a warm kfsd) gave, three pairs
 * each: create 575-686 -> 910-1,208 files/s, cold stat 18.1-19.7k -> 21.7-23.3k entries/s, rm
 * 1.7-2.1k -> 2.1-2.4k entries/s, while the C virtiofsd's figures did not move with it (so
 * the guest's own caches were not what changed).
 *
 * A VM's boot takes seconds before its kernel mounts virtio-fs: kfsd warms up then, yielding
 * the event loop to vhost-user messages every few ms (between requests: one request in cold
 * code can take ~10 ms), and stops at the first real request. The
 * requests go through a FuseSession of their own, the transports' way (handleSync first,
 * handle() when it cannot answer), to a filesystem of the served kind on a scratch image or
 * directory: the served image is never touched.
 */
import { performance } from 'node:perf_hooks';
import { constants as fsConstants } from 'node:fs';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { FuseOpcode as Op, SIZE } from './abi';
import { FuseSession, SessionOptions } from './dispatcher';
import { FileSystem } from './filesystem';
import { cstr, encodeRequest, fuseArgs, Caller } from './request-encode';
import { ByteCursor } from '../util/cursor';
import { FsError, errnoName } from '../util/errors';

/** A filesystem to warm up on, of the kind the server serves, and how to dispose of it. */
export interface WarmupScratch {
  fs: FileSystem;
  /** The periodic commit, as the served filesystem runs it every few seconds. */
  commit?: () => Promise<void>;
  close(): Promise<void>;
}

export interface WarmupOptions {
  /** Files created, stat'ed, listed, read and removed per round. */
  files: number;
  rounds: number;
  /** Checked between requests: true ends the warm-up (a real request has come, or shutdown). */
  shouldStop: () => boolean;
  /** As the real sessions get them (timeouts, read-only). */
  session: SessionOptions;
  /** The INIT a client sends: protocol minor and flags (GUEST_INIT_FLAGS for a guest). */
  initMinor: number;
  initFlags: bigint;
}

export interface WarmupReport {
  requests: number;
  ms: number;
  /** Why it ended early: 'stopped' (shouldStop), or the error that ended it. */
  ended: 'done' | 'stopped' | string;
}

/** Milliseconds of warm-up between two turns of the event loop (vhost-user messages, kicks). */
const SLICE_MS = 4;
/** Nodes forgotten per BATCH_FORGET during the removal. */
const FORGET_BATCH = 16;
const ROOT = 1;

class Stopped extends Error {}

/** A FUSE client that hands requests to a session directly, as a transport does. */
class SessionClient {
  private unique = 0n;
  requests = 0;
  private sliceStart = performance.now();
  private readonly who: Caller = { uid: 0, gid: 0, pid: process.pid };
  /** A READ's reply buffers, as a guest gives them: the out header's, then the data's. */
  private readonly readDest = [Buffer.alloc(SIZE.OUT_HEADER), Buffer.alloc(1 << 20)];

  constructor(private readonly session: FuseSession, private readonly shouldStop: () => boolean) {}

  /** Send one request; the reply's body, or an FsError carrying the reply's errno. */
  async call(opcode: number, nodeid: number, args: Buffer[], data?: Buffer): Promise<Buffer> {
    if (performance.now() - this.sliceStart >= SLICE_MS) {
      await nextTurn();
      this.sliceStart = performance.now();
    }
    if (this.shouldStop()) throw new Stopped();
    this.unique += 2n;
    const req = encodeRequest(opcode, this.unique, nodeid, args, this.who, data);
    const dest = opcode === Op.READ ? this.readDest : undefined;
    this.requests++;
    let out: Buffer;
    const n = this.session.handleSync(req, req.length, dest, true);
    if (n === 0) return EMPTY;
    if (n > 0) {
      out = this.session.syncReply.subarray(0, this.session.syncReplyHead);
    } else {
      const r = await this.session.handle(req, dest);
      if (r === null) return EMPTY;
      out = Array.isArray(r) ? Buffer.concat(r) : r;
    }
    const error = out.readInt32LE(4);
    if (error < 0) throw new FsError(errnoName(-error), `warm-up ${opcode}: errno ${-error}`);
    return Buffer.from(out.subarray(SIZE.OUT_HEADER));
  }

  /** As call(), with a miss (ENOENT, ENODATA, ENOSYS...) as null. */
  async maybe(opcode: number, nodeid: number, args: Buffer[]): Promise<Buffer | null> {
    try {
      return await this.call(opcode, nodeid, args);
    } catch (e) {
      if (e instanceof FsError) return null;
      throw e;
    }
  }
}

const EMPTY = Buffer.alloc(0);
const nodeidOf = (entryOut: Buffer): number => new ByteCursor(entryOut).u64();

/**
 * Run the warm-up on `scratch` (closed at the end, whatever happens). Never throws: what ended
 * it is in the report.
 */
export async function warmUp(scratch: WarmupScratch, o: WarmupOptions): Promise<WarmupReport> {
  const t0 = performance.now();
  const session = new FuseSession(scratch.fs, { ...o.session, internal: true });
  const c = new SessionClient(session, o.shouldStop);
  let ended: WarmupReport['ended'] = 'done';
  try {
    await c.call(Op.INIT, 0, [fuseArgs.init(o.initMinor, o.initFlags)]);
    for (let r = 0; r < o.rounds; r++) {
      await round(c, `warmup-${r}`, o.files);
      if (o.shouldStop()) throw new Stopped();
      await scratch.commit?.();
    }
  } catch (e) {
    ended = e instanceof Stopped ? 'stopped' : (e as Error).message;
  } finally {
    await scratch.close().catch(() => undefined);
  }
  return { requests: c.requests, ms: performance.now() - t0, ended };
}

/** One guest workload: create and write files, stat them, list them, read them, remove them. */
async function round(c: SessionClient, dirName: string, files: number): Promise<void> {
  const dir = nodeidOf(await c.call(Op.MKDIR, ROOT, [fuseArgs.mkdir(0o755), cstr(dirName)]));
  const data = Buffer.alloc(4096, 0x6b);
  const names = Array.from({ length: files }, (_, i) => cstr(`file-${i}`));
  const nodes: number[] = [];
  /** Lookup references the kernel would hold per node (FORGET gives them back). */
  const refs = new Map<number, number>();
  const ref = (node: number) => refs.set(node, (refs.get(node) ?? 0) + 1);
  for (const name of names) {
    // What a guest's open(O_CREAT) and write(2) send: a LOOKUP that misses, CREATE, the
    // GETXATTR of security.capability before the write, WRITE, RELEASE at close.
    await c.maybe(Op.LOOKUP, dir, [name]);
    const created = await c.call(Op.CREATE, dir, [fuseArgs.create(fsConstants.O_RDWR | fsConstants.O_CREAT, 0o644), name]);
    const node = nodeidOf(created);
    const fh = new ByteCursor(created, SIZE.ENTRY_OUT).u64();
    nodes.push(node);
    ref(node);
    await c.maybe(Op.GETXATTR, node, [fuseArgs.getxattr(0), cstr('security.capability')]);
    await c.call(Op.WRITE, node, [fuseArgs.write(fh, 0, data.length)], data);
    await c.call(Op.RELEASE, node, [fuseArgs.release(fh)]);
  }
  for (let i = 0; i < files; i++) {
    await c.call(Op.GETATTR, nodes[i], [fuseArgs.getattr()]);
    ref(nodeidOf(await c.call(Op.LOOKUP, dir, [names[i]])));
  }
  await listPlus(c, dir, ref);
  for (const node of nodes) {
    // no_open answers OPEN with ENOSYS: the kernel then reads with handle 0 and sends no RELEASE.
    const opened = await c.maybe(Op.OPEN, node, [fuseArgs.open(fsConstants.O_RDONLY)]);
    const fh = opened ? new ByteCursor(opened).u64() : 0;
    await c.call(Op.READ, node, [fuseArgs.read(fh, 0, 4096, fsConstants.O_RDONLY)]);
    if (opened) await c.call(Op.RELEASE, node, [fuseArgs.release(fh, fsConstants.O_RDONLY)]);
  }
  // rm -r: each UNLINK, and the references given back a few at a time as the kernel drops the
  // dentries. Each FORGET that drops the last one frees an unlinked inode's blocks; in small
  // batches no request carries many (one BATCH_FORGET of all 1,000 held the event loop 50 ms;
  // with these, a warm-up's longest gap between two turns is 14-16 ms, in cold code).
  for (let i = 0; i < files; i += FORGET_BATCH) {
    const batch = nodes.slice(i, i + FORGET_BATCH);
    for (let k = 0; k < batch.length; k++) await c.call(Op.UNLINK, dir, [names[i + k]]);
    await c.call(Op.BATCH_FORGET, 0, [fuseArgs.batchForget(batch.map((nodeid) => ({ nodeid, nlookup: refs.get(nodeid) ?? 0 })))]);
    for (const node of batch) refs.delete(node);
  }
  // Any other node a reply referred to (none today: READDIRPLUS gives "." and ".." no node).
  const rest = [...refs].map(([nodeid, nlookup]) => ({ nodeid, nlookup }));
  if (rest.length) await c.call(Op.BATCH_FORGET, 0, [fuseArgs.batchForget(rest)]);
  await c.call(Op.RMDIR, ROOT, [cstr(dirName)]);
  await c.call(Op.FORGET, dir, [fuseArgs.forget(1)]);
}

/** OPENDIR, READDIRPLUS to the end, RELEASEDIR; each entry returned is a lookup reference. */
async function listPlus(c: SessionClient, dir: number, ref: (node: number) => void): Promise<void> {
  const fh = new ByteCursor(await c.call(Op.OPENDIR, dir, [fuseArgs.open(fsConstants.O_RDONLY)])).u64();
  for (let off = 0; ; ) {
    const body = await c.call(Op.READDIRPLUS, dir, [fuseArgs.read(fh, off, 4096, 0)]);
    if (body.length === 0) break;
    // fuse_direntplus: fuse_entry_out, then fuse_dirent {u64 ino, off; u32 namelen, type; name} padded to 8.
    const cur = new ByteCursor(body);
    while (cur.remaining >= SIZE.ENTRY_OUT + SIZE.DIRENT) {
      const nodeid = cur.u64();
      cur.skip(SIZE.ENTRY_OUT - 8); // the rest of fuse_entry_out
      cur.skip(8); // dirent.ino
      off = cur.u64();
      const namelen = cur.u32();
      cur.skip(4 + ((namelen + 7) & ~7));
      if (nodeid !== 0) ref(nodeid);
    }
  }
  await c.call(Op.RELEASEDIR, dir, [fuseArgs.release(fh, fsConstants.O_RDONLY)]);
}
