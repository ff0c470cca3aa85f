/**
 * FUSE reply and notification encoding: exact byte layouts checked field by field at the
 * offsets of include/uapi/linux/fuse.h (fuse_out_header is 16 bytes, so a body field at offset
 * N in its struct is at 16 + N in the reply).
 */
import test from 'ava';
import { constants } from 'node:os';
import {
  DirentPacker, concatReply, direntType, notifyDelete, notifyInvalEntry, notifyInvalInode, notifyResend,
  replyAttr, replyBmap, replyCopyFileRange64, replyCreate, replyData, replyEmpty, replyEntry, replyError, replyInit,
  replyLseek, replyOpen, replyStatfs, replyWrite, replyXattrSize,
} from '../src/fuse/reply';
import { EntryOut, FuseAttr } from '../src/fuse/structs';
import { FsError } from '../src/util/errors';

const { ENOENT, EIO, ENOSYS } = constants.errno;

const u32 = (b: Buffer, off: number): number => b.readUInt32LE(off);
const i32 = (b: Buffer, off: number): number => b.readInt32LE(off);
const u16 = (b: Buffer, off: number): number => b.readUInt16LE(off);
const u64 = (b: Buffer, off: number): bigint => b.readBigUInt64LE(off);
const i64 = (b: Buffer, off: number): bigint => b.readBigInt64LE(off);

/** fuse_out_header: len@0 error@4 unique@8. */
function header(b: Buffer): { len: number; error: number; unique: bigint } {
  return { len: u32(b, 0), error: i32(b, 4), unique: u64(b, 8) };
}

const attr: FuseAttr = {
  ino: 12, size: 0x123456789, blocks: 16, atime: { sec: -86400, nsec: 1 }, mtime: { sec: 1700000000, nsec: 2 },
  ctime: { sec: 1700000001, nsec: 999999999 }, mode: 0o100644, nlink: 3, uid: 1000, gid: 1001, rdev: 0x0801,
  blksize: 4096, flags: 2,
};

/** struct fuse_attr at `o`: ino@0 size@8 blocks@16 atime@24 mtime@32 ctime@40 atimensec@48 mtimensec@52 ctimensec@56 mode@60 nlink@64 uid@68 gid@72 rdev@76 blksize@80 flags@84. */
function checkAttr(t: { is(a: unknown, b: unknown, m?: string): void }, b: Buffer, o: number, full = true): void {
  t.is(u64(b, o + 0), 12n, 'ino');
  t.is(u64(b, o + 8), 0x123456789n, 'size');
  t.is(u64(b, o + 16), 16n, 'blocks');
  t.is(i64(b, o + 24), -86400n, 'atime (signed)');
  t.is(u64(b, o + 32), 1700000000n, 'mtime');
  t.is(u64(b, o + 40), 1700000001n, 'ctime');
  t.is(u32(b, o + 48), 1, 'atimensec');
  t.is(u32(b, o + 52), 2, 'mtimensec');
  t.is(u32(b, o + 56), 999999999, 'ctimensec');
  t.is(u32(b, o + 60), 0o100644, 'mode');
  t.is(u32(b, o + 64), 3, 'nlink');
  t.is(u32(b, o + 68), 1000, 'uid');
  t.is(u32(b, o + 72), 1001, 'gid');
  t.is(u32(b, o + 76), 0x0801, 'rdev');
  if (!full) return;
  t.is(u32(b, o + 80), 4096, 'blksize');
  t.is(u32(b, o + 84), 2, 'flags');
}

const entry: EntryOut = { nodeid: 12, generation: 7, entry_valid: 1, attr_valid: 2, entry_valid_nsec: 500, attr_valid_nsec: 600, attr };

