/**
 * xattr codec against real oracles: debugfs/libext2fs (ea_set, ea_list, ea_get), e2fsck, and
 * the Linux kernel's ext4 driver on a loop mount (setfattr/getfattr).
 */
import test, { ExecutionContext } from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  XattrEntry, encodeBlockXattrs, encodeInodeXattrs, parseBlockXattrs, parseInodeXattrs, splitXattrs,
  xattrEntryHash, xattrNameValid, xattrBlockChecksum,
} from '../src/ext4/xattr';
import { CorruptionError, FsError } from '../src/util/errors';
import { ext4Crc } from '../src/ext4/crc';
import { SuperblockLayout, RO_COMPAT, INCOMPAT } from '../src/ext4/superblock';
import { inodeChecksum, InodeLayout } from '../src/ext4/inode';

const tmp = mkdtempSync(join(tmpdir(), 'kfs-xattr-'));
test.before(() => {
  // getfattr/setfattr talk to the kernel for the mount tests; Debian ships them in attr.
  if (spawnSync('sh', ['-c', 'command -v getfattr && command -v setfattr']).status !== 0) {
    throw new Error('getfattr/setfattr missing: the set-up (npm run setup) installs the attr package');
  }
});
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));
let seq = 0;
const fresh = (what: string): string => join(tmp, `${what}-${++seq}`);

// ---------- helpers around the oracles ----------

function mkfs(args: string[] = []): string {
  const img = fresh('img');
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', ...args, img, '16M'], { stdio: 'pipe' });
  return img;
}

