/**
 * FUSE request decoding against hand-built messages. Messages are laid out here with explicit
 * offsets taken from include/uapi/linux/fuse.h (not with the codecs under test), and opcodes are
 * the header's literal numbers.
 */
import test from 'ava';
import { constants } from 'node:os';
import { DecodeError, FuseRequest, FuseRequestOf, FuseOpKind, decodeRequest, decodeOptionsFor } from '../src/fuse/request';

const { EINVAL, EIO, ENAMETOOLONG, ERANGE, E2BIG } = constants.errno;

// ---------------------------------------------------------------- message builders

type Field = [offset: number, type: 'u16' | 'u32' | 'i32' | 'u64' | 'i64', value: number | bigint];

/** A struct of `size` bytes with the given fields at the given offsets; the rest zero. */
function st(size: number, fields: Field[]): Buffer {
  const b = Buffer.alloc(size);
  for (const [off, type, v] of fields) {
    switch (type) {
      case 'u16': b.writeUInt16LE(Number(v), off); break;
      case 'u32': b.writeUInt32LE(Number(v), off); break;
      case 'i32': b.writeInt32LE(Number(v), off); break;
      case 'u64': b.writeBigUInt64LE(BigInt(v), off); break;
      case 'i64': b.writeBigInt64LE(BigInt(v), off); break;
    }
  }
  return b;
}

/** A NUL-terminated string. */
const z = (s: string | Buffer): Buffer => Buffer.concat([Buffer.from(s), Buffer.from([0])]);

interface Hdr {
  unique?: bigint;
  nodeid?: bigint;
  uid?: number;
  gid?: number;
  pid?: number;
  extlen?: number;
  /** Override fuse_in_header.len. */
  len?: number;
}

/** fuse_in_header: len@0 opcode@4 unique@8 nodeid@16 uid@24 gid@28 pid@32 total_extlen@36 padding@38. */
function msg(opcode: number, body: Buffer | Buffer[] = [], h: Hdr = {}): Buffer {
  const b = Buffer.concat([Buffer.alloc(40), ...(Buffer.isBuffer(body) ? [body] : body)]);
  b.writeUInt32LE(h.len ?? b.length, 0);
  b.writeUInt32LE(opcode, 4);
  b.writeBigUInt64LE(h.unique ?? 0x1234n, 8);
  b.writeBigUInt64LE(h.nodeid ?? 7n, 16);
  b.writeUInt32LE(h.uid ?? 1000, 24);
  b.writeUInt32LE(h.gid ?? 100, 28);
  b.writeUInt32LE(h.pid ?? 4242, 32);
  b.writeUInt16LE(h.extlen ?? 0, 36);
  return b;
}

function ok<K extends FuseOpKind>(t: { fail(m: string): void; is(a: unknown, b: unknown): void }, r: FuseRequest | DecodeError, kind: K): FuseRequestOf<K> {
  if (r instanceof DecodeError) {
    t.fail(`expected ${kind}, got DecodeError: ${r.reason}`);
    throw new Error(r.reason);
  }
  t.is(r.kind, kind);
  return r as FuseRequestOf<K>;
}

function bad(r: FuseRequest | DecodeError): DecodeError {
  if (!(r instanceof DecodeError)) throw new Error(`expected a DecodeError, got ${r.kind}`);
  return r;
}

const str = (b: Buffer): string => b.toString();

// ---------------------------------------------------------------- header

test('header fields, including a resend unique (bit 63) and a large nodeid', (t) => {
  const r = ok(t, decodeRequest(msg(17, [], { unique: (1n << 63n) | 99n, nodeid: 2n ** 40n, uid: 0xfffffffe, gid: 5, pid: 77 })), 'statfs');
  t.deepEqual(r.header, { len: 40, opcode: 17, unique: (1n << 63n) | 99n, nodeid: 2 ** 40, uid: 0xfffffffe, gid: 5, pid: 77, total_extlen: 0 });
  t.is(r.extensions.length, 0);
});

test('len shorter than the buffer: bytes past len are ignored', (t) => {
  const m = Buffer.concat([msg(1, z('abc')), Buffer.from('trailing garbage without NUL')]);
  t.is(str(ok(t, decodeRequest(m), 'lookup').name), 'abc');
});

