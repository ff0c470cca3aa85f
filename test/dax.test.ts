/**
 * DAX for virtio-fs against real `kfsd --image` processes, through the test front-end's cache
 * window (test/helpers/vhost-frontend/cache-window.ts): SETUPMAPPING makes kfsd send
 * BACKEND_SHMEM_MAP with the image fd, the front-end mmaps it, and reads and writes "through the
 * window" touch the image's pages directly, as a guest's loads and stores would.
 *
 * Oracles: FUSE_READ of the same range (what the guest would read without DAX); after kfsd
 * exits, the image as debugfs and the kernel's ext4 (loop mount) read it, and e2fsck -fn.
 */
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { closeSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { FUSE_SETUPMAPPING_FLAG_READ as MAP_READ, FUSE_SETUPMAPPING_FLAG_WRITE as MAP_WRITE } from '../src/fuse/abi';
import type { ErrnoName } from '../src/util/errors';
import { assertFsckClean, debugfs, loopMount, makeImage, tempDir } from './helpers/image';
import {
  BackendRequest,
  CacheWindow,
  FuseReplyError,
  ProtocolFeature,
  spawnKfsd,
  VhostFrontend,
  vn,
  type Backend,
  type FrontendOptions,
  type ShmemEvent,
} from './helpers/vhost-frontend';

const ROOT = 1;
const MiB = 1 << 20;
/** Linux fs/fuse/dax.c maps the window in 2 MiB ranges (FUSE_DAX_SZ). */
const RANGE = 2 * MiB;
const WINDOW = 256 * MiB;
const FALLOC_KEEP_SIZE = 0x01;
const FALLOC_PUNCH_HOLE = 0x02;

interface Dax {
  backend: Backend;
  fe: VhostFrontend;
  image: string;
  work: string;
}

async function startDax(t: ExecutionContext, opts: Partial<FrontendOptions> = {}, extra: string[] = []): Promise<Dax> {
  const work = tempDir(t, 'dax');
  const socket = join(work, 'vhost.sock');
  const image = makeImage(t, { size: '512M', mkfs: 'kfs', dir: work });
  const backend = spawnKfsd(['--image', image], socket, ['--dax-window', String(WINDOW), '--log-level', 'info', ...extra]);
  t.teardown(() => backend.stop());
  let fe: VhostFrontend;
  try {
    fe = await VhostFrontend.start({ socketPath: socket, ...opts });
    await fe.fuse.init();
  } catch (e) {
    t.log(`kfsd output:\n${backend.output}`);
    throw e;
  }
  t.teardown(() => fe.close());
  return { backend, fe, image, work };
}

function channel(fe: VhostFrontend) {
  if (!fe.backendChannel) throw new Error('no backend channel');
  return fe.backendChannel;
}

/** FUSE_READ of [off, off+len), in 1 MiB requests; short at EOF. */
async function fuseRead(fe: VhostFrontend, node: number, fh: number, off: number, len: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let at = off; at < off + len; at += MiB) {
    const b = await fe.fuse.read(node, fh, at, Math.min(MiB, off + len - at));
    parts.push(b);
    if (b.length < Math.min(MiB, off + len - at)) break;
  }
  return Buffer.concat(parts);
}

/** What the window must show for a mapping of [foffset, +len): the file's bytes, zeros past EOF. */
async function expectedWindow(fe: VhostFrontend, node: number, fh: number, foffset: number, len: number): Promise<Buffer> {
  const out = Buffer.alloc(len);
  (await fuseRead(fe, node, fh, foffset, len)).copy(out);
  return out;
}

async function writeAll(fe: VhostFrontend, node: number, fh: number, off: number, data: Buffer): Promise<void> {
  for (let at = 0; at < data.length; at += MiB) {
    const part = data.subarray(at, at + MiB);
    const n = await fe.fuse.write(node, fh, off + at, part);
    if (n !== part.length) throw new Error(`short write ${n} of ${part.length}`);
  }
}

async function createFile(fe: VhostFrontend, name: string, pieces: [number, Buffer][] = []): Promise<{ node: number; fh: number }> {
  const { entry, fh } = await fe.fuse.create(ROOT, name, 0o644);
  for (const [off, data] of pieces) await writeAll(fe, entry.nodeid, fh, off, data);
  return { node: entry.nodeid, fh };
}

