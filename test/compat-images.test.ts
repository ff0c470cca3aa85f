/**
 * Images made by mkfs.ext4 with settings other than the defaults:
 *  - 128-byte inodes (`-I 128`; mke2fs's "floppy" type): no extra fields, so no nanoseconds,
 *    no crtime, no checksum_hi and no in-inode xattrs, and times are signed 32-bit seconds,
 *    which the kernel clamps to 1901-12-13 20:45:52 .. 2038-01-19 03:14:07. The kernel writes a
 *    tree, kfs reads it exactly, changes it, and e2fsck -fn and the kernel agree with kfs.
 *  - ext2 and ext3 images: their files are block maps (direct, single, double and triple
 *    indirect blocks), which kfs reads; without the extent feature the filesystem opens
 *    read-only. Made ext4 by tune2fs -O extent, a block-mapped file kfs changes is stored as an
 *    extent tree and its indirect blocks are reused or freed (ext4_ext_migrate's outcome).
 *  - meta_bg: each meta group's descriptor block at the start of its first group, with backups
 *    in its second and last; kfs finds the descriptors there and allocates around them.
 *  - inline_data: files and directories whose bytes live in the inode (i_block, then the
 *    system.data xattr) are read as the kernel shows them; the filesystem opens read-only.
 *  - features kfs does not implement: refused at open with the feature's name (incompat ones
 *    and bigalloc, whose cluster-counted geometry must not be taken for damage), or opened
 *    read-only (unknown ro_compat features such as quota), as the kernel does.
 * Needs root (loop mounts) and e2fsprogs.
 */
import test, { ExecutionContext } from 'ava';
import fs from 'node:fs';
import { join } from 'node:path';
import { Ext4Fs } from '../src/ext4/fs';
import { createHash } from 'node:crypto';
import { makeImage, loopMount, kernelMounted, fsck, fsckCleanAndKernelSees, requireRoot, mustRun, tempDir, runCmd, kfsCliPath, debugfs } from './helpers/image';

const S32_MAX = 2 ** 31 - 1;
const S32_MIN = -(2 ** 31);

function fileData(i: number): Buffer {
  return Buffer.alloc(1000 + 517 * i, `file ${i} `);
}

/** Open img with Ext4Fs, run fn, and close it whatever fn did. */
async function withExt4<T>(img: string, opts: Parameters<typeof Ext4Fs.open>[1], fn: (f: Ext4Fs) => Promise<T>): Promise<T> {
  const f = await Ext4Fs.open(img, opts);
  try {
    return await fn(f);
  } finally {
    await f.close();
  }
}

async function openedOrError(img: string, readOnly = false): Promise<string> {
  try {
    return await withExt4(img, { commitIntervalMs: 0, readOnly }, async (f) => (f.readOnly ? 'opened read-only' : 'opened read-write'));
  } catch (e) {
    return `refused: ${(e as Error).message}`;
  }
}

async function smallInodes(t: ExecutionContext, blockSize: 1024 | 4096): Promise<void> {
  t.timeout(2 * 60 * 1000);
  requireRoot(t);
  const img = makeImage(t, { size: '64M', blockSize, extraArgs: ['-I', '128'] });
  t.is(fs.readFileSync(img).readUInt16LE(1024 + 0x58), 128, 's_inode_size is 128');

  // The kernel writes: files, an htree directory, a symlink, an xattr (in a block: no room in
  // the inode), a time with nanoseconds it must drop.
  const k = loopMount(t, img);
  fs.mkdirSync(join(k.dir, 'd'));
  for (let i = 0; i < 400; i++) fs.writeFileSync(join(k.dir, 'd', `f${i}`), fileData(i));
  fs.symlinkSync('d/f1', join(k.dir, 'link'));
  fs.writeFileSync(join(k.dir, 'x'), 'xattr holder');
  fs.utimesSync(join(k.dir, 'x'), new Date(1_700_000_000_123), new Date(1_700_000_000_987));
  const kernelMtime = fs.statSync(join(k.dir, 'x')).mtimeMs;
  k.unmount();
  t.is(kernelMtime, 1_700_000_000_000, 'the kernel keeps whole seconds in a 128-byte inode');

  let made = 0;
  await withExt4(img, { commitIntervalMs: 0 }, async (f) => {
    t.false(f.readOnly);
    const d = (await f.lookup(2, Buffer.from('d'))).ino;
    for (let i = 0; i < 400; i += 37) {
      const a = await f.lookup(d, Buffer.from(`f${i}`));
      t.deepEqual(await f.read(a.ino, 0, a.size + 10), fileData(i), `f${i} as the kernel wrote it`);
    }
    const x = await f.lookup(2, Buffer.from('x'));
    t.deepEqual(x.mtime, { sec: 1_700_000_000, nsec: 0 });
    t.is((await f.readlink((await f.lookup(2, Buffer.from('link'))).ino)).toString(), 'd/f1');

    // kfs changes it: a new file with data, an xattr, times out of the 32-bit range and with
    // nanoseconds, an unlink and a rename in the htree directory.
    const n = await f.create(2, Buffer.from('new'), 0o644, 0, 0);
    made = n.ino;
    t.is(await f.write(n.ino, 0, fileData(7)), fileData(7).length);
    await f.setxattr(n.ino, 'user.k', Buffer.from('v'));
    const after = await f.setattr(n.ino, { mtime: { sec: 2_208_988_800, nsec: 5 }, atime: { sec: -5_364_662_400, nsec: 0 } }); // 2040, 1800
    t.deepEqual(after.mtime, { sec: S32_MAX, nsec: 0 }, 'a 2040 mtime is clamped to 2038, as the kernel does');
    t.deepEqual(after.atime, { sec: S32_MIN, nsec: 0 }, 'an 1800 atime is clamped to 1901');
    const y = await f.setattr(x.ino, { mtime: { sec: 1_800_000_000, nsec: 999_999_999 } });
    t.deepEqual(y.mtime, { sec: 1_800_000_000, nsec: 0 }, 'nanoseconds are dropped');
    await f.unlink(d, Buffer.from('f3'));
    await f.rename(d, Buffer.from('f4'), 2, Buffer.from('moved'));
  });

  fsckCleanAndKernelSees(t, img, (dir) => {
    const st = fs.statSync(join(dir, 'new'), { bigint: true });
    t.is(Number(st.ino), made);
    t.deepEqual(fs.readFileSync(join(dir, 'new')), fileData(7));
    t.is(st.mtimeNs, BigInt(S32_MAX) * 1_000_000_000n);
    t.is(st.atimeNs, BigInt(S32_MIN) * 1_000_000_000n);
    t.is(fs.statSync(join(dir, 'x')).mtimeMs, 1_800_000_000_000);
    t.false(fs.existsSync(join(dir, 'd', 'f3')));
    t.deepEqual(fs.readFileSync(join(dir, 'moved')), fileData(4));
    t.is(fs.readdirSync(join(dir, 'd')).length, 398);
  });
}

test.serial('128-byte inodes, 4 KiB blocks: kernel writes, kfs reads and changes, e2fsck and the kernel agree', (t) => smallInodes(t, 4096));
test.serial('128-byte inodes, 1 KiB blocks: kernel writes, kfs reads and changes, e2fsck and the kernel agree', (t) => smallInodes(t, 1024));

