/**
 * The dispatcher's synchronous fast path (src/fuse/fast-path.ts) against the ordinary one, on a
 * real Ext4Fs image and a real host directory (PassthroughFs): every reply handleSync gives must
 * be byte for byte the reply handle() gives for the same request at that moment, READ data
 * and READDIRPLUS listings included (and take the same lookup references), and a name or a
 * listing the fast path knew must stop answering from memory once its directory changes. Messages are built at fuse.h offsets (fuse_in_header 40 bytes, fuse_out_header 16).
 */
import test, { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { Ext4Fs } from '../src/ext4/fs';
import { Ext4FuseFs } from '../src/ext4/fuse-adapter';
import { PassthroughFs } from '../src/passthrough/passthrough-fs';
import { FuseSession, Reply, SessionOptions } from '../src/fuse/dispatcher';
import { FileSystem } from '../src/fuse/filesystem';
import { debugfs, makeImage, tempDir } from './helpers/image';

const OP = { LOOKUP: 1, FORGET: 2, GETATTR: 3, MKDIR: 9, UNLINK: 10, RENAME: 12, OPEN: 14, READ: 15, WRITE: 16, RELEASE: 18, SETXATTR: 21, GETXATTR: 22, INIT: 26, OPENDIR: 27, CREATE: 35, READDIRPLUS: 44 };
let unique = 100n;

function msg(opcode: number, nodeid: number, body: Buffer): Buffer {
  const h = Buffer.alloc(40);
  h.writeUInt32LE(40 + body.length, 0);
  h.writeUInt32LE(opcode, 4);
  h.writeBigUInt64LE(unique++, 8);
  h.writeBigUInt64LE(BigInt(nodeid), 16);
  return Buffer.concat([h, body]);
}

function bytes(r: Reply): Buffer {
  if (!r) throw new Error('no reply');
  return Array.isArray(r) ? Buffer.concat(r) : r;
}

const name = (s: string): Buffer => Buffer.from(`${s}\0`);
/** fuse_read_in {fh, offset, size, read_flags, lock_owner, flags, padding}. */
function readIn(fh: number, offset: number, size: number): Buffer {
  const b = Buffer.alloc(40);
  b.writeBigUInt64LE(BigInt(fh), 0);
  b.writeBigUInt64LE(BigInt(offset), 8);
  b.writeUInt32LE(size, 16);
  return b;
}

interface Served {
  s: FuseSession;
  /** Send through handle(); the reply's bytes. */
  call(m: Buffer): Promise<Buffer>;
  /** Send through handleSync with `dest` as the transport's buffers; null when not handled. `idle`: as handleSync's. */
  sync(m: Buffer, dest?: Buffer[], idle?: boolean): Buffer | null;
}

async function serve(t: ExecutionContext, fsys: FileSystem, opts: SessionOptions = {}): Promise<Served> {
  const s = new FuseSession(fsys, opts);
  const init = Buffer.alloc(64);
  init.writeUInt32LE(7, 0);
  init.writeUInt32LE(38, 4);
  init.writeUInt32LE(1 << 20, 8);
  init.writeUInt32LE(0xffffffff, 12);
  const r = bytes(await s.handle(msg(OP.INIT, 0, init)));
  t.is(r.readInt32LE(4), 0);
  return {
    s,
    call: async (m) => bytes(await s.handle(m)),
    sync: (m, dest, idle) => {
      const n = s.handleSync(m, m.length, dest, idle);
      if (n < 0) return null;
      const head = Buffer.from(s.syncReply.subarray(0, s.syncReplyHead));
      if (n === s.syncReplyHead) return head;
      // A READ: the data went into dest after the header's place.
      return Buffer.concat([head, Buffer.concat(dest!).subarray(16, n)]);
    },
  };
}

/** Create `file` with `data` in `parent` (the root); its node id and an open read handle. */
async function makeFile(v: Served, file: string, data: Buffer, parent = 1): Promise<{ node: number; fh: number }> {
  const cr = Buffer.alloc(16);
  cr.writeUInt32LE(2 /* O_RDWR */, 0);
  cr.writeUInt32LE(0o100644, 4);
  const c = await v.call(msg(OP.CREATE, parent, Buffer.concat([cr, name(file)])));
  const node = Number(c.readBigUInt64LE(16));
  const fh = Number(c.readBigUInt64LE(16 + 128));
  const w = Buffer.alloc(40);
  w.writeBigUInt64LE(BigInt(fh), 0);
  w.writeUInt32LE(data.length, 16);
  const wr = await v.call(msg(OP.WRITE, node, Buffer.concat([w, data])));
  if (wr.readInt32LE(4) !== 0) throw new Error(`write failed ${wr.readInt32LE(4)}`);
  return { node, fh };
}

/** A fresh 32 MiB image opened by Ext4Fs, closed when the test ends. */
async function openImage(t: ExecutionContext): Promise<{ img: string; ext4: Ext4Fs }> {
  const img = makeImage(t, { size: '32M', blockSize: 4096 });
  const ext4 = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  t.teardown(() => ext4.close());
  return { img, ext4 };
}

/** openImage served by a FuseSession through Ext4FuseFs. */
async function serveImage(t: ExecutionContext, opts: SessionOptions = {}): Promise<{ img: string; ext4: Ext4Fs; v: Served }> {
  const { img, ext4 } = await openImage(t);
  return { img, ext4, v: await serve(t, new Ext4FuseFs(ext4), opts) };
}

/** The same request through both paths; the fast one must answer and agree. */
async function same(t: ExecutionContext, v: Served, build: () => Buffer, dest?: () => Buffer[], what = ''): Promise<void> {
  const m = build();
  const fast = v.sync(m, dest?.());
  t.truthy(fast, `${what}: answered on the fast path`);
  const slow = await v.call(m);
  t.deepEqual(fast, slow, what);
}

const backends: [string, (t: ExecutionContext) => Promise<FileSystem>][] = [
  ['ext4 image', async (t) => {
    return new Ext4FuseFs((await openImage(t)).ext4);
  }],
  ['host directory', async (t) => {
    const p = await PassthroughFs.open(tempDir(t, 'fastpath'));
    t.teardown(() => p.destroy());
    return p;
  }],
];

for (const [label, open] of backends) {
  test(`${label}: GETATTR, LOOKUP and READ replies from the fast path equal handle()'s`, async (t) => {
    const v = await serve(t, await open(t));
    const data = Buffer.alloc(3 * 4096 + 123);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
    const { node, fh } = await makeFile(v, 'f', data);
    await same(t, v, () => msg(OP.GETATTR, node, Buffer.alloc(16)), undefined, 'getattr');
    await same(t, v, () => msg(OP.GETATTR, 1, Buffer.alloc(16)), undefined, 'getattr of the root');
    // The first LOOKUP of a name may need the ordinary path; after it, the fast one knows it.
    const first = msg(OP.LOOKUP, 1, name('f'));
    if (!v.sync(first)) await v.call(first);
    await same(t, v, () => msg(OP.LOOKUP, 1, name('f')), undefined, 'lookup');
    // Reads across the end of the file, into one buffer and into buffers split mid-header and mid-data.
    const cases: [number, number, number[]][] = [[0, 4096, [16 + 4096]], [100, 8000, [7, 9 + 3000, 5000]], [4096, 1 << 20, [16 + (1 << 20)]]];
    for (const [off, size, splits] of cases) {
      const m = msg(OP.READ, node, readIn(fh, off, size));
      const fast = v.sync(m, splits.map((n) => Buffer.alloc(n, 0xee)));
      const slow = await v.call(m);
      t.deepEqual(slow.subarray(16), data.subarray(off, off + size), `read ${off}+${size}: data`);
      if (fast) t.deepEqual(fast, slow, `read ${off}+${size}: the fast reply equals the ordinary one`);
    }
    // A second pass is served from memory (ext4: extents loaded, atime done; host: page cache).
    await same(t, v, () => msg(OP.READ, node, readIn(fh, 100, 8000)), () => [Buffer.alloc(7), Buffer.alloc(9 + 3000), Buffer.alloc(5000)], 'read, again');
    // Transport buffers smaller than the reply: the ordinary path decides.
    t.is(v.sync(msg(OP.READ, node, readIn(fh, 0, 4096)), [Buffer.alloc(100)]), null);
    // An idle transport lets the read wait for the disk (a blocking preadv2): same reply.
    for (const [off, size, splits] of cases) {
      const m = msg(OP.READ, node, readIn(fh, off, size));
      const fast = v.sync(m, splits.map((n) => Buffer.alloc(n, 0xee)), true);
      t.truthy(fast, `idle read ${off}+${size}: answered on the fast path`);
      t.deepEqual(fast, await v.call(m), `idle read ${off}+${size}: the fast reply equals the ordinary one`);
    }
  });

  test(`${label}: a name stops being answered from memory when its directory changes`, async (t) => {
    const v = await serve(t, await open(t));
    const a = await makeFile(v, 'a', Buffer.from('first'));
    const look = () => msg(OP.LOOKUP, 1, name('a'));
    const l0 = await v.call(look());
    t.is(Number(l0.readBigUInt64LE(16)), a.node);
    // Replace "a" by another file under the same name.
    const b = await makeFile(v, 'b', Buffer.from('second one'));
    const rn = Buffer.alloc(8);
    rn.writeBigUInt64LE(1n, 0);
    t.is((await v.call(msg(OP.RENAME, 1, Buffer.concat([rn, name('b'), name('a')])))).readInt32LE(4), 0);
    const fast = v.sync(look());
    const slow = await v.call(look());
    t.is(Number(slow.readBigUInt64LE(16)), b.node, 'the ordinary path sees the new file');
    if (fast) t.is(Number(fast.readBigUInt64LE(16)), b.node, 'the fast path does not answer with the old one');
    // After unlink, the ordinary answer is ENOENT, and a fast one (ext4: the directory's block is cached) too.
    t.is((await v.call(msg(OP.UNLINK, 1, name('a')))).readInt32LE(4), 0);
    const gone = v.sync(look());
    if (gone) t.is(gone.readInt32LE(4), -2, 'the fast path does not answer with the unlinked file');
    t.is((await v.call(look())).readInt32LE(4), -2);
    // GETATTR of the file still open shows the unlink (nlink 0 at fuse_attr_out 16 + 16 + 64).
    const g = v.sync(msg(OP.GETATTR, b.node, Buffer.alloc(16)));
    if (g) t.is(g.readUInt32LE(16 + 16 + 64), 0);
  });
}

test('ext4 image: GETXATTR of an inode without attributes is ENODATA from the fast path, until it has one', async (t) => {
  const { v } = await serveImage(t);
  const { node } = await makeFile(v, 'x', Buffer.from('data'));
  /** fuse_getxattr_in {u32 size, u32 padding} + the name. */
  const get = (attr: string, size = 64) => {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(size, 0);
    return msg(OP.GETXATTR, node, Buffer.concat([b, name(attr)]));
  };
  await same(t, v, () => get('security.capability'), undefined, 'getxattr security.capability');
  t.is(v.sync(get('user.k', 0))!.readInt32LE(4), -61, 'ENODATA');
  // Names the decoder refuses (empty; longer than XATTR_NAME_MAX; not NUL-terminated) are the ordinary path's.
  t.is(v.sync(get('')), null);
  t.is(v.sync(get('user.' + 'n'.repeat(251))), null);
  const unterminated = msg(OP.GETXATTR, node, Buffer.concat([Buffer.alloc(8), Buffer.from('user.k')]));
  t.is(v.sync(unterminated), null);
  t.not((await v.call(unterminated)).readInt32LE(4), 0);
  // fuse_setxattr_in {u32 size, u32 flags} (FUSE_COMPAT_SETXATTR_IN_SIZE: kfs does not take FUSE_SETXATTR_EXT).
  const sx = Buffer.alloc(8);
  sx.writeUInt32LE(3, 0);
  t.is((await v.call(msg(OP.SETXATTR, node, Buffer.concat([sx, name('user.k'), Buffer.from('abc')])))).readInt32LE(4), 0);
  t.is(v.sync(get('user.k')), null, 'an inode with attributes is not answered from memory');
  t.is(v.sync(get('user.other')), null);
  const r = await v.call(get('user.k'));
  t.is(r.readInt32LE(4), 0);
  t.deepEqual(r.subarray(16), Buffer.from('abc'));
});

test('ext4 image: OPEN without O_TRUNC, and RELEASE unless it is the last close of an unlinked file, are answered on the fast path', async (t) => {
  const { ext4, v } = await serveImage(t);
  const data = Buffer.from('still readable');
  const { node, fh } = await makeFile(v, 'r', data);
  /** fuse_open_in {u32 flags, u32 open_flags}; the fh from fuse_open_out. */
  const open = async (): Promise<number> => {
    const r = await v.call(msg(OP.OPEN, node, Buffer.alloc(8)));
    t.is(r.readInt32LE(4), 0);
    return Number(r.readBigUInt64LE(16));
  };
  /** fuse_release_in {u64 fh, u32 flags, u32 release_flags, u64 lock_owner}. */
  const release = (h: number) => {
    const b = Buffer.alloc(24);
    b.writeBigUInt64LE(BigInt(h), 0);
    return msg(OP.RELEASE, node, b);
  };
  // OPEN on the fast path: the same reply as the ordinary path's but for the new handle's number.
  const openMsg = (flags: number) => {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(flags, 0);
    return msg(OP.OPEN, node, b);
  };
  const opensBefore = v.s.counts.get('open') ?? 0;
  const fast = v.sync(openMsg(0));
  t.truthy(fast, 'OPEN answered on the fast path');
  t.is(v.s.counts.get('open'), opensBefore + 1, 'and counted in the request statistics');
  const slow = await v.call(openMsg(0));
  t.deepEqual([fast!.length, fast!.readInt32LE(4), fast!.subarray(24)], [slow.length, slow.readInt32LE(4), slow.subarray(24)]);
  t.not(fast!.readBigUInt64LE(16), slow.readBigUInt64LE(16), 'each open gets its own handle');
  t.is(v.sync(openMsg(2 /* O_RDWR */ | 0o1000 /* O_TRUNC */)), null, 'O_TRUNC is the ordinary path');
  for (const m of [fast!, slow]) t.is((await v.call(release(Number(m.readBigUInt64LE(16))))).readInt32LE(4), 0);
  const h2 = await open();
  const r1 = v.sync(release(fh));
  t.truthy(r1, 'a file that keeps its name is released on the fast path');
  t.deepEqual([r1!.length, r1!.readInt32LE(4)], [16, 0]);
  // Unlinked with one opener left: that last release frees the inode, which is I/O. Until the
  // kernel gives back the reference CREATE gave it (FORGET), the inode stays regardless.
  t.is((await v.call(msg(OP.UNLINK, 1, name('r')))).readInt32LE(4), 0);
  const read = await v.call(msg(OP.READ, node, readIn(h2, 0, 100)));
  t.deepEqual(read.subarray(16), data, 'the open, unlinked file is readable');
  const forget = Buffer.alloc(8);
  forget.writeBigUInt64LE(1n, 0);
  const fm = msg(OP.FORGET, node, forget);
  t.is(v.s.handleSync(fm, fm.length), 0);
  await ext4.exclusive(async () => {}); // the FORGET's release runs under the operation lock
  t.is(v.sync(release(h2)), null);
  const before = (await ext4.statfs()).ffree;
  t.is((await v.call(release(h2))).readInt32LE(4), 0);
  t.is((await ext4.statfs()).ffree, before + 1, 'the ordinary release freed the inode');
});

test('ext4 image: names created through the filesystem are looked up on the fast path at once', async (t) => {
  const { v } = await serveImage(t);
  // A name looked up before the creates, then three creates: all four known after the last.
  const first = await makeFile(v, 'first', Buffer.from('1'));
  const look = (n: string) => msg(OP.LOOKUP, 1, name(n));
  if (!v.sync(look('first'))) await v.call(look('first'));
  const made = [first.node];
  for (const n of ['a', 'b', 'c']) made.push((await makeFile(v, n, Buffer.from(n))).node);
  for (const [i, n] of ['first', 'a', 'b', 'c'].entries()) {
    await same(t, v, () => look(n), undefined, `lookup ${n}`);
    t.is(Number(v.sync(look(n))!.readBigUInt64LE(16)), made[i]);
  }
  // An unlink forgets the name it removed and keeps the others.
  t.is((await v.call(msg(OP.UNLINK, 1, name('a')))).readInt32LE(4), 0);
  await same(t, v, () => look('b'), undefined, 'lookup b after the unlink of a');
  // The root came from mkfs and was never listed, but its block is cached: the fast path
  // searches it and tells the miss as the ordinary path does.
  await same(t, v, () => look('a'), undefined, 'lookup of the unlinked a');
  t.is(v.sync(look('a'))!.readInt32LE(4), -2);
});

for (const negativeTimeout of [0, 7]) {
  test(`ext4 image: a name missing from a directory made or listed here is a miss on the fast path (negative timeout ${negativeTimeout})`, async (t) => {
    const { ext4, v } = await serveImage(t, { negativeTimeout });
    const mk = Buffer.alloc(8);
    mk.writeUInt32LE(0o755, 0);
    const d = await v.call(msg(OP.MKDIR, 1, Buffer.concat([mk, name('d')])));
    t.is(d.readInt32LE(4), 0);
    const dir = Number(d.readBigUInt64LE(16));
    const look = (n: string, parent = dir) => msg(OP.LOOKUP, parent, name(n));
    // The LOOKUP before a create: ENOENT (or a negative entry) from memory, as the ordinary path says.
    await same(t, v, () => look('x'), undefined, 'lookup of a name not made yet');
    const miss = v.sync(look('x'))!;
    if (negativeTimeout) {
      t.is(miss.readInt32LE(4), 0);
      t.is(miss.readBigUInt64LE(16), 0n, 'a negative entry: node 0');
      t.is(miss.readBigUInt64LE(32), BigInt(negativeTimeout), 'entry_valid');
    } else t.is(miss.readInt32LE(4), -2, 'ENOENT');
    const x = await makeFile(v, 'x', Buffer.from('x'), dir);
    await same(t, v, () => look('x'), undefined, 'lookup after the create');
    t.is(Number(v.sync(look('x'))!.readBigUInt64LE(16)), x.node);
    t.is((await v.call(msg(OP.UNLINK, dir, name('x')))).readInt32LE(4), 0);
    await same(t, v, () => look('x'), undefined, 'lookup after the unlink');
    t.deepEqual(v.sync(look('x'))!.subarray(4, 8), miss.subarray(4, 8), 'a miss again');
    // The root (not listed, its names not known) answers from its cached block; once listed, from the names.
    await same(t, v, () => look('nothing', 1), undefined, 'a miss in the root, searched in its cached block');
    await ext4.readdir(2, 0); // ext4's root inode (FUSE node 1)
    await same(t, v, () => look('nothing', 1), undefined, 'a miss in the listed root');
    await same(t, v, () => look('d', 1), undefined, 'a name of the listed root');
  });
}

test('ext4 image: LOOKUP of a name never looked up is answered on the fast path once its directory blocks and inode table block are cached; otherwise the ordinary path', async (t) => {
  const img = makeImage(t, { size: '32M', blockSize: 4096 });
  const names = Array.from({ length: 600 }, (_, i) => `file-with-a-long-name-${String(i).padStart(5, '0')}`);
  {
    const ext4 = await Ext4Fs.open(img, { commitIntervalMs: 0 });
    const d = await ext4.mkdir(2, Buffer.from('d'), 0o755, 0, 0);
    for (const n of names) await ext4.create(d.ino, Buffer.from(n), 0o644, 0, 0);
    await ext4.close();
  }
  t.regex(debugfs(img, 'htree /d'), /Root node dump/, 'd is an indexed (htree) directory of several leaves');
  // A new server: nothing of d is in memory.
  const ext4 = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  t.teardown(() => ext4.close());
  const v = await serve(t, new Ext4FuseFs(ext4));
  const d = Number((await v.call(msg(OP.LOOKUP, 1, name('d')))).readBigUInt64LE(16));
  const look = (n: string) => msg(OP.LOOKUP, d, name(n));
  t.is(v.sync(look(names[0])), null, 'cold: the ordinary path reads the blocks');
  // The ordinary path looks up every other name: that reads every leaf (each holds some ~40
  // names, in hash order) and every inode table block (16 consecutive inodes each).
  for (let i = 0; i < names.length; i += 2) t.is((await v.call(look(names[i]))).readInt32LE(4), 0);
  // The names in between were never looked up: their inodes are decoded from the cached table
  // blocks, their entries found in the cached leaves, all on the fast path.
  for (let i = 1; i < names.length; i += 2) {
    const m = look(names[i]);
    const fast = v.sync(m);
    t.truthy(fast, `lookup ${names[i]}: answered on the fast path`);
    const slow = await v.call(m);
    t.deepEqual([fast!.subarray(0, 8), fast!.subarray(16)], [slow.subarray(0, 8), slow.subarray(16)], `lookup ${names[i]}: the same entry both ways`);
  }
  for (const n of ['not-there', 'file-with-a-long-name-99999']) await same(t, v, () => look(n), undefined, `lookup ${n}`);
  t.is(v.sync(look('not-there'))!.readInt32LE(4), -2, 'a miss');
  t.is(v.sync(msg(OP.LOOKUP, d, name('..'))), null, '".." is the ordinary path\'s');
  t.is(Number((await v.call(msg(OP.LOOKUP, d, name('..')))).readBigUInt64LE(16)), 1, '".." of d is the root');
});

test('ext4 image: a READ whose atime is due (relatime) is answered on the fast path and updates atime', async (t) => {
  const { img, ext4, v } = await serveImage(t);
  const data = Buffer.from('relatime');
  const { node, fh } = await makeFile(v, 'f', data);
  // fuse_attr_out: the attributes start after {u64 attr_valid, u32 nsec, u32 dummy}; atime at +24, mtime at +32, atimensec at +48, mtimensec at +52.
  const times = async () => {
    const a = await v.call(msg(OP.GETATTR, node, Buffer.alloc(16)));
    const at = 16 + 16;
    const ns = (sec: bigint, nsec: number) => sec * 1_000_000_000n + BigInt(nsec);
    return { atime: ns(a.readBigUInt64LE(at + 24), a.readUInt32LE(at + 48)), mtime: ns(a.readBigUInt64LE(at + 32), a.readUInt32LE(at + 52)) };
  };
  const before = await times();
  t.true(before.atime <= before.mtime, 'a new file: atime not after mtime, so a read must update it');
  // Times have millisecond resolution (writeTime: 4 ms ticks): let the clock pass mtime, or the
  // read's atime may equal it and stay due.
  await new Promise((r) => setTimeout(r, 20));
  const fast = v.sync(msg(OP.READ, node, readIn(fh, 0, 4096)), [Buffer.alloc(16 + 4096)]);
  t.truthy(fast, 'answered on the fast path');
  t.deepEqual(fast!.subarray(16), data);
  const after = await times();
  t.true(after.atime > before.mtime, 'atime moved past mtime');
  // Once updated, the next read leaves it (relatime), as the ordinary path would.
  v.sync(msg(OP.READ, node, readIn(fh, 0, 4096)), [Buffer.alloc(16 + 4096)]);
  t.is((await times()).atime, after.atime);
  // The update reaches the image (debugfs prints atime as 0xSECONDS:EXTRA, EXTRA's nanoseconds shifted left 2).
  await ext4.sync();
  const m = /atime: 0x([0-9a-f]+):([0-9a-f]+)/.exec(debugfs(img, `stat <${node}>`));
  t.truthy(m, 'debugfs shows the atime');
  t.is(BigInt(parseInt(m![1], 16)) * 1_000_000_000n + BigInt(parseInt(m![2], 16) >>> 2), after.atime);
});

test('FORGET and BATCH_FORGET are taken on the fast path without a reply', async (t) => {
  const dir = tempDir(t, 'fastpath');
  fs.writeFileSync(path.join(dir, 'x'), 'x');
  const p = await PassthroughFs.open(dir);
  t.teardown(() => p.destroy());
  const v = await serve(t, p);
  const node = Number((await v.call(msg(OP.LOOKUP, 1, name('x')))).readBigUInt64LE(16));
  const before = p.nodeCount;
  const f = Buffer.alloc(8);
  f.writeBigUInt64LE(1n, 0);
  const m = msg(OP.FORGET, node, f);
  t.is(v.s.handleSync(m, m.length), 0);
  t.is(p.nodeCount, before - 1, 'the lookup reference is gone');
  // BATCH_FORGET (42) of an unknown node: accepted, nothing happens.
  const bf = Buffer.alloc(8 + 16);
  bf.writeUInt32LE(1, 0);
  bf.writeBigUInt64LE(999999n, 8);
  bf.writeBigUInt64LE(1n, 16);
  const bm = msg(42, 0, bf);
  t.is(v.s.handleSync(bm, bm.length), 0);
  // A truncated BATCH_FORGET is left to the ordinary decoder.
  const short = msg(42, 0, bf.subarray(0, 20));
  t.is(v.s.handleSync(short, short.length), -1);
});

test('request statistics time fast-path requests of every opcode, also when a client repeats a fixed pattern', async (t) => {
  const { v } = await serveImage(t);
  const { node } = await makeFile(v, 'x', Buffer.from('x'));
  await v.call(msg(OP.LOOKUP, 1, name('x'))); // the root's names are not all known: this one now is
  const timed = new Map<number, number>();
  v.s.observeSync = (opcode, us) => {
    if (us >= 0) timed.set(opcode, (timed.get(opcode) ?? 0) + 1);
  };
  // LOOKUP, GETATTR, LOOKUP, GETATTR...: a global one-in-eight sample would time only one of them.
  for (let i = 0; i < 64; i++) {
    t.truthy(v.sync(msg(OP.LOOKUP, 1, name('x'))));
    t.truthy(v.sync(msg(OP.GETATTR, node, Buffer.alloc(16))));
  }
  t.true((timed.get(OP.LOOKUP) ?? 0) >= 4, `LOOKUP timed ${timed.get(OP.LOOKUP) ?? 0} times`);
  t.true((timed.get(OP.GETATTR) ?? 0) >= 4, `GETATTR timed ${timed.get(OP.GETATTR) ?? 0} times`);
});

test('ext4 image: the first READ of a file just looked up from the image is answered on the fast path when its extent tree lies in i_block; one with index nodes waits for the ordinary path once', async (t) => {
  const img = makeImage(t, { size: '32M', blockSize: 4096 });
  const small = Buffer.alloc(3 * 4096 + 100, 0x61);
  // Every other block written: 6 extents, more than i_block's 4, so the tree gets an index node.
  const frag = Buffer.alloc(4096, 0x62);
  {
    const ext4 = await Ext4Fs.open(img, { commitIntervalMs: 0 });
    const v = await serve(t, new Ext4FuseFs(ext4));
    await makeFile(v, 'small', small);
    const { node, fh } = await makeFile(v, 'frag', frag);
    for (let i = 1; i < 6; i++) {
      const w = Buffer.alloc(40);
      w.writeBigUInt64LE(BigInt(fh), 0);
      w.writeBigUInt64LE(BigInt(i * 2 * 4096), 8);
      w.writeUInt32LE(4096, 16);
      t.is((await v.call(msg(OP.WRITE, node, Buffer.concat([w, frag])))).readInt32LE(4), 0);
    }
    await ext4.close();
  }
  t.regex(debugfs(img, 'stat /frag'), /\(ETB0\)/, 'frag has an extent tree block');
  // A new server: nothing of either file is in memory until LOOKUP reads its inode.
  const ext4 = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  t.teardown(() => ext4.close());
  // no_open (kfs mount's default): READs with handle 0, no OPEN first to load anything.
  const fuseFs = new Ext4FuseFs(ext4);
  fuseFs.noOpen = true;
  const v = await serve(t, fuseFs);
  const nodeOf = async (n: string) => Number((await v.call(msg(OP.LOOKUP, 1, name(n)))).readBigUInt64LE(16));
  const s = await nodeOf('small');
  const read = (node: number, size: number) => msg(OP.READ, node, readIn(0, 0, size));
  const fast = v.sync(read(s, small.length), [Buffer.alloc(16 + small.length)], true);
  t.truthy(fast, 'the first READ of a small file is answered on the fast path');
  t.true(fast!.subarray(16).equals(small));
  const f = await nodeOf('frag');
  t.is(v.sync(read(f, 11 * 4096), [Buffer.alloc(16 + 11 * 4096)], true), null, 'an index node to read: the ordinary path');
  const slow = await v.call(read(f, 11 * 4096));
  t.is(slow.readInt32LE(4), 0);
  const again = v.sync(read(f, 11 * 4096), [Buffer.alloc(16 + 11 * 4096)], true);
  t.truthy(again, 'once its map is loaded, the fast path');
  // The same reply but for the request's unique (bytes 8-15 of the header).
  t.deepEqual([again!.subarray(0, 8), again!.subarray(16)], [slow.subarray(0, 8), slow.subarray(16)]);
  const want = Buffer.alloc(11 * 4096);
  for (let i = 0; i < 6; i++) frag.copy(want, i * 2 * 4096);
  t.true(slow.subarray(16).equals(want), 'holes read as zeros between the six blocks');
});

for (const [label, opts, maxWrite] of [['default options', {}, 1 << 20], ['entry 5 s, attr 7 s, max_write 8 KiB', { entryTimeout: 5, attrTimeout: 7, maxWrite: 8192 }, 8192]] as const) {
  test(`ext4 image (${label}): READDIRPLUS after the first of a listing is answered on the fast path, byte for byte and lookup for lookup as handle(); not at offset 0, during an operation, or once the directory changes`, async (t) => {
    const { ext4, v } = await serveImage(t, opts);
    const fuse = v.s.fs as unknown as { lookups: Map<number, number> };
    const mk = Buffer.alloc(8);
    mk.writeUInt32LE(0o755, 0);
    const d = await v.call(msg(OP.MKDIR, 1, Buffer.concat([mk, name('d')])));
    const dir = Number(d.readBigUInt64LE(16));
    // Names of every length modulo 8 (the padding), two in three of 245-255 bytes: a listing
    // of more than the fast path's 128 KiB.
    const names = Array.from({ length: 420 }, (_, i) => (i % 3 ? 'L'.repeat(242 + (i % 11)) : 'n'.repeat(i % 9)) + String(i));
    const nodes = new Map<string, number>();
    for (const n of names) nodes.set(n, (await makeFile(v, n, Buffer.from(n), dir)).node);
    const opened = await v.call(msg(OP.OPENDIR, dir, Buffer.alloc(8)));
    const fh = Number(opened.readBigUInt64LE(16));
    /** The records of a READDIRPLUS reply: name, node, next offset. */
    const records = (r: Buffer): { name: string; node: number; off: number }[] => {
      const out = [];
      for (let at = 16; at < r.length;) {
        const nl = r.readUInt32LE(at + 128 + 16);
        out.push({ name: r.toString('latin1', at + 152, at + 152 + nl), node: Number(r.readBigUInt64LE(at)), off: Number(r.readBigUInt64LE(at + 128 + 8)) });
        at += (152 + nl + 7) & ~7;
      }
      return out;
    };
    const rdp = (offset: number, size: number) => msg(OP.READDIRPLUS, dir, readIn(fh, offset, size));
    // Offset 0 starts the listing (a snapshot, atime): the ordinary path's.
    t.is(v.sync(rdp(0, 4096)), null);
    const first = await v.call(rdp(0, 4096));
    const seen = new Map<string, number>(); // replies each name went out in
    const count = (r: Buffer) => {
      for (const e of records(r)) if (e.name !== '.' && e.name !== '..') seen.set(e.name, (seen.get(e.name) ?? 0) + 1);
    };
    count(first);
    const timed = new Map<number, number>();
    v.s.observeSync = (opcode, us) => {
      if (us >= 0) timed.set(opcode, (timed.get(opcode) ?? 0) + 1);
    };
    // "..", then everything else in replies of several sizes, each asked on both paths.
    let off = 1;
    // Each at least a record of the longest name (408 bytes): a reply with none would end the listing.
    const sizes = [4096, 700, 16384, 1000, 4096, 420];
    let asked = 0;
    for (let i = 0; ; i++) {
      const m = rdp(off, sizes[i % sizes.length]);
      const fast = v.sync(m);
      t.truthy(fast, `offset ${off}: answered on the fast path`);
      asked++;
      const slow = await v.call(m);
      t.deepEqual(fast, slow, `offset ${off}: the same reply`);
      count(fast!);
      count(slow);
      const recs = records(slow);
      if (!recs.length) break;
      off = recs[recs.length - 1].off;
    }
    t.deepEqual([...seen.keys()].sort(), [...names].sort(), 'every name listed');
    // Smaller than the next record: no record, on both paths alike.
    for (const size of [1, 100, 200]) {
      const m = rdp(1, size);
      const fast = v.sync(m);
      t.truthy(fast, `size ${size}: answered on the fast path`);
      t.deepEqual(fast, await v.call(m), `size ${size}: the same reply`);
      asked++;
    }
    // Each name's lookup count is the number of replies it went out in, on either path.
    for (const n of names) t.is(fuse.lookups.get(nodes.get(n)!), 1 + seen.get(n)!, `lookups of ${n}`);
    t.is(v.s.counts.get('readdirplus'), 2 * asked + 1, 'counted as READDIRPLUS requests: each asked on both paths, and the first');
    t.true((timed.get(OP.READDIRPLUS) ?? 0) >= 1, 'timed on the fast path');
    // A request larger than the fast path packs (max_write, else 128 KiB): the start of handle()'s reply.
    const big = v.sync(rdp(1, 1 << 20))!;
    const bigSlow = await v.call(rdp(1, 1 << 20));
    const cap = Math.min(maxWrite, 128 << 10);
    t.true(big.length <= 16 + cap && big.length > 16 + cap - 420, `${big.length} bytes for a cap of ${cap}`);
    t.true(bigSlow.length <= 16 + maxWrite);
    t.deepEqual(big.subarray(16), bigSlow.subarray(16, big.length), 'a prefix of the ordinary reply');
    if (maxWrite <= 128 << 10) t.deepEqual(big.subarray(16), bigSlow.subarray(16), 'max_write caps both alike');
    t.is(big.readUInt32LE(0), big.length);
    // Offset 0 again: a new listing, the ordinary path's even with a snapshot in place.
    t.is(v.sync(rdp(0, 4096)), null);
    await v.call(rdp(0, 4096));
    // While an operation holds the filesystem's lock (a change may be half done): not from memory.
    const pending = v.call(msg(OP.MKDIR, 1, Buffer.concat([mk, name('elsewhere')])));
    t.true((ext4 as unknown as { lock: { busy: boolean } }).lock.busy, 'the MKDIR holds the lock');
    t.is(v.sync(rdp(1, 4096)), null, 'not during an operation');
    t.is((await pending).readInt32LE(4), 0);
    t.truthy(v.sync(rdp(1, 4096)), 'again once it is done');
    // The directory changes: its snapshot's inodes may no longer be its entries; the ordinary path answers.
    await makeFile(v, 'late', Buffer.from('x'), dir);
    t.is(v.sync(rdp(1, 4096)), null, 'not from memory after a change');
    t.is((await v.call(rdp(1, 4096))).readInt32LE(4), 0);
    // A new listing takes a new snapshot; after it the fast path answers again.
    await v.call(rdp(0, 4096));
    t.truthy(v.sync(rdp(1, 4096)));
    // An unknown handle, or another directory's: the ordinary path's.
    t.is(v.sync(msg(OP.READDIRPLUS, dir, readIn(fh + 100, 1, 4096))), null);
    t.is(v.sync(msg(OP.READDIRPLUS, 1, readIn(fh, 1, 4096))), null);
  });
}