test('extensions: total_extlen * 8 bytes at the end are split from the body', (t) => {
  const ext = st(16, [[0, 'u32', 16], [4, 'u32', 32], [8, 'u32', 1], [12, 'u32', 55]]); // fuse_ext_header + fuse_supp_groups
  const create = st(16, [[0, 'u32', 0o101], [4, 'u32', 0o100644], [8, 'u32', 0o22], [12, 'u32', 1]]);
  const r = ok(t, decodeRequest(msg(35, [create, z('f'), ext], { extlen: 2 })), 'create');
  t.is(str(r.name), 'f');
  t.deepEqual(r.extensions, ext);
  t.is(r.header.total_extlen, 2);
});

// ---------------------------------------------------------------- every opcode

test('LOOKUP, UNLINK, RMDIR, REMOVEXATTR: a name', (t) => {
  t.is(str(ok(t, decodeRequest(msg(1, z('hello'))), 'lookup').name), 'hello');
  t.is(str(ok(t, decodeRequest(msg(1, z('..'))), 'lookup').name), '..'); // FUSE_EXPORT_SUPPORT looks up ".."
  t.is(str(ok(t, decodeRequest(msg(10, z('gone'))), 'unlink').name), 'gone');
  t.is(str(ok(t, decodeRequest(msg(11, z('dir'))), 'rmdir').name), 'dir');
  t.is(str(ok(t, decodeRequest(msg(24, z('user.x'))), 'removexattr').name), 'user.x');
});

test('LOOKUP name is a view into the message, not a copy', (t) => {
  const m = msg(1, z('view'));
  const r = ok(t, decodeRequest(m), 'lookup');
  t.is(r.name.buffer, m.buffer);
  t.is(r.name.byteOffset, m.byteOffset + 40);
});

test('FORGET and BATCH_FORGET', (t) => {
  t.is(ok(t, decodeRequest(msg(2, st(8, [[0, 'u64', 5]]))), 'forget').nlookup, 5);
  const body = [st(8, [[0, 'u32', 2]]), st(16, [[0, 'u64', 10], [8, 'u64', 1]]), st(16, [[0, 'u64', 11], [8, 'u64', 3]])];
  t.deepEqual(ok(t, decodeRequest(msg(42, body)), 'batch_forget').items, [{ nodeid: 10, nlookup: 1 }, { nodeid: 11, nlookup: 3 }]);
  t.deepEqual(ok(t, decodeRequest(msg(42, st(8, []))), 'batch_forget').items, []);
});

test('GETATTR: fuse_getattr_in from 7.9, empty before', (t) => {
  const r = ok(t, decodeRequest(msg(3, st(16, [[0, 'u32', 1], [8, 'u64', 0xabc]]))), 'getattr');
  t.is(r.getattr_flags, 1);
  t.is(r.fh, 0xabc);
  const old = ok(t, decodeRequest(msg(3), { minor: 8, setxattrExt: false }), 'getattr');
  t.is(old.getattr_flags, 0);
});

test('SETATTR: every field at its fuse_setattr_in offset, times signed', (t) => {
  const body = st(88, [
    [0, 'u32', 0xfff], [8, 'u64', 3], [16, 'u64', 4096], [24, 'u64', 0xdeadbeefcafef00dn],
    [32, 'i64', -5], [40, 'i64', 1700000000], [48, 'i64', 1700000001],
    [56, 'u32', 1], [60, 'u32', 2], [64, 'u32', 999999999], [68, 'u32', 0o4755],
    [76, 'u32', 1001], [80, 'u32', 1002],
  ]);
  const r = ok(t, decodeRequest(msg(4, body)), 'setattr');
  t.like(r, {
    valid: 0xfff, fh: 3, size: 4096, lock_owner: 0xdeadbeefcafef00dn, atime: -5, mtime: 1700000000, ctime: 1700000001,
    atimensec: 1, mtimensec: 2, ctimensec: 999999999, mode: 0o4755, uid: 1001, gid: 1002,
  });
});

test('READLINK, STATFS, DESTROY, SYNCFS: no body needed', (t) => {
  ok(t, decodeRequest(msg(5)), 'readlink');
  ok(t, decodeRequest(msg(17)), 'statfs');
  ok(t, decodeRequest(msg(38)), 'destroy');
  ok(t, decodeRequest(msg(50, st(8, []))), 'syncfs');
});

test('SYMLINK: entry name then target', (t) => {
  const r = ok(t, decodeRequest(msg(6, [z('link'), z('../some/target')])), 'symlink');
  t.is(str(r.name), 'link');
  t.is(str(r.target), '../some/target');
});

