/**
 * Interoperability acceptance tests between kfs (Ext4Fs) and the Linux kernel's ext4 driver,
 * with e2fsck as the referee:
 *  a. kfs writes a rich tree (thousands of files, an htree directory of tens of thousands of
 *     entries, sparse files past 1 GiB, deep extent trees, hard links, symlinks, xattrs, long
 *     UTF-8 names, nanosecond times, devices); e2fsck -fn must pass and the kernel must read
 *     back exactly what the test's model says (and exactly what kfs itself reads).
 *  b. the kernel writes a tree (shell tools on a loop mount); kfs must read it exactly as the
 *     kernel showed it, then delete, rename, truncate, append, punch, remove trees and change
 *     xattrs; e2fsck -fn must pass, the kernel must see the model, and the kernel must be able to
 *     keep working on the result.
 * Needs root (loop mounts), e2fsprogs and attr (getfattr/setfattr).
 */
import test, { ExecutionContext } from 'ava';
import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import { join } from 'node:path';
import { Ext4Fs, RENAME_EXCHANGE } from '../src/ext4/fs';
import { Timespec } from '../src/ext4/inode';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from '../src/ext4/file-io';
import {
  makeImage, loopMount, extentInfo, inodeStat, fsck, htreeLevels, bash, mustRun, requireRoot, tempDir, debugfs, fsckCleanAndKernelSees,
} from './helpers/image';
import { Checks } from './helpers/checks';
import {
  TreeModel, SparseContent, snapshotHost, snapshotExt4, parentOf, baseName,
  resolveExt4, nowNs, rawChild, Owner,
} from './helpers/tree';

const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFSOCK = 0o140000;
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

test.before(() => {
  if (fs.existsSync('/usr/bin/getfattr') || fs.existsSync('/bin/getfattr')) return;
  throw new Error('getfattr missing: the set-up (npm run setup) installs the attr package');
});

// ---------- deterministic data ----------

/** n pseudo-random bytes determined by seed (AES-CTR keystream). */
function bytes(seed: string | number, n: number): Buffer {
  const key = createHash('sha256').update(String(seed)).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n));
}

function makedev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

const ts = (sec: number, nsec: number): Timespec => ({ sec, nsec });
const tsNs = (t: Timespec): bigint => BigInt(t.sec) * 1000000000n + BigInt(t.nsec);

// ---------- kfs and the model, side by side ----------

/** Applies each operation through Ext4Fs and to the model. */
class Pair {
  private inos = new Map<string, number>([['/', 2]]);
  constructor(readonly f: Ext4Fs, readonly m: TreeModel) {}

  async ino(path: string): Promise<number> {
    let i = this.inos.get(path);
    if (i === undefined) {
      i = await resolveExt4(this.f, path);
      this.inos.set(path, i);
    }
    return i;
  }

  private async at(path: string): Promise<[number, Buffer]> {
    return [await this.ino(parentOf(path)), Buffer.from(baseName(path))];
  }

  async mkdir(path: string, o: Owner): Promise<number> {
    const [p, n] = await this.at(path);
    const a = await this.f.mkdir(p, n, o.mode, o.uid ?? 0, o.gid ?? 0);
    this.inos.set(path, a.ino);
    this.m.mkdir(path, o);
    return a.ino;
  }

  /** Create a file and write content in chunks of the given sizes (cycled). */
  async file(path: string, o: Owner, content: Buffer = Buffer.alloc(0), chunks: number[] = [1 * MiB]): Promise<number> {
    const [p, n] = await this.at(path);
    const a = await this.f.create(p, n, o.mode, o.uid ?? 0, o.gid ?? 0);
    this.inos.set(path, a.ino);
    let off = 0;
    for (let k = 0; off < content.length; k++) {
      const len = Math.min(chunks[k % chunks.length], content.length - off);
      const w = await this.f.write(a.ino, off, content.subarray(off, off + len));
      if (w !== len) throw new Error(`${path}: write of ${len} at ${off} returned ${w}`);
      off += len;
    }
    this.m.file(path, o, content);
    return a.ino;
  }

  async write(path: string, off: number, data: Buffer): Promise<void> {
    const w = await this.f.write(await this.ino(path), off, data);
    if (w !== data.length) throw new Error(`${path}: write of ${data.length} at ${off} returned ${w}`);
    this.m.write(path, off, data);
  }

  async append(path: string, data: Buffer): Promise<void> {
    await this.write(path, this.m.get(path).content!.size, data);
  }

  async truncate(path: string, size: number): Promise<void> {
    await this.f.setattr(await this.ino(path), { size });
    this.m.truncate(path, size);
  }