const isMap = (e: ShmemEvent): boolean => e.request === BackendRequest.SHMEM_MAP;
const isUnmap = (e: ShmemEvent): boolean => e.request === BackendRequest.SHMEM_UNMAP;
const covers = (e: ShmemEvent, off: number, len: number): boolean => !!e.map && Number(e.map.shmOffset) < off + len && off < Number(e.map.shmOffset + e.map.len);
const fdCount = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;

/** kfsd never asked the front-end for anything it had to refuse (overlaps, bad ranges, unknown unmaps). */
function allAccepted(t: ExecutionContext, fe: VhostFrontend): void {
  const refused = channel(fe).events.filter((e) => e.refused !== null);
  t.deepEqual(refused.map((e) => e.refused), [], 'every backend-channel request was valid');
}

/** Stop kfsd (it syncs at exit) and read a file of the image with debugfs and the kernel. */
async function hostView(t: ExecutionContext, d: Dax, name: string): Promise<{ debugfs: Buffer; kernel: Buffer }> {
  d.fe.close();
  t.is((await d.backend.stop()).code, 0, d.backend.output);
  const dump = join(d.work, `${name}.dump`);
  debugfs(d.image, `dump /${name} ${dump}`);
  const viaDebugfs = readFileSync(dump);
  assertFsckClean(t, d.image);
  const m = loopMount(t, d.image, { readOnly: true });
  const viaKernel = readFileSync(join(m.dir, name));
  m.unmount();
  return { debugfs: viaDebugfs, kernel: viaKernel };
}

test('the front-end\'s window refuses what QEMU refuses and reads zeros where nothing is mapped', (t) => {
  const w = new CacheWindow(16 * MiB);
  t.teardown(() => w.close());
  const fd = vn.memfdCreate('dax-test-file', 4 * MiB);
  t.teardown(() => closeSync(fd));
  const msg = (shmOffset: number, len: number, fdOffset = 0, flags = 1n, shmid = 0) => ({ shmid, fdOffset: BigInt(fdOffset), shmOffset: BigInt(shmOffset), len: BigInt(len), flags });
  t.is(w.map(msg(MiB, MiB), fd), null);
  w.write(MiB + 10, Buffer.from('through the window'));
  t.is(w.read(MiB + 10, 18).toString(), 'through the window');
  t.regex(w.map(msg(MiB + 4096, 4096), fd) ?? '', /overlaps/);
  t.regex(w.map(msg(16 * MiB - 4096, 8192), fd) ?? '', /outside/);
  t.regex(w.map(msg(8 * MiB, 4096, 0, 1n, 1), fd) ?? '', /region 1/);
  t.regex(w.map(msg(8 * MiB + 1, 4096), fd) ?? '', /aligned/);
  t.regex(w.map(msg(8 * MiB, 4096, 100), fd) ?? '', /fd_offset/);
  t.regex(w.map(msg(8 * MiB, 4096), undefined) ?? '', /no fd/);
  t.regex(w.unmap(msg(MiB, 4096)) ?? '', /no mapping/);
  t.is(w.unmap(msg(MiB, MiB)), null);
  t.true(w.read(MiB, MiB).equals(Buffer.alloc(MiB)), 'an unmapped range reads zeros');
  t.is(w.map(msg(2 * MiB, 4096, 0, 0n), fd), null);
  t.throws(() => w.write(2 * MiB, Buffer.from('x')), { message: /read-only/ });
});

test('handshake: SHMEM negotiated, GET_SHMEM_CONFIG sizes the window, backend channel set up', async (t) => {
  const { fe } = await startDax(t);
  t.true(fe.hasProtocol(ProtocolFeature.SHMEM));
  t.true(fe.hasProtocol(ProtocolFeature.BACKEND_REQ));
  t.deepEqual(fe.shmemSizes, [WINDOW]);
  t.is(fe.window?.size, WINDOW);
  t.truthy(fe.backendChannel);
});