test('MKNOD: fuse_mknod_in, and the 8-byte compat form before 7.12', (t) => {
  const r = ok(t, decodeRequest(msg(8, [st(16, [[0, 'u32', 0o20644], [4, 'u32', 0x0801], [8, 'u32', 0o22]]), z('dev')])), 'mknod');
  t.like(r, { mode: 0o20644, rdev: 0x0801, umask: 0o22 });
  t.is(str(r.name), 'dev');
  const old = ok(t, decodeRequest(msg(8, [st(8, [[0, 'u32', 0o10600], [4, 'u32', 0]]), z('fifo')]), { minor: 11, setxattrExt: false }), 'mknod');
  t.like(old, { mode: 0o10600, umask: 0 });
  t.is(str(old.name), 'fifo');
});

test('MKDIR', (t) => {
  const r = ok(t, decodeRequest(msg(9, [st(8, [[0, 'u32', 0o755], [4, 'u32', 0o27]]), z('sub')])), 'mkdir');
  t.like(r, { mode: 0o755, umask: 0o27 });
  t.is(str(r.name), 'sub');
});

test('RENAME, RENAME2, LINK', (t) => {
  const r = ok(t, decodeRequest(msg(12, [st(8, [[0, 'u64', 99]]), z('old'), z('new')])), 'rename');
  t.like(r, { newdir: 99 });
  t.deepEqual([str(r.name), str(r.newname)], ['old', 'new']);
  const r2 = ok(t, decodeRequest(msg(45, [st(16, [[0, 'u64', 98], [8, 'u32', 2]]), z('a'), z('b')])), 'rename2');
  t.like(r2, { newdir: 98, flags: 2 });
  t.deepEqual([str(r2.name), str(r2.newname)], ['a', 'b']);
  const l = ok(t, decodeRequest(msg(13, [st(8, [[0, 'u64', 12]]), z('hard')])), 'link');
  t.is(l.oldnodeid, 12);
  t.is(str(l.name), 'hard');
});

test('OPEN and OPENDIR', (t) => {
  t.like(ok(t, decodeRequest(msg(14, st(8, [[0, 'u32', 0o100002], [4, 'u32', 1]]))), 'open'), { flags: 0o100002, open_flags: 1 });
  t.like(ok(t, decodeRequest(msg(27, st(8, [[0, 'u32', 0o200000]]))), 'opendir'), { flags: 0o200000, open_flags: 0 });
});

const readIn = st(40, [[0, 'u64', 5], [8, 'u64', 2 ** 40], [16, 'u32', 131072], [20, 'u32', 2], [24, 'u64', 77n], [32, 'u32', 0o2]]);

test('READ, READDIR, READDIRPLUS: fuse_read_in, and the 24-byte form before 7.9', (t) => {
  const want = { fh: 5, offset: 2 ** 40, size: 131072, read_flags: 2, lock_owner: 77n, flags: 2 };
  t.like(ok(t, decodeRequest(msg(15, readIn)), 'read'), want);
  t.like(ok(t, decodeRequest(msg(28, readIn)), 'readdir'), want);
  t.like(ok(t, decodeRequest(msg(44, readIn)), 'readdirplus'), want);
  const old = ok(t, decodeRequest(msg(15, readIn.subarray(0, 24)), { minor: 8, setxattrExt: false }), 'read');
  t.like(old, { fh: 5, size: 131072, lock_owner: 0n, flags: 0 });
});

test('WRITE: fuse_write_in then exactly size bytes, as a view', (t) => {
  const data = Buffer.from('0123456789');
  const m = msg(16, [st(40, [[0, 'u64', 9], [8, 'u64', 4096], [16, 'u32', 10], [20, 'u32', 1], [24, 'u64', 3n], [32, 'u32', 1]]), data]);
  const r = ok(t, decodeRequest(m), 'write');
  t.like(r, { fh: 9, offset: 4096, size: 10, write_flags: 1, lock_owner: 3n, flags: 1 });
  t.deepEqual(r.data, data);
  t.is(r.data.buffer, m.buffer);
  t.is(r.data.byteOffset, m.byteOffset + 80);
  const old = msg(16, [st(24, [[0, 'u64', 9], [8, 'u64', 0], [16, 'u32', 3]]), Buffer.from('abc')]);
  const ro = ok(t, decodeRequest(old, { minor: 8, setxattrExt: false }), 'write');
  t.is(str(ro.data), 'abc');
  const empty = ok(t, decodeRequest(msg(16, st(40, [[16, 'u32', 0]]))), 'write');
  t.is(empty.data.length, 0);
});