  async punch(path: string, off: number, len: number): Promise<void> {
    await this.f.fallocate(await this.ino(path), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
    const c = this.m.get(path).content!;
    const end = Math.min(c.size, off + len);
    if (end > off) c.write(off, Buffer.alloc(end - off));
    this.m.setattr(path, {}); // ctime (and mtime) change
    const n = this.m.get(path);
    delete n.blocks;
    n.mtimeNs = { min: this.m.since };
  }

  async symlink(path: string, target: Buffer | string, uid = 0, gid = 0): Promise<number> {
    const [p, n] = await this.at(path);
    const a = await this.f.symlink(p, n, Buffer.from(target), uid, gid);
    this.inos.set(path, a.ino);
    this.m.symlink(path, target, { uid, gid });
    return a.ino;
  }

  async special(path: string, type: 'fifo' | 'chr' | 'blk' | 'sock', o: Owner, rdev = 0): Promise<number> {
    const [p, n] = await this.at(path);
    const fmt = { fifo: S_IFIFO, chr: S_IFCHR, blk: S_IFBLK, sock: S_IFSOCK }[type];
    const a = await this.f.mknod(p, n, fmt | o.mode, rdev, o.uid ?? 0, o.gid ?? 0);
    this.inos.set(path, a.ino);
    this.m.special(path, type, o, rdev);
    return a.ino;
  }

  async link(existing: string, newPath: string): Promise<void> {
    const [p, n] = await this.at(newPath);
    await this.f.link(await this.ino(existing), p, n);
    this.m.link(existing, newPath);
  }

  async unlink(path: string): Promise<void> {
    const [p, n] = await this.at(path);
    await this.f.unlink(p, n);
    this.inos.delete(path);
    this.m.unlink(path);
  }

  async rmdir(path: string): Promise<void> {
    const [p, n] = await this.at(path);
    await this.f.rmdir(p, n);
    this.inos.clear();
    this.inos.set('/', 2);
    this.m.rmdir(path);
  }

  /** rm -r through Ext4Fs, children first, names as the model knows them. */
  async rmtree(path: string): Promise<void> {
    const node = this.m.get(path);
    if (node.type === 'dir') {
      for (const name of [...node.children!.keys()]) await this.rmtree(rawChild(path, name));
      await this.rmdir(path);
    } else {
      await this.unlink(path);
    }
  }

  async rename(from: string, to: string): Promise<void> {
    const [sp, sn] = await this.at(from);
    const [tp, tn] = await this.at(to);
    await this.f.rename(sp, sn, tp, tn, 0);
    this.inos.clear();
    this.inos.set('/', 2);
    this.m.rename(from, to);
  }

  async times(path: string, atime: Timespec, mtime: Timespec): Promise<void> {
    await this.f.setattr(await this.ino(path), { atime, mtime });
    this.m.setattr(path, { atimeNs: tsNs(atime), mtimeNs: tsNs(mtime) });
  }

  async chmod(path: string, mode: number, uid?: number, gid?: number): Promise<void> {
    await this.f.setattr(await this.ino(path), { mode, uid, gid });
    this.m.setattr(path, { mode, uid, gid });
  }

  async setx(path: string, name: string, value: Buffer): Promise<void> {
    await this.f.setxattr(await this.ino(path), name, value, 0);
    this.m.setXattr(path, name, value);
  }

  async rmx(path: string, name: string): Promise<void> {
    await this.f.removexattr(await this.ino(path), name);
    this.m.removeXattr(path, name);
  }
}

// ---------- a. kfs writes, the kernel reads ----------

interface RichTreeParams {
  blockSize: number;
  /** Files in the nested /tree. */
  treeFiles: number;
  treeFanout: number;
  /** Entries of /big (the htree directory). */
  bigDirEntries: number;
  /** Length padding of /big names (longer names: more leaves, deeper index). */
  bigNamePad: number;
  /** Blocks written alternately to /frag/a and /frag/b. */
  fragBlocks: number;
  /** Size of /sparse/huge and the offsets it has data at. */
  sparseSize: number;
  longSymlink: number;
  /** Largest single xattr value. */
  bigXattr: number;
}

const FILE_SIZES = [0, 1, 59, 60, 61, 511, 512, 1023, 1024, 1025, 4095, 4096, 4097, 8191, 12293, 65539, 200003];
const OWNERS: [number, number][] = [[0, 0], [1000, 1000], [65534, 65534], [65536, 70000], [3000000000, 12], [4294967294, 4294967294]];
const MODES = [0o644, 0o600, 0o755, 0o4755, 0o2755, 0o1644, 0o000, 0o444, 0o6711, 0o640];

/** Build the tree of test a through Ext4Fs and the model. */
async function buildRichTree(p: Pair, P: RichTreeParams, c: Checks): Promise<void> {
  const lap = (what: string): void => c.lap(what);

  // Thousands of files in nested directories, many sizes, modes and owners.
  await p.mkdir('/tree', { mode: 0o755 });
  let k = 0;
  for (let a = 0; a < P.treeFanout && k < P.treeFiles; a++) {
    const [u, g] = OWNERS[a % OWNERS.length];
    await p.mkdir(`/tree/d${a}`, { mode: 0o755, uid: u, gid: g });
    for (let b = 0; b < P.treeFanout && k < P.treeFiles; b++) {
      const dir = `/tree/d${a}/s${b}`;
      await p.mkdir(dir, { mode: [0o755, 0o700, 0o1777, 0o555][b % 4] });
      const per = Math.ceil(P.treeFiles / (P.treeFanout * P.treeFanout));
      for (let c = 0; c < per && k < P.treeFiles; c++, k++) {
        const size = FILE_SIZES[k % FILE_SIZES.length];
        const [fu, fg] = OWNERS[k % OWNERS.length];
        await p.file(`${dir}/f${c}.dat`, { mode: MODES[k % MODES.length], uid: fu, gid: fg }, bytes(`tree${k}`, size), [4096, 1000, 65536]);
      }
    }
  }
  // A deep chain of directories.
  let deep = '/tree/deep';
  await p.mkdir(deep, { mode: 0o755 });
  for (let d = 0; d < 24; d++) {
    deep += `/level-${d}`;
    await p.mkdir(deep, { mode: 0o750, uid: d, gid: d * 2 });
  }
  await p.file(`${deep}/bottom`, { mode: 0o644 }, bytes('bottom', 777));
  lap(`${P.treeFiles} files in /tree`);

  // One directory with many entries: a hashed (htree) directory.
  await p.mkdir('/big', { mode: 0o755 });
  const bigIno = await p.ino('/big');
  for (let i = 0; i < P.bigDirEntries; i++) {
    const name = `e${i.toString(36)}-${'n'.repeat((i * 7) % (P.bigNamePad + 1))}`;
    // Through Ext4Fs directly (with the model) to keep the loop tight.
    await p.f.create(bigIno, Buffer.from(name), 0o644, 0, 0);
    p.m.file(`/big/${name}`, { mode: 0o644 });
  }
  lap(`${P.bigDirEntries} entries in /big`);
  // Holes in the leaves: remove every 13th entry, and rename some within and out of the dir.
  for (let i = 0; i < P.bigDirEntries; i += 13) await p.unlink(`/big/e${i.toString(36)}-${'n'.repeat((i * 7) % (P.bigNamePad + 1))}`);
  for (let i = 1; i < P.bigDirEntries; i += 997) {
    if (i % 13 === 0) continue; // already unlinked
    const name = `e${i.toString(36)}-${'n'.repeat((i * 7) % (P.bigNamePad + 1))}`;
    await p.rename(`/big/${name}`, `/big/renamed-${i}`);
  }
  await p.rename(`/big/e2-${'n'.repeat(14 % (P.bigNamePad + 1))}`, '/tree/moved-from-big');
  lap('unlinks and renames in /big');

  // Files of many sizes, written in uneven chunks.
  await p.mkdir('/sizes', { mode: 0o755 });
  for (const size of [0, 1, 4096, 4097, MiB + 1, 3 * MiB + 12345, 10 * MiB]) {
    await p.file(`/sizes/s${size}`, { mode: 0o644 }, bytes(`size${size}`, size), [128 * KiB, 1, 4095, 300 * KiB + 7]);
  }
  // Rewrite ranges inside existing data (unaligned overwrite, extend by writing past EOF).
  await p.write(`/sizes/s${MiB + 1}`, 4000, bytes('overwrite', 10000));
  await p.write(`/sizes/s4097`, 20000, bytes('past-eof', 3000));
  lap('sized files');

  // Sparse files: data at scattered offsets, past 1 GiB, a trailing hole and a preallocated range.
  await p.mkdir('/sparse', { mode: 0o755 });
  await p.file('/sparse/huge', { mode: 0o600, uid: 1000, gid: 1000 });
  const writes: [number, number][] = [
    [0, 4 * KiB], [100 * MiB + 12345, MiB + 3], [512 * MiB, 2 * MiB], [GiB - 32 * KiB, 64 * KiB],
    [GiB + 7 * MiB + 1, MiB], [P.sparseSize - 3 * MiB - 17, 100 * KiB],
  ];
  for (const [off, len] of writes) await p.write('/sparse/huge', off, bytes(`sparse${off}`, len));
  // fallocate(0) inside the file: unwritten extents that must read as zeros.
  await p.f.fallocate(await p.ino('/sparse/huge'), 0, 300 * MiB, 2 * MiB);
  p.m.setattr('/sparse/huge', {});
  await p.truncate('/sparse/huge', P.sparseSize);
  await p.file('/sparse/hole-first', { mode: 0o644 });
  await p.write('/sparse/hole-first', 50 * MiB + 3, bytes('hole-first', 5000));
  await p.file('/sparse/only-size', { mode: 0o644 });
  await p.truncate('/sparse/only-size', 5 * GiB);
  lap('sparse files');

  // Fragmented files: alternate block-by-block writes so every block is its own extent.
  await p.mkdir('/frag', { mode: 0o755 });
  const fa = await p.file('/frag/a', { mode: 0o644 });
  const fb = await p.file('/frag/b', { mode: 0o644 });
  const bs = P.blockSize;
  const da = bytes('frag-a', P.fragBlocks * bs);
  const db = bytes('frag-b', P.fragBlocks * bs);
  for (let i = 0; i < P.fragBlocks; i++) {
    await p.f.write(fa, i * bs, da.subarray(i * bs, (i + 1) * bs));
    await p.f.write(fb, i * bs, db.subarray(i * bs, (i + 1) * bs));
  }
  p.m.write('/frag/a', 0, da);
  p.m.write('/frag/b', 0, db);
  lap('fragmented files');

  // Hard links, in one directory and across directories, also to a device node.
  await p.mkdir('/links', { mode: 0o755 });
  await p.mkdir('/links/sub', { mode: 0o755 });
  await p.file('/links/orig', { mode: 0o640, uid: 5, gid: 6 }, bytes('orig', 9000));
  await p.link('/links/orig', '/links/same-dir');
  await p.link('/links/orig', '/links/sub/other-dir');
  await p.link('/links/orig', '/tree/d0/from-tree');
  await p.file('/links/pair', { mode: 0o644 }, bytes('pair', 100));
  await p.link('/links/pair', '/links/sub/pair2');
  await p.file('/links/gone', { mode: 0o644 }, bytes('gone', 10));
  await p.link('/links/gone', '/links/gone2');
  await p.unlink('/links/gone'); // back to one link
  await p.special('/links/null', 'chr', { mode: 0o666 }, makedev(1, 3));
  await p.link('/links/null', '/links/sub/null-again');

  // Symlinks: fast (< 60 bytes, in the inode) and slow (in a block), UTF-8, dangling.
  await p.mkdir('/sym', { mode: 0o755 });
  const targets: [string, string][] = [
    ['one', 'a'], ['s59', 'x'.repeat(59)], ['s60', 'y'.repeat(60)], ['s61', 'z'.repeat(61)],
    ['rel', '../links/orig'], ['abs', '/etc/passwd'], ['dangling', 'does/not/exist'],
    ['utf8', 'ディレクトリ/ファイル-é-🙂'], ['long', ('segment/').repeat(Math.ceil(P.longSymlink / 8)).slice(0, P.longSymlink)],
    ['spaces', 'a b\tc'],
  ];
  for (const [i, [name, target]] of targets.entries()) await p.symlink(`/sym/${name}`, target, OWNERS[i % OWNERS.length][0], OWNERS[i % OWNERS.length][1]);

  // xattrs: 1 byte to a few KiB, several per file, in the inode and in a block.
  await p.mkdir('/xattr', { mode: 0o755 });
  const X = P.bigXattr;
  const xfiles: Record<string, [string, number][]> = {
    tiny: [['user.a', 1]],
    inode: [['user.a', 1], ['user.bb', 20], ['trusted.t', 30]],
    mixed: [['user.small', 1], ['trusted.mid', 200], ['user.big', X]],
    many: Array.from({ length: 10 }, (_, i) => [`user.attr${i}`, Math.floor((X - 400) / 10) - i] as [string, number]),
    sizes: [['user.s2', 2], ['user.s3', 3], ['user.s4', 4], ['user.s5', 5], ['user.s60', 60], ['user.s61', 61], ['user.s255', 255], ['user.s256', 256]],
    empty: [['user.empty', 0], ['user.one', 1]],
    longname: [['user.' + 'n'.repeat(250), 16], ['trusted.' + 'q'.repeat(247), 3]],
    twin1: [['user.same', Math.floor(X / 2)]],
    twin2: [['user.same', Math.floor(X / 2)]],
  };
  for (const [name, attrs] of Object.entries(xfiles)) {
    await p.file(`/xattr/${name}`, { mode: 0o644 }, bytes(`xf${name}`, 100));
    for (const [an, len] of attrs) await p.setx(`/xattr/${name}`, an, name.startsWith('twin') ? bytes(an, len) : bytes(`${name}/${an}`, len));
  }
  // Replace with another size, and remove: both storage places must stay consistent.
  await p.setx('/xattr/mixed', 'user.small', bytes('bigger-now', 70));
  await p.setx('/xattr/mixed', 'user.big', bytes('smaller-now', Math.floor(X / 3)));
  await p.rmx('/xattr/inode', 'user.bb');
  await p.mkdir('/xattr/dir', { mode: 0o755 });
  await p.setx('/xattr/dir', 'user.on-dir', bytes('ondir', 500));
  await p.setx('/xattr/dir', 'trusted.on-dir', bytes('ondir2', 7));
  await p.symlink('/xattr/link', 'target');
  await p.setx('/xattr/link', 'trusted.on-symlink', bytes('onlink', 40));
  await p.special('/xattr/fifo', 'fifo', { mode: 0o644 });
  await p.setx('/xattr/fifo', 'trusted.on-fifo', bytes('onfifo', Math.min(1000, X)));

  // Names: 255 bytes in 1-, 2-, 3- and 4-byte UTF-8, odd characters.
  await p.mkdir('/names', { mode: 0o755 });
  const names = [
    'a'.repeat(255), 'é'.repeat(127) + 'x', '日'.repeat(85), '🙂'.repeat(63) + 'abc', 'ünïcödé-ファイル-файл',
    'with space', 'new\nline', 'back\\slash', '-dash', '...', '.hidden', 'tab\there', 'e\u0301-combining', '#%*?[]{}$\'"',
  ];
  for (const [i, name] of names.entries()) {
    if (i % 3 === 2) await p.mkdir(`/names/${name}`, { mode: 0o755 });
    else await p.file(`/names/${name}`, { mode: 0o644 }, bytes(name, i * 10));
  }
  const tooLong = await p.f.create(await p.ino('/names'), Buffer.from('b'.repeat(256)), 0o644, 0, 0).then(() => null, (e: Error) => e);
  c.check(!!tooLong && /ENAMETOOLONG/.test(tooLong.message), `a 256-byte name must be refused with ENAMETOOLONG, got ${tooLong ? tooLong.message : 'success'}`);

  // Device nodes, fifos and sockets.
  await p.mkdir('/dev', { mode: 0o755 });
  await p.special('/dev/null', 'chr', { mode: 0o666 }, makedev(1, 3));
  await p.special('/dev/bigdev', 'chr', { mode: 0o620, uid: 0, gid: 5 }, makedev(300, 70000));
  await p.special('/dev/sda1', 'blk', { mode: 0o660, gid: 6 }, makedev(8, 1));
  await p.special('/dev/nvme', 'blk', { mode: 0o660 }, makedev(259, 1048575));
  await p.special('/dev/fifo', 'fifo', { mode: 0o600, uid: 1000, gid: 1000 });
  await p.special('/dev/sock', 'sock', { mode: 0o755 });

  // Explicit times with nanoseconds (last: everything above would have changed them).
  const times: Timespec[] = [
    ts(1234567890, 123456789), ts(0, 1), ts(-1, 999999999), ts(-(2 ** 31), 0), ts(2 ** 31 - 1, 999999999),
    ts(2 ** 31, 5), ts(4102444800, 500000000), ts(2 ** 31 - 1 + 3 * 2 ** 32, 999999999), ts(1700000000, 0),
  ];
  const timed = [
    '/tree/d0/s0/f0.dat', '/tree/d1/s1/f1.dat', '/sizes/s4097', '/sparse/huge', '/links/orig', '/sym/s61', '/sym/one',
    '/dev/fifo', '/dev/sda1', '/xattr/mixed', '/names/' + 'a'.repeat(255), '/frag/a', deep, '/tree/d2/s3', '/xattr/dir',
  ];
  for (const [i, path] of timed.entries()) await p.times(path, times[i % times.length], times[(i + 3) % times.length]);
  lap('links, symlinks, xattrs, names, devices, times');
}

/** Compare the model with what Ext4Fs (read-only) and the kernel (read-only mount) see. */
async function verifyRichTree(t: ExecutionContext, c: Checks, img: string, model: TreeModel, P: RichTreeParams): Promise<void> {
  const expected = model.snapshot();
  c.lap('model snapshot');
  c.fsckClean(img, 'after kfs wrote the tree');
  c.lap('e2fsck');

  await c.stage('debugfs: extent tree and htree shape', () => {
    const ea = extentInfo(img, '/frag/a');
    c.check(ea.extents >= Math.min(1000, P.fragBlocks), `/frag/a has ${ea.extents} extents (expected >= ${Math.min(1000, P.fragBlocks)})`);
    c.check(ea.depth >= (P.blockSize === 1024 ? 2 : 1), `/frag/a extent tree depth ${ea.depth}`);
    const levels = htreeLevels(img, '/big');
    c.check(levels >= (P.blockSize === 1024 ? 1 : 0), `/big htree indirect levels ${levels} (-1: not indexed)`);
    t.log(`/frag/a: ${ea.extents} extents, depth ${ea.depth}; /big: htree indirect levels ${levels}`);
    // Where things went: xattrs in the inode only vs in a block; fast vs block symlinks.
    c.equal(inodeStat(img, '/xattr/tiny').get('File ACL'), '0', '/xattr/tiny (one 1-byte xattr) must keep it in the inode: File ACL');
    c.check(inodeStat(img, '/xattr/mixed').get('File ACL') !== '0', '/xattr/mixed must have an xattr block');
    c.check(inodeStat(img, '/sym/s59').has('Fast link dest'), '/sym/s59 must be a fast symlink');
    c.check(!inodeStat(img, '/sym/s60').has('Fast link dest'), '/sym/s60 must not be a fast symlink');
  });

  const viaKfs = await c.stage('kfs snapshot (read-only open)', async () => {
    const ro = await Ext4Fs.open(img, { readOnly: true });
    try {
      return await snapshotExt4(ro);
    } finally {
      await ro.close();
    }
  });
  if (viaKfs) c.snapshot(expected, viaKfs, 'kfs reading back its own tree vs the model');

  await c.stage('kernel checks', () => {
    const m = loopMount(t, img, { readOnly: true });
    try {
      const viaKernel = snapshotHost(m.dir);
      c.lap('kernel snapshot');
      c.snapshot(expected, viaKernel, 'kernel reading the kfs-written tree vs the model');
      if (viaKfs) c.snapshot(viaKfs, viaKernel, 'kernel vs kfs, every field');
      const huge = viaKernel.get('/sparse/huge');
      c.check(!!huge && huge.blocks! * 512 < 64 * MiB, `/sparse/huge occupies ${huge?.blocks} sectors: holes must stay holes`);
      c.equal(viaKernel.get('/sparse/only-size')?.blocks, 0, '/sparse/only-size (only truncated up) blocks');
      // Reads through the kernel's buffered path at hole/data boundaries, against the model.
      const hugeModel = model.get('/sparse/huge').content!;
      const fd = fs.openSync(join(m.dir, 'sparse/huge'), 'r');
      try {
        for (const off of [0, 4 * KiB - 1, 100 * MiB + 12340, 300 * MiB - 1, GiB - 32 * KiB - 5, GiB + 7 * MiB, P.sparseSize - 10]) {
          const buf = Buffer.alloc(64 * KiB);
          const n = fs.readSync(fd, buf, 0, buf.length, off);
          c.check(buf.subarray(0, n).equals(hugeModel.read(off, 64 * KiB)), `kernel read of /sparse/huge at ${off} differs from the model`);
        }
      } finally {
        fs.closeSync(fd);
      }
    } finally {
      m.unmount();
    }
  });
}

async function kfsWritesKernelReads(t: ExecutionContext, size: string, mkfsArgs: { blockSize: 1024 | 4096; inodes?: number }, P: RichTreeParams): Promise<void> {
  requireRoot(t);
  const c = new Checks(t);
  const img = makeImage(t, { size, ...mkfsArgs });
  const f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  const model = new TreeModel({ mode: 0o755 });
  model.existing('/lost+found', 'dir', { mode: 0o700 });
  const p = new Pair(f, model);
  const built = await c.stage('build the tree through kfs', async () => {
    try {
      await buildRichTree(p, P, c);
    } finally {
      await f.close();
    }
    return true;
  });
  if (built) await verifyRichTree(t, c, img, model, P);
  else c.fsckClean(img, 'after the failed build');
  c.done();
}

test.serial('a. kfs writes, kernel reads: 2 GiB image, 4 KiB blocks', async (t) => {
  t.timeout(8 * 60 * 1000);
  await kfsWritesKernelReads(t, '2G', { blockSize: 4096 }, {
    blockSize: 4096, treeFiles: 3000, treeFanout: 10, bigDirEntries: 50000, bigNamePad: 40, fragBlocks: 1200,
    sparseSize: GiB + 512 * MiB + 5, longSymlink: 4000, bigXattr: 3000,
  });
});

test.serial('a. kfs writes, kernel reads: 64 MiB image, 1 KiB blocks (two-level htree, extent depth 2)', async (t) => {
  t.timeout(6 * 60 * 1000);
  await kfsWritesKernelReads(t, '64M', { blockSize: 1024, inodes: 32768 }, {
    blockSize: 1024, treeFiles: 300, treeFanout: 5, bigDirEntries: 20000, bigNamePad: 60, fragBlocks: 1100,
    sparseSize: GiB + 100 * MiB + 7, longSymlink: 1000, bigXattr: 600,
  });
});

/**
 * Regression (found by test a): the first inode allocated in a group whose block bitmap is
 * still BLOCK_UNINIT initializes that bitmap but leaves its checksum in the group descriptor
 * stale, unless a block is allocated in the group later. Smallest case: a 64 MiB 1 KiB-block
 * image has 2048 inodes per group; the 2038th empty file in the root is inode 2049, the first
 * of group 1.
 */
test.serial('a. kfs: first inode in a BLOCK_UNINIT group keeps the block bitmap checksum valid', async (t) => {
  t.timeout(2 * 60 * 1000);
  const img = makeImage(t, { size: '64M', blockSize: 1024 });
  const f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  let last = 0;
  try {
    for (let i = 0; i < 2038; i++) last = (await f.create(2, Buffer.from(`f${i}`), 0o644, 0, 0)).ino;
  } finally {
    await f.close();
  }
  t.is(last, 2049, 'the last file is the first inode of group 1');
  const r = fsck(img);
  t.is(r.code, 0, `e2fsck -fn exited ${r.code}:\n${r.output}`);
});

/**
 * A new inode alone in its table block starts that block zeroed instead of reading it (as the
 * kernel's __ext4_get_inode_loc does): creating files one after another reads no inode table
 * block, and a block whose only other inodes were deleted by the kernel (dtime and old extents
 * still on disk) is zeroed around the new inode without harm to e2fsck or the kernel.
 */
test.serial('a. kfs: a new inode alone in its table block is not read from the image first', async (t) => {
  t.timeout(2 * 60 * 1000);
  requireRoot(t);
  const img = makeImage(t, { size: '256M', blockSize: 4096, extraArgs: ['-I', '256'] });
  // The kernel fills inodes 12..60 (table blocks 0..3 of group 0, 16 inodes a block) with data,
  // then deletes those of table block 1 (inodes 17..32).
  const m = loopMount(t, img);
  for (let i = 0; i < 49; i++) fs.writeFileSync(join(m.dir, `k${i}`), Buffer.alloc(5000, i));
  const inoOf = (name: string): number => fs.statSync(join(m.dir, name)).ino;
  const deleted = Array.from({ length: 49 }, (_, i) => `k${i}`).filter((n) => inoOf(n) >= 17 && inoOf(n) <= 32);
  t.is(deleted.length, 16, 'the kernel gave table block 1 to 16 of the files');
  const kept = Array.from({ length: 49 }, (_, i) => `k${i}`).filter((n) => !deleted.includes(n)).map(inoOf);
  for (const n of deleted) fs.unlinkSync(join(m.dir, n));
  m.unmount();

  const f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  const made: [string, number][] = [];
  try {
    for (const ino of kept) await f.getattr(ino); // their table blocks are cached now
    const first = await f.create(2, Buffer.from('n0'), 0o644, 0, 0);
    t.is(first.ino, 17, 'the first free inode is the first of the emptied table block');
    made.push(['n0', first.ino]);
    await f.sync();
    const misses0 = f.vol.dev.stats.misses;
    for (let i = 1; i < 80; i++) made.push([`n${i}`, (await f.create(2, Buffer.from(`n${i}`), 0o644, 0, 0)).ino]);
    await f.sync();
    // n1..n15 fill block 1; n16.. take the inodes after the kernel's: the first of their table
    // blocks is shared with the kernel's files (cached by the getattrs), the others start zeroed.
    t.is(f.vol.dev.stats.misses - misses0, 0, 'no inode table block was read for the 79 new inodes');
  } finally {
    await f.close();
  }
  fsckCleanAndKernelSees(t, img, (dir) => {
    for (const [name, ino] of made) t.is(fs.statSync(join(dir, name)).ino, ino, name);
    for (let i = 0; i < 49; i++) {
      const name = `k${i}`;
      if (deleted.includes(name)) t.false(fs.existsSync(join(dir, name)), name);
      else t.deepEqual(fs.readFileSync(join(dir, name)), Buffer.alloc(5000, i), name);
    }
  });
});

/**
 * A directory's listing in cookie order is kept while the directory is unchanged (a guest lists
 * it again after each drop_caches): listed twice, the second listing is the first's entries.
 * After every kind of change (create, unlink, rename away, rename over, exchange, a
 * subdirectory moved in, whose own ".." changes) the next listing shows it. 1,000 names: the
 * directory is indexed (htree) and its leaves split as it grows.
 */
test.serial('a. kfs: a directory listed again while unchanged reuses its listing; each change shows in the next one', async (t) => {
  t.timeout(2 * 60 * 1000);
  requireRoot(t);
  const img = makeImage(t, { size: '64M', blockSize: 4096 });
  const f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  const model = new Map<string, number>();
  let d = 0;
  const sorted = (m: Iterable<[string, number]>): [string, number][] => [...m].sort((a, b) => a[0].localeCompare(b[0]));
  const listed = async (dir: number): Promise<[string, number][]> => sorted((await f.readdir(dir, 0)).map((e) => [e.name.toString(), e.ino]));
  const triples = (l: { name: Buffer; ino: number; next: number }[]): [string, number, number][] => l.map((e) => [e.name.toString(), e.ino, e.next]);
  let kept: [string, number, number][] = [];
  try {
    d = (await f.mkdir(2, Buffer.from('d'), 0o755, 0, 0)).ino;
    for (let i = 0; i < 1000; i++) model.set(`file-with-a-longer-name-${i}`, (await f.create(d, Buffer.from(`file-with-a-longer-name-${i}`), 0o644, 0, 0)).ino);
    const sub = (await f.mkdir(2, Buffer.from('sub'), 0o755, 0, 0)).ino;
    const names = async (): Promise<[string, number][]> => (await listed(d)).filter(([n]) => n !== '.' && n !== '..');

    const first = await f.readdir(d, 0);
    const again = await f.readdir(d, 0);
    t.is(again.length, 1002);
    t.true(again.every((e, i) => e === first[i]), 'the unchanged directory was not listed afresh');
    t.deepEqual(await names(), sorted(model));
    t.deepEqual(await listed(sub), [['.', sub], ['..', 2]]);

    const n = (i: number): string => `file-with-a-longer-name-${i}`;
    const swap = (a: string, b: string): void => {
      const x = model.get(a)!;
      model.set(a, model.get(b)!);
      model.set(b, x);
    };
    const changes: [string, () => Promise<void>][] = [
      ['create', async () => void model.set('new', (await f.create(d, Buffer.from('new'), 0o644, 0, 0)).ino)],
      ['unlink', async () => { await f.unlink(d, Buffer.from(n(7))); model.delete(n(7)); }],
      ['rename away', async () => { await f.rename(d, Buffer.from(n(8)), 2, Buffer.from('out')); model.delete(n(8)); }],
      ['rename over', async () => { await f.rename(d, Buffer.from(n(9)), d, Buffer.from(n(10))); model.set(n(10), model.get(n(9))!); model.delete(n(9)); }],
      ['exchange', async () => { await f.rename(d, Buffer.from(n(11)), d, Buffer.from(n(12)), RENAME_EXCHANGE); swap(n(11), n(12)); }],
      ['subdirectory moved in', async () => { await f.rename(2, Buffer.from('sub'), d, Buffer.from('sub')); model.set('sub', sub); }],
    ];
    for (const [what, change] of changes) {
      await f.readdir(d, 0); // listed (and kept) before the change
      await change();
      t.deepEqual(await names(), sorted(model), `after ${what}`);
    }
    t.deepEqual(await listed(sub), [['.', sub], ['..', d]], 'the moved directory lists its new parent as ".."');
    kept = triples(await f.readdir(d, 0));
  } finally {
    await f.close();
  }
  const fresh = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  try {
    t.deepEqual(triples(await fresh.readdir(d, 0)), kept, 'the kept listing has the cookies a fresh one computes');
  } finally {
    await fresh.close();
  }
  fsckCleanAndKernelSees(t, img, (dir) => {
    t.deepEqual(fs.readdirSync(join(dir, 'd')).sort(), [...model.keys()].sort());
    t.true(fs.statSync(join(dir, 'd')).size > 4096, 'the directory grew past one block (an htree)');
    for (const [name, ino] of model) t.is(fs.statSync(join(dir, 'd', name)).ino, ino, name);
  });
});

/**
 * Inode changes wait in memory for the next commit (InodeStore.write): when more inodes than the
 * cache holds (20000) change with no commit, the cache trim must write each one before dropping
 * it, and an inode read again afterwards comes from its table block with the change in it.
 */
test.serial('a. kfs: 22000 inodes changed without a commit outgrow the inode cache and keep every change', async (t) => {
  t.timeout(4 * 60 * 1000);
  requireRoot(t);
  const img = makeImage(t, { size: '1G', blockSize: 4096, inodes: 65536 });
  const N = 22000;
  const sizeOf = (i: number): number => (i * 7919) % 100000;
  const f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  const inos: number[] = [];
  try {
    const dir = (await f.mkdir(2, Buffer.from('d'), 0o755, 0, 0)).ino;
    for (let i = 0; i < N; i++) {
      const a = await f.create(dir, Buffer.from(`f${i}`), 0o600, 1000 + (i % 7), 100, 0);
      await f.setattr(a.ino, { size: sizeOf(i) });
      inos.push(a.ino);
    }
    t.true(f.cachedInodes <= 20000, `the inode cache stays bounded (${f.cachedInodes} inodes held)`);
    // The first files were dropped from the cache long ago: read back from their table blocks.
    for (let i = 0; i < 200; i++) {
      const a = await f.getattr(inos[i]);
      t.is(a.size, sizeOf(i), `f${i} size read back`);
      t.is(a.uid, 1000 + (i % 7), `f${i} uid read back`);
    }
  } finally {
    await f.close();
  }
  fsckCleanAndKernelSees(t, img, (dir) => {
    let bad = 0;
    for (let i = 0; i < N; i++) {
      const s = fs.statSync(join(dir, 'd', `f${i}`));
      if (s.size !== sizeOf(i) || s.uid !== 1000 + (i % 7) || (s.mode & 0o777) !== 0o600 || s.ino !== inos[i]) bad++;
    }
    t.is(bad, 0, 'the kernel sees every file as kfs changed it');
  });
});

// ---------- b. the kernel writes, kfs reads and modifies ----------

/** Write a file on the host (the kernel) and record it in the model. */
function hostFile(mnt: string, m: TreeModel, path: string, o: Owner, data: Buffer): void {
  const abs = join(mnt, path);
  fs.writeFileSync(abs, data);
  fs.chmodSync(abs, o.mode);
  fs.chownSync(abs, o.uid ?? 0, o.gid ?? 0);
  m.file(path, o, data);
}

test.serial('b. kernel writes, kfs reads and modifies, kernel reads back', async (t) => {
  t.timeout(6 * 60 * 1000);
  requireRoot(t);
  const c = new Checks(t);
  const lap = (what: string): void => c.lap(what);
  const img = makeImage(t, { size: '1G', blockSize: 4096 });
  const work = tempDir(t, 'interop-b');
  const model = new TreeModel({ mode: 0o755 });
  model.existing('/lost+found', 'dir', { mode: 0o700 });

  // ---- populate with the kernel ----
  const m = loopMount(t, img, { options: ['noatime'] });
  const M = m.dir;
  bash('umask 022; mkdir -p a/b/c/d e/f g/empty many; chmod 0750 e; chown 1000:100 e/f', { cwd: M });
  for (const d of ['/a', '/a/b', '/a/b/c', '/a/b/c/d', '/e', '/e/f', '/g', '/g/empty', '/many']) model.mkdir(d, { mode: 0o755 });
  model.get('/e').mode = 0o750;
  Object.assign(model.get('/e/f'), { uid: 1000, gid: 100 });
  for (let i = 0; i < 12; i++) hostFile(M, model, `/a/file${i}`, { mode: 0o644, uid: i * 100, gid: i }, bytes(`k${i}`, [0, 1, 100, 4096, 5000, 100000, 1 * MiB + 5, 60, 3 * MiB, 12, 4097, 70000][i]));
  hostFile(M, model, '/a/b/in-b', { mode: 0o600 }, bytes('inb', 3000));
  hostFile(M, model, '/a/b/c/in-c', { mode: 0o644 }, bytes('inc', 30000));
  hostFile(M, model, '/g/victim', { mode: 0o644 }, bytes('victim', 20000));
  hostFile(M, model, '/e/f/deep', { mode: 0o644 }, bytes('deep', 10));
  // dd for a larger file in odd block sizes.
  fs.writeFileSync(join(work, 'src'), bytes('dd-src', 5 * MiB + 77));
  bash(`umask 022; dd if="${work}/src" of=a/dd bs=65537 status=none`, { cwd: M });
  model.file('/a/dd', { mode: 0o644 }, bytes('dd-src', 5 * MiB + 77));
  // Hard links (also across directories), symlinks short and long.
  bash('umask 022; ln a/file3 e/hard; ln a/file3 g/hard2; ln a/file7 e/hlvictim; ln a/file7 e/hlvictim2', { cwd: M });
  model.link('/a/file3', '/e/hard');
  model.link('/a/file3', '/g/hard2');
  model.link('/a/file7', '/e/hlvictim');
  model.link('/a/file7', '/e/hlvictim2');
  const longTarget = 'L'.repeat(50) + '/' + 'é'.repeat(200);
  bash(`umask 022; ln -s ../a/file1 g/short; ln -s "${longTarget}" g/long; ln -s nowhere a/dangling`, { cwd: M });
  model.symlink('/g/short', '../a/file1');
  model.symlink('/g/long', longTarget);
  model.symlink('/a/dangling', 'nowhere');
  // xattrs: small (in the inode) and large (block); two files with identical block xattrs
  // (the kernel shares one block between them).
  const big = bytes('shared-xattr', 2500);
  const xs: [string, string, Buffer][] = [
    ['/a/file1', 'user.small', bytes('x1', 10)], ['/a/file1', 'user.tiny', bytes('x0', 1)],
    ['/a/file2', 'user.big', bytes('x2', 3000)], ['/a/file2', 'trusted.t', bytes('x3', 50)],
    ['/a/file4', 'user.shared', big], ['/a/file5', 'user.shared', big], ['/a/file6', 'user.shared', big],
    ['/a/b', 'user.dir', bytes('xd', 300)], ['/a/file8', 'user.m1', bytes('m1', 40)], ['/a/file8', 'user.m2', bytes('m2', 900)],
  ];
  for (const [path, name, value] of xs) {
    mustRun('setfattr', ['-h', '-n', name, '-v', '0x' + value.toString('hex'), join(M, path)]);
    model.setXattr(path, name, value);
  }
  // Devices and fifos.
  bash('umask 022; mkdir dev; mknod dev/null c 1 3; mknod dev/big c 300 70000; mknod dev/sda b 8 1; mkfifo dev/fifo; chown 7:8 dev/fifo; chmod 0620 dev/null', { cwd: M });
  model.mkdir('/dev', { mode: 0o755 });
  model.special('/dev/null', 'chr', { mode: 0o620 }, makedev(1, 3));
  model.special('/dev/big', 'chr', { mode: 0o644 }, makedev(300, 70000));
  model.special('/dev/sda', 'blk', { mode: 0o644 }, makedev(8, 1));
  model.special('/dev/fifo', 'fifo', { mode: 0o644, uid: 7, gid: 8 });
  // A 5000-entry directory (htree on the kernel's side).
  bash('umask 022; cd many; for i in $(seq 1 5000); do : > "entry-$i-of-the-many"; done', { cwd: M });
  for (let i = 1; i <= 5000; i++) model.file(`/many/entry-${i}-of-the-many`, { mode: 0o644 });
  // A sparse file: truncate, then dd at offsets.
  fs.writeFileSync(join(work, 'chunk'), bytes('chunk', 2 * MiB));
  bash(`umask 022; truncate -s 3G sparse; dd if="${work}/chunk" of=sparse bs=1M seek=1000 conv=notrunc status=none; ` +
    `dd if="${work}/chunk" of=sparse bs=1M seek=2500 count=1 conv=notrunc status=none; ` +
    `dd if="${work}/chunk" of=sparse bs=4096 seek=3 count=1 conv=notrunc status=none`, { cwd: M });
  const sparse = new SparseContent();
  sparse.truncate(3 * GiB);
  const chunk = bytes('chunk', 2 * MiB);
  sparse.write(1000 * MiB, chunk);
  sparse.write(2500 * MiB, chunk.subarray(0, MiB));
  sparse.write(3 * 4096, chunk.subarray(0, 4096));
  model.file('/sparse', { mode: 0o644 }, sparse);
  // Explicit times with nanoseconds (touch -d), atime and mtime separately; after all writes.
  const times: [string, string, bigint][] = [
    ['/a/file0', '-m', 1234567890123456789n], ['/a/file0', '-a', 1000000000000000001n], ['/a/file3', '', 946684800999999999n],
    ['/g/long', '-h', 2000000000000000000n], ['/a/b/c/d', '', 1500000000000000123n], ['/sparse', '-m', 1600000000000000042n],
    ['/dev/fifo', '', 1111111111111111111n],
  ];
  for (const [path, flag, ns] of times) {
    const at = `@${ns / 1000000000n}.${(ns % 1000000000n).toString().padStart(9, '0')}`;
    mustRun('touch', [...(flag ? [flag] : []), ...(flag === '-h' ? [] : ['-h']), '-d', at, join(M, path)]);
    model.setattr(path, { atimeNs: flag === '-m' ? undefined : ns, mtimeNs: flag === '-a' ? undefined : ns });
  }
  mustRun('touch', ['-d', '2001-02-03 04:05:06.123456789 UTC', join(M, 'e/f/deep')]);
  model.setattr('/e/f/deep', { atimeNs: 981173106123456789n, mtimeNs: 981173106123456789n });
  lap('kernel populated');
  const kernelView = snapshotHost(M);
  c.snapshot(model.snapshot(), kernelView, 'kernel-populated tree vs the model (test sanity)');
  m.unmount();
  const acl = debugfs(img, ['stat /a/file4', 'stat /a/file5', 'stat /a/file6']).match(/File ACL: (\d+)/g);
  t.log(`xattr blocks of /a/file4, 5, 6 (shared if equal): ${acl?.join(', ')}`);
  c.fsckClean(img, 'the kernel-written image');
  lap('kernel snapshot');

  // ---- kfs reads exactly what the kernel showed ----
  await c.stage('kfs snapshot of the kernel-written image', async () => {
    const ro = await Ext4Fs.open(img, { readOnly: true });
    try {
      c.snapshot(kernelView, await snapshotExt4(ro), 'kfs reading the kernel-written tree vs the kernel, every field');
    } finally {
      await ro.close();
    }
  });

  // ---- kfs modifies ----
  model.adopt(kernelView);
  // Let the clock move on, so that times kfs sets are distinguishable from the kernel's.
  await new Promise((r) => setTimeout(r, 50));
  model.recent(nowNs());
  const modified = await c.stage('kfs modifications', async () => {
    const f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
    const p = new Pair(f, model);
    try {
      await modifyKernelTree(p);
    } finally {
      await f.close();
    }
    return true;
  });
  c.fsckClean(img, 'after kfs modified the kernel-written tree');

  // ---- the kernel reads the result ----
  if (modified) {
    const expected = model.snapshot();
    const after = await c.stage('kernel snapshot after the modifications', () => {
      const m2 = loopMount(t, img, { readOnly: true });
      try {
        return snapshotHost(m2.dir);
      } finally {
        m2.unmount();
      }
    });
    if (after) {
      c.snapshot(expected, after, 'kernel view after kfs modifications vs the model');
      await c.stage('kfs snapshot after the modifications', async () => {
        const ro2 = await Ext4Fs.open(img, { readOnly: true });
        try {
          c.snapshot(after, await snapshotExt4(ro2), 'kfs vs kernel after the modifications, every field');
        } finally {
          await ro2.close();
        }
      });
    }
  }

  // ---- and the kernel can keep working on it ----
  await c.stage('kernel modifies the kfs-modified image', () => {
    const m3 = loopMount(t, img, { options: ['noatime'] });
    try {
      bash('for i in $(seq 1 1500); do : > "many/kernel-again-$i"; done; rm -f many/kfs-new-1*; rm -rf g; ' +
        'mv a/file0 many/; dd if=/dev/zero of=sparse bs=1M seek=1500 count=2 conv=notrunc status=none; sync', { cwd: m3.dir });
    } finally {
      m3.unmount();
    }
  });
  c.fsckClean(img, 'after the kernel changed the kfs-modified image');
  await c.stage('kfs reads what the kernel made of its changes', async () => {
    const m4 = loopMount(t, img, { readOnly: true });
    let view;
    try {
      view = snapshotHost(m4.dir);
    } finally {
      m4.unmount();
    }
    const ro3 = await Ext4Fs.open(img, { readOnly: true });
    try {
      c.snapshot(view, await snapshotExt4(ro3), 'kfs vs kernel after the kernel changed the kfs-modified image, every field');
    } finally {
      await ro3.close();
    }
  });
  c.done();
});

/** Test b's changes through kfs: deletions, renames, truncations, appends, xattrs, new entries. */
async function modifyKernelTree(p: Pair): Promise<void> {
  const f = p.f;
  const model = p.m;
  // Deletions: plain, one name of a hard-link group, symlink, fifo, a fifth of the htree dir.
  await p.unlink('/a/file2');
  await p.unlink('/e/hard');
  await p.unlink('/a/dangling');
  await p.unlink('/dev/fifo');
  for (let i = 5; i <= 5000; i += 5) await p.unlink(`/many/entry-${i}-of-the-many`);
  // Renames: same directory, across directories, over an existing file, over a hard-linked
  // file, a directory into another directory, a directory over an empty directory.
  await p.rename('/a/file3', '/a/file3-renamed');
  await p.rename('/a/file4', '/g/file4');
  await p.rename('/a/file5', '/g/victim');
  await p.rename('/a/file6', '/e/hlvictim');
  await p.rename('/e/f', '/g/f-moved');
  await p.rename('/a/b/c', '/g/empty');
  await p.rename('/a/file9', '/many/from-a');
  for (let i = 1; i <= 5000; i += 50) await p.rename(`/many/entry-${i}-of-the-many`, `/many/renamed-${i}`);
  await p.rename('/many/entry-2-of-the-many', '/a/out-of-many');
  // Truncations down and up (the sparse file across its data), appends, a punched hole.
  await p.truncate('/a/file10', 0);
  await p.truncate('/a/file11', 1234);
  await p.truncate('/a/file1', 1 * MiB + 3);
  await p.truncate('/a/dd', 4 * MiB + 1);
  await p.truncate('/sparse', 1100 * MiB);
  await p.truncate('/sparse', 2 * GiB + 5);
  await p.append('/a/file0', bytes('append0', 10000));
  await p.append('/a/file7', bytes('append7', 123));
  await p.append('/sparse', bytes('append-sparse', 70000));
  await p.append('/a/file8', bytes('append8', 5 * MiB));
  await p.punch('/a/dd', 100000, 300000);
  // A whole tree goes.
  await p.rmtree('/a/b');
  // xattrs: change one sharer of the kernel's shared block, remove one, add a block one.
  await p.setx('/g/file4', 'user.shared', bytes('changed-shared', 1000));
  await p.rmx('/a/file1', 'user.tiny');
  await p.setx('/a/file1', 'user.now-big', bytes('nowbig', 2000));
  await p.setx('/a/file8', 'user.m2', bytes('m2-small', 5));
  // New entries in kernel-made directories, including the htree directory.
  const manyIno = await p.ino('/many');
  for (let i = 0; i < 600; i++) {
    await f.create(manyIno, Buffer.from(`kfs-new-${i}`), 0o640, 1, 2);
    model.file(`/many/kfs-new-${i}`, { mode: 0o640, uid: 1, gid: 2 });
  }
  await p.mkdir('/g/f-moved/newdir', { mode: 0o700, uid: 9, gid: 9 });
  await p.file('/g/f-moved/newdir/data', { mode: 0o644 }, bytes('newdata', 300000));
  await p.symlink('/g/f-moved/newdir/lnk', 'x'.repeat(100));
  await p.link('/a/file0', '/g/f-moved/newdir/hl');
  // Attributes.
  await p.chmod('/a/file0', 0o4711, 4242, 4343);
  await p.times('/a/file11', ts(1333333333, 333333333), ts(1444444444, 444444444));
  await p.times('/g', ts(1555555555, 5), ts(1666666666, 6));
}