test.serial('features kfs does not implement: refused by name, or read-only for unknown ro_compat ones', async (t) => {
  t.timeout(2 * 60 * 1000);
  const cases: { args: string[]; expect: RegExp }[] = [
    { args: ['-O', 'bigalloc', '-C', '16384'], expect: /^refused: .*does not support: bigalloc/ },
    { args: ['-O', 'encrypt'], expect: /^refused: .*does not support: encrypt/ },
    { args: ['-O', 'quota'], expect: /^opened read-only$/ },
  ];
  for (const c of cases) {
    const img = makeImage(t, { size: '64M', extraArgs: c.args, name: `${c.args.join('').replace(/[^a-z0-9]/gi, '')}.img` });
    t.regex(await openedOrError(img), c.expect, `mkfs.ext4 ${c.args.join(' ')}`);
    t.is(fsck(img).code, 0, `the image made with ${c.args.join(' ')} is untouched`);
  }
});

/**
 * sparse_super2: superblock backups only in the (at most two) groups s_backup_bgs names, here
 * groups 1 and 10 of eleven. kfs filling the filesystem must not take group 10's backup (and
 * its descriptor copy and reserve) for free space (sparse_super's rule has none there) nor
 * leave groups 3, 5, 7 and 9's supposed backups marked in use when it first initializes their
 * bitmaps.
 */
test.serial('sparse_super2: kfs fills the filesystem around the backups s_backup_bgs names', async (t) => {
  t.timeout(2 * 60 * 1000);
  const img = makeImage(t, { size: '88M', blockSize: 1024, extraArgs: ['-O', 'sparse_super2'] });
  t.regex(mustRun('dumpe2fs', ['-h', img]), /Backup block groups:\s+1 10\b/);
  // The backup in group 10: at its first block, s_magic 0xef53, s_block_group_nr 10; then
  // the descriptor copy and the reserve (258 blocks in all, compared whole).
  const backupAt = (1 + 10 * 8192) * 1024;
  const backup = (): Buffer => {
    const fd = fs.openSync(img, 'r');
    try {
      const b = Buffer.alloc(258 * 1024);
      fs.readSync(fd, b, 0, b.length, backupAt);
      return b;
    } finally {
      fs.closeSync(fd);
    }
  };
  const before = backup();
  t.is(before.readUInt16LE(0x38), 0xef53, 'mke2fs put a backup superblock in group 10');
  t.is(before.readUInt16LE(0x5a), 10);
  const chunk = Buffer.alloc(1 << 20);
  const files: number[] = [];
  await withExt4(img, { commitIntervalMs: 0 }, async (f) => {
    for (let i = 0; ; i++) {
      const a = await f.create(2, Buffer.from(`fill${i}`), 0o644, 0, 0);
      files.push(a.ino);
      try {
        for (let mb = 0; mb < 8; mb++) await f.write(a.ino, mb << 20, chunk.fill(i * 8 + mb));
      } catch (e) {
        t.is((e as { code?: string }).code, 'ENOSPC');
        break;
      }
    }
    t.true((await f.statfs()).bfree < 2048, 'the filesystem is full');
  });
  const r = fsck(img);
  t.is(r.code, 0, `e2fsck -fn exited ${r.code}:\n${r.output}`);
  t.true(backup().equals(before), 'the backup superblock, descriptors and reserve in group 10 are intact');
});

/**
 * Without the filetype feature a directory entry has no file type (the byte belongs to a
 * 16-bit name_len): every entry kfs writes, "." and ".." of new directories and of an htree
 * root included, has 0 there, which e2fsck -fn checks.
 */
test.serial('no filetype feature: kfs writes entries without file types', async (t) => {
  t.timeout(2 * 60 * 1000);
  requireRoot(t);
  const img = makeImage(t, { size: '64M', extraArgs: ['-O', '^filetype'] });
  await withExt4(img, { commitIntervalMs: 0 }, async (f) => {
    const d = (await f.mkdir(2, Buffer.from('d'), 0o755, 0, 0)).ino;
    for (let i = 0; i < 300; i++) await f.create(d, Buffer.from(`file-with-a-long-name-${i}`), 0o644, 0, 0); // an htree
    await f.symlink(d, Buffer.from('link'), Buffer.from('file-with-a-long-name-1'), 0, 0);
    await f.mknod(d, Buffer.from('fifo'), 0o010644, 0, 0, 0);
    await f.mkdir(d, Buffer.from('sub'), 0o755, 0, 0);
    await f.rename(d, Buffer.from('sub'), 2, Buffer.from('sub2')); // its ".." changes
    const named = (await f.readdir(d, 0)).filter((e) => e.name.toString() !== '.' && e.name.toString() !== '..');
    t.is(named.length, 302);
    t.true(named.every((e) => e.type === 0), 'readdir reports DT_UNKNOWN for every name');
  });
  fsckCleanAndKernelSees(t, img, (dir) => {
    t.is(fs.readdirSync(join(dir, 'd')).length, 302);
    t.true(fs.statSync(join(dir, 'sub2')).isDirectory());
  });
});

/** What the tree below `root` holds, as the kernel shows it: path, type, size, mode, target or content hash. */
function hostTree(root: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const name of fs.readdirSync(join(root, rel)).sort()) {
      if (!rel && name === 'lost+found') continue;
      const p = rel ? `${rel}/${name}` : name;
      const st = fs.lstatSync(join(root, p));
      if (st.isDirectory()) {
        out.push(`${p} dir ${(st.mode & 0o7777).toString(8)}`);
        walk(p);
      } else if (st.isSymbolicLink()) out.push(`${p} link ${fs.readlinkSync(join(root, p))}`);
      else out.push(`${p} file ${st.size} ${(st.mode & 0o7777).toString(8)} ${createHash('sha1').update(fs.readFileSync(join(root, p))).digest('hex')}`);
    }
  };
  walk('');
  return out;
}

/** The same listing through kfs. */
async function kfsTree(f: Ext4Fs): Promise<string[]> {
  const out: string[] = [];
  const walk = async (ino: number, rel: string): Promise<void> => {
    const names = (await f.readdir(ino, 0)).map((e) => e.name.toString()).filter((n) => n !== '.' && n !== '..' && !(rel === '' && n === 'lost+found')).sort();
    for (const name of names) {
      const p = rel ? `${rel}/${name}` : name;
      const a = await f.lookup(ino, Buffer.from(name));
      const type = a.mode & 0o170000;
      if (type === 0o040000) {
        out.push(`${p} dir ${(a.mode & 0o7777).toString(8)}`);
        await walk(a.ino, p);
      } else if (type === 0o120000) out.push(`${p} link ${(await f.readlink(a.ino)).toString()}`);
      else out.push(`${p} file ${a.size} ${(a.mode & 0o7777).toString(8)} ${createHash('sha1').update(await f.read(a.ino, 0, a.size)).digest('hex')}`);
    }
  };
  await walk(2, '');
  return out;
}

/**
 * An ext2/ext3 image of 1 KiB blocks written by the kernel: an htree directory, files that
 * reach the double-indirect range, a sparse file whose last block is triple-indirect (past
 * 12 + 256 + 65536 blocks), a slow symlink (its target in a block) and a fast one.
 */