test('RELEASE, RELEASEDIR, FLUSH, FSYNC, FSYNCDIR', (t) => {
  const rel = st(24, [[0, 'u64', 4], [8, 'u32', 0o2], [12, 'u32', 1], [16, 'u64', 0xffffffffffffffffn]]);
  const want = { fh: 4, flags: 2, release_flags: 1, lock_owner: 0xffffffffffffffffn };
  t.like(ok(t, decodeRequest(msg(18, rel)), 'release'), want);
  t.like(ok(t, decodeRequest(msg(29, rel)), 'releasedir'), want);
  t.like(ok(t, decodeRequest(msg(25, st(24, [[0, 'u64', 6], [16, 'u64', 12345n]]))), 'flush'), { fh: 6, lock_owner: 12345n });
  t.like(ok(t, decodeRequest(msg(20, st(16, [[0, 'u64', 7], [8, 'u32', 1]]))), 'fsync'), { fh: 7, fsync_flags: 1 });
  t.like(ok(t, decodeRequest(msg(30, st(16, [[0, 'u64', 8]]))), 'fsyncdir'), { fh: 8, fsync_flags: 0 });
});

test('SETXATTR: 8-byte header by default, 16 with FUSE_SETXATTR_EXT', (t) => {
  const v = Buffer.from([1, 0, 2, 0xff]);
  const r = ok(t, decodeRequest(msg(21, [st(8, [[0, 'u32', 4], [4, 'u32', 1]]), z('user.k'), v])), 'setxattr');
  t.like(r, { size: 4, flags: 1, setxattr_flags: 0 });
  t.is(str(r.name), 'user.k');
  t.deepEqual(r.value, v);
  const ext = decodeOptionsFor(38, 1n << 29n);
  t.true(ext.setxattrExt);
  const re = ok(t, decodeRequest(msg(21, [st(16, [[0, 'u32', 4], [4, 'u32', 2], [8, 'u32', 1]]), z('system.posix_acl_access'), v]), ext), 'setxattr');
  t.like(re, { size: 4, flags: 2, setxattr_flags: 1 });
  t.is(str(re.name), 'system.posix_acl_access');
  t.deepEqual(re.value, v);
  // The same ext message read without the option does not parse: the option matters.
  t.is(bad(decodeRequest(msg(21, [st(16, [[0, 'u32', 0], [8, 'u32', 1]]), z('user.a')]))).errno, EINVAL);
});

test('GETXATTR, LISTXATTR', (t) => {
  const g = ok(t, decodeRequest(msg(22, [st(8, [[0, 'u32', 256]]), z('user.k')])), 'getxattr');
  t.is(g.size, 256);
  t.is(str(g.name), 'user.k');
  t.is(ok(t, decodeRequest(msg(23, st(8, [[0, 'u32', 0]]))), 'listxattr').size, 0);
});

test('INIT: 64-byte fuse_init_in with flags2 folded in under FUSE_INIT_EXT', (t) => {
  const flags = (1 << 30) | (1 << 0) | (1 << 13);
  const body = st(64, [[0, 'u32', 7], [4, 'u32', 44], [8, 'u32', 131072], [12, 'u32', flags], [16, 'u32', (1 << 7) | (1 << 1)]]);
  const r = ok(t, decodeRequest(msg(26, body)), 'init');
  t.like(r, { major: 7, minor: 44, max_readahead: 131072 });
  t.is(r.flags, BigInt(flags) | (1n << 39n) | (1n << 33n)); // FUSE_HAS_RESEND, FUSE_HAS_INODE_DAX
  // flags2 without FUSE_INIT_EXT is not flags.
  const noExt = ok(t, decodeRequest(msg(26, st(64, [[0, 'u32', 7], [4, 'u32', 38], [12, 'u32', 1], [16, 'u32', 0xff]]))), 'init');
  t.is(noExt.flags, 1n);
  // Before 7.36: 16 bytes. Before 7.6: 8 bytes.
  t.like(ok(t, decodeRequest(msg(26, st(16, [[0, 'u32', 7], [4, 'u32', 31], [8, 'u32', 4096], [12, 'u32', 3]]))), 'init'),
    { minor: 31, max_readahead: 4096, flags: 3n });
  t.like(ok(t, decodeRequest(msg(26, st(8, [[0, 'u32', 7], [4, 'u32', 5]]))), 'init'), { minor: 5, max_readahead: 0, flags: 0n });
  // A newer major still decodes its major and minor (the server answers with its own major).
  t.like(ok(t, decodeRequest(msg(26, st(8, [[0, 'u32', 8], [4, 'u32', 0]]))), 'init'), { major: 8 });
});