test('a front-end without SHMEM: DAX off with a log line, SETUPMAPPING answers ENOSYS, files still work', async (t) => {
  for (const backendChannel of [true, false]) {
    const d = await startDax(t, { dax: false, backendChannel });
    t.false(d.fe.hasProtocol(ProtocolFeature.SHMEM));
    t.is(d.fe.hasProtocol(ProtocolFeature.BACKEND_REQ), backendChannel);
    t.is(d.fe.window, null);
    const data = randomBytes(3 * 4096);
    const f = await createFile(d.fe, 'plain', [[0, data]]);
    const err = await t.throwsAsync(d.fe.fuse.setupmapping(f.node, f.fh, 0, RANGE, 0, MAP_READ), { instanceOf: FuseReplyError });
    t.is(err?.code, 'ENOSYS');
    t.true((await d.fe.fuse.read(f.node, f.fh, 0, data.length)).equals(data));
    t.regex(d.backend.output, /DAX is off/);
    t.true(d.backend.running);
  }
});

test('reads through the window equal FUSE_READ (sizes, sparse files, unwritten extents)', async (t) => {
  const { fe } = await startDax(t);
  const files: { name: string; node: number; fh: number }[] = [];
  const add = async (name: string, pieces: [number, Buffer][], prep?: (node: number, fh: number) => Promise<void>): Promise<void> => {
    const { entry, fh } = await fe.fuse.create(ROOT, name, 0o644);
    if (prep) await prep(entry.nodeid, fh);
    for (const [off, data] of pieces) await writeAll(fe, entry.nodeid, fh, off, data);
    files.push({ name, node: entry.nodeid, fh });
  };
  await add('one-byte', [[0, Buffer.from('x')]]);
  await add('one-page', [[0, randomBytes(4096)]]);
  await add('odd', [[0, randomBytes(100_003)]]);
  await add('multi-range', [[0, randomBytes(5 * MiB + 777)]]);
  await add('sparse', [[0, randomBytes(65536)], [3 * MiB + 4096, randomBytes(65536)], [7 * MiB + 5, Buffer.from('tail bytes')]]);
  // fallocate: unwritten extents inside the file (and past EOF with KEEP_SIZE), partly written over.
  await add('unwritten', [[MiB + 4096, randomBytes(8192)]], async (node, fh) => {
    await fe.fuse.fallocate(node, fh, 0, 4 * MiB);
    await fe.fuse.fallocate(node, fh, 4 * MiB, 2 * MiB, FALLOC_KEEP_SIZE);
  });
  const ch = channel(fe);
  let slot = 0;
  for (const f of files) {
    const size = (await fe.fuse.getattr(f.node)).size;
    for (let foffset = 0; foffset < size; foffset += RANGE) {
      const moffset = slot++ * RANGE;
      const from = ch.events.length;
      await fe.fuse.setupmapping(f.node, f.fh, foffset, RANGE, moffset, MAP_READ);
      const maps = ch.since(from);
      t.true(maps.length > 0 && maps.every((e) => isMap(e) && e.refused === null && e.map!.flags === 0n), `${f.name}@${foffset}: read-only maps, all accepted`);
      const want = await expectedWindow(fe, f.node, f.fh, foffset, RANGE);
      t.true(fe.windowRead(moffset, RANGE).equals(want), `${f.name} at ${foffset}: window equals FUSE_READ`);
    }
  }
  t.true(slot >= 12);
  allAccepted(t, fe);
});

test('writes through the window reach the file: FUSE_READ after FSYNC, debugfs, the kernel, e2fsck', async (t) => {
  const d = await startDax(t);
  const { fe } = d;
  const content = randomBytes(3 * MiB + 1000);
  const f = await createFile(fe, 'target', [[0, content]]);
  await fe.fuse.fsync(f.node, f.fh);
  await fe.fuse.setupmapping(f.node, f.fh, 0, RANGE, 4 * RANGE, MAP_READ | MAP_WRITE);
  await fe.fuse.setupmapping(f.node, f.fh, RANGE, RANGE, 9 * RANGE, MAP_READ | MAP_WRITE);
  t.true(channel(fe).events.filter(isMap).every((e) => e.map!.flags === 1n), 'writable maps');
  const expected = Buffer.from(content);
  const stores: [number, Buffer][] = [[0, randomBytes(100)], [4096 * 7 + 3, randomBytes(20_000)], [RANGE - 10, randomBytes(10)], [RANGE, randomBytes(5000)], [3 * MiB + 900, randomBytes(100)]];
  for (const [off, data] of stores) {
    const moffset = off < RANGE ? 4 * RANGE + off : 9 * RANGE + off - RANGE;
    fe.windowWrite(moffset, data);
    data.copy(expected, off);
  }
  await fe.fuse.fsync(f.node, f.fh);
  t.true((await fuseRead(fe, f.node, f.fh, 0, content.length)).equals(expected), 'FUSE_READ sees the stores');
  t.is((await fe.fuse.getattr(f.node)).size, content.length, 'stores inside the file do not change its size');
  const host = await hostView(t, d, 'target');
  t.true(host.debugfs.equals(expected), 'debugfs reads the stores');
  t.true(host.kernel.equals(expected), 'the kernel reads the stores');
});