function blockMappedImage(t: ExecutionContext, mkfs: 'mkfs.ext2' | 'mkfs.ext3'): { img: string; tree: string[] } {
  const img = join(tempDir(t, 'img'), 'old.img');
  mustRun(mkfs, ['-q', '-F', '-b', '1024', img, '96M']);
  const k = loopMount(t, img);
  try {
    fs.mkdirSync(join(k.dir, 'd'), { mode: 0o750 });
    for (let i = 0; i < 400; i++) fs.writeFileSync(join(k.dir, 'd', `entry-${i}`), `${i}\n`);
    fs.writeFileSync(join(k.dir, 'double'), Buffer.alloc(3 << 20, 'double-indirect '));
    fs.writeFileSync(join(k.dir, 'victim'), Buffer.alloc(2 << 20, 'to be unlinked '));
    const fd = fs.openSync(join(k.dir, 'sparse'), 'w');
    fs.writeSync(fd, Buffer.from('head'), 0, 4, 0);
    fs.writeSync(fd, Buffer.from('tail of a triple-indirect block'), 0, 31, 80 << 20);
    fs.closeSync(fd);
    fs.symlinkSync('t'.repeat(200), join(k.dir, 'slow-link'));
    fs.symlinkSync('double', join(k.dir, 'fast-link'));
    return { img, tree: hostTree(k.dir) };
  } finally {
    k.unmount();
  }
}

for (const mkfs of ['mkfs.ext2', 'mkfs.ext3'] as const) {
  test.serial(`${mkfs} image: kfs reads every block-mapped file as the kernel does, and opens it read-only`, async (t) => {
    t.timeout(2 * 60 * 1000);
    requireRoot(t);
    const { img, tree } = blockMappedImage(t, mkfs);
    await withExt4(img, { commitIntervalMs: 0 }, async (f) => {
      t.true(f.readOnly, 'no extent feature: read-only');
      t.deepEqual(await kfsTree(f), tree);
      await t.throwsAsync(() => f.create(2, Buffer.from('new'), 0o644, 0, 0), { message: /read-only|EROFS/ });
    });
    t.is(fsck(img).code, 0);
  });
}

test.serial('ext3 made ext4 by tune2fs: kfs changes block-mapped files, which become extent trees; e2fsck and the kernel agree', async (t) => {
  t.timeout(2 * 60 * 1000);
  requireRoot(t);
  const { img } = blockMappedImage(t, 'mkfs.ext3');
  mustRun('tune2fs', ['-O', 'extent,dir_nlink,extra_isize,huge_file', img]);
  await withExt4(img, { commitIntervalMs: 0 }, async (f) => {
    t.false(f.readOnly);
    const double = await f.lookup(2, Buffer.from('double'));
    t.is(await f.write(double.ino, 3 << 20, Buffer.from('appended')), 8); // a new block: the map changes
    const sparse = await f.lookup(2, Buffer.from('sparse'));
    await f.setattr(sparse.ino, { size: 10 << 20 }); // drops the triple-indirect block
    const d = (await f.lookup(2, Buffer.from('d'))).ino;
    for (let i = 400; i < 800; i++) await f.create(d, Buffer.from(`entry-${i}`), 0o644, 0, 0); // the directory grows
    for (let i = 0; i < 100; i++) await f.unlink(d, Buffer.from(`entry-${i}`)); // block-mapped inodes freed
    await f.unlink(2, Buffer.from('slow-link'));
    await f.unlink(2, Buffer.from('victim')); // its single and double indirect blocks are freed too
  });
  fsckCleanAndKernelSees(t, img, (dir) => {
    const dbl = fs.readFileSync(join(dir, 'double'));
    t.is(dbl.length, (3 << 20) + 8);
    t.deepEqual(dbl.subarray(0, 3 << 20), Buffer.alloc(3 << 20, 'double-indirect '));
    t.is(dbl.subarray(3 << 20).toString(), 'appended');
    t.is(fs.statSync(join(dir, 'sparse')).size, 10 << 20);
    t.is(fs.readFileSync(join(dir, 'sparse')).subarray(0, 4).toString(), 'head');
    t.is(fs.readdirSync(join(dir, 'd')).length, 700);
    t.is(fs.readFileSync(join(dir, 'd', 'entry-399'), 'utf8'), '399\n');
    t.false(fs.existsSync(join(dir, 'slow-link')));
    t.false(fs.existsSync(join(dir, 'victim')));
    t.regex(mustRun('lsattr', ['-d', join(dir, 'double')]), /e/, 'the changed file is an extent tree now');
  });
});

test.serial('ext3 with a journal to replay: kfs reads the block-mapped journal and replays it in memory', async (t) => {
  t.timeout(2 * 60 * 1000);
  requireRoot(t);
  const dir = tempDir(t, 'img');
  const img = join(dir, 'ext3.img');
  const copy = join(dir, 'crashed.img');
  mustRun('mkfs.ext3', ['-q', '-F', img, '64M']);
  kernelMounted(t, img, (dir) => {
    fs.mkdirSync(join(dir, 'd'));
    for (let i = 0; i < 50; i++) fs.writeFileSync(join(dir, 'd', `g${i}`), `${i}`);
    mustRun('sync', ['-f', join(dir, 'd')]); // committed to the journal; the image file is copied while mounted
    fs.copyFileSync(img, copy);
  });
  t.regex(mustRun('dumpe2fs', ['-h', copy]), /needs_recovery/, 'the copy is a crashed ext3 with a journal to replay');
  // The directory's block is in the journal: zeroed in the copy, only a replay brings it back.
  const dirBlock = Number(mustRun('debugfs', ['-c', '-R', 'blocks /d', copy]).trim().split(/\s+/)[0]);
  t.true(dirBlock > 0);
  t.regex(mustRun('debugfs', ['-R', 'logdump -a', copy]), new RegExp(`FS block ${dirBlock} logged`), 'the directory block is in the journal');
  const fd = fs.openSync(copy, 'r+');
  fs.writeSync(fd, Buffer.alloc(1024), 0, 1024, dirBlock * 1024);
  fs.closeSync(fd);
  await withExt4(copy, { commitIntervalMs: 0, readOnly: true }, async (f) => {
    const d = await f.lookup(2, Buffer.from('d'));
    t.is((await f.readdir(d.ino, 0)).length, 52);
    t.is((await f.read((await f.lookup(d.ino, Buffer.from('g49'))).ino, 0, 10)).toString(), '49');
  });
});

test.serial('kfs mount of an ext3 image says it mounted read-only, and why', async (t) => {
  t.timeout(60 * 1000);
  requireRoot(t);
  const dir = tempDir(t, 'img');
  const img = join(dir, 'ext3.img');
  const mnt = join(dir, 'mnt');
  fs.mkdirSync(mnt);
  mustRun('mkfs.ext3', ['-q', '-F', img, '32M']);
  const r = runCmd(process.execPath, [kfsCliPath()!, 'mount', img, mnt]);
  try {
    t.is(r.code, 0, r.stderr);
    t.regex(r.stderr, /^kfs mount: .*ext3\.img: mounted read-only: no extent feature .*\n$/);
    t.throws(() => fs.writeFileSync(join(mnt, 'new'), 'x'), { code: 'EROFS' });
  } finally {
    runCmd(process.execPath, [kfsCliPath()!, 'umount', mnt]);
  }
  t.is(fsck(img).code, 0);
});