function debugfs(img: string, cmds: string[], write = false): string {
  const f = fresh('cmds');
  writeFileSync(f, cmds.join('\n') + '\n');
  return execFileSync('debugfs', [...(write ? ['-w'] : []), '-f', f, img], { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
}

interface FsInfo { blockSize: number; inodeSize: number; csumSeed: number | null }
function fsInfo(img: string): FsInfo {
  const raw = Buffer.alloc(1024);
  const fd = openSync(img, 'r');
  try {
    readSync(fd, raw, 0, 1024, 1024);
  } finally {
    closeSync(fd);
  }
  const sb = SuperblockLayout.decode(raw);
  let csumSeed: number | null = null;
  if (sb.s_feature_ro_compat & RO_COMPAT.metadata_csum) {
    csumSeed = sb.s_feature_incompat & INCOMPAT.csum_seed ? sb.s_checksum_seed : ext4Crc(0xffffffff, sb.s_uuid);
  }
  return { blockSize: 1024 << sb.s_log_block_size, inodeSize: sb.s_inode_size, csumSeed };
}

interface InodeLoc { ino: number; offset: number }
function inodeLoc(img: string, path: string): InodeLoc {
  const out = debugfs(img, [`imap ${path}`]);
  const m = /Inode (\d+) is part of block group \d+\s+located at block (\d+), offset 0x([0-9a-f]+)/.exec(out);
  if (!m) throw new Error(`imap: ${out}`);
  return { ino: Number(m[1]), offset: Number(m[2]) * fsInfo(img).blockSize + parseInt(m[3], 16) };
}

function fileAclBlock(img: string, path: string): number {
  const m = /File ACL: (\d+)/.exec(debugfs(img, [`stat ${path}`]));
  if (!m) throw new Error('no File ACL line');
  return Number(m[1]);
}

function readAt(img: string, offset: number, len: number): Buffer {
  return Buffer.from(readFileSync(img).subarray(offset, offset + len));
}
function writeAt(img: string, offset: number, data: Buffer): void {
  const fd = openSync(img, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** Names and values as libext2fs reads them: names from ea_list, each value via ea_get -f. */
function debugfsXattrs(img: string, path: string): Map<string, Buffer> {
  const names: string[] = [];
  for (const line of debugfs(img, [`ea_list ${path}`]).split('\n')) {
    const m = /^ {2}(\S+) \((\d+)\)/.exec(line);
    if (m) names.push(m[1]);
  }
  const files = names.map(() => fresh('val'));
  debugfs(img, names.map((n, i) => `ea_get -f ${files[i]} ${path} ${n}`));
  return new Map(names.map((n, i) => [n, readFileSync(files[i])]));
}

function inodeArea(img: string, path: string): { area: Buffer; raw: Buffer; loc: InodeLoc; extra: number } {
  const { inodeSize } = fsInfo(img);
  const loc = inodeLoc(img, path);
  const raw = readAt(img, loc.offset, inodeSize);
  const extra = raw.readUInt16LE(128);
  return { area: raw.subarray(128 + extra), raw, loc, extra };
}

function ourXattrs(img: string, path: string): Map<string, Buffer> {
  const { blockSize, csumSeed } = fsInfo(img);
  const entries = parseInodeXattrs(inodeArea(img, path).area);
  const blk = fileAclBlock(img, path);
  if (blk) entries.push(...parseBlockXattrs(readAt(img, blk * blockSize, blockSize), blk, csumSeed).entries);
  return new Map(entries.map((e) => [e.name, e.value]));
}

function fsck(img: string): { status: number | null; out: string } {
  const r = spawnSync('e2fsck', ['-fn', img], { encoding: 'utf8' });
  return { status: r.status, out: r.stdout + r.stderr };
}

function withMount<T>(t: ExecutionContext, img: string, opts: string, fn: (mnt: string) => T): T {
  const mnt = fresh('mnt');
  mkdirSync(mnt);
  execFileSync('mount', ['-o', `loop,${opts}`, img, mnt]);
  let mounted = true;
  const unmount = (): void => {
    if (mounted) {
      mounted = false;
      execFileSync('umount', [mnt]);
    }
  };
  t.teardown(() => {
    try {
      unmount();
    } catch {
      /* already reported by the main path */
    }
  });
  try {
    return fn(mnt);
  } finally {
    unmount();
  }
}

/** getfattr -d -e hex: the kernel's view of every xattr of a file. */
function kernelXattrs(file: string): Map<string, Buffer> {
  const out = execFileSync('getfattr', ['-d', '-m', '-', '-e', 'hex', '--absolute-names', file]).toString();
  const map = new Map<string, Buffer>();
  for (const line of out.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    if (eq < 0) map.set(line, Buffer.alloc(0));
    else map.set(line.slice(0, eq), Buffer.from(line.slice(eq + 1).replace(/^0x/, ''), 'hex'));
  }
  return map;
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
}
function bytes(n: number, seed: number): Buffer {
  const next = rng(seed);
  return Buffer.from(Array.from({ length: n }, () => next() >>> 24));
}

function sameEntries(t: ExecutionContext, got: Map<string, Buffer>, want: Map<string, Buffer>, what: string): void {
  t.deepEqual([...got.keys()].sort(), [...want.keys()].sort(), `${what}: names`);
  for (const [k, v] of want) t.true(got.get(k)?.equals(v), `${what}: value of ${k}`);
}
const toMap = (es: XattrEntry[]): Map<string, Buffer> => new Map(es.map((e) => [e.name, e.value]));

// ---------- pure codec ----------

const SAMPLE: XattrEntry[] = [
  { name: 'user.b', value: Buffer.from('two') },
  { name: 'user.aa', value: Buffer.from('four') },
  { name: 'user.a', value: Buffer.alloc(0) },
  { name: 'trusted.overlay.opaque', value: Buffer.from('y') },
  { name: 'security.selinux', value: Buffer.from('system_u:object_r:etc_t:s0\0') },
  { name: 'system.posix_acl_access', value: Buffer.from('0100000001000600', 'hex') },
  { name: 'user.naïve', value: bytes(37, 1) },
];

test('in-inode area round trip, sizes and empty area', (t) => {
  const area = encodeInodeXattrs(SAMPLE, 400);
  t.truthy(area);
  t.is(area!.length, 400);
  sameEntries(t, toMap(parseInodeXattrs(area!)), toMap(SAMPLE), 'inode');
  t.deepEqual(encodeInodeXattrs([], 96), Buffer.alloc(96));
  t.deepEqual(parseInodeXattrs(Buffer.alloc(96)), []);
  t.deepEqual(parseInodeXattrs(Buffer.alloc(0)), []);
  t.is(encodeInodeXattrs(SAMPLE, 96), null);
  // Exactly full: magic + entry(16+4) + terminator + value 68 = 96.
  t.truthy(encodeInodeXattrs([{ name: 'user.x', value: Buffer.alloc(68, 1) }], 96));
  t.is(encodeInodeXattrs([{ name: 'user.x', value: Buffer.alloc(69, 1) }], 96), null);
});

test('block round trip with checksum, refcount, sorted entries and hashes', (t) => {
  const seed = 0x12345678;
  const block = encodeBlockXattrs(SAMPLE, 4096, 777, seed, 3)!;
  t.is(block.length, 4096);
  const parsed = parseBlockXattrs(block, 777, seed);
  t.is(parsed.refcount, 3);
  sameEntries(t, toMap(parsed.entries), toMap(SAMPLE), 'block');
  // Sorted by (index, name length, name): user.* (1), acl (2), trusted (4), security (6).
  t.deepEqual(parsed.entries.map((e) => e.name), [
    'user.a', 'user.b', 'user.aa', 'user.naïve', 'system.posix_acl_access', 'trusted.overlay.opaque', 'security.selinux',
  ]);
  t.is(block.readUInt32LE(16), xattrBlockChecksum(block, 777, seed));
  // Wrong block number or a flipped bit must fail the checksum, naming the block.
  const e1 = t.throws(() => parseBlockXattrs(block, 778, seed), { instanceOf: CorruptionError });
  t.regex(e1!.message, /xattr block 778/);
  const flipped = Buffer.from(block);
  flipped[4000] ^= 1;
  t.throws(() => parseBlockXattrs(flipped, 777, seed), { instanceOf: CorruptionError });
  t.notThrows(() => parseBlockXattrs(flipped, 777, null));
  const noCsum = encodeBlockXattrs(SAMPLE, 1024, 5, null, 1)!;
  t.is(noCsum.readUInt32LE(16), 0);
  t.is(encodeBlockXattrs([{ name: 'user.big', value: Buffer.alloc(1024 - 32 - 4 - 20 + 1) }], 1024, 5, null, 1), null);
  t.truthy(encodeBlockXattrs([{ name: 'user.big', value: Buffer.alloc(1024 - 32 - 4 - 20) }], 1024, 5, null, 1));
});

test('names: validity, prefixes, encoding errors', (t) => {
  for (const ok of ['user.x', 'trusted.a.b', 'security.capability', 'system.posix_acl_access', 'system.posix_acl_default',
    'system.data', 'gnu.translator', 'user.' + 'n'.repeat(255)]) t.true(xattrNameValid(ok), ok);
  for (const bad of ['user.', 'foo.bar', 'user.' + 'n'.repeat(256), 'user.a\0b', 'lustre.lov', 'encryption.c', 'system.richacl', '', 'USER.x'])
    t.false(xattrNameValid(bad), bad);
  t.throws(() => encodeInodeXattrs([{ name: 'user.' + 'n'.repeat(256), value: Buffer.alloc(0) }], 4096), { instanceOf: FsError });
  t.throws(() => encodeInodeXattrs([{ name: 'user.a', value: Buffer.alloc(0) }, { name: 'user.a', value: Buffer.alloc(1) }], 4096),
    { instanceOf: FsError });
  // Names without a known prefix and internal prefixes still round-trip (index 0 / private indexes).
  const odd = [{ name: 'weird', value: Buffer.from('1') }, { name: 'encryption.c', value: Buffer.from('ctx') }];
  sameEntries(t, toMap(parseBlockXattrs(encodeBlockXattrs(odd, 1024, 1, null, 1)!, 1, null).entries), toMap(odd), 'odd');
});

test('entry hash follows ext4_xattr_hash_entry (name bytes, then zero-padded value words)', (t) => {
  t.is(xattrEntryHash(Buffer.alloc(0), Buffer.alloc(0)), 0);
  t.is(xattrEntryHash(Buffer.from('a'), Buffer.alloc(0)), 0x61);
  t.is(xattrEntryHash(Buffer.from('ab'), Buffer.alloc(0)), (0x61 << 5) ^ 0x62);
  // A 3-byte value hashes like the same value with one NUL appended.
  t.is(xattrEntryHash(Buffer.from('k'), Buffer.from('xyz')), xattrEntryHash(Buffer.from('k'), Buffer.from('xyz\0')));
});

test('splitXattrs prefers the inode for small values and returns null when nothing fits', (t) => {
  const es: XattrEntry[] = [
    { name: 'user.big', value: Buffer.alloc(1500, 1) },
    { name: 'user.s1', value: Buffer.from('a') },
    { name: 'user.s2', value: Buffer.from('bb') },
    { name: 'user.mid', value: Buffer.alloc(60, 2) },
  ];
  const s = splitXattrs(es, 96, 4096)!;
  t.deepEqual(s.inode.map((e) => e.name).sort(), ['user.s1', 'user.s2']);
  t.deepEqual(s.block.map((e) => e.name).sort(), ['user.big', 'user.mid']);
  t.truthy(encodeInodeXattrs(s.inode, 96));
  t.truthy(encodeBlockXattrs(s.block, 4096, 1, null, 1));
  t.deepEqual(splitXattrs([], 96, 4096), { inode: [], block: [] });
  t.deepEqual(splitXattrs(es, 0, 4096)!.inode, []);
  t.is(splitXattrs([{ name: 'user.huge', value: Buffer.alloc(5000) }], 96, 4096), null);
  // Only the largest-first fill fits: a 68-byte value must go to the inode to leave room in the block.
  const tight = [{ name: 'user.x', value: Buffer.alloc(68) }, { name: 'user.y', value: Buffer.alloc(1024 - 36 - 20 - 20 - 4) }];
  const s2 = splitXattrs([...tight, { name: 'user.z', value: Buffer.alloc(4) }], 96, 1024);
  t.truthy(s2);
  t.deepEqual(s2!.inode.map((e) => e.name), ['user.x']);
  // system.data (inline data) is pinned to the inode.
  t.deepEqual(splitXattrs([{ name: 'system.data', value: Buffer.alloc(40) }, { name: 'user.s', value: Buffer.alloc(4) }], 96, 4096)!
    .inode.map((e) => e.name), ['system.data', 'user.s']);
});

test('malformed areas and blocks throw CorruptionError, never anything else (fuzz)', (t) => {
  const block = encodeBlockXattrs(SAMPLE, 1024, 9, null, 1)!;
  const area = encodeInodeXattrs(SAMPLE.slice(0, 4), 160)!;
  const next = rng(99);
  let corrupt = 0;
  for (let i = 0; i < 20000; i++) {
    const src = i % 2 ? block : area;
    const buf = Buffer.from(src.subarray(0, i % 7 === 0 ? next() % src.length : src.length));
    const flips = 1 + (next() % 4);
    for (let f = 0; f < flips && buf.length; f++) {
      // Bias towards the header and entry table, where the interesting fields live.
      const pos = next() % 3 ? next() % Math.min(buf.length, 160) : next() % buf.length;
      buf[pos] = next() & 0xff;
    }
    try {
      if (src === block) parseBlockXattrs(buf, 9, null);
      else parseInodeXattrs(buf);
    } catch (e) {
      if (!(e instanceof CorruptionError)) {
        t.fail(`unexpected ${String(e)} for ${buf.toString('hex')}`);
        return;
      }
      corrupt++;
    }
  }
  t.true(corrupt > 100);
  // Specific shapes: no terminator, value past the end, value overlapping the table, ea_inode.
  const noTerm = Buffer.alloc(24);
  noTerm.writeUInt32LE(0xea020000, 0);
  noTerm.fill(0x41, 4);
  t.throws(() => parseInodeXattrs(noTerm), { instanceOf: CorruptionError });
  const one = encodeInodeXattrs([{ name: 'user.v', value: Buffer.from('data') }], 64)!;
  const past = Buffer.from(one);
  past.writeUInt16LE(60, 4 + 2);
  t.throws(() => parseInodeXattrs(past), { instanceOf: CorruptionError });
  const overlap = Buffer.from(one);
  overlap.writeUInt16LE(0, 4 + 2);
  t.throws(() => parseInodeXattrs(overlap), { instanceOf: CorruptionError });
  const eaInode = Buffer.from(one);
  eaInode.writeUInt32LE(13, 4 + 4);
  t.throws(() => parseInodeXattrs(eaInode), { instanceOf: CorruptionError, message: /ea_inode/ });
  const hugeSize = Buffer.from(one);
  hugeSize.writeUInt32LE(0xfffffffe, 4 + 8);
  t.throws(() => parseInodeXattrs(hugeSize), { instanceOf: CorruptionError });
  const badMagic = Buffer.from(block);
  badMagic.writeUInt32LE(0xea010000, 0);
  t.throws(() => parseBlockXattrs(badMagic, 9, null), { instanceOf: CorruptionError, message: /magic/ });
});

// ---------- libext2fs / e2fsck oracle ----------

const DEBUGFS_SET: XattrEntry[] = [
  { name: 'user.small', value: Buffer.from('hello') },
  { name: 'user.empty', value: Buffer.alloc(0) },
  { name: 'trusted.t', value: Buffer.from('tval') },
  { name: 'security.selinux', value: Buffer.from('ctx') },
  { name: 'user.big', value: bytes(1000, 2) },
  { name: 'user.bin', value: bytes(301, 3) },
  { name: 'user.' + 'L'.repeat(200), value: bytes(7, 4) },
];

function debugfsImageWith(entries: XattrEntry[]): string {
  const img = mkfs();
  const cmds = ['write /dev/null file'];
  for (const e of entries) {
    const f = fresh('v');
    writeFileSync(f, e.value);
    cmds.push(`ea_set -f ${f} /file ${e.name}`);
  }
  debugfs(img, cmds, true);
  return img;
}

test('parses what debugfs (libext2fs) wrote, in the inode and in the block', (t) => {
  const img = debugfsImageWith(DEBUGFS_SET);
  const { blockSize, csumSeed } = fsInfo(img);
  t.not(csumSeed, null, 'mkfs default enables metadata_csum');
  const blk = fileAclBlock(img, '/file');
  t.true(blk > 0, 'some values went to an external block');
  const inodeEntries = parseInodeXattrs(inodeArea(img, '/file').area);
  t.true(inodeEntries.length > 0, 'some values stayed in the inode');
  const raw = readAt(img, blk * blockSize, blockSize);
  const { entries: blockEntries, refcount } = parseBlockXattrs(raw, blk, csumSeed);
  t.is(refcount, 1);
  sameEntries(t, toMap([...inodeEntries, ...blockEntries]), debugfsXattrs(img, '/file'), 'vs debugfs');
  sameEntries(t, toMap([...inodeEntries, ...blockEntries]), toMap(DEBUGFS_SET), 'vs input');
  // libext2fs hashes block entries itself: our hash must agree with every stored e_hash.
  for (let pos = 32; raw.readUInt32LE(pos) !== 0; pos += (16 + raw[pos] + 3) & ~3) {
    const suffix = raw.subarray(pos + 16, pos + 16 + raw[pos]);
    const value = raw.subarray(raw.readUInt16LE(pos + 2), raw.readUInt16LE(pos + 2) + raw.readUInt32LE(pos + 8));
    t.is(raw.readUInt32LE(pos + 12), xattrEntryHash(suffix, value), `e_hash of ${suffix.toString()}`);
  }
});

test('a block and an inode area we encode pass e2fsck and read back through debugfs', (t) => {
  const img = debugfsImageWith([{ name: 'user.seed', value: bytes(1200, 5) }]);
  const { blockSize, csumSeed } = fsInfo(img);
  const blk = fileAclBlock(img, '/file');
  t.true(blk > 0);
  const blockEntries: XattrEntry[] = [
    { name: 'user.zeta', value: bytes(900, 6) },
    { name: 'user.alpha', value: Buffer.from('A') },
    { name: 'user.empty', value: Buffer.alloc(0) },
    { name: 'trusted.x', value: bytes(333, 7) },
    { name: 'security.ima', value: bytes(65, 8) },
    { name: 'user.' + 'q'.repeat(255), value: bytes(2, 9) },
  ];
  writeAt(img, blk * blockSize, encodeBlockXattrs(blockEntries, blockSize, blk, csumSeed, 1)!);

  const inodeEntries: XattrEntry[] = [{ name: 'user.in1', value: Buffer.from('x') }, { name: 'user.in2', value: bytes(30, 10) }];
  const { raw, loc, extra, area } = inodeArea(img, '/file');
  const newArea = encodeInodeXattrs(inodeEntries, area.length)!;
  newArea.copy(raw, 128 + extra);
  const f = InodeLayout.decode(raw);
  const crc = inodeChecksum(raw, loc.ino, f.i_generation, csumSeed!, extra);
  raw.writeUInt16LE(crc & 0xffff, InodeLayout.offsetOf('i_checksum_lo'));
  raw.writeUInt16LE(crc >>> 16, InodeLayout.offsetOf('i_checksum_hi'));
  writeAt(img, loc.offset, raw);

  const r = fsck(img);
  t.is(r.status, 0, r.out);
  sameEntries(t, debugfsXattrs(img, '/file'), toMap([...blockEntries, ...inodeEntries]), 'debugfs view');
  sameEntries(t, ourXattrs(img, '/file'), toMap([...blockEntries, ...inodeEntries]), 'our view');
});

test('e2fsck rejects a block whose checksum we deliberately break (the oracle is checking)', (t) => {
  const img = debugfsImageWith([{ name: 'user.seed', value: bytes(1200, 11) }]);
  const { blockSize, csumSeed } = fsInfo(img);
  const blk = fileAclBlock(img, '/file');
  const block = encodeBlockXattrs([{ name: 'user.v', value: bytes(700, 12) }], blockSize, blk, csumSeed, 1)!;
  block.writeUInt32LE((block.readUInt32LE(16) ^ 1) >>> 0, 16);
  writeAt(img, blk * blockSize, block);
  t.not(fsck(img).status, 0);
});

// ---------- kernel oracle ----------

test('the kernel reads our block and inode area (getfattr on a loop mount)', (t) => {
  const img = debugfsImageWith([{ name: 'user.seed', value: bytes(1500, 13) }]);
  const { blockSize, csumSeed } = fsInfo(img);
  const blk = fileAclBlock(img, '/file');
  const entries: XattrEntry[] = [];
  for (let i = 0; i < 40; i++) entries.push({ name: `user.k${'x'.repeat(i % 9)}${i}`, value: bytes((i * 37) % 90, 100 + i) });
  entries.push({ name: 'trusted.big', value: bytes(800, 14) }, { name: 'security.s', value: Buffer.from('sec') });
  const { raw, loc, extra, area } = inodeArea(img, '/file');
  const split = splitXattrs(entries, area.length, blockSize)!;
  t.true(split.inode.length > 0 && split.block.length > 0);
  writeAt(img, blk * blockSize, encodeBlockXattrs(split.block, blockSize, blk, csumSeed, 1)!);
  encodeInodeXattrs(split.inode, area.length)!.copy(raw, 128 + extra);
  const crc = inodeChecksum(raw, loc.ino, InodeLayout.decode(raw).i_generation, csumSeed!, extra);
  raw.writeUInt16LE(crc & 0xffff, InodeLayout.offsetOf('i_checksum_lo'));
  raw.writeUInt16LE(crc >>> 16, InodeLayout.offsetOf('i_checksum_hi'));
  writeAt(img, loc.offset, raw);
  t.is(fsck(img).status, 0);
  const seen = withMount(t, img, 'ro', (mnt) => {
    const file = join(mnt, 'file');
    // Look every name up individually too: a mis-sorted block makes the kernel's lookup miss.
    for (const e of entries) {
      const out = execFileSync('getfattr', ['-n', e.name, '-e', 'hex', '--absolute-names', file]).toString();
      const m = /=0x([0-9a-f]*)/.exec(out);
      t.is(m ? m[1] : '', e.value.toString('hex'), `kernel lookup of ${e.name}`);
    }
    return kernelXattrs(file);
  });
  sameEntries(t, seen, toMap(entries), 'kernel listing');
});

test('parses what the kernel wrote and reproduces its sort order and h_hash', (t) => {
  const img = mkfs();
  const want: XattrEntry[] = [];
  for (let i = 0; i < 30; i++) want.push({ name: `user.${String.fromCharCode(122 - (i % 26))}${'m'.repeat(i % 5)}${i}`, value: bytes(10 + i * 5, 200 + i) });
  want.push({ name: 'trusted.tt', value: bytes(100, 15) }, { name: 'user.e', value: Buffer.alloc(0) });
  const kernelView = withMount(t, img, 'rw', (mnt) => {
    const file = join(mnt, 'file');
    writeFileSync(file, 'content');
    for (const e of want) {
      execFileSync('setfattr', ['-n', e.name, '-v', e.value.length ? '0x' + e.value.toString('hex') : '""', file]);
    }
    return kernelXattrs(file);
  });
  sameEntries(t, kernelView, toMap(want), 'kernel kept what we set');
  sameEntries(t, ourXattrs(img, '/file'), kernelView, 'our parse of the kernel image');

  const { blockSize, csumSeed } = fsInfo(img);
  const blk = fileAclBlock(img, '/file');
  const raw = readAt(img, blk * blockSize, blockSize);
  const kernelBlock = parseBlockXattrs(raw, blk, csumSeed).entries;
  const ours = encodeBlockXattrs(kernelBlock, blockSize, blk, csumSeed, 1)!;
  t.deepEqual(parseBlockXattrs(ours, blk, csumSeed).entries.map((e) => e.name), kernelBlock.map((e) => e.name), 'same entry order');
  t.is(ours.readUInt32LE(12), raw.readUInt32LE(12), 'same h_hash as ext4_xattr_rehash');
  t.not(raw.readUInt32LE(12), 0);
});