test('GETLK, SETLK, SETLKW: fuse_lk_in', (t) => {
  const body = st(48, [[0, 'u64', 3], [8, 'u64', 0x8000000000000001n], [16, 'u64', 10], [24, 'u64', 20], [32, 'u32', 1], [36, 'u32', 555], [40, 'u32', 1]]);
  for (const [op, kind] of [[31, 'getlk'], [32, 'setlk'], [33, 'setlkw']] as const) {
    const r = ok(t, decodeRequest(msg(op, body)), kind);
    t.deepEqual({ fh: r.fh, owner: r.owner, lk: r.lk, lk_flags: r.lk_flags },
      { fh: 3, owner: 0x8000000000000001n, lk: { start: 10, end: 20, type: 1, pid: 555 }, lk_flags: 1 });
  }
});

test('ACCESS, INTERRUPT, BMAP', (t) => {
  t.is(ok(t, decodeRequest(msg(34, st(8, [[0, 'u32', 7]]))), 'access').mask, 7);
  const i = ok(t, decodeRequest(msg(36, st(8, [[0, 'u64', 0x1234n]]), { unique: 0x1235n })), 'interrupt');
  t.is(i.unique, 0x1234n);
  t.is(i.header.unique, 0x1235n);
  t.like(ok(t, decodeRequest(msg(37, st(16, [[0, 'u64', 100], [8, 'u32', 4096]]))), 'bmap'), { block: 100, blocksize: 4096 });
});

test('CREATE and TMPFILE: fuse_create_in; TMPFILE carries the VFS name "/"', (t) => {
  const body = st(16, [[0, 'u32', 0o100101], [4, 'u32', 0o100600], [8, 'u32', 0o77], [12, 'u32', 1]]);
  const c = ok(t, decodeRequest(msg(35, [body, z('new.txt')])), 'create');
  t.like(c, { flags: 0o100101, mode: 0o100600, umask: 0o77, open_flags: 1 });
  t.is(str(c.name), 'new.txt');
  const tf = ok(t, decodeRequest(msg(51, [body, z('/')])), 'tmpfile');
  t.like(tf, { flags: 0o100101, mode: 0o100600 });
  t.is(str(tf.name), '/');
  const old = ok(t, decodeRequest(msg(35, [st(8, [[0, 'u32', 1], [4, 'u32', 0o644]]), z('o')]), { minor: 11, setxattrExt: false }), 'create');
  t.like(old, { flags: 1, mode: 0o644, umask: 0, open_flags: 0 });
  t.is(str(old.name), 'o');
});

test('IOCTL and POLL, minimally', (t) => {
  const io = ok(t, decodeRequest(msg(39, [st(32, [[0, 'u64', 2], [8, 'u32', 16], [12, 'u32', 0x80086601], [16, 'u64', 0x7fff0000n], [24, 'u32', 3], [28, 'u32', 8]]), Buffer.from('abc')])), 'ioctl');
  t.like(io, { fh: 2, flags: 16, cmd: 0x80086601, arg: 0x7fff0000n, in_size: 3, out_size: 8 });
  t.is(str(io.in_data), 'abc');
  t.like(ok(t, decodeRequest(msg(40, st(24, [[0, 'u64', 1], [8, 'u64', 9n], [16, 'u32', 1], [20, 'u32', 0x19]]))), 'poll'),
    { fh: 1, kh: 9n, flags: 1, events: 0x19 });
});

test('NOTIFY_REPLY: fuse_notify_retrieve_in then the data', (t) => {
  const r = ok(t, decodeRequest(msg(41, [st(40, [[8, 'u64', 8192], [16, 'u32', 2]]), Buffer.from('hi')])), 'notify_reply');
  t.like(r, { offset: 8192, size: 2 });
  t.is(str(r.data), 'hi');
});