/**
 * A kernel that crashed with fast commits in its journal (-O fast_commit, fsync) leaves a log
 * kfs does not replay: opening says so and what to do; after e2fsck -fy replays it, kfs sees
 * every fsync'd file.
 */
test.serial('a crashed fast_commit journal: refused with the way out, readable after e2fsck replays it', async (t) => {
  t.timeout(60 * 1000);
  requireRoot(t);
  const dir = tempDir(t, 'img');
  const img = join(dir, 'fc.img');
  const copy = join(dir, 'crashed.img');
  mustRun('mkfs.ext4', ['-q', '-F', '-O', 'fast_commit', img, '64M']);
  kernelMounted(t, img, (dir) => {
    fs.mkdirSync(join(dir, 'd'));
    mustRun('sync', ['-f', join(dir, 'd')]);
    for (let i = 0; i < 10; i++) {
      const fd = fs.openSync(join(dir, 'd', `g${i}`), 'w');
      fs.writeSync(fd, `${i}`);
      fs.fsyncSync(fd); // a fast commit
      fs.closeSync(fd);
    }
    fs.copyFileSync(img, copy);
  });
  t.regex(await openedOrError(copy, true), /^refused: .*fast_commit.*e2fsck -fy/);
  t.true(fsck(copy, ['-fy']).code <= 1, 'e2fsck replays it');
  await withExt4(copy, { commitIntervalMs: 0, readOnly: true }, async (f) => {
    const d = await f.lookup(2, Buffer.from('d'));
    t.is((await f.readdir(d.ino, 0)).length, 12);
  });
});

/**
 * Two meta_bg layouts: mke2fs's (s_first_meta_bg 0: two meta groups of 16 groups, 64-byte
 * descriptors), and resize2fs's kind, where the first meta groups keep the old layout
 * (MKE2FS_FIRST_META_BG=2; 32-byte descriptors, 32 groups a meta group: two descriptor blocks
 * after the superblock for the first 64 groups, then a partial third meta group of 11 without
 * the third descriptor copy its last group would hold), with sparse_super2's backups in
 * groups 1 and 74 (74: a superblock copy and no descriptor block).
 */
const META_BG_LAYOUTS: { title: string; size: string; args: string[]; env?: NodeJS.ProcessEnv; firstMetaBg: number }[] = [
  { title: 'two meta groups of 16 groups', size: '256M', args: ['-O', 'meta_bg,^resize_inode'], firstMetaBg: 0 },
  {
    title: 's_first_meta_bg 2, 32-byte descriptors, a partial last meta group, sparse_super2 backups in groups 1 and 74', size: '600M',
    args: ['-O', 'meta_bg,^resize_inode,^64bit,sparse_super2', '-E', 'num_backup_sb=2'], env: { ...process.env, MKE2FS_FIRST_META_BG: '2' }, firstMetaBg: 2,
  },
];

for (const layout of META_BG_LAYOUTS) test.serial(`meta_bg, 1 KiB blocks (${layout.title}): kfs fills the filesystem around the descriptor blocks`, async (t) => {
  t.timeout(2 * 60 * 1000);
  requireRoot(t);
  const img = join(tempDir(t, 'img'), 'meta.img');
  mustRun('mkfs.ext4', ['-q', '-F', '-b', '1024', ...layout.args, img, layout.size], { env: layout.env });
  t.regex(mustRun('dumpe2fs', ['-h', img]), new RegExp(layout.firstMetaBg ? `First meta block group:\\s+${layout.firstMetaBg}\\b` : 'meta_bg'));
  const k = loopMount(t, img);
  fs.mkdirSync(join(k.dir, 'old'));
  for (let i = 0; i < 40; i++) fs.writeFileSync(join(k.dir, 'old', `f${i}`), fileData(i));
  k.unmount();
  const sizes: number[] = [];
  await withExt4(img, { commitIntervalMs: 0 }, async (f) => {
    t.false(f.readOnly);
    const old = (await f.lookup(2, Buffer.from('old'))).ino;
    for (let i = 0; i < 40; i += 7) t.deepEqual(await f.read((await f.lookup(old, Buffer.from(`f${i}`))).ino, 0, 1 << 20), fileData(i));
    // 16 MiB files until the space runs out: every group, both meta groups, gets data.
    for (let i = 0; ; i++) {
      const a = await f.create(2, Buffer.from(`fill${i}`), 0o644, 0, 0);
      // A write at a full disk comes back short, or fails ENOSPC when nothing fit.
      const n = await f.write(a.ino, 0, Buffer.alloc(16 << 20, i + 1)).catch((e: { code?: string }) => {
        t.is(e.code, 'ENOSPC');
        return 0;
      });
      sizes.push(n);
      if (n < 16 << 20) break;
    }
  });
  t.true(sizes.length >= 12, `filled ${sizes.length} files`);
  fsckCleanAndKernelSees(t, img, (dir) => {
    for (let i = 0; i < sizes.length; i += 5) {
      const b = fs.readFileSync(join(dir, `fill${i}`));
      t.is(b.length, sizes[i]);
      t.true(b.every((x) => x === i + 1), `fill${i} as kfs wrote it`);
    }
    t.deepEqual(fs.readFileSync(join(dir, 'old', 'f39')), fileData(39));
  });
});

test.serial('a whole-disk image (MBR or GPT) is refused with how to reach its partition; a FAT image is not called one', async (t) => {
  const dir = tempDir(t, 'img');
  const img = join(dir, 'disk.img');
  const write = (bytes: Buffer, at: number): void => {
    const fd = fs.openSync(img, 'r+');
    fs.writeSync(fd, bytes, 0, bytes.length, at);
    fs.closeSync(fd);
  };
  // An MBR: one Linux partition (type 0x83) from sector 2048.
  fs.writeFileSync(img, Buffer.alloc(4 << 20));
  const entry = Buffer.alloc(16);
  entry[4] = 0x83;
  entry.writeUInt32LE(2048, 8);
  entry.writeUInt32LE(4096, 12);
  write(entry, 446);
  write(Buffer.from([0x55, 0xaa]), 510);
  t.regex(await openedOrError(img, true), /^refused: .*bad superblock magic.*an MBR partition table.*partx --show/);
  write(Buffer.from('EFI PART'), 512);
  t.regex(await openedOrError(img, true), /a GPT partition table/);
  // A FAT boot sector ends in 0x55aa too; its "FAT" type string says what it is.
  fs.writeFileSync(img, Buffer.alloc(4 << 20));
  write(entry, 446);
  write(Buffer.from([0x55, 0xaa]), 510);
  write(Buffer.from('FAT32   '), 82);
  t.regex(await openedOrError(img, true), /^refused: [^;]*bad superblock magic 0x0\)$/, 'a FAT image is not called a disk');
  fs.writeFileSync(img, Buffer.alloc(4 << 20));
  t.regex(await openedOrError(img, true), /^refused: [^;]*bad superblock magic 0x0\)$/, 'an image of zeros gets the plain message');
});