/** struct fuse_entry_out at `o`: nodeid@0 generation@8 entry_valid@16 attr_valid@24 entry_valid_nsec@32 attr_valid_nsec@36 attr@40. */
function checkEntry(t: { is(a: unknown, b: unknown, m?: string): void }, b: Buffer, o: number, full = true): void {
  t.is(u64(b, o), 12n);
  t.is(u64(b, o + 8), 7n);
  t.is(u64(b, o + 16), 1n);
  t.is(u64(b, o + 24), 2n);
  t.is(u32(b, o + 32), 500);
  t.is(u32(b, o + 36), 600);
  checkAttr(t, b, o + 40, full);
}

test('replyError: negative errno, len 16; unrepresentable errnos become EIO', (t) => {
  const b = replyError(0xfeedn, ENOENT);
  t.is(b.length, 16);
  t.deepEqual(header(b), { len: 16, error: -ENOENT, unique: 0xfeedn });
  t.is(header(replyError(1n, ENOSYS)).error, -ENOSYS);
  for (const e of [0, -2, 512, 100000, 1.5, NaN]) t.is(header(replyError(1n, e)).error, -EIO, `errno ${e}`);
  // A resent request's unique (bit 63) is echoed as is.
  t.is(header(replyError((1n << 63n) | 5n, ENOENT)).unique, (1n << 63n) | 5n);
});

test('replyEmpty', (t) => {
  t.deepEqual(header(replyEmpty(9n)), { len: 16, error: 0, unique: 9n });
  t.is(replyEmpty(9n).length, 16);
});

test('replyEntry: fuse_entry_out is 128 bytes (fuse_attr 88 at offset 40); 120 for minor < 9', (t) => {
  const b = replyEntry(3n, entry);
  t.is(b.length, 16 + 128);
  t.deepEqual(header(b), { len: 144, error: 0, unique: 3n });
  checkEntry(t, b, 16);
  const old = replyEntry(3n, entry, 8);
  t.is(old.length, 16 + 120);
  t.is(header(old).len, 136);
  checkEntry(t, old, 16, false);
});

test('replyAttr: fuse_attr_out is 104 bytes (attr_valid@0 attr_valid_nsec@8 dummy@12 attr@16); 96 for minor < 9', (t) => {
  const b = replyAttr(4n, { attr_valid: 5, attr_valid_nsec: 6, attr });
  t.is(b.length, 16 + 104);
  t.is(header(b).len, 120);
  t.is(u64(b, 16), 5n);
  t.is(u32(b, 24), 6);
  t.is(u32(b, 28), 0);
  checkAttr(t, b, 32);
  t.is(replyAttr(4n, { attr_valid: 5, attr }, 8).length, 16 + 96);
});

test('replyOpen and replyCreate: fuse_open_out (fh@0 open_flags@4... backing_id@12) after entry_out', (t) => {
  const o = replyOpen(5n, 0x1_0000_0001, 0b11);
  t.is(o.length, 32);
  t.is(header(o).len, 32);
  t.is(u64(o, 16), 0x1_0000_0001n);
  t.is(u32(o, 24), 3);
  t.is(i32(o, 28), 0);
  const c = replyCreate(6n, entry, { fh: 44, open_flags: 1 });
  t.is(c.length, 16 + 128 + 16);
  t.is(header(c).len, 160);
  checkEntry(t, c, 16);
  t.is(u64(c, 144), 44n);
  t.is(u32(c, 152), 1);
});

test('replyWrite, replyXattrSize, replyLseek, replyBmap, replyCopyFileRange64', (t) => {
  const w = replyWrite(1n, 65536);
  t.is(w.length, 24);
  t.is(u32(w, 16), 65536);
  t.is(u32(w, 20), 0);
  t.throws(() => replyWrite(1n, 2 ** 32), { instanceOf: RangeError });
  const x = replyXattrSize(1n, 123);
  t.is(x.length, 24);
  t.is(u32(x, 16), 123);
  const l = replyLseek(1n, 2 ** 40);
  t.is(l.length, 24);
  t.is(u64(l, 16), 2n ** 40n);
  t.is(u64(replyBmap(1n, 99), 16), 99n);
  const cf = replyCopyFileRange64(1n, 2 ** 33);
  t.is(cf.length, 24);
  t.is(u64(cf, 16), 2n ** 33n);
});