test('FALLOCATE, LSEEK', (t) => {
  t.like(ok(t, decodeRequest(msg(43, st(32, [[0, 'u64', 1], [8, 'u64', 4096], [16, 'u64', 1 << 20], [24, 'u32', 3]]))), 'fallocate'),
    { fh: 1, offset: 4096, length: 1 << 20, mode: 3 });
  t.like(ok(t, decodeRequest(msg(46, st(24, [[0, 'u64', 1], [8, 'u64', 777], [16, 'u32', 3]]))), 'lseek'), { fh: 1, offset: 777, whence: 3 });
});

test('COPY_FILE_RANGE and COPY_FILE_RANGE_64', (t) => {
  const body = st(56, [[0, 'u64', 1], [8, 'u64', 10], [16, 'u64', 33], [24, 'u64', 2], [32, 'u64', 20], [40, 'u64', 2 ** 33], [48, 'u64', 0]]);
  const want = { fh_in: 1, off_in: 10, nodeid_out: 33, fh_out: 2, off_out: 20, len: 2 ** 33, flags: 0 };
  t.like(ok(t, decodeRequest(msg(47, body)), 'copy_file_range'), want);
  t.like(ok(t, decodeRequest(msg(53, body)), 'copy_file_range_64'), want);
});

test('SETUPMAPPING and REMOVEMAPPING (entries right after the 4-byte count)', (t) => {
  const s = ok(t, decodeRequest(msg(48, st(40, [[0, 'u64', 4], [8, 'u64', 2 << 20], [16, 'u64', 2 << 20], [24, 'u64', 3], [32, 'u64', 6 << 20]]))), 'setupmapping');
  t.like(s, { fh: 4, foffset: 2 << 20, len: 2 << 20, flags: 3, moffset: 6 << 20 });
  const rm = Buffer.concat([st(4, [[0, 'u32', 2]]), st(16, [[0, 'u64', 0], [8, 'u64', 2 << 20]]), st(16, [[0, 'u64', 4 << 20], [8, 'u64', 2 << 20]])]);
  t.deepEqual(ok(t, decodeRequest(msg(49, rm)), 'removemapping').items, [{ moffset: 0, len: 2 << 20 }, { moffset: 4 << 20, len: 2 << 20 }]);
});

test('STATX (7.39): fuse_statx_in', (t) => {
  t.like(ok(t, decodeRequest(msg(52, st(24, [[0, 'u32', 1], [8, 'u64', 6], [16, 'u32', 0x100], [20, 'u32', 0x7ff]]))), 'statx'),
    { getattr_flags: 1, fh: 6, sx_flags: 0x100, sx_mask: 0x7ff });
});

test('unknown opcodes (and CUSE_INIT) decode as unknown', (t) => {
  const u = ok(t, decodeRequest(msg(999, Buffer.from('xyz'))), 'unknown');
  t.is(u.opcode, 999);
  t.is(str(u.body), 'xyz');
  t.is(ok(t, decodeRequest(msg(4096)), 'unknown').opcode, 4096);
  t.is(ok(t, decodeRequest(msg(7)), 'unknown').opcode, 7); // the hole in enum fuse_opcode
});

// ---------------------------------------------------------------- malformed input

test('short header: unique recovered when 16+ bytes are there, else no reply', (t) => {
  const full = msg(1, z('x'), { unique: 0x55n });
  for (const n of [0, 1, 15]) {
    const e = bad(decodeRequest(full.subarray(0, n)));
    t.true(e.noReply, `${n} bytes`);
    t.is(e.errno, EIO);
  }
  for (const n of [16, 39]) {
    const e = bad(decodeRequest(full.subarray(0, n)));
    t.false(e.noReply, `${n} bytes`);
    t.is(e.unique, 0x55n);
    t.is(e.opcode, 1);
  }
  t.true(bad(decodeRequest(msg(2, st(8, [])).subarray(0, 20))).noReply, 'FORGET is never answered');
});

test('len larger than the buffer, len smaller than the header, extensions past the end', (t) => {
  const big = bad(decodeRequest(msg(1, z('x'), { len: 1000 })));
  t.is(big.errno, EIO);
  t.is(big.unique, 0x1234n);
  t.truthy(big.header);
  t.is(bad(decodeRequest(msg(1, z('x'), { len: 39 }))).errno, EIO);
  t.is(bad(decodeRequest(msg(1, z('x'), { len: 0 }))).errno, EIO);
  t.regex(bad(decodeRequest(msg(1, z('x'), { extlen: 1 }))).reason, /total_extlen/);
});