/** Crafted block maps: a block past the end, an indirect block named twice (a loop). EIO, no hang. */
test.serial('damaged ext2 block maps give EIO, not a hang or a read outside the filesystem', async (t) => {
  t.timeout(60 * 1000);
  requireRoot(t);
  const dir = tempDir(t, 'img');
  const good = join(dir, 'good.img');
  mustRun('mkfs.ext2', ['-q', '-F', '-b', '1024', good, '16M']);
  const k = loopMount(t, good);
  fs.writeFileSync(join(k.dir, 'f'), Buffer.alloc(300_000, 7)); // direct, single and double indirect
  k.unmount();
  const stat = debugfs(good, 'stat /f');
  const ind = Number(/\(IND\):(\d+)/.exec(stat)![1]);
  const cases: [string, RegExp][] = [
    ['block[IND] 99999999', /indirect block 99999999 is past the end/],
    [`block[DIND] ${ind}`, new RegExp(`indirect block ${ind} is named twice`)],
    ['block[3] 16384', /data block 16384 is past the end/],
  ];
  for (const [change, expect] of cases) {
    const img = join(dir, 'bad.img');
    fs.copyFileSync(good, img);
    debugfs(img, `sif /f ${change}`, { write: true });
    await withExt4(img, { commitIntervalMs: 0, readOnly: true }, async (f) => {
      const a = await f.lookup(2, Buffer.from('f'));
      await t.throwsAsync(() => f.read(a.ino, 0, 300_000), { code: 'EIO', message: expect }, change);
    });
  }
});

/** Superblock values the kernel refuses at mount (ext4_fill_super) are damage, caught before they cost anything. */
test.serial('an impossible first meta group or descriptor size is refused as damage', async (t) => {
  const cases: { args: string[]; set: string; expect: RegExp }[] = [
    { args: ['-O', 'meta_bg,^resize_inode'], set: 'first_meta_bg 4000000000', expect: /first meta group 4000000000 is past the \d+ descriptor blocks/ },
    { args: [], set: 'desc_size 16', expect: /descriptor size 16 is impossible/ },
    { args: [], set: 'desc_size 96', expect: /descriptor size 96 is impossible/ },
  ];
  for (const c of cases) {
    const img = makeImage(t, { size: '64M', extraArgs: c.args, name: `${c.set.replace(/\W/g, '')}.img` });
    debugfs(img, `ssv ${c.set}`, { write: true });
    t.regex(await openedOrError(img), c.expect, c.set);
  }
});

test.serial('inline_data image: kfs reads inline files and directories as the kernel does', async (t) => {
  t.timeout(2 * 60 * 1000);
  requireRoot(t);
  const img = makeImage(t, { size: '64M', extraArgs: ['-O', 'inline_data'] });
  const sizes = [0, 1, 59, 60, 61, 100, 140, 150, 5000];
  const tree = kernelMounted(t, img, (dir) => {
    for (const n of sizes) fs.writeFileSync(join(dir, `f${n}`), Buffer.alloc(n, `inline ${n} `));
    fs.mkdirSync(join(dir, 'small'));
    for (let i = 0; i < 4; i++) fs.writeFileSync(join(dir, 'small', `t${i}`), `tiny ${i}`);
    fs.mkdirSync(join(dir, 'empty'));
    fs.mkdirSync(join(dir, 'grown'));
    for (let i = 0; i < 200; i++) fs.writeFileSync(join(dir, 'grown', `entry-${i}`), `${i}`);
    fs.symlinkSync('s'.repeat(100), join(dir, 'slow-link'));
    mustRun('setfattr', ['-n', 'user.a', '-v', 'kept', join(dir, 'f100')]);
    t.regex(mustRun('lsattr', ['-d', join(dir, 'small'), join(dir, 'f100')]), /N.* .*small\n.*N.* .*f100/, 'the kernel made them inline');
    return hostTree(dir);
  });
  await withExt4(img, { commitIntervalMs: 0, readOnly: true }, async (f) => {
    t.deepEqual(await kfsTree(f), tree);
    const f100 = await f.lookup(2, Buffer.from('f100'));
    t.deepEqual(await f.listxattr(f100.ino), ['user.a'], 'system.data is not a user attribute');
    t.is(await f.getxattrOrNull(f100.ino, 'system.data'), null);
    // readInto over two views (the guest's buffers), from an offset inside i_block to past it.
    const a = Buffer.alloc(30);
    const b = Buffer.alloc(60);
    t.is(await f.readInto(f100.ino, 40, 90, [a, b]), 60);
    t.deepEqual(Buffer.concat([a, b]).subarray(0, 60), Buffer.alloc(100, 'inline 100 ').subarray(40));
    await t.throwsAsync(() => f.getxattr(f100.ino, 'system.data'), { code: 'EOPNOTSUPP' });
    t.is(await f.lseek(f100.ino, 10, 3 /* SEEK_DATA */), 10);
    t.is(await f.lseek(f100.ino, 10, 4 /* SEEK_HOLE */), 100);
  });
  t.is(fsck(img).code, 0);
});

/** The user and trusted xattrs of everything below dir (getfattr, symlinks' own), in name order. */
function userXattrs(dir: string): string {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const name of fs.readdirSync(join(dir, rel)).sort()) {
      const p = rel ? `${rel}/${name}` : name;
      out.push(`${p}: ${mustRun('getfattr', ['-h', '-d', '--absolute-names', '-m', '^(user|trusted)\\.', join(dir, p)]).split(dir).join('ROOT').trim()}`);
      if (fs.lstatSync(join(dir, p)).isDirectory()) walk(p);
    }
  };
  walk('');
  return out.join('\n');
}

/** Does lsattr show the inline-data flag (N) on path? */
function inlineFlag(path: string): boolean {
  return /^\S*N\S* /.test(mustRun('lsattr', ['-d', path]));
}

/**
 * Writing an inline_data image: the kernel makes inline files and directories (a second copy
 * of the image is the kernel's reference), then the same changes are made to one copy by kfs
 * and to the other by the kernel: writes that stay small or grow, truncation, entries added to,
 * removed from and renamed between inline directories, an inline directory moved (its ".." is
 * in i_block), an xattr added beside system.data and on an inline symlink (made by debugfs:
 * the kernel makes none), an inline file and an inline directory removed, names removed from
 * an inline directory's i_block and its system.data. kfs stores each inline inode it changes
 * as blocks first (Ext4Fs.uninline), except a directory that only loses names, which stays
 * inline as with the kernel: the images differ in layout only. e2fsck -fn passes, and the
 * kernel sees the same tree, bytes and xattrs in both.
 */