test('a writable map over holes and unwritten extents allocates and zeroes them', async (t) => {
  const d = await startDax(t);
  const { fe } = d;
  const f = await createFile(fe, 'holey', [[6 * MiB, Buffer.from('end')]]);
  await fe.fuse.fallocate(f.node, f.fh, 2 * MiB, MiB); // unwritten inside [2M, 3M)
  await fe.fuse.fsync(f.node, f.fh);
  const before = (await fe.fuse.getattr(f.node)).blocks;
  await fe.fuse.setupmapping(f.node, f.fh, 0, RANGE, 0, MAP_READ | MAP_WRITE);
  await fe.fuse.setupmapping(f.node, f.fh, RANGE, RANGE, RANGE, MAP_READ | MAP_WRITE);
  const after = (await fe.fuse.getattr(f.node)).blocks;
  // [0, 2M) was a hole, [2M, 4M) had 1 MiB already allocated (unwritten): 3 MiB of data blocks
  // more, plus an extent-tree block or two now that the file has more extents than the inode holds.
  const grew = after - before;
  t.true(grew >= (3 * MiB) / 512 && grew <= (3 * MiB) / 512 + 2 * 8, `blocks ${before} -> ${after}`);
  t.true(fe.windowRead(0, 2 * RANGE).equals(Buffer.alloc(2 * RANGE)), 'allocated holes read as zeros');
  const expected = Buffer.alloc(6 * MiB + 3);
  Buffer.from('end').copy(expected, 6 * MiB);
  for (const off of [0, 4096 * 100, 2 * MiB + 12345, 3 * MiB + 1]) {
    const data = randomBytes(4000);
    fe.windowWrite(off, data);
    data.copy(expected, off);
  }
  await fe.fuse.fsync(f.node, f.fh);
  t.true((await fuseRead(fe, f.node, f.fh, 0, expected.length)).equals(expected));
  const host = await hostView(t, d, 'holey');
  t.true(host.debugfs.equals(expected));
  t.true(host.kernel.equals(expected));
  t.notRegex(debugfs(d.image, 'ex /holey'), /Uninit/, 'no unwritten extent left under the writable map');
});

test('FUSE_FSYNC makes stores through a writable map over a hole durable: SIGKILL after it loses nothing', async (t) => {
  const d = await startDax(t);
  const { fe } = d;
  const f = await createFile(fe, 'durable', [[5 * MiB, Buffer.from('eof')]]);
  await fe.fuse.fsync(f.node, f.fh);
  await fe.fuse.setupmapping(f.node, f.fh, RANGE, RANGE, 7 * RANGE, MAP_READ | MAP_WRITE);
  const expected = Buffer.alloc(5 * MiB + 3);
  Buffer.from('eof').copy(expected, 5 * MiB);
  const data = randomBytes(RANGE);
  fe.windowWrite(7 * RANGE, data);
  data.copy(expected, RANGE);
  await fe.fuse.fsync(f.node, f.fh);
  allAccepted(t, fe);
  d.backend.proc.kill('SIGKILL');
  await d.backend.exited;
  const dump = join(d.work, 'durable.dump');
  debugfs(d.image, `dump /durable ${dump}`);
  t.true(readFileSync(dump).equals(expected), 'the image holds the stores and the blocks they went to');
  assertFsckClean(t, d.image);
});