test('names: missing NUL, too long, empty, with "/", "." and ".." outside LOOKUP', (t) => {
  t.is(bad(decodeRequest(msg(1, Buffer.from('abc')))).errno, EINVAL);
  t.is(bad(decodeRequest(msg(6, [z('l'), Buffer.from('target')]))).errno, EINVAL);
  t.is(bad(decodeRequest(msg(12, [st(8, []), z('old'), Buffer.from('new')]))).errno, EINVAL);
  t.is(bad(decodeRequest(msg(45, [st(16, []), z('old')]))).errno, EINVAL);
  t.is(str(ok(t, decodeRequest(msg(1, z('n'.repeat(255)))), 'lookup').name).length, 255);
  t.is(bad(decodeRequest(msg(1, z('n'.repeat(256))))).errno, ENAMETOOLONG);
  t.is(bad(decodeRequest(msg(9, [st(8, []), z('n'.repeat(300))]))).errno, ENAMETOOLONG);
  t.is(bad(decodeRequest(msg(1, z('')))).errno, EINVAL);
  t.is(bad(decodeRequest(msg(35, [st(16, []), z('a/b')]))).errno, EINVAL);
  t.is(bad(decodeRequest(msg(9, [st(8, []), z('.')]))).errno, EINVAL);
  t.is(bad(decodeRequest(msg(10, z('..')))).errno, EINVAL);
  t.is(bad(decodeRequest(msg(6, [z('l'), z('t'.repeat(4096))]))).errno, ENAMETOOLONG);
  t.is(bad(decodeRequest(msg(22, [st(8, []), z('')]))).errno, ERANGE);
  t.is(bad(decodeRequest(msg(22, [st(8, []), z('u'.repeat(256))]))).errno, ERANGE);
});

test('truncated bodies: one byte short of each fixed struct is EINVAL', (t) => {
  const sizes: [number, number][] = [
    [2, 8], [42, 8], [3, 16], [4, 88], [8, 16], [9, 8], [12, 8], [45, 16], [13, 8], [14, 8], [15, 40], [16, 40],
    [18, 24], [20, 16], [21, 8], [22, 8], [23, 8], [25, 24], [26, 8], [27, 8], [28, 40], [29, 24], [30, 16],
    [31, 48], [32, 48], [33, 48], [34, 8], [35, 16], [36, 8], [37, 16], [39, 32], [40, 24], [41, 40], [43, 32],
    [44, 40], [46, 24], [47, 56], [48, 40], [49, 4], [51, 16], [52, 24], [53, 56],
  ];
  for (const [op, size] of sizes) {
    const e = decodeRequest(msg(op, Buffer.alloc(size - 1, 0x41)));
    t.true(e instanceof DecodeError, `opcode ${op}`);
    if (e instanceof DecodeError) {
      t.is(e.errno, EINVAL, `opcode ${op}: ${e.reason}`);
      t.is(e.noReply, op === 2 || op === 42 || op === 41, `opcode ${op}`);
    }
  }
});

test('BATCH_FORGET / REMOVEMAPPING counts are bounded by the message', (t) => {
  const bf = bad(decodeRequest(msg(42, [st(8, [[0, 'u32', 0xffffffff]]), st(16, [[0, 'u64', 1], [8, 'u64', 1]])])));
  t.is(bf.errno, EINVAL);
  t.true(bf.noReply);
  t.is(bad(decodeRequest(msg(42, [st(8, [[0, 'u32', 2]]), st(16, [])]))).errno, EINVAL);
  t.is(bad(decodeRequest(msg(49, [st(4, [[0, 'u32', 0x10000000]]), st(16, [])]))).errno, EINVAL);
  t.is(bad(decodeRequest(msg(49, [st(4, [[0, 'u32', 1]]), st(15, [])]))).errno, EINVAL);
});

test('WRITE / SETXATTR / NOTIFY_REPLY: payload length must equal the declared size', (t) => {
  const w = (size: number, data: number) => msg(16, [st(40, [[16, 'u32', size]]), Buffer.alloc(data)]);
  t.is(bad(decodeRequest(w(10, 9))).errno, EINVAL);
  t.is(bad(decodeRequest(w(10, 11))).errno, EINVAL);
  t.is(bad(decodeRequest(w(0xffffffff, 4))).errno, EINVAL);
  t.is(ok(t, decodeRequest(w(4096, 4096)), 'write').data.length, 4096);
  t.is(bad(decodeRequest(msg(21, [st(8, [[0, 'u32', 5]]), z('user.a'), Buffer.alloc(4)]))).errno, EINVAL);
  t.is(bad(decodeRequest(msg(21, [st(8, [[0, 'u32', 70000]]), z('user.a'), Buffer.alloc(70000)]))).errno, E2BIG);
  t.is(bad(decodeRequest(msg(41, [st(40, [[16, 'u32', 5]]), Buffer.alloc(1)]))).errno, EINVAL);
});