test.serial('inline_data image: kfs changes inline files and directories; e2fsck and the kernel agree with the kernel\'s own changes', async (t) => {
  t.timeout(3 * 60 * 1000);
  requireRoot(t);
  const img = makeImage(t, { size: '64M', extraArgs: ['-O', 'inline_data'] });
  const k = loopMount(t, img);
  try {
    fs.writeFileSync(join(k.dir, 'small'), 'ten bytes!');
    fs.writeFileSync(join(k.dir, 'f100'), Buffer.alloc(100, 'hundred '));
    fs.writeFileSync(join(k.dir, 'mid'), Buffer.alloc(40, 'forty '));
    fs.writeFileSync(join(k.dir, 'doomed'), 'inline, then unlinked');
    fs.writeFileSync(join(k.dir, 'untouched'), 'stays inline');
    fs.writeFileSync(join(k.dir, 'xf'), 'xattr holder');
    mustRun('setfattr', ['-n', 'user.k', '-v', 'v', join(k.dir, 'xf')]);
    for (const d of ['d', 'e', 'g']) fs.mkdirSync(join(k.dir, d));
    fs.writeFileSync(join(k.dir, 'd', 'a'), 'aaaaa');
    fs.writeFileSync(join(k.dir, 'd', 'b'), Buffer.alloc(50, 'b'));
    fs.mkdirSync(join(k.dir, 'd', 'sub'));
    fs.writeFileSync(join(k.dir, 'd', 'sub', 'deep'), 'below a moved directory');
    fs.writeFileSync(join(k.dir, 'e', 'x'), 'x');
    fs.mkdirSync(join(k.dir, 'e', 'empty'));
    fs.symlinkSync('small', join(k.dir, 'ln'));
    fs.mkdirSync(join(k.dir, 'r'));
    for (let i = 1; i <= 5; i++) fs.writeFileSync(join(k.dir, 'r', `rfile${i}`), `${i}`);
    fs.mkdirSync(join(k.dir, 'r', 'rd'));
    for (const p of ['small', 'f100', 'mid', 'doomed', 'xf', 'd', 'e', 'd/sub', 'e/empty', 'r']) t.true(inlineFlag(join(k.dir, p)), `the kernel made ${p} inline`);
  } finally {
    k.unmount();
  }
  debugfs(img, `symlink /slow-link ${'t'.repeat(100)}`, { write: true });
  t.regex(debugfs(img, 'stat /slow-link'), /Flags: 0x10000000/, 'an inline symlink');
  t.true(Number(/Size of inline data: (\d+)/.exec(debugfs(img, 'stat /r'))![1]) > 60, "r's entries reach into system.data");
  const reference = join(tempDir(t, 'ref'), 'kernel.img');
  fs.copyFileSync(img, reference);

  // The kernel's changes, on the reference copy.
  const r = loopMount(t, reference);
  try {
    fs.appendFileSync(join(r.dir, 'small'), ' and more');
    fs.writeFileSync(join(r.dir, 'f100'), Buffer.alloc(5000, 'grown '), { flag: 'r+' });
    fs.truncateSync(join(r.dir, 'mid'), 20);
    fs.writeFileSync(join(r.dir, 'd', 'new'), Buffer.alloc(30, 'n'));
    fs.unlinkSync(join(r.dir, 'd', 'a'));
    fs.renameSync(join(r.dir, 'd', 'b'), join(r.dir, 'e', 'b2'));
    fs.renameSync(join(r.dir, 'd', 'sub'), join(r.dir, 'g', 'sub'));
    mustRun('setfattr', ['-n', 'user.k2', '-v', 'v2', join(r.dir, 'xf')]);
    fs.unlinkSync(join(r.dir, 'doomed'));
    fs.rmdirSync(join(r.dir, 'e', 'empty'));
    mustRun('setfattr', ['-h', '-n', 'trusted.s', '-v', '1', join(r.dir, 'slow-link')]);
    for (const n of ['rfile2', 'rfile5']) fs.unlinkSync(join(r.dir, 'r', n));
    fs.rmdirSync(join(r.dir, 'r', 'rd'));
  } finally {
    r.unmount();
  }

  // kfs's changes, the same ones.
  await withExt4(img, { commitIntervalMs: 0 }, async (f) => {
    t.false(f.readOnly, 'an inline_data image opens read-write');
    const at = async (p: string) => {
      let ino = 2;
      for (const name of p.split('/')) ino = (await f.lookup(ino, Buffer.from(name))).ino;
      return ino;
    };
    const [root, d, e, g] = [2, await at('d'), await at('e'), await at('g')];
    const small = await at('small');
    t.is(await f.write(small, 10, Buffer.from(' and more')), 9);
    t.is(await f.write(await at('f100'), 0, Buffer.alloc(5000, 'grown ')), 5000);
    await f.setattr(await at('mid'), { size: 20 });
    const n = await f.create(d, Buffer.from('new'), 0o644, 0, 0, 0o022);
    await f.write(n.ino, 0, Buffer.alloc(30, 'n'));
    await f.unlink(d, Buffer.from('a'));
    await f.rename(d, Buffer.from('b'), e, Buffer.from('b2'));
    await f.rename(d, Buffer.from('sub'), g, Buffer.from('sub'));
    await f.setxattr(await at('xf'), 'user.k2', Buffer.from('v2'));
    await f.unlink(root, Buffer.from('doomed'));
    await f.rmdir(e, Buffer.from('empty'));
    await f.setxattr(await at('slow-link'), 'trusted.s', Buffer.from('1'));
    const rdir = await at('r');
    for (const n of ['rfile2', 'rfile5']) await f.unlink(rdir, Buffer.from(n));
    await f.rmdir(rdir, Buffer.from('rd'));
    t.deepEqual((await f.readdir(rdir, 0)).map((x) => x.name.toString()).sort(), ['.', '..', 'rfile1', 'rfile3', 'rfile4']);
    t.is((await f.lookup(await at('g/sub'), Buffer.from('..'))).ino, g, 'the moved directory\'s ".."');
    t.deepEqual(await f.read(small, 0, 100), Buffer.from('ten bytes! and more'));
  });

  const expected = kernelMounted(t, reference, (dir) => ({ tree: hostTree(dir), xattrs: userXattrs(dir) }), { readOnly: true });
  t.is(fsck(reference).code, 0, 'the kernel\'s copy is clean too');
  t.true(expected.tree.includes('g/sub/deep file 23 644 ' + createHash('sha1').update('below a moved directory').digest('hex')));
  fsckCleanAndKernelSees(t, img, (dir) => {
    t.deepEqual(hostTree(dir), expected.tree, 'the kernel sees what it made itself');
    t.is(userXattrs(dir), expected.xattrs);
    t.true(inlineFlag(join(dir, 'untouched')), 'an inode kfs did not change stays inline');
    t.true(inlineFlag(join(dir, 'r')), 'a directory that only lost names stays inline');
    for (const p of ['small', 'f100', 'mid', 'xf', 'd', 'e', 'g/sub']) t.false(inlineFlag(join(dir, p)), `${p}, changed by kfs, is stored in blocks`);
  });
  // ...and keeps no system.data attribute (ext4_destroy_inline_data removes it), while xf keeps its own.
  for (const p of ['small', 'f100', 'mid', 'xf', 'd', 'e', 'g/sub', 'slow-link']) t.notRegex(debugfs(img, `ea_list /${p}`), /system\.data/, `${p} has no system.data left`);
  t.regex(debugfs(img, 'ea_list /untouched'), /system\.data/, 'as an inline inode has');
  t.regex(debugfs(img, 'ea_list /xf'), /user\.k2? .*\n.*user\.k2? /s);

  // A writable DAX mapping converts an inline file, but not on a read-only filesystem.
  await withExt4(img, { commitIntervalMs: 0, readOnly: true }, async (f) => {
    const u = await f.lookup(2, Buffer.from('untouched'));
    await t.throwsAsync(() => f.withDaxRuns(u.ino, 0, 4096, true, async () => undefined), { code: 'EROFS' });
    t.deepEqual(await f.read(u.ino, 0, 100), Buffer.from('stays inline'));
  });
  // The kernel edits r's system.data after kfs did: kfs left that entry as the kernel expects
  // (its e_hash untouched), or e2fsck would now abort.
  kernelMounted(t, img, (dir) => {
    fs.unlinkSync(join(dir, 'r', 'rfile4'));
    fs.writeFileSync(join(dir, 'r', 'z'), 'z');
  });
  const after = fsck(img);
  t.is(after.code, 0, `e2fsck -fn after the kernel's edit:\n${after.output}`);
});