test('replyStatfs: fuse_kstatfs is 80 bytes (spare zeroed); 48 for minor < 4', (t) => {
  const s = { blocks: 1000, bfree: 500, bavail: 400, files: 256, ffree: 100, bsize: 4096, namelen: 255, frsize: 4096 };
  const b = replyStatfs(2n, s);
  t.is(b.length, 96);
  t.is(header(b).len, 96);
  t.deepEqual([u64(b, 16), u64(b, 24), u64(b, 32), u64(b, 40), u64(b, 48)], [1000n, 500n, 400n, 256n, 100n]);
  t.deepEqual([u32(b, 56), u32(b, 60), u32(b, 64)], [4096, 255, 4096]);
  t.true(b.subarray(68, 96).equals(Buffer.alloc(28)));
  t.is(replyStatfs(2n, s, 3).length, 16 + 48);
});

test('replyInit: 64-byte fuse_init_out at minor 38, flags2 from the high bits with FUSE_INIT_EXT set', (t) => {
  const out = {
    major: 7, minor: 38, max_readahead: 131072, flags: (1n << 0n) | (1n << 22n) | (1n << 39n) | (1n << 33n),
    max_background: 64, congestion_threshold: 48, max_write: 1 << 20, time_gran: 1, max_pages: 256, map_alignment: 12,
  };
  const b = replyInit(8n, out);
  t.is(b.length, 16 + 64);
  t.deepEqual(header(b), { len: 80, error: 0, unique: 8n });
  t.is(u32(b, 16), 7, 'major');
  t.is(u32(b, 20), 38, 'minor');
  t.is(u32(b, 24), 131072, 'max_readahead');
  t.is(u32(b, 28), (1 << 0) | (1 << 22) | (1 << 30), 'flags, with FUSE_INIT_EXT added');
  t.is(u16(b, 32), 64, 'max_background');
  t.is(u16(b, 34), 48, 'congestion_threshold');
  t.is(u32(b, 36), 1 << 20, 'max_write');
  t.is(u32(b, 40), 1, 'time_gran');
  t.is(u16(b, 44), 256, 'max_pages');
  t.is(u16(b, 46), 12, 'map_alignment');
  t.is(u32(b, 48), (1 << 7) | (1 << 1), 'flags2: FUSE_HAS_RESEND, FUSE_HAS_INODE_DAX');
  t.true(b.subarray(52, 80).equals(Buffer.alloc(28)), 'max_stack_depth, request_timeout, unused all zero');
  const later = replyInit(8n, { ...out, minor: 43, max_stack_depth: 2, request_timeout: 30 });
  t.is(u32(later, 52), 2);
  t.is(u16(later, 56), 30);
  // No high bits: FUSE_INIT_EXT is not forced.
  t.is(u32(replyInit(8n, { ...out, flags: 1n }), 28), 1);
});

test('replyInit: FUSE_COMPAT_22_INIT_OUT_SIZE (24) before 7.23, FUSE_COMPAT_INIT_OUT_SIZE (8) before 7.5', (t) => {
  const out = { major: 7, minor: 22, max_readahead: 4096, flags: 1n, max_background: 1, congestion_threshold: 2, max_write: 4096, time_gran: 1, max_pages: 0, map_alignment: 0 };
  const b = replyInit(1n, out);
  t.is(b.length, 16 + 24);
  t.is(header(b).len, 40);
  t.is(u32(b, 36), 4096);
  const c = replyInit(1n, { ...out, minor: 4 });
  t.is(c.length, 16 + 8);
  t.is(u32(c, 20), 4);
});