test('REMOVEMAPPING unmaps: SHMEM_UNMAP of the mapped ranges, the window reads zeros after', async (t) => {
  const { fe } = await startDax(t);
  const data = randomBytes(3 * MiB);
  const f = await createFile(fe, 'f', [[0, data]]);
  const ch = channel(fe);
  await fe.fuse.setupmapping(f.node, f.fh, 0, RANGE, 0, MAP_READ);
  await fe.fuse.setupmapping(f.node, f.fh, RANGE, RANGE, 5 * RANGE, MAP_READ);
  t.true(fe.windowRead(5 * RANGE, MiB).equals(data.subarray(RANGE)));
  const from = ch.events.length;
  await fe.fuse.removemapping([{ moffset: 0, len: RANGE }, { moffset: 5 * RANGE, len: RANGE }]);
  const unmaps = ch.since(from);
  t.true(unmaps.length >= 2 && unmaps.every((e) => isUnmap(e) && e.refused === null), 'every unmap accepted');
  t.true(unmaps.some((e) => covers(e, 0, RANGE)) && unmaps.some((e) => covers(e, 5 * RANGE, RANGE)));
  t.is(fe.window!.mappings.length, 0);
  t.true(fe.windowRead(0, RANGE).equals(Buffer.alloc(RANGE)));
  t.true(fe.windowRead(5 * RANGE, RANGE).equals(Buffer.alloc(RANGE)));
  // Removing what is not mapped is harmless.
  await fe.fuse.removemapping([{ moffset: 7 * RANGE, len: RANGE }]);
  t.true((await fe.fuse.read(f.node, f.fh, 0, 4096)).equals(data.subarray(0, 4096)), 'the file is unchanged');
  allAccepted(t, fe);
});

test('SETUPMAPPING over a live range replaces it (the guest upgrading a read map to writable)', async (t) => {
  const { fe } = await startDax(t);
  const data = randomBytes(RANGE);
  const f = await createFile(fe, 'f', [[0, data]]);
  const ch = channel(fe);
  await fe.fuse.setupmapping(f.node, f.fh, 0, RANGE, 3 * RANGE, MAP_READ);
  const from = ch.events.length;
  await fe.fuse.setupmapping(f.node, f.fh, 0, RANGE, 3 * RANGE, MAP_READ | MAP_WRITE);
  const ev = ch.since(from);
  const firstMap = ev.findIndex(isMap);
  t.true(firstMap > 0 && ev.slice(0, firstMap).every(isUnmap), 'the old mapping is unmapped before the new one is mapped');
  t.true(ev.every((e) => e.refused === null));
  fe.windowWrite(3 * RANGE, Buffer.from('upgraded'));
  t.is((await fe.fuse.read(f.node, f.fh, 0, 8)).toString(), 'upgraded');

  // A range overlapping part of a live mapping (no Linux guest does this: its ranges are 2 MiB
  // aligned): the old mapping goes, the new one shows its file; never two maps over one byte.
  const g = await createFile(fe, 'g', [[0, randomBytes(RANGE)]]);
  await fe.fuse.setupmapping(g.node, g.fh, 0, RANGE, 3 * RANGE + MiB, MAP_READ);
  t.true(fe.windowRead(3 * RANGE + MiB, RANGE).equals(await expectedWindow(fe, g.node, g.fh, 0, RANGE)));
  t.true(fe.windowRead(3 * RANGE, MiB).equals(Buffer.alloc(MiB)), 'the replaced mapping is gone entirely');
  allAccepted(t, fe);
});

test('thousands of map/unmap cycles leak no fd in kfsd', async (t) => {
  const { fe, backend } = await startDax(t);
  const data = randomBytes(4 * MiB);
  const f = await createFile(fe, 'f', [[0, data]]);
  const sparse = await createFile(fe, 'sparse', [[3 * MiB, Buffer.from('x')]]);
  const cycle = async (i: number): Promise<void> => {
    const moffset = (i % 64) * RANGE;
    const file = i % 3 === 2 ? sparse : f; // holes map the zero memfd
    await fe.fuse.setupmapping(file.node, file.fh, (i % 2) * RANGE, RANGE, moffset, i % 5 === 0 ? MAP_READ | MAP_WRITE : MAP_READ);
    await fe.fuse.removemapping([{ moffset, len: RANGE }]);
  };
  for (let i = 0; i < 10; i++) await cycle(i); // the zero memfd and any lazily opened fd exist now
  const pid = backend.proc.pid!;
  const before = fdCount(pid);
  const ch = channel(fe);
  const from = ch.events.length;
  const N = 3000;
  for (let i = 0; i < N; i++) await cycle(i);
  const ev = ch.since(from);
  t.true(ev.every((e) => e.refused === null), 'the front-end accepted every request');
  t.is(ev.filter(isMap).length, ev.filter(isUnmap).length);
  t.true(ev.filter(isMap).length >= N);
  t.is(fe.window!.mappings.length, 0);
  t.is(fdCount(pid), before, 'kfsd holds as many fds as before');
  t.true((await fe.fuse.read(f.node, f.fh, 0, 4096)).equals(data.subarray(0, 4096)));
});

