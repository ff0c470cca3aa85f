/**
 * The dispatcher over a real Ext4Fs on a real image: INIT negotiation, a few operations, and
 * malformed requests answered with errors while the session keeps serving. Messages are built
 * by hand at fuse.h offsets (fuse_in_header 40 bytes, fuse_out_header 16 bytes).
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { constants } from 'node:os';
import { Ext4Fs } from '../src/ext4/fs';
import { Ext4FuseFs } from '../src/ext4/fuse-adapter';
import { FuseSession, Reply } from '../src/fuse/dispatcher';

const { EINVAL, ENOENT, ENOSYS, EIO } = constants.errno;

function msg(opcode: number, nodeid: number, body: Buffer, unique: bigint): Buffer {
  const h = Buffer.alloc(40);
  h.writeUInt32LE(40 + body.length, 0);
  h.writeUInt32LE(opcode, 4);
  h.writeBigUInt64LE(unique, 8);
  h.writeBigUInt64LE(BigInt(nodeid), 16);
  return Buffer.concat([h, body]);
}

function out(r: Reply): { len: number; error: number; unique: bigint; body: Buffer } {
  if (!r) throw new Error('no reply');
  const b = Array.isArray(r) ? Buffer.concat(r) : r;
  return { len: b.readUInt32LE(0), error: b.readInt32LE(4), unique: b.readBigUInt64LE(8), body: b.subarray(16) };
}

async function session(t: { teardown(fn: () => void | Promise<void>): void }): Promise<{ s: FuseSession; ext4: Ext4Fs; img: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kfs-session-'));
  const img = path.join(dir, 'img');
  execFileSync('mkfs.ext4', ['-q', '-F', img, '32M']);
  const ext4 = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  t.teardown(async () => {
    await ext4.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const s = new FuseSession(new Ext4FuseFs(ext4));
  // FUSE_INIT (26): fuse_init_in {major 7, minor 38, max_readahead, flags, flags2, unused[11]}
  const init = Buffer.alloc(64);
  init.writeUInt32LE(7, 0);
  init.writeUInt32LE(38, 4);
  init.writeUInt32LE(1 << 20, 8);
  init.writeUInt32LE(0xffffffff, 12);
  const r = out(await s.handle(msg(26, 0, init, 1n)));
  if (r.error !== 0) throw new Error(`INIT failed ${r.error}`);
  return { s, ext4, img };
}

test('INIT negotiates 7.38 with large writes', async (t) => {
  const { s } = await session(t);
  t.is(s.negotiated?.minor, 38);
  t.is(s.negotiated?.maxWrite, 1 << 20);
});

test('lookup of a missing name is ENOENT; mkdir then lookup finds it', async (t) => {
  const { s } = await session(t);
  const miss = out(await s.handle(msg(1, 1, Buffer.from('nope\0'), 2n)));
  t.is(miss.error, -ENOENT);
  t.is(miss.unique, 2n);
  // FUSE_MKDIR (9): fuse_mkdir_in {mode, umask} then name
  const mk = Buffer.alloc(8);
  mk.writeUInt32LE(0o755, 0);
  const made = out(await s.handle(msg(9, 1, Buffer.concat([mk, Buffer.from('dir\0')]), 3n)));
  t.is(made.error, 0);
  const nodeid = Number(made.body.readBigUInt64LE(0));
  const found = out(await s.handle(msg(1, 1, Buffer.from('dir\0'), 4n)));
  t.is(found.error, 0);
  t.is(Number(found.body.readBigUInt64LE(0)), nodeid);
  // fuse_entry_out.attr.mode at 40 + 60
  t.is(found.body.readUInt32LE(40 + 60) & 0o170777, 0o040755);
});

test('malformed requests get error replies and the session keeps serving', async (t) => {
  const { s } = await session(t);
  const cases: [string, Buffer][] = [
    ['lookup without NUL', msg(1, 1, Buffer.from('abc'), 10n)],
    ['mkdir body too short', msg(9, 1, Buffer.alloc(3), 11n)],
    ['len beyond buffer', (() => { const m = msg(1, 1, Buffer.from('x\0'), 12n); m.writeUInt32LE(4096, 0); return m; })()],
    ['write size mismatch', (() => {
      const w = Buffer.alloc(40);
      w.writeUInt32LE(100, 16); // size 100, but 4 bytes follow
      return msg(16, 1, Buffer.concat([w, Buffer.alloc(4)]), 13n);
    })()],
    ['unknown opcode', msg(999, 1, Buffer.alloc(8), 14n)],
    ['read on a never-opened handle', (() => { const r = Buffer.alloc(40); r.writeBigUInt64LE(77n, 0); r.writeUInt32LE(10, 16); return msg(15, 1, r, 15n); })()],
  ];
  for (const [what, m] of cases) {
    const r = out(await s.handle(m));
    t.true(r.error < 0, `${what}: expected an error reply, got ${r.error}`);
    t.true([-EINVAL, -ENOSYS, -EIO, -constants.errno.EBADF, -constants.errno.EPROTO].includes(r.error), `${what}: errno ${-r.error}`);
  }
  // A header too short to carry `unique` cannot be answered at all.
  t.is(await s.handle(Buffer.alloc(10)), null);
  // Still serving.
  const ok = out(await s.handle(msg(3, 1, Buffer.alloc(16), 20n)));
  t.is(ok.error, 0);
});

test('requests before INIT are refused', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kfs-session-'));
  const img = path.join(dir, 'img');
  execFileSync('mkfs.ext4', ['-q', '-F', img, '16M']);
  const ext4 = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  t.teardown(async () => {
    await ext4.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const s = new FuseSession(new Ext4FuseFs(ext4));
  const r = out(await s.handle(msg(3, 1, Buffer.alloc(16), 5n)));
  t.is(r.error, -EIO);
});

test('an unlinked inode the kernel still refers to stays until its last FORGET, then is freed', async (t) => {
  const { s, ext4 } = await session(t);
  const freeInodes = async () => (await ext4.statfs()).ffree;
  const before = await freeInodes();
  // FUSE_MKNOD (8): fuse_mknod_in {mode, rdev, umask, padding} then name: one lookup reference.
  const mk = Buffer.alloc(16);
  mk.writeUInt32LE(0o100644, 0);
  const made = out(await s.handle(msg(8, 1, Buffer.concat([mk, Buffer.from('f\0')]), 2n)));
  t.is(made.error, 0);
  const node = Number(made.body.readBigUInt64LE(0));
  // A second reference through LOOKUP.
  t.is(out(await s.handle(msg(1, 1, Buffer.from('f\0'), 3n))).error, 0);
  // FUSE_UNLINK (10): the name goes, the inode stays for the kernel.
  t.is(out(await s.handle(msg(10, 1, Buffer.from('f\0'), 4n))).error, 0);
  t.is(out(await s.handle(msg(1, 1, Buffer.from('f\0'), 5n))).error, -ENOENT);
  // FUSE_SETATTR (4) of the times, as the kernel's writeback of an evicted inode sends:
  // fuse_setattr_in {valid, padding, fh, size, lock_owner, atime, mtime, ctime, atimensec, ...}
  const sa = Buffer.alloc(88);
  sa.writeUInt32LE((1 << 4) | (1 << 5), 0); // FATTR_ATIME | FATTR_MTIME
  sa.writeBigUInt64LE(1_000_000n, 40);
  sa.writeBigUInt64LE(2_000_000n, 48);
  const set = out(await s.handle(msg(4, node, sa, 6n)));
  t.is(set.error, 0, 'SETATTR of the unlinked inode still works');
  t.is(set.body.readUInt32LE(16 + 64), 0, 'nlink 0'); // fuse_attr_out {attr_valid, nsec, dummy}, then fuse_attr.nlink at 64
  t.is(await freeInodes(), before - 1, 'not freed while referred to');
  // FUSE_FORGET (2) of one reference: still kept; of the last: freed (no reply to either).
  const forget = (n: number) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(n)); return b; };
  t.is(await s.handle(msg(2, node, forget(1), 7n)), null);
  t.is(await freeInodes(), before - 1);
  t.is(await s.handle(msg(2, node, forget(1), 8n)), null);
  await ext4.exclusive(async () => {}); // the release queued behind the operation lock
  t.is(await freeInodes(), before, 'freed at the last FORGET');
});

test('a close frees the unlinked inodes the kernel still referred to: no orphan list is left, e2fsck -fn is clean', async (t) => {
  const { s, ext4, img } = await session(t);
  const before = await ext4.statfs();
  const mk = Buffer.alloc(16);
  mk.writeUInt32LE(0o100644, 0);
  for (const name of ['a', 'b', 'c']) {
    const made = out(await s.handle(msg(8, 1, Buffer.concat([mk, Buffer.from(`${name}\0`)]), 10n)));
    t.is(made.error, 0);
    const node = Number(made.body.readBigUInt64LE(0));
    await ext4.write(node, 0, Buffer.alloc(20000, 7)); // blocks that must come back too
    t.is(out(await s.handle(msg(10, 1, Buffer.from(`${name}\0`), 11n))).error, 0);
  }
  t.not(ext4.vol.sb.s_last_orphan, 0, 'kept on the orphan list while referred to');
  // No FORGET: an unmount ends the kernel's references without one.
  await ext4.close();
  const last = execFileSync('dumpe2fs', ['-h', img], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  t.notRegex(last, /First orphan inode/, 'the orphan list is empty');
  const fsck = spawnSync('e2fsck', ['-fn', img], { encoding: 'utf8' });
  t.is(fsck.status, 0, fsck.stdout + fsck.stderr);
  const again = await Ext4Fs.open(img, { commitIntervalMs: 0, readOnly: true });
  const after = await again.statfs();
  await again.close();
  t.is(after.ffree, before.ffree, 'the inodes are free');
  t.is(after.bfree, before.bfree, 'their blocks are free');
});

test('READDIRPLUS in small buffers: every name once with its attributes, one lookup reference per entry sent and none for entries left out', async (t) => {
  const { s, ext4 } = await session(t);
  let unique = 100n;
  const call = async (op: number, node: number, body: Buffer) => out(await s.handle(msg(op, node, body, unique++)));
  const freeInodes = async () => (await ext4.statfs()).ffree;
  // Names of many lengths (the record size depends on it); MKNOD (8) each, then FORGET (2) of
  // that reference, so only READDIRPLUS's references remain.
  const names = Array.from({ length: 150 }, (_, i) => `${'n'.repeat(1 + (i * 7) % 40)}${i}`);
  const mk = Buffer.alloc(16);
  mk.writeUInt32LE(0o100644, 0);
  const forget = (n: number) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(n)); return b; };
  for (const n of names) {
    const r = await call(8, 1, Buffer.concat([mk, Buffer.from(`${n}\0`)]));
    t.is(r.error, 0);
    await s.handle(msg(2, Number(r.body.readBigUInt64LE(0)), forget(1), unique++));
  }
  const before = await freeInodes();
  // OPENDIR (27), then READDIRPLUS (44) with fuse_read_in {fh, offset, size} in buffers of odd
  // sizes, each far smaller than the directory.
  const fh = (await call(27, 1, Buffer.alloc(8))).body.readBigUInt64LE(0);
  const seen = new Map<string, number>();
  let offset = 0n;
  for (let i = 0; ; i++) {
    const size = [700, 4096, 333, 1500][i % 4];
    const rin = Buffer.alloc(40);
    rin.writeBigUInt64LE(fh, 0);
    rin.writeBigUInt64LE(offset, 8);
    rin.writeUInt32LE(size, 16);
    const r = await call(44, 1, rin);
    t.is(r.error, 0);
    t.true(r.body.length <= size, `reply of ${r.body.length} bytes within the ${size} asked`);
    if (r.body.length === 0) break;
    // fuse_direntplus: fuse_entry_out (128: nodeid, generation, valid times, fuse_attr at 40)
    // then fuse_dirent {ino, off, namelen, type, name} padded to 8.
    for (let p = 0; p < r.body.length;) {
      const nodeid = Number(r.body.readBigUInt64LE(p));
      const mode = r.body.readUInt32LE(p + 40 + 60);
      offset = r.body.readBigUInt64LE(p + 128 + 8);
      const namelen = r.body.readUInt32LE(p + 128 + 16);
      const name = r.body.subarray(p + 152, p + 152 + namelen).toString();
      p += (152 + namelen + 7) & ~7;
      if (name === '.' || name === '..' || name === 'lost+found') continue;
      t.false(seen.has(name), `${name} listed once`);
      seen.set(name, nodeid);
      t.is(mode, 0o100644, `${name}: its attributes`);
    }
  }
  t.deepEqual([...seen.keys()].sort(), [...names].sort());
  // UNLINK (10) every name: each inode stays while its one READDIRPLUS reference is held, and
  // goes at exactly one FORGET.
  for (const n of names) t.is((await call(10, 1, Buffer.from(`${n}\0`))).error, 0);
  await ext4.exclusive(async () => {});
  t.is(await freeInodes(), before, 'nothing freed while the references are held');
  for (const node of seen.values()) await s.handle(msg(2, node, forget(1), unique++));
  await ext4.exclusive(async () => {});
  t.is(await freeInodes(), before + names.length, 'each freed at its one FORGET');
});