test('replyData: an iovec of header plus the payload buffers themselves', (t) => {
  const p = Buffer.from('file contents');
  const iov = replyData(10n, p);
  t.is(iov.length, 2);
  t.is(iov[1], p, 'no copy');
  t.deepEqual(header(iov[0]), { len: 16 + p.length, error: 0, unique: 10n });
  const parts = [Buffer.from('ab'), Buffer.alloc(0), Buffer.from('cde')];
  const iov2 = replyData(11n, parts);
  t.is(header(iov2[0]).len, 21);
  t.is(concatReply(iov2).toString('latin1', 16), 'abcde');
  const empty = replyData(12n, []);
  t.is(empty.length, 1);
  t.is(header(empty[0]).len, 16);
});

test('DirentPacker: fuse_dirent records (ino@0 off@8 namelen@16 type@20 name@24), padded to 8 with zeros', (t) => {
  const p = new DirentPacker(4096, false);
  t.true(p.add({ ino: 2, off: 1, type: direntType(0o40755), name: Buffer.from('.') }));
  t.true(p.add({ ino: 13, off: 2, type: direntType(0o100644), name: Buffer.from('hello.txt') }));
  const b = p.finish();
  t.is(p.count, 2);
  t.is(b.length, 32 + 40); // 24+1 -> 32, 24+9 -> 40
  t.deepEqual([u64(b, 0), u64(b, 8), u32(b, 16), u32(b, 20)], [2n, 1n, 1, 4]);
  t.is(b.toString('latin1', 24, 25), '.');
  t.true(b.subarray(25, 32).equals(Buffer.alloc(7)));
  t.deepEqual([u64(b, 32), u64(b, 40), u32(b, 48), u32(b, 52)], [13n, 2n, 9, 8]);
  t.is(b.toString('latin1', 56, 65), 'hello.txt');
  t.true(b.subarray(65, 72).equals(Buffer.alloc(7)));
  // An 8-byte-aligned name gets no padding.
  const q = new DirentPacker(4096, false);
  q.add({ ino: 1, off: 1, type: 8, name: Buffer.from('12345678') });
  t.is(q.size, 32);
});

test('DirentPacker: stops at the limit without writing a partial record; an exact fit is taken', (t) => {
  const p = new DirentPacker(64, false);
  t.true(p.add({ ino: 1, off: 1, type: 8, name: Buffer.from('a') })); // 32
  t.false(p.add({ ino: 2, off: 2, type: 8, name: Buffer.from('abcdefghi') })); // 40: 72 > 64
  t.is(p.size, 32);
  t.true(p.add({ ino: 3, off: 3, type: 8, name: Buffer.from('b') })); // 32: exactly 64
  t.is(p.size, 64);
  t.false(p.add({ ino: 4, off: 4, type: 8, name: Buffer.from('c') }));
  t.is(p.count, 2);
  t.false(new DirentPacker(0, false).add({ ino: 1, off: 1, type: 8, name: Buffer.from('a') }));
});

test('DirentPacker plus: fuse_direntplus (entry_out 128, then the dirent at 128, name at 152)', (t) => {
  const p = new DirentPacker(4096, true);
  t.true(p.addPlus(entry, { ino: 12, off: 5, type: 8, name: Buffer.from('file') }));
  const b = p.finish();
  t.is(b.length, 160); // 152 + 4 -> 160
  checkEntry(t, b, 0);
  t.deepEqual([u64(b, 128), u64(b, 136), u32(b, 144), u32(b, 148)], [12n, 5n, 4, 8]);
  t.is(b.toString('latin1', 152, 156), 'file');
  t.true(b.subarray(156, 160).equals(Buffer.alloc(4)));
  t.throws(() => p.add({ ino: 1, off: 1, type: 8, name: Buffer.from('x') }), { instanceOf: RangeError });
  t.throws(() => new DirentPacker(100, false).addPlus(entry, { ino: 1, off: 1, type: 8, name: Buffer.from('x') }), { instanceOf: RangeError });
});