/**
 * A full inline_data filesystem. A change that would store an inline inode in a block answers
 * ENOSPC before anything changes: a write, a create in an inline directory, an xattr, a rename
 * of an inline directory to another parent (its ".." would move), linking an O_TMPFILE file
 * into an inline directory (it must stay on the orphan list: checked after a crash, i.e. the
 * kernel replaying the journal). Deleting from an inline directory needs no block and frees
 * the space, as with the kernel; the directory stays inline.
 */
test.serial('inline_data image, full: ENOSPC leaves inline inodes and names intact; deleting from an inline directory frees space', async (t) => {
  t.timeout(2 * 60 * 1000);
  requireRoot(t);
  const img = makeImage(t, { size: '16M', extraArgs: ['-O', 'inline_data'] });
  kernelMounted(t, img, (dir) => {
    fs.writeFileSync(join(dir, 'keep'), 'original');
    fs.mkdirSync(join(dir, 'dd'));
    fs.writeFileSync(join(dir, 'dd', 'one'), '1');
    fs.mkdirSync(join(dir, 'dl'));
    fs.writeFileSync(join(dir, 'dl', 'big'), Buffer.alloc(2 << 20, 7));
    fs.writeFileSync(join(dir, 'dl', 'note'), 'n');
    for (const p of ['keep', 'dd', 'dl']) t.true(inlineFlag(join(dir, p)), `${p} is inline`);
    // Identical attributes the kernel keeps in one shared xattr block (refcount 2).
    for (const p of ['dd', 'dl', 'sh1', 'sh2']) {
      if (p.startsWith('sh')) fs.writeFileSync(join(dir, p), Buffer.alloc(5000, 's'));
      mustRun('setfattr', ['-n', 'user.big', '-v', 'b'.repeat(300), join(dir, p)]);
    }
    mustRun('setfattr', ['-n', 'user.s1', '-v', 's'.repeat(40), join(dir, 'sh1')]); // in the inode
    // m1 in the inode, m2 and m3 in a block the two files share.
    for (const p of ['sx', 'sy']) {
      fs.writeFileSync(join(dir, p), Buffer.alloc(5000, 'x'));
      for (const [n, len] of [['m1', 60], ['m2', 40], ['m3', 41]] as const) mustRun('setfattr', ['-n', `user.${n}`, '-v', n.repeat(len / 2 + 1).slice(0, len), join(dir, p)]);
    }
  });
  const fileAcl = (p: string) => Number(/File ACL: (\d+)/.exec(debugfs(img, `stat /${p}`))![1]);
  t.true(fileAcl('sx') > 0 && fileAcl('sx') === fileAcl('sy'), 'sx and sy share an xattr block');
  // Filled, refused, then a crash after a sync: the journal holds what was done.
  const f = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  try {
    const filler = await f.create(2, Buffer.from('filler'), 0o644, 0, 0);
    const chunk = Buffer.alloc(1 << 20, 1);
    for (let off = 0; ; off += chunk.length) if ((await f.write(filler.ino, off, chunk)) < chunk.length) break;
    const keep = await f.lookup(2, Buffer.from('keep'));
    const dd = await f.lookup(2, Buffer.from('dd'));
    const lf = await f.lookup(2, Buffer.from('lost+found'));
    await t.throwsAsync(() => f.write(keep.ino, 8, Buffer.from(' and more')), { code: 'ENOSPC' });
    await t.throwsAsync(() => f.create(dd.ino, Buffer.from('two'), 0o644, 0, 0), { code: 'ENOSPC' });
    await t.throwsAsync(() => f.setxattr(keep.ino, 'user.a', Buffer.from('b')), { code: 'ENOSPC' });
    await t.throwsAsync(() => f.rename(2, Buffer.from('dd'), lf.ino, Buffer.from('dd')), { code: 'ENOSPC' });
    const tmp = await f.tmpfile(2, 0o644, 0, 0);
    await t.throwsAsync(() => f.link(tmp.ino, dd.ino, Buffer.from('tmp')), { code: 'ENOSPC' });
    await t.throwsAsync(() => f.link(tmp.ino, 2, Buffer.from('keep')), { code: 'EEXIST' });
    // An attribute that grows out of the inode into the shared block needs a block of its own:
    // refused, with the inode's attributes as they were.
    const sh1 = await f.lookup(2, Buffer.from('sh1'));
    await t.throwsAsync(() => f.setxattr(sh1.ino, 'user.s1', Buffer.alloc(200, 'm')), { code: 'ENOSPC' });
    t.deepEqual((await f.listxattr(sh1.ino)).sort(), ['user.big', 'user.s1']);
    t.deepEqual(await f.getxattr(sh1.ino, 'user.s1'), Buffer.alloc(40, 's'));
    // Removing from the inode leaves the shared block as it is: no block needed, as with the kernel.
    const sx = await f.lookup(2, Buffer.from('sx'));
    await f.removexattr(sx.ino, 'user.m1');
    t.deepEqual((await f.listxattr(sx.ino)).sort(), ['user.m2', 'user.m3']);
    t.deepEqual(await f.read(keep.ino, 0, 100), Buffer.from('original'));
    t.deepEqual((await f.readdir(dd.ino, 0)).map((e) => e.name.toString()).sort(), ['.', '..', 'one']);
    t.truthy(await f.lookup(2, Buffer.from('dd')), 'the refused rename moved nothing');
    await f.sync();
  } finally {
    await f.discard();
  }
  const replay = loopMount(t, img);
  replay.unmount();
  t.is(fsck(img).code, 0, 'after the crash and the journal replay, e2fsck -fn is clean (no leaked O_TMPFILE inode)');

  await withExt4(img, { commitIntervalMs: 0 }, async (f2) => {
    const dl = await f2.lookup(2, Buffer.from('dl'));
    const before = (await f2.statfs()).bfree;
    await f2.unlink(dl.ino, Buffer.from('big'));
    t.true((await f2.statfs()).bfree >= before + 512, 'deleting from the inline directory freed the 2 MiB');
    const dd = await f2.lookup(2, Buffer.from('dd'));
    await f2.create(dd.ino, Buffer.from('two'), 0o644, 0, 0);
  });
  fsckCleanAndKernelSees(t, img, (dir) => {
    t.is(fs.readFileSync(join(dir, 'keep'), 'utf8'), 'original');
    t.true(inlineFlag(join(dir, 'keep')), 'keep is still inline');
    t.deepEqual(fs.readdirSync(join(dir, 'dl')), ['note']);
    t.true(inlineFlag(join(dir, 'dl')), 'a directory that only lost a name stays inline');
    t.deepEqual(fs.readdirSync(join(dir, 'dd')).sort(), ['one', 'two']);
    for (const p of ['dd', 'dl', 'sh1', 'sh2']) t.is(mustRun('getfattr', ['--only-values', '-n', 'user.big', join(dir, p)]), 'b'.repeat(300), p);
    t.is(mustRun('getfattr', ['--only-values', '-n', 'user.s1', join(dir, 'sh1')]), 's'.repeat(40));
    t.notRegex(mustRun('getfattr', ['-d', join(dir, 'sx')]), /user\.m1/);
    t.is(mustRun('getfattr', ['--only-values', '-n', 'user.m3', join(dir, 'sx')]), 'm3'.repeat(21).slice(0, 41));
    t.is(mustRun('getfattr', ['--only-values', '-n', 'user.m1', join(dir, 'sy')]), 'm1'.repeat(31).slice(0, 60));
  });
});