test('a DecodeError names the opcode and keeps the header', (t) => {
  const e = bad(decodeRequest(msg(4, Buffer.alloc(10), { unique: 77n })));
  t.regex(e.reason, /^SETATTR: truncated body/);
  t.is(e.unique, 77n);
  t.is(e.header?.opcode, 4);
  t.false(e.noReply);
});

// ---------------------------------------------------------------- fuzz

/** xorshift32: deterministic, so a failure names a reproducible seed. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s;
  };
}

test('fuzz: 20,000 random and mutated messages never throw', (t) => {
  const seeds: Buffer[] = [
    msg(1, z('name')), msg(4, st(88, [[0, 'u32', 0xffff]])), msg(6, [z('a'), z('b')]), msg(12, [st(8, []), z('a'), z('b')]),
    msg(16, [st(40, [[16, 'u32', 8]]), Buffer.alloc(8)]), msg(21, [st(8, [[0, 'u32', 2]]), z('user.x'), Buffer.alloc(2)]),
    msg(26, st(64, [[0, 'u32', 7], [4, 'u32', 44], [12, 'u32', 1 << 30], [16, 'u32', 0xffffffff]])),
    msg(42, [st(8, [[0, 'u32', 1]]), st(16, [])]), msg(49, [st(4, [[0, 'u32', 1]]), st(16, [])]), msg(35, [st(16, []), z('f')]),
    msg(39, [st(32, [[24, 'u32', 4]]), Buffer.alloc(4)]), msg(41, [st(40, [[16, 'u32', 1]]), Buffer.alloc(1)]),
  ];
  const next = rng(0xc0ffee);
  let errors = 0;
  let requests = 0;
  for (let i = 0; i < 20000; i++) {
    let m: Buffer;
    if (i % 4 === 0) {
      // Pure noise, with a plausible header length most of the time.
      m = Buffer.alloc(next() % 200);
      for (let j = 0; j < m.length; j++) m[j] = next() & 0xff;
      if (m.length >= 8 && next() % 2) m.writeUInt32LE(m.length, 0);
      if (m.length >= 8 && next() % 2) m.writeUInt32LE(next() % 56, 4);
    } else {
      m = Buffer.from(seeds[next() % seeds.length]);
      const mutations = 1 + (next() % 4);
      for (let k = 0; k < mutations; k++) {
        const what = next() % 6;
        if (what === 0 && m.length > 0) m[next() % m.length] = next() & 0xff;
        else if (what === 1) m = m.subarray(0, next() % (m.length + 1));
        else if (what === 2 && m.length >= 8) m.writeUInt32LE(next() % 56, 4); // another opcode, same body
        else if (what === 3 && m.length >= 4) m.writeUInt32LE(next() % (m.length + 64), 0);
        else if (what === 4 && m.length >= 38) m.writeUInt16LE(next() % 8, 36);
        else if (what === 5 && m.length > 40) m.fill(0, 40 + (next() % (m.length - 40)));
      }
    }
    let r: FuseRequest | DecodeError;
    try {
      r = decodeRequest(m, { minor: 8 + (next() % 40), setxattrExt: next() % 2 === 0 });
    } catch (e) {
      t.fail(`iteration ${i} threw on ${m.toString('hex')}: ${String(e)}`);
      return;
    }
    if (r instanceof DecodeError) {
      errors++;
      if (!(r.errno > 0 && r.errno < 512) || r.reason.length === 0) t.fail(`iteration ${i}: bad DecodeError ${JSON.stringify(r.reason)}`);
      if (r.reason.includes('decoder failure')) t.fail(`iteration ${i}: ${r.reason}`);
    } else {
      requests++;
      if (typeof r.kind !== 'string' || r.header.len > m.length || r.header.len < 40) t.fail(`iteration ${i}: inconsistent request`);
    }
  }
  t.is(errors + requests, 20000);
  t.true(errors > 1000 && requests > 1000, `errors ${errors}, requests ${requests}`);
});