test('DirentPacker: grows past its first allocation, never beyond the limit; a huge limit is not allocated', (t) => {
  const p = new DirentPacker(2 ** 31, false);
  const names: string[] = [];
  for (let i = 0; p.size < 20000; i++) {
    const name = `entry-${i}-${'x'.repeat(i % 40)}`;
    names.push(name);
    t.true(p.add({ ino: 100 + i, off: i + 1, type: 8, name: Buffer.from(name) }));
  }
  const b = p.finish();
  let o = 0;
  for (let i = 0; i < names.length; i++) {
    const n = u32(b, o + 16);
    t.is(u64(b, o), BigInt(100 + i));
    t.is(b.toString('latin1', o + 24, o + 24 + n), names[i]);
    o += (24 + n + 7) & ~7;
  }
  t.is(o, b.length);
});

test('DirentPacker: names the kernel would refuse (empty, "/", NUL, > 1024) are FsError EIO', (t) => {
  const p = new DirentPacker(8192, false);
  for (const name of [Buffer.alloc(0), Buffer.from('a/b'), Buffer.from([0x61, 0]), Buffer.alloc(1025, 0x61)]) {
    const e = t.throws(() => p.add({ ino: 1, off: 1, type: 8, name }), { instanceOf: FsError });
    t.is(e?.errno, EIO);
  }
  t.is(p.size, 0);
});

test('direntType: DT_* from the mode', (t) => {
  t.is(direntType(0o100644), 8); // DT_REG
  t.is(direntType(0o40755), 4); // DT_DIR
  t.is(direntType(0o120777), 10); // DT_LNK
  t.is(direntType(0o20600), 2); // DT_CHR
  t.is(direntType(0o10600), 1); // DT_FIFO
  t.is(direntType(0o140755), 12); // DT_SOCK
});

test('notifyInvalInode: code 2, fuse_notify_inval_inode_out {ino@0, off@8 (i64), len@16 (i64)}', (t) => {
  const b = notifyInvalInode(12, -1, 0);
  t.is(b.length, 40);
  t.deepEqual(header(b), { len: 40, error: 2, unique: 0n });
  t.is(u64(b, 16), 12n);
  t.is(i64(b, 24), -1n);
  t.is(i64(b, 32), 0n);
  t.is(i64(notifyInvalInode(12, 4096, -1), 32), -1n);
});

test('notifyInvalEntry: code 3, {parent@0, namelen@8, flags@12}, name, NUL: exactly 16 + namelen + 1', (t) => {
  const b = notifyInvalEntry(1, Buffer.from('name'), 1);
  t.is(b.length, 16 + 16 + 5);
  t.deepEqual(header(b), { len: 37, error: 3, unique: 0n });
  t.is(u64(b, 16), 1n);
  t.is(u32(b, 24), 4);
  t.is(u32(b, 28), 1);
  t.is(b.toString('latin1', 32, 36), 'name');
  t.is(b[36], 0);
  t.throws(() => notifyInvalEntry(1, Buffer.alloc(1025, 0x61)), { instanceOf: RangeError });
});

test('notifyDelete: code 6, {parent@0, child@8, namelen@16, padding@20}, name, NUL', (t) => {
  const b = notifyDelete(2, 33, Buffer.from('xyz'));
  t.is(b.length, 16 + 24 + 4);
  t.deepEqual(header(b), { len: 44, error: 6, unique: 0n });
  t.deepEqual([u64(b, 16), u64(b, 24), u32(b, 32), u32(b, 36)], [2n, 33n, 3, 0]);
  t.is(b.toString('latin1', 40, 43), 'xyz');
  t.is(b[43], 0);
});

test('notifyResend: a bare header {len 16, error 7, unique 0}', (t) => {
  const b = notifyResend();
  t.is(b.length, 16);
  t.deepEqual(header(b), { len: 16, error: 7, unique: 0n });
});
