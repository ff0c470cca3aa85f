/**
 * Corrupted images: a small populated image is damaged in one place at a time (superblock,
 * group descriptor, bitmaps, inode table entries, an extent tree block, linear and hashed
 * directory blocks, an xattr block; plus truncated, empty and random-bytes images), then opened
 * with Ext4Fs in a child process (test/helpers/model-probe.ts) that exercises the damaged
 * object and some undamaged ones.
 *
 * Every case asserts: no crash (only FsError may come out), no hang (each probe runs under a
 * timeout), the damage is reported with a specific errno and a message naming it (EIO from a
 * CorruptionError, EINVAL for what is not ext4 at all, EROFS for a read-only fallback), and the
 * objects the damage does not touch stay readable.
 *
 * Two base images are built with kfs itself (1 KiB blocks, two groups) and checked clean with
 * e2fsck first: one with metadata_csum (damage is caught by checksums) and one without (damage
 * must be caught by sanity checks). Locations come from debugfs/dumpe2fs.
 */
import test, { ExecutionContext } from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Ext4Fs } from '../src/ext4/fs';
import type { ProbeOutcome, ProbeRequest, ProbeResult, ProbeStep } from './helpers/model-probe';

const PROBE = path.join(__dirname, 'helpers', 'model-probe.js');
const PROBE_TIMEOUT_MS = 30_000;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kfs-corrupt-'));
test.after.always(() => fs.rmSync(tmp, { recursive: true, force: true }));

// ------------------------------------------------------------------ base images

const BIG_NAMES = Array.from({ length: 300 }, (_, i) => `entry-${String(i).padStart(4, '0')}-padding-padding`);
const FILE_TXT = Buffer.alloc(3000, 'hello world\n');
const OTHER_TXT = Buffer.alloc(5000, 'other\n');

interface Base {
  img: string;
  bs: number;
  csum: boolean;
}

async function buildBase(name: string, mkfsArgs: string[]): Promise<Base> {
  const img = path.join(tmp, `${name}.img`);
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '1024', ...mkfsArgs, img, '16M'], { stdio: 'pipe' });
  const f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  const B = (s: string): Buffer => Buffer.from(s);
  const mk = async (parent: number, n: string, data?: Buffer): Promise<number> => {
    const a = await f.create(parent, B(n), 0o644, 0, 0);
    if (data) await f.write(a.ino, 0, data);
    return a.ino;
  };
  await mk(2, 'file.txt', FILE_TXT);
  await mk(2, 'other.txt', OTHER_TXT);
  // One block every other block: 40 extents, so the tree needs a leaf block (depth 1).
  const frag = await mk(2, 'frag');
  for (let i = 0; i < 40; i++) await f.write(frag, i * 2048, Buffer.alloc(1024, 65 + (i % 26)));
  const dir = await f.mkdir(2, B('dir'), 0o755, 0, 0);
  for (const n of ['a', 'b', 'c']) await mk(dir.ino, n, B(`in dir ${n}`));
  const big = await f.mkdir(2, B('big'), 0o755, 0, 0);
  for (const n of BIG_NAMES) await mk(big.ino, n);
  const x = await mk(2, 'xattr-file', B('xattr file data'));
  await f.setxattr(x, 'user.big', Buffer.alloc(600, 'v')); // too big for the inode: goes to a block
  await f.setxattr(x, 'user.small', B('s'));
  await f.symlink(2, B('link'), B('file.txt'), 0, 0);
  await f.close();
  const r = spawnSync('e2fsck', ['-fn', img], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`base image ${name} is not clean:\n${r.stdout}${r.stderr}`);
  return { img, bs: 1024, csum: !mkfsArgs.join(' ').includes('^metadata_csum') };
}

let csumBase: Base;
let plainBase: Base;
test.before(async () => {
  csumBase = await buildBase('csum', []);
  plainBase = await buildBase('plain', ['-O', '^metadata_csum']);
});

// ------------------------------------------------------------------ locating structures