/**
 * With replies to the back-end held, start op; once kfsd has sent an unmap covering `range`, op
 * must still be unanswered (kfsd waits for our reply before freeing blocks); release and finish.
 */
async function unmapsBeforeReply(t: ExecutionContext, fe: VhostFrontend, range: [number, number], op: () => Promise<unknown>): Promise<ShmemEvent[]> {
  const ch = channel(fe);
  const from = ch.events.length;
  ch.hold();
  let answered = false;
  const p = op().finally(() => (answered = true));
  const first = await ch.waitFor((e) => isUnmap(e) && covers(e, range[0], range[1]), from);
  t.false(answered, 'the request is not answered while kfsd waits for the unmap reply');
  t.is(first.refused, null);
  ch.release();
  await p;
  return ch.since(from);
}

test('truncate and punch hole of a mapped file unmap the affected ranges before replying; unlink, at the FORGET that frees the blocks', async (t) => {
  const { fe } = await startDax(t);
  const data = randomBytes(6 * MiB);
  const a = await createFile(fe, 'a', [[0, data]]);
  for (let i = 0; i < 3; i++) await fe.fuse.setupmapping(a.node, a.fh, i * RANGE, RANGE, (10 + i) * RANGE, MAP_READ);

  // Truncate to 3 MiB: the ranges showing [2M, 6M) go, [0, 2M) stays.
  let ev = await unmapsBeforeReply(t, fe, [11 * RANGE, RANGE], () => fe.fuse.truncate(a.node, 3 * MiB, a.fh));
  t.true(ev.filter(isUnmap).some((e) => covers(e, 12 * RANGE, RANGE)), 'the range past the new size is unmapped too');
  t.false(ev.some((e) => isUnmap(e) && covers(e, 10 * RANGE, RANGE)), 'the untouched range stays mapped');
  t.true(fe.windowRead(10 * RANGE, RANGE).equals(data.subarray(0, RANGE)));
  t.true(fe.windowRead(11 * RANGE, RANGE).equals(Buffer.alloc(RANGE)));

  // Punch a hole inside [0, 2M).
  ev = await unmapsBeforeReply(t, fe, [10 * RANGE, RANGE], () => fe.fuse.fallocate(a.node, a.fh, MiB, 8192, FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE));
  t.true(ev.every((e) => e.refused === null));
  t.true(fe.windowRead(10 * RANGE, RANGE).equals(Buffer.alloc(RANGE)));
  const back = await fuseRead(fe, a.node, a.fh, 0, 3 * MiB);
  const want = Buffer.from(data.subarray(0, 3 * MiB));
  want.fill(0, MiB, MiB + 8192);
  t.true(back.equals(want), 'the file lost exactly the punched bytes');

  // Unlink of the last link, the handle released first. The guest still holds the inode (the
  // lookup reference CREATE gave it), so its blocks stay its own, and may stay mapped, until the
  // FORGET; that frees them, unmapping them first.
  const b = await createFile(fe, 'b', [[0, randomBytes(RANGE)]]);
  await fe.fuse.setupmapping(b.node, b.fh, 0, RANGE, 20 * RANGE, MAP_READ);
  await fe.fuse.release(b.node, b.fh);
  const ch = channel(fe);
  const from = ch.events.length;
  await fe.fuse.unlink(ROOT, 'b');
  t.false(ch.since(from).some((e) => isUnmap(e) && covers(e, 20 * RANGE, RANGE)), 'nothing is freed while the guest refers to the inode');
  t.truthy(fe.window!.mappingAt(20 * RANGE));
  await fe.fuse.forget(b.node, 1);
  await ch.waitFor((e) => isUnmap(e) && covers(e, 20 * RANGE, RANGE), from);
  t.is(fe.window!.mappingAt(20 * RANGE), undefined);
  allAccepted(t, fe);
});