/**
 * The user's path: `kfs mount` of a kernel-made inline_data image is read-write (no read-only
 * message), and shell commands change inline files and directories through the FUSE mount
 * (appends, a sed -i that replaces a file by rename, a moved inline directory, creates and
 * removals in inline directories); after `kfs umount`, e2fsck is clean and the kernel reads it.
 */
test.serial('kfs mount of an inline_data image: shell commands change inline files and directories; e2fsck and the kernel agree', async (t) => {
  t.timeout(2 * 60 * 1000);
  requireRoot(t);
  const img = makeImage(t, { size: '64M', extraArgs: ['-O', 'inline_data'] });
  kernelMounted(t, img, (dir) => {
    fs.writeFileSync(join(dir, 'a'), 'hi\n');
    fs.mkdirSync(join(dir, 'd'));
    fs.mkdirSync(join(dir, 'd2'));
    fs.writeFileSync(join(dir, 'd', 'f'), 'x\n');
    fs.writeFileSync(join(dir, 'd', 'g'), 'y\n');
    for (const p of ['a', 'd', 'd2', 'd/f']) t.true(inlineFlag(join(dir, p)), `${p} is inline`);
  });
  const mnt = join(tempDir(t, 'mnt'), 'm');
  fs.mkdirSync(mnt);
  const r = runCmd(process.execPath, [kfsCliPath()!, 'mount', img, mnt]);
  try {
    t.is(r.code, 0, r.stderr);
    t.is(r.stderr, '', 'no read-only message');
    mustRun('sh', ['-c', `set -e; cd ${mnt}; echo more >> a; sed -i s/x/X/ d/f; mv d/g d2/; mv d d2/; for i in $(seq 30); do echo $i > d2/d/n$i; done; rm d2/d/n7 d2/g`]);
    t.is(fs.readFileSync(join(mnt, 'a'), 'utf8'), 'hi\nmore\n');
  } finally {
    runCmd(process.execPath, [kfsCliPath()!, 'umount', mnt]);
  }
  fsckCleanAndKernelSees(t, img, (dir) => {
    t.is(fs.readFileSync(join(dir, 'a'), 'utf8'), 'hi\nmore\n');
    t.is(fs.readFileSync(join(dir, 'd2', 'd', 'f'), 'utf8'), 'X\n');
    t.deepEqual(fs.readdirSync(join(dir, 'd2')).sort(), ['d']);
    t.is(fs.readdirSync(join(dir, 'd2', 'd')).length, 30, 'f and n1..n30 but n7');
    t.is(fs.readFileSync(join(dir, 'd2', 'd', 'n30'), 'utf8'), '30\n');
  });
});

/**
 * Inline directories and files in corners: 1 KiB inodes, so a directory's entries spill from
 * i_block into system.data, with some deleted (gaps); one below a subdirectory (its ".." is
 * not the root); then, by debugfs, a size past the stored bytes (zeros, as the kernel reads),
 * both the inline and extents flags (damage, as ext4_iget says), and an inline file whose
 * system.data is gone (damage).
 */
test.serial('inline_data corners: entries in system.data, "..", a size past the data, damaged flags', async (t) => {
  t.timeout(2 * 60 * 1000);
  requireRoot(t);
  const img = makeImage(t, { size: '64M', extraArgs: ['-O', 'inline_data', '-I', '1024'] });
  kernelMounted(t, img, (dir) => {
    fs.mkdirSync(join(dir, 'sub'));
    fs.mkdirSync(join(dir, 'sub', 'inl'));
    for (let i = 0; i < 16; i++) fs.writeFileSync(join(dir, 'sub', 'inl', `a-long-entry-name-${i}`), `${i}`);
    for (const i of [1, 5, 6, 11]) fs.unlinkSync(join(dir, 'sub', 'inl', `a-long-entry-name-${i}`));
    fs.writeFileSync(join(dir, 'f60'), Buffer.alloc(60, 'sixty '));
    fs.writeFileSync(join(dir, 'both'), Buffer.alloc(30, 'b'));
    fs.writeFileSync(join(dir, 'gone'), Buffer.alloc(30, 'g'));
    t.regex(mustRun('lsattr', ['-d', join(dir, 'sub', 'inl')]), /^\S*N\S* /, 'the directory is still inline');
  });
  t.true(Number(/Size of inline data: (\d+)/.exec(debugfs(img, 'stat /sub/inl'))![1]) > 60, 'its entries reach into system.data');
  debugfs(img, ['sif /f60 size 5000', 'sif /both flags 0x10080000', 'ea_rm /gone system.data'], { write: true });
  const grown = kernelMounted(t, img, (dir) => fs.readFileSync(join(dir, 'f60')), { readOnly: true });
  t.is(grown.length, 5000);
  await withExt4(img, { commitIntervalMs: 0, readOnly: true }, async (f) => {
    const sub = (await f.lookup(2, Buffer.from('sub'))).ino;
    const inl = (await f.lookup(sub, Buffer.from('inl'))).ino;
    t.is((await f.lookup(inl, Buffer.from('..'))).ino, sub, '".." of an inline directory');
    const listed = (await f.readdir(inl, 0)).map((e) => e.name.toString()).sort();
    t.deepEqual(listed, ['.', '..', ...[0, 2, 3, 4, 7, 8, 9, 10, 12, 13, 14, 15].map((i) => `a-long-entry-name-${i}`)].sort());
    const f60 = await f.lookup(2, Buffer.from('f60'));
    t.deepEqual(await f.read(f60.ino, 0, 6000), grown, 'past the stored bytes: zeros, as the kernel reads');
    const both = await f.lookupOrNull(2, Buffer.from('both')).catch((e: Error) => e);
    t.regex(String(both instanceof Error ? both.message : 'no error'), /both inline data and extents flags/);
    const gone = await f.lookup(2, Buffer.from('gone'));
    await t.throwsAsync(() => f.read(gone.ino, 0, 100), { code: 'EIO', message: /no system.data/ });
  });
});