function debugfs(img: string, cmd: string, write = false): string {
  return execFileSync('debugfs', [...(write ? ['-w'] : []), '-R', cmd, img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Byte offset of an inode in the inode table. */
function inodePos(img: string, p: string, bs: number): number {
  const out = debugfs(img, `imap ${p}`);
  const m = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(out);
  if (!m) throw new Error(`imap ${p}: ${out}`);
  return Number(m[1]) * bs + parseInt(m[2], 16);
}

function statMatch(img: string, p: string, re: RegExp): number {
  const out = debugfs(img, `stat ${p}`);
  const m = re.exec(out);
  if (!m) throw new Error(`stat ${p} does not match ${re}: ${out}`);
  return Number(m[1]);
}

function blocksOf(img: string, p: string): number[] {
  return debugfs(img, `blocks ${p}`).trim().split(/\s+/).map(Number);
}

interface Leaf {
  lblk: number;
  pblk: number;
  names: string[];
}
function htreeLeaves(img: string, p: string): Leaf[] {
  const out = debugfs(img, `htree_dump ${p}`);
  const leaves: Leaf[] = [];
  let cur: Leaf | null = null;
  for (const line of out.split('\n')) {
    const r = /Reading directory block (\d+), phys (\d+)/.exec(line);
    if (r) {
      cur = { lblk: Number(r[1]), pblk: Number(r[2]), names: [] };
      leaves.push(cur);
      continue;
    }
    if (cur) for (const m of line.matchAll(/\d+ 0x[0-9a-f]{8}-[0-9a-f]{8} \(\d+\) (\S+)/g)) cur.names.push(m[1]);
  }
  return leaves.filter((l) => l.names.length);
}

interface GroupInfo {
  gdtBlock: number;
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
}
function groups(img: string): GroupInfo[] {
  const out = execFileSync('dumpe2fs', [img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  return out.split(/\nGroup \d+:/).slice(1).map((g) => ({
    gdtBlock: Number(/Group descriptors at (\d+)/.exec(g)?.[1] ?? -1),
    blockBitmap: Number(/Block bitmap at (\d+)/.exec(g)![1]),
    inodeBitmap: Number(/Inode bitmap at (\d+)/.exec(g)![1]),
    inodeTable: Number(/Inode table at (\d+)/.exec(g)![1]),
  }));
}

// ------------------------------------------------------------------ damaging

let caseNo = 0;
function copyOf(base: Base): string {
  const img = path.join(tmp, `case-${++caseNo}.img`);
  fs.copyFileSync(base.img, img);
  return img;
}

function patch(img: string, pos: number, f: (b: Buffer) => void, len = 1): void {
  const fd = fs.openSync(img, 'r+');
  try {
    const b = Buffer.alloc(len);
    fs.readSync(fd, b, 0, len, pos);
    f(b);
    fs.writeSync(fd, b, 0, len, pos);
  } finally {
    fs.closeSync(fd);
  }
}
const flip = (img: string, pos: number): void => patch(img, pos, (b) => (b[0] ^= 0xff));
const putU16 = (img: string, pos: number, v: number): void => patch(img, pos, (b) => b.writeUInt16LE(v), 2);
const putU32 = (img: string, pos: number, v: number): void => patch(img, pos, (b) => b.writeUInt32LE(v >>> 0), 4);

// ------------------------------------------------------------------ probing

function runProbe(req: ProbeRequest): ProbeResult {
  const r = spawnSync(process.execPath, [PROBE, JSON.stringify(req)], { encoding: 'utf8', timeout: PROBE_TIMEOUT_MS, killSignal: 'SIGKILL' });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ETIMEDOUT') throw new Error(`HANG: the probe did not finish within ${PROBE_TIMEOUT_MS} ms`);
  if (r.signal) throw new Error(`HANG/CRASH: the probe was killed by ${r.signal}`);
  const line = r.stdout.trim().split('\n').pop() ?? '';
  let parsed: ProbeResult & { fatal?: string };
  try {
    parsed = JSON.parse(line);
  } catch {
    throw new Error(`CRASH: the probe exited ${r.status} without a result:\n${r.stdout}\n${r.stderr}`);
  }
  if (parsed.fatal) throw new Error(`CRASH: ${parsed.fatal}`);
  return parsed;
}

type Expect = 'ok' | [code: string, message: RegExp];
interface Check {
  step: ProbeStep;
  expect: Expect;
  /** For successes: a predicate over the returned summary. */
  value?: (v: any) => boolean;
}

function checkOutcome(t: ExecutionContext, what: string, o: ProbeOutcome, e: Expect, value?: (v: any) => boolean): void {
  t.not(o.kind, 'crash', `${what}: crashed with ${o.name}: ${o.message}\n${o.stack}`);
  if (e === 'ok') {
    t.true(o.ok, `${what}: expected success, got ${o.code}: ${o.message}`);
    if (o.ok && value) t.true(value(o.value), `${what}: unexpected result ${JSON.stringify(o.value)}`);
  } else {
    t.false(o.ok, `${what}: expected ${e[0]} ${e[1]}, but it succeeded (${JSON.stringify(o.value)?.slice(0, 200)})`);
    if (!o.ok) {
      t.is(o.code, e[0], `${what}: expected ${e[0]}, got ${o.code}: ${o.message}`);
      t.regex(o.message ?? '', e[1], `${what}: message does not name the damage`);
    }
  }
}

function expectCase(t: ExecutionContext, img: string, open: Expect, checks: Check[], readOnly = false): ProbeResult {
  const r = runProbe({ image: img, readOnly, steps: checks.map((c) => c.step) });
  checkOutcome(t, 'open', r.open, open);
  if (r.open.ok) {
    checks.forEach((c, i) => checkOutcome(t, `${c.step.op} ${'path' in c.step ? c.step.path : ''}`, r.steps[i], c.expect, c.value));
    if (r.close) t.not(r.close.kind, 'crash', `close crashed: ${r.close.message}`);
  }
  return r;
}

const CSUM = /checksum/;
const ROFALLBACK = /read-only after detecting corruption/;
const fileOk: Check = { step: { op: 'read', path: '/file.txt' }, expect: 'ok', value: (v) => v.size === FILE_TXT.length && v.head.startsWith('hello world') };
const otherOk: Check = { step: { op: 'read', path: '/other.txt' }, expect: 'ok', value: (v) => v.size === OTHER_TXT.length && v.head.startsWith('other') };
const rootOk: Check = { step: { op: 'readdir', path: '/' }, expect: 'ok', value: (v) => v.count === 10 };
const bigOk: Check = { step: { op: 'readdir', path: '/big' }, expect: 'ok', value: (v) => v.count === BIG_NAMES.length + 2 };

// ------------------------------------------------------------------ superblock

const SB = 1024;

test('superblock: bad magic is "not ext4" (EINVAL)', (t) => {
  const img = copyOf(csumBase);
  putU16(img, SB + 56, 0x1234);
  expectCase(t, img, ['EINVAL', /not an ext2\/3\/4 filesystem.*magic/], []);
});

test('superblock: impossible geometry (s_log_block_size) is EIO', (t) => {
  const img = copyOf(csumBase);
  putU32(img, SB + 24, 20);
  expectCase(t, img, ['EIO', /geometry is impossible/], []);
});

test('superblock: impossible geometry (s_blocks_per_group = 0) is EIO', (t) => {
  const img = copyOf(plainBase);
  putU32(img, SB + 32, 0);
  expectCase(t, img, ['EIO', /geometry is impossible/], []);
});

test('superblock: a first data block beyond the filesystem (s_first_data_block) is EIO, not a crash', (t) => {
  const img = copyOf(plainBase);
  putU32(img, SB + 20, 0xa10000); // what fuzz seed 605766835 found: no block groups left to describe
  expectCase(t, img, ['EIO', /first data block/], []);
});

test('superblock: a damaged primary whose journal backup (s_jnl_blocks) maps blocks outside the image is EIO, not a crash', (t) => {
  const img = copyOf(csumBase);
  flip(img, SB + 287); // what fuzz seed 73258999 found: the repair path read the journal at byte ~2^57
  expectCase(t, img, ['EIO', /inode 8: extent .* is invalid/], []);
});

test('superblock: checksum mismatch is EIO naming the superblock checksum', (t) => {
  const img = copyOf(csumBase);
  flip(img, SB + 120); // s_volume_name[0]: harmless field, but the checksum no longer matches
  expectCase(t, img, ['EIO', /superblock checksum/], []);
});

test('superblock: block count beyond the image (valid checksum) is EIO', (t) => {
  const img = copyOf(csumBase);
  debugfs(img, 'ssv blocks_count 1000000', true);
  expectCase(t, img, ['EIO', /blocks but the image holds only/], []);
});

test('superblock: an inode count that is not groups x inodes per group (valid checksum) is EIO', (t) => {
  // What the image fuzzer found (session 19): a lookup of an inode past the last group threw a
  // TypeError looking for that group's descriptor.
  const img = copyOf(csumBase);
  debugfs(img, 'ssv inodes_count 4278190080', true);
  expectCase(t, img, ['EIO', /inode count 4278190080 is not its \d+ groups of \d+ inodes/], []);
});

test('superblock: unknown incompat feature is refused with EINVAL', (t) => {
  const img = copyOf(csumBase);
  // encrypt (0x10000) is an incompat feature kfs does not implement.
  const raw = Buffer.alloc(4);
  const fd = fs.openSync(img, 'r');
  fs.readSync(fd, raw, 0, 4, SB + 0x60);
  fs.closeSync(fd);
  debugfs(img, `ssv feature_incompat 0x${((raw.readUInt32LE(0) | 0x10000) >>> 0).toString(16)}`, true);
  expectCase(t, img, ['EINVAL', /features kfs does not support: .*encrypt/], []);
});

test('superblock: unknown ro_compat feature falls back to read-only (EROFS on writes)', (t) => {
  const img = copyOf(csumBase);
  const raw = Buffer.alloc(4);
  const fd = fs.openSync(img, 'r');
  fs.readSync(fd, raw, 0, 4, SB + 0x64);
  fs.closeSync(fd);
  debugfs(img, `ssv feature_ro_compat 0x${((raw.readUInt32LE(0) | 0x8000) >>> 0).toString(16)}`, true); // verity
  expectCase(t, img, 'ok', [
    fileOk, rootOk,
    { step: { op: 'write', path: '/file.txt', offset: 0, size: 10 }, expect: ['EROFS', /read-only: unsupported ro_compat.*verity/] },
    { step: { op: 'create', path: '/new' }, expect: ['EROFS', /read-only/] },
  ]);
});

/** Set needs_recovery (INCOMPAT_RECOVER) in the superblock. */
function setNeedsRecovery(img: string): void {
  const raw = Buffer.alloc(4);
  const fd = fs.openSync(img, 'r');
  fs.readSync(fd, raw, 0, 4, SB + 0x60);
  fs.closeSync(fd);
  debugfs(img, `ssv feature_incompat 0x${((raw.readUInt32LE(0) | 0x4) >>> 0).toString(16)}`, true);
}

test('superblock: needs_recovery with an empty journal is replayed (nothing to do) and the image is writable', (t) => {
  const img = copyOf(csumBase);
  setNeedsRecovery(img);
  expectCase(t, img, 'ok', [
    fileOk,
    { step: { op: 'mkdir', path: '/newdir' }, expect: 'ok' },
  ]);
});

test('journal: a damaged journal superblock on an image that needs recovery is EIO naming it', (t) => {
  const img = copyOf(csumBase);
  setNeedsRecovery(img);
  const raw = Buffer.alloc(4);
  const fd = fs.openSync(img, 'r');
  fs.readSync(fd, raw, 0, 4, SB + 0x18);
  fs.closeSync(fd);
  const bs = 1024 << raw.readUInt32LE(0);
  const jblock = Number(/\d+/.exec(debugfs(img, 'bmap <8> 0'))![0]);
  flip(img, jblock * bs); // h_magic
  expectCase(t, img, ['EIO', /journal superblock/], []);
});

test('superblock: an orphan list that loops is EIO, not a hang', (t) => {
  const img = copyOf(plainBase);
  const ino = statMatch(img, '/file.txt', /Inode: (\d+)/);
  debugfs(img, `ssv last_orphan ${ino}`, true);
  debugfs(img, `sif /file.txt dtime ${ino}`, true);
  expectCase(t, img, ['EIO', /orphan list loops/], []);
});

// ------------------------------------------------------------------ group descriptors and bitmaps

test('group descriptor: checksum mismatch is EIO naming the descriptor', (t) => {
  const img = copyOf(csumBase);
  const g = groups(img);
  flip(img, g[0].gdtBlock * 1024 + 64 + 12); // descriptor 1 (64 bytes each with 64bit), bg_flags
  expectCase(t, img, ['EIO', /group descriptor 1 checksum/], []);
});

test('group descriptor: inode table outside the filesystem (valid checksum) is EIO', (t) => {
  const img = copyOf(csumBase);
  debugfs(img, 'set_bg 1 inode_table 99999999', true);
  debugfs(img, 'set_bg 1 checksum calc', true);
  expectCase(t, img, ['EIO', /group descriptor 1 points outside/], []);
});

test('block bitmap: checksum mismatch fails allocation with EIO; reads still work', (t) => {
  const img = copyOf(csumBase);
  const g = groups(img);
  flip(img, g[0].blockBitmap * 1024 + 700);
  expectCase(t, img, 'ok', [
    fileOk, otherOk, rootOk,
    { step: { op: 'write', path: '/file.txt', offset: 3000, size: 8192 }, expect: ['EIO', /block bitmap of group 0 .*checksum/] },
    // Damage found half-way through a change: the filesystem falls back to read-only.
    { step: { op: 'create', path: '/after' }, expect: ['EROFS', ROFALLBACK] },
    fileOk, otherOk,
  ]);
});

test('inode bitmap: checksum mismatch fails inode allocation with EIO; reads still work', (t) => {
  const img = copyOf(csumBase);
  const g = groups(img);
  flip(img, g[0].inodeBitmap * 1024 + 100);
  expectCase(t, img, 'ok', [
    fileOk, rootOk,
    { step: { op: 'create', path: '/newfile' }, expect: ['EIO', /inode bitmap of group 0 .*checksum/] },
    { step: { op: 'write', path: '/other.txt', offset: 0, size: 10 }, expect: ['EROFS', ROFALLBACK] },
    fileOk,
  ]);
});

// ------------------------------------------------------------------ inode table

test('inode table: a damaged file inode is EIO for that file only', (t) => {
  const img = copyOf(csumBase);
  const ino = statMatch(img, '/file.txt', /Inode: (\d+)/);
  flip(img, inodePos(img, '/file.txt', 1024) + 4); // i_size_lo
  expectCase(t, img, 'ok', [
    { step: { op: 'getattr', path: '/file.txt' }, expect: ['EIO', new RegExp(`inode ${ino} checksum`)] },
    { step: { op: 'read', path: '/file.txt' }, expect: ['EIO', new RegExp(`inode ${ino} checksum`)] },
    { step: { op: 'write', path: '/file.txt', offset: 0, size: 1 }, expect: ['EIO', new RegExp(`inode ${ino} checksum`)] },
    otherOk, rootOk, bigOk,
  ]);
});

test('inode table: a damaged directory inode is EIO for the directory; its siblings stay readable', (t) => {
  const img = copyOf(csumBase);
  const ino = statMatch(img, '/dir', /Inode: (\d+)/);
  flip(img, inodePos(img, '/dir', 1024) + 0x28); // i_block
  expectCase(t, img, 'ok', [
    { step: { op: 'readdir', path: '/dir' }, expect: ['EIO', new RegExp(`inode ${ino} checksum`)] },
    { step: { op: 'lookup', path: '/dir/a' }, expect: ['EIO', new RegExp(`inode ${ino} checksum`)] },
    { step: { op: 'create', path: '/dir/new' }, expect: ['EIO', new RegExp(`inode ${ino} checksum`)] },
    fileOk, rootOk, bigOk,
  ]);
});

test('inode table: a damaged root inode makes open fail with EIO', (t) => {
  const img = copyOf(csumBase);
  flip(img, inodePos(img, '<2>', 1024) + 0x1a); // i_links_count high byte
  expectCase(t, img, ['EIO', /inode 2 checksum/], []);
});

// Without checksums the root inode's damage must still be refused at open, as the kernel does
// ("root inode is not a directory" / "corrupt root inode": mount fails with EFSCORRUPTED).
test('inode table (no checksums): a cleared root inode makes open fail with EIO', (t) => {
  const img = copyOf(plainBase);
  debugfs(img, 'clri <2>', true);
  expectCase(t, img, ['EIO', /root|inode 2/], []);
});

test('inode table (no checksums): a root inode that is not a directory makes open fail with EIO', (t) => {
  const img = copyOf(plainBase);
  debugfs(img, 'sif <2> mode 0100644', true);
  expectCase(t, img, ['EIO', /root|inode 2/], []);
});

test('inode table (no checksums): an extent pointing outside the filesystem is EIO', (t) => {
  const img = copyOf(plainBase);
  // i_block = extent header (12 bytes) then the first extent {ee_block, ee_len, ee_start_hi, ee_start_lo}.
  putU32(img, inodePos(img, '/file.txt', 1024) + 0x28 + 12 + 8, 0xfffffff0);
  expectCase(t, img, 'ok', [
    { step: { op: 'read', path: '/file.txt' }, expect: ['EIO', /extent .*invalid|outside/] },
    otherOk,
  ]);
});

test('inode table (no checksums): a bad extent header magic in the inode is EIO', (t) => {
  const img = copyOf(plainBase);
  putU16(img, inodePos(img, '/other.txt', 1024) + 0x28, 0x1234);
  expectCase(t, img, 'ok', [
    { step: { op: 'read', path: '/other.txt' }, expect: ['EIO', /bad extent header magic/] },
    fileOk,
  ]);
});

// ------------------------------------------------------------------ extent tree block

test('extent tree block: checksum mismatch is EIO for that file only', (t) => {
  const img = copyOf(csumBase);
  const etb = statMatch(img, '/frag', /\(ETB0\):(\d+)/);
  flip(img, etb * 1024 + 12 + 5 * 12 + 4); // inside the sixth extent
  expectCase(t, img, 'ok', [
    { step: { op: 'getattr', path: '/frag' }, expect: 'ok', value: (v) => v.size === 39 * 2048 + 1024 },
    { step: { op: 'read', path: '/frag' }, expect: ['EIO', new RegExp(`extent block ${etb} checksum`)] },
    { step: { op: 'write', path: '/frag', offset: 1024, size: 10 }, expect: ['EIO', new RegExp(`extent block ${etb} checksum`)] },
    fileOk, otherOk,
    { step: { op: 'mkdir', path: '/after' }, expect: ['EROFS', ROFALLBACK] },
  ]);
});

test('extent tree block (no checksums): bad magic is EIO', (t) => {
  const img = copyOf(plainBase);
  const etb = statMatch(img, '/frag', /\(ETB0\):(\d+)/);
  putU16(img, etb * 1024, 0);
  expectCase(t, img, 'ok', [
    { step: { op: 'read', path: '/frag' }, expect: ['EIO', /bad extent header magic/] },
    fileOk,
  ]);
});

test('extent tree block (no checksums): overlapping extents are EIO', (t) => {
  const img = copyOf(plainBase);
  const etb = statMatch(img, '/frag', /\(ETB0\):(\d+)/);
  putU32(img, etb * 1024 + 12 + 12, 0); // second extent's ee_block = 0: overlaps the first
  expectCase(t, img, 'ok', [
    { step: { op: 'read', path: '/frag' }, expect: ['EIO', /overlap|out of order|invalid/] },
    fileOk,
  ]);
});

// ------------------------------------------------------------------ directories

test('linear directory block: checksum mismatch is EIO for that directory', (t) => {
  const img = copyOf(csumBase);
  const [blk] = blocksOf(img, '/dir');
  flip(img, blk * 1024 + 24 + 8); // the name of the entry after "." and ".."
  expectCase(t, img, 'ok', [
    { step: { op: 'readdir', path: '/dir' }, expect: ['EIO', /directory block checksum/] },
    { step: { op: 'lookup', path: '/dir/b' }, expect: ['EIO', /directory block checksum/] },
    { step: { op: 'create', path: '/dir/new' }, expect: ['EIO', /directory block checksum/] },
    { step: { op: 'getattr', path: '/dir' }, expect: 'ok' },
    fileOk, rootOk,
  ]);
});

test('linear directory block (no checksums): a zero rec_len is EIO, not a hang', (t) => {
  const img = copyOf(plainBase);
  const [blk] = blocksOf(img, '/dir');
  putU16(img, blk * 1024 + 24 + 4, 0); // rec_len of the third entry
  expectCase(t, img, 'ok', [
    { step: { op: 'readdir', path: '/dir' }, expect: ['EIO', /bad rec_len/] },
    { step: { op: 'lookup', path: '/dir/c' }, expect: ['EIO', /bad rec_len/] },
    fileOk, rootOk,
  ]);
});

test('htree root: checksum mismatch is EIO for lookups in that directory', (t) => {
  const img = copyOf(csumBase);
  const [root] = blocksOf(img, '/big');
  flip(img, root * 1024 + 32 + 8 * 3); // an index entry's hash
  expectCase(t, img, 'ok', [
    { step: { op: 'lookup', path: `/big/${BIG_NAMES[7]}` }, expect: ['EIO', /htree node checksum|checksum/] },
    { step: { op: 'create', path: '/big/new-name' }, expect: ['EIO', CSUM] },
    fileOk, rootOk,
  ]);
});

test('htree leaf: checksum mismatch is EIO for names in that leaf; other leaves still work', (t) => {
  const img = copyOf(csumBase);
  const leaves = htreeLeaves(img, '/big');
  t.true(leaves.length >= 3, `expected an htree with several leaves, got ${leaves.length}`);
  const bad = leaves[1];
  const good = leaves[leaves.length - 1];
  flip(img, bad.pblk * 1024 + 8); // the first entry's name
  expectCase(t, img, 'ok', [
    { step: { op: 'lookup', path: `/big/${bad.names[bad.names.length - 1]}` }, expect: ['EIO', /directory block checksum/] },
    { step: { op: 'lookup', path: `/big/${good.names[0]}` }, expect: 'ok' },
    { step: { op: 'readdir', path: '/big' }, expect: ['EIO', /directory block checksum/] },
    fileOk, rootOk,
    // Damage found by reads only: the filesystem stays writable.
    { step: { op: 'create', path: '/after-read-errors' }, expect: 'ok' },
  ]);
});

test('htree root (no checksums): a bad root info length is EIO', (t) => {
  const img = copyOf(plainBase);
  const [root] = blocksOf(img, '/big');
  patch(img, root * 1024 + 24 + 5, (b) => (b[0] = 0)); // dx_root_info.info_length
  expectCase(t, img, 'ok', [
    { step: { op: 'lookup', path: `/big/${BIG_NAMES[3]}` }, expect: ['EIO', /bad htree root/] },
    fileOk,
  ]);
});

test('htree root (no checksums): an index entry pointing past the directory is EIO', (t) => {
  const img = copyOf(plainBase);
  const [root] = blocksOf(img, '/big');
  // Every entry's block, so that whatever leaf a name hashes to is out of range.
  const count = Buffer.alloc(2);
  const fd = fs.openSync(img, 'r');
  fs.readSync(fd, count, 0, 2, root * 1024 + 34);
  fs.closeSync(fd);
  for (let i = 0; i < count.readUInt16LE(0); i++) putU32(img, root * 1024 + 32 + 8 * i + 4, 5000 + i);
  expectCase(t, img, 'ok', [
    { step: { op: 'lookup', path: `/big/${BIG_NAMES[3]}` }, expect: ['EIO', /outside the directory/] },
    fileOk,
  ]);
});

// ------------------------------------------------------------------ xattr block

test('xattr block: checksum mismatch is EIO for that file\'s xattrs; its data stays readable', (t) => {
  const img = copyOf(csumBase);
  const blk = statMatch(img, '/xattr-file', /File ACL: (\d+)/);
  flip(img, blk * 1024 + 1000); // inside the value area
  expectCase(t, img, 'ok', [
    { step: { op: 'getxattr', path: '/xattr-file', name: 'user.big' }, expect: ['EIO', new RegExp(`xattr block ${blk}.*checksum`)] },
    { step: { op: 'listxattr', path: '/xattr-file' }, expect: ['EIO', CSUM] },
    { step: { op: 'setxattr', path: '/xattr-file', name: 'user.new', size: 10 }, expect: ['EIO', CSUM] },
    { step: { op: 'read', path: '/xattr-file' }, expect: 'ok', value: (v) => v.head === 'xattr file data' },
    fileOk,
  ]);
});

test('xattr block (no checksums): bad magic is EIO', (t) => {
  const img = copyOf(plainBase);
  const blk = statMatch(img, '/xattr-file', /File ACL: (\d+)/);
  putU32(img, blk * 1024, 0xdeadbeef);
  expectCase(t, img, 'ok', [
    { step: { op: 'getxattr', path: '/xattr-file', name: 'user.big' }, expect: ['EIO', /bad magic/] },
    { step: { op: 'read', path: '/xattr-file' }, expect: 'ok' },
  ]);
});

test('xattr block (no checksums): a value offset out of bounds is EIO', (t) => {
  const img = copyOf(plainBase);
  const blk = statMatch(img, '/xattr-file', /File ACL: (\d+)/);
  putU16(img, blk * 1024 + 32 + 2, 0xfff0); // first entry's e_value_offs
  expectCase(t, img, 'ok', [
    { step: { op: 'listxattr', path: '/xattr-file' }, expect: ['EIO', /out of bounds/] },
    fileOk,
  ]);
});

// ------------------------------------------------------------------ whole images

test('a truncated image is EIO', (t) => {
  const img = copyOf(csumBase);
  fs.truncateSync(img, 8 << 20);
  expectCase(t, img, ['EIO', /image holds only/], []);
});

test('a zero-length image is EIO', (t) => {
  const img = path.join(tmp, 'empty.img');
  fs.writeFileSync(img, '');
  expectCase(t, img, ['EIO', /too small to hold an ext4 superblock/], []);
});

test('a random-bytes image is EINVAL (not ext4)', (t) => {
  const img = path.join(tmp, 'random.img');
  const b = Buffer.alloc(4 << 20);
  let s = 12345;
  for (let i = 0; i < b.length; i += 4) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    b.writeUInt32LE(s, i);
  }
  if (b.readUInt16LE(SB + 56) === 0xef53) b.writeUInt16LE(0, SB + 56);
  fs.writeFileSync(img, b);
  expectCase(t, img, ['EINVAL', /not an ext2\/3\/4 filesystem/], []);
});

test('a missing image is ENOENT', (t) => {
  expectCase(t, path.join(tmp, 'does-not-exist.img'), ['ENOENT', /cannot open image/], []);
});

test('the undamaged base images pass every probe', (t) => {
  for (const base of [csumBase, plainBase]) {
    expectCase(t, copyOf(base), 'ok', [
      fileOk, otherOk, rootOk, bigOk,
      { step: { op: 'read', path: '/frag' }, expect: 'ok', value: (v) => v.size === 39 * 2048 + 1024 },
      { step: { op: 'readdir', path: '/dir' }, expect: 'ok', value: (v) => v.count === 5 },
      { step: { op: 'getxattr', path: '/xattr-file', name: 'user.big' }, expect: 'ok', value: (v) => v === 600 },
      { step: { op: 'readlink', path: '/link' }, expect: 'ok', value: (v) => v === 'file.txt' },
      { step: { op: 'lookup', path: `/big/${BIG_NAMES[123]}` }, expect: 'ok' },
      { step: { op: 'write', path: '/file.txt', offset: 3000, size: 8192 }, expect: 'ok' },
      { step: { op: 'create', path: '/dir/new' }, expect: 'ok' },
    ]);
  }
});

// ------------------------------------------------------------------ random damage (fuzz)

/**
 * Random byte damage in metadata (never in file data). Both images: only FsErrors, no hang.
 * With metadata_csum, also: the walk sees exactly the undamaged tree, or it reports an error
 * (damage is never silently turned into different names, sizes, content or xattrs).
 * KFS_FUZZ_SEED replays; KFS_FUZZ_CASES sets the number of cases per image (default 25).
 */
const FUZZ_CASES = Number(process.env.KFS_FUZZ_CASES ?? 25);
const FUZZ_SEED = process.env.KFS_FUZZ_SEED !== undefined ? Number(process.env.KFS_FUZZ_SEED) : Math.floor(Math.random() * 2 ** 31);

function metadataRegions(img: string): { name: string; pos: number; len: number }[] {
  const g = groups(img);
  const regions = [
    { name: 'superblock', pos: SB, len: 1024 },
    { name: 'group descriptors', pos: g[0].gdtBlock * 1024, len: 2 * 64 },
    ...g.flatMap((x, i) => [
      { name: `block bitmap ${i}`, pos: x.blockBitmap * 1024, len: 1024 },
      { name: `inode bitmap ${i}`, pos: x.inodeBitmap * 1024, len: 1024 },
    ]),
    { name: 'extent tree block of /frag', pos: statMatch(img, '/frag', /\(ETB0\):(\d+)/) * 1024, len: 1024 },
    { name: 'xattr block', pos: statMatch(img, '/xattr-file', /File ACL: (\d+)/) * 1024, len: 1024 },
  ];
  for (const p of ['<2>', '/file.txt', '/other.txt', '/frag', '/dir', '/dir/a', '/big', '/xattr-file', '/link']) {
    regions.push({ name: `inode ${p}`, pos: inodePos(img, p, 1024), len: 256 });
  }
  for (const p of ['/', '/dir', '/big']) {
    const bl = blocksOf(img, p);
    for (const [i, b] of bl.slice(0, 4).entries()) regions.push({ name: `directory ${p} block ${i}`, pos: b * 1024, len: 1024 });
  }
  return regions;
}

const FUZZ_STEPS: ProbeStep[] = [
  { op: 'walk' },
  { op: 'write', path: '/file.txt', offset: 2000, size: 5000 },
  { op: 'create', path: '/dir/fuzz-new' },
  { op: 'mkdir', path: '/big/fuzz-dir' },
  { op: 'setxattr', path: '/xattr-file', name: 'user.fuzz', size: 300 },
  { op: 'unlink', path: '/other.txt' },
  { op: 'sync' },
];

for (const which of ['csum', 'plain'] as const) {
  test(`random metadata damage (${which}): FsErrors only, no hang${which === 'csum' ? ', never silent' : ''}`, (t) => {
    const base = which === 'csum' ? csumBase : plainBase;
    t.log(`KFS_FUZZ_SEED=${FUZZ_SEED}`);
    const pristine = runProbe({ image: copyOf(base), steps: [{ op: 'walk' }] });
    const want = (pristine.steps[0].value as { lines: string[] }).lines;
    t.deepEqual((pristine.steps[0].value as { errors: string[] }).errors, []);
    const regions = metadataRegions(base.img);
    let s = (FUZZ_SEED ^ (which === 'csum' ? 0x5bd1e995 : 0)) >>> 0;
    const rnd = (n: number): number => {
      s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
      s ^= s >>> 13;
      return (s >>> 0) % n;
    };
    let detected = 0;
    // Every problem of every case is collected (ava would only show the first failed assertion).
    const problems: string[] = [];
    for (let i = 0; i < FUZZ_CASES; i++) {
      const img = copyOf(base);
      const damage: string[] = [];
      for (let k = 0, n = 1 + rnd(3); k < n; k++) {
        const r = regions[rnd(regions.length)];
        const off = rnd(r.len);
        const x = 1 + rnd(255);
        patch(img, r.pos + off, (b) => (b[0] ^= x));
        damage.push(`${r.name} +${off} ^0x${x.toString(16)}`);
      }
      const what = `case ${i} (${damage.join('; ')})`;
      let r: ProbeResult;
      try {
        r = runProbe({ image: img, steps: FUZZ_STEPS });
      } catch (e) {
        problems.push(`${what}: ${(e as Error).message}`);
        continue;
      }
      const all = [r.open, ...r.steps, ...(r.close ? [r.close] : [])];
      for (const o of all) if (o.kind === 'crash') problems.push(`${what}: crash ${o.name}: ${o.message}\n${o.stack}`);
      if (!r.open.ok) {
        if (!['EIO', 'EINVAL'].includes(r.open.code!)) problems.push(`${what}: open failed with ${r.open.code} (want EIO or EINVAL): ${r.open.message}`);
        detected++;
        continue;
      }
      const w = r.steps[0];
      if (w.ok) {
        const v = w.value as { lines: string[]; errors: string[] };
        if (v.errors.length) detected++;
        else if (which === 'csum' && JSON.stringify(v.lines) !== JSON.stringify(want)) {
          const diff = v.lines.filter((l) => !want.includes(l)).slice(0, 3);
          problems.push(`${what}: the tree reads differently without any error: ${diff.join(' / ')}`);
        }
      }
    }
    t.log(`${FUZZ_CASES} cases, ${detected} detected at open or during the walk`);
    t.deepEqual(problems, [], `${problems.length} problem(s) with KFS_FUZZ_SEED=${FUZZ_SEED}:\n${problems.join('\n')}`);
  });
}