test('bad SETUPMAPPING requests get errors and change nothing', async (t) => {
  const { fe } = await startDax(t);
  const data = randomBytes(3 * MiB + 5);
  const f = await createFile(fe, 'f', [[0, data]]);
  const dir = await fe.fuse.mkdir(ROOT, 'dir');
  const dirFh = await fe.fuse.open(dir.nodeid, 0, true);
  const ch = channel(fe);
  const window = fe.shmemSizes[0];
  const blocks = (await fe.fuse.getattr(f.node)).blocks;
  await fe.fuse.setupmapping(f.node, f.fh, 0, RANGE, 0, MAP_READ);
  const cases: [string, () => Promise<void>, ErrnoName][] = [
    ['misaligned moffset', () => fe.fuse.setupmapping(f.node, f.fh, 0, RANGE, 3 * RANGE + 512, MAP_READ), 'EINVAL'],
    ['misaligned foffset', () => fe.fuse.setupmapping(f.node, f.fh, 100, RANGE, 3 * RANGE, MAP_READ), 'EINVAL'],
    ['misaligned len', () => fe.fuse.setupmapping(f.node, f.fh, 0, 4097, 3 * RANGE, MAP_READ), 'EINVAL'],
    ['zero len', () => fe.fuse.setupmapping(f.node, f.fh, 0, 0, 3 * RANGE, MAP_READ), 'EINVAL'],
    ['overlapping the window end', () => fe.fuse.setupmapping(f.node, f.fh, 0, RANGE, window - 4096, MAP_READ), 'EINVAL'],
    ['outside the window', () => fe.fuse.setupmapping(f.node, f.fh, 0, RANGE, window, MAP_READ), 'EINVAL'],
    ['moffset + len overflows', () => fe.fuse.setupmapping(f.node, f.fh, 0, RANGE, (1n << 64n) - 4096n, MAP_READ), 'EINVAL'],
    ['len overflows', () => fe.fuse.setupmapping(f.node, f.fh, 0, (1n << 64n) - 4096n, 3 * RANGE, MAP_READ), 'EINVAL'],
    ['starting at EOF', () => fe.fuse.setupmapping(f.node, f.fh, 3 * MiB + 4096, RANGE, 3 * RANGE, MAP_READ), 'EINVAL'],
    ['far beyond EOF', () => fe.fuse.setupmapping(f.node, f.fh, 64 * MiB, RANGE, 3 * RANGE, MAP_READ | MAP_WRITE), 'EINVAL'],
    ['a directory', () => fe.fuse.setupmapping(dir.nodeid, dirFh, 0, RANGE, 3 * RANGE, MAP_READ), 'EINVAL'],
    ['an unknown fh', () => fe.fuse.setupmapping(f.node, 987654, 0, RANGE, 3 * RANGE, MAP_READ | MAP_WRITE), 'EBADF'],
  ];
  for (const [what, call, code] of cases) {
    const from = ch.events.length;
    const err = await t.throwsAsync(call(), { instanceOf: FuseReplyError }, what);
    if (err) t.is(err.code, code, what);
    t.deepEqual(ch.since(from), [], `${what}: no message to the front-end`);
  }
  // A REMOVEMAPPING outside the window or misaligned changes nothing either.
  for (const [what, items] of [
    ['remove outside the window', [{ moffset: window, len: RANGE }]],
    ['remove misaligned', [{ moffset: 100, len: RANGE }]],
    ['remove overflowing', [{ moffset: (1n << 64n) - 4096n, len: 8192 }]],
  ] as [string, { moffset: number | bigint; len: number }[]][]) {
    const from = ch.events.length;
    const err = await t.throwsAsync(fe.fuse.removemapping(items), { instanceOf: FuseReplyError }, what);
    if (err) t.is(err.code, 'EINVAL', what);
    t.deepEqual(ch.since(from), [], `${what}: no message to the front-end`);
  }
  t.is(fe.window!.mappings.length, 1, 'the good mapping is still there');
  t.true(fe.windowRead(0, RANGE).equals(data.subarray(0, RANGE)));
  const attr = await fe.fuse.getattr(f.node);
  t.is(attr.size, data.length);
  t.is(attr.blocks, blocks);
  t.true((await fuseRead(fe, f.node, f.fh, 0, data.length)).equals(data), 'the file is unchanged');
  allAccepted(t, fe);
});
