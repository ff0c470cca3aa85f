/**
 * `kfs mkfs` against real oracles: e2fsck -fn (every image must be clean), dumpe2fs (features,
 * label, UUID, counts, and the whole group table compared with mkfs.ext4's on the same size and
 * options), the kernel's ext4 driver on a loop mount (create a file and a directory, unmount,
 * e2fsck again), and byte-for-byte comparison with mkfs.ext4 run at a fixed time.
 * The CLI is run as users run it: node dist/src/cli/kfs.js mkfs ...
 */
import test, { ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, existsSync, openSync, readSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatImage } from '../mkfs/format';
import { computeLayout } from '../mkfs/layout';
import { resolveFeatures, mkfsOptionsFromCli, MkfsUsageError, parseSize } from '../mkfs/options';
import { decodeJournalSuperblock, JBD2_MAGIC_NUMBER, JBD2_SUPERBLOCK_V2, journalSuperblockChecksum, encodeJournalSuperblock, newJournalSuperblock, setJournalSuperblockChecksum } from '../src/ext4/journal/superblock';
import { ByteCursor } from '../src/util/cursor';
import { SuperblockLayout } from '../src/ext4/superblock';

const KFS = join(__dirname, '..', 'src', 'cli', 'kfs.js');
const tmp = mkdtempSync(join(tmpdir(), 'kfs-mkfs-'));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));
let seq = 0;
const fresh = (what: string): string => join(tmp, `${what}-${++seq}`);

const DEFAULT_FEATURES = 'has_journal ext_attr dir_index filetype extent 64bit flex_bg sparse_super large_file huge_file dir_nlink extra_isize metadata_csum';
/** kfs mirrors this mke2fs; with another one the group tables are only logged, not asserted. */
const MIRRORED_MKE2FS = /mke2fs 1\.47\.0\b/.test(run('mke2fs', ['-V']).stderr);

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv): RunResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: env ? { ...process.env, ...env } : process.env });
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

const kfsMkfs = (args: string[]): RunResult => run(process.execPath, [KFS, 'mkfs', ...args]);

function mkfsExt4(img: string, size: string, args: string[], env?: NodeJS.ProcessEnv): void {
  const t = run('truncate', ['-s', size, img]);
  if (t.code !== 0) throw new Error(t.stderr);
  const r = run('mkfs.ext4', ['-q', '-F', '-O', '^resize_inode', ...args, img], env);
  if (r.code !== 0) throw new Error(`mkfs.ext4 ${args.join(' ')}: ${r.stderr}`);
}

function fsck(t: ExecutionContext, img: string, when: string): void {
  const r = run('e2fsck', ['-fn', img]);
  if (r.code !== 0) t.log(r.stdout, r.stderr);
  t.is(r.code, 0, `e2fsck -fn ${when}`);
}

/** dumpe2fs -h as key → value. */
function header(img: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of run('dumpe2fs', ['-h', img]).stdout.split('\n')) {
    const m = /^([^:]+):\s*(.*)$/.exec(line);
    if (m) out[m[1].trim()] = m[2].trim();
  }
  return out;
}

/** Full dumpe2fs with what legitimately differs between two formats masked out. */
function maskedDump(img: string): string {
  return run('dumpe2fs', [img]).stdout
    .replace(/csum 0x[0-9a-f]+/g, 'csum X')
    .replace(/^(Filesystem UUID|Directory Hash Seed|Filesystem created|Last write time|Last checked|Lifetime writes|Checksum):.*$/gm, '$1: X');
}

const COMPARED = ['Filesystem features', 'Block size', 'Block count', 'Inode count', 'Blocks per group', 'Inodes per group',
  'Inode blocks per group', 'Reserved block count', 'Free blocks', 'Free inodes', 'Overhead clusters', 'First block',
  'Group descriptor size', 'Flex block group size', 'Total journal blocks', 'Filesystem volume name'];

/** Same options to mkfs.ext4 on the same size: the headers must agree, and (same mke2fs) the group tables. */
function compareWithMke2fs(t: ExecutionContext, img: string, size: string, args: string[]): void {
  const ref = `${img}.mke2fs`;
  try {
    mkfsExt4(ref, size, args);
    const ours = header(img);
    const theirs = header(ref);
    const diffs = COMPARED.filter((k) => ours[k] !== theirs[k]).map((k) => `${k}: kfs '${ours[k]}' mkfs.ext4 '${theirs[k]}'`);
    if (diffs.length) t.log(`differences from mkfs.ext4 ${args.join(' ')}:\n  ${diffs.join('\n  ')}`);
    for (const k of ['Filesystem features', 'Block size', 'Inode count', 'Blocks per group']) t.is(ours[k], theirs[k], `${k} as mkfs.ext4`);
    t.deepEqual(diffs, [], 'dumpe2fs -h agrees with mkfs.ext4');
    const same = maskedDump(img) === maskedDump(ref);
    if (MIRRORED_MKE2FS) t.true(same, 'group tables identical to mkfs.ext4 1.47.0');
    else if (!same) t.log('group tables differ from this mke2fs (kfs mirrors 1.47.0)');
  } finally {
    rmSync(ref, { force: true });
  }
}

/** Loop-mount with the kernel's ext4, create a file and a directory, unmount, fsck again. */
function mountRoundTrip(t: ExecutionContext, img: string): void {
  const mnt = `${img}.mnt`;
  mkdirSync(mnt);
  let mounted = false;
  try {
    const m = run('mount', ['-t', 'ext4', '-o', 'loop', img, mnt]);
    t.is(m.code, 0, `mount: ${m.stderr}`);
    mounted = m.code === 0;
    if (!mounted) return;
    t.is(run('sh', ['-c', `echo kfs > '${mnt}/file' && mkdir '${mnt}/dir' && sync`]).code, 0, 'create a file and a directory');
    t.is(readFileSync(join(mnt, 'file'), 'utf8'), 'kfs\n');
    t.true(statSync(join(mnt, 'dir')).isDirectory());
    t.true(statSync(join(mnt, 'lost+found')).isDirectory());
  } finally {
    if (mounted) {
      const u = run('umount', [mnt]);
      t.is(u.code, 0, `umount: ${u.stderr}`);
    }
    rmSync(mnt, { recursive: true, force: true });
  }
  fsck(t, img, 'after the kernel wrote to it');
}

interface Case {
  title: string;
  size: string;
  /** Options given to both kfs mkfs and mkfs.ext4. */
  args: string[];
  check: (t: ExecutionContext, h: Record<string, string>) => void;
}

const features = (h: Record<string, string>): string => h['Filesystem features'];

const cases: Case[] = [
  { title: '16 MiB: 1 KiB blocks, Debian 12 defaults', size: '16M', args: [], check: (t, h) => {
    t.is(features(h), DEFAULT_FEATURES);
    t.is(h['Block size'], '1024');
    t.is(h['Block count'], '16384');
    t.is(h['Inode count'], '4096');
    t.is(h['Reserved block count'], '819');
    t.is(h['Total journal blocks'], '1024');
  } },
  { title: '256 MiB', size: '256M', args: [], check: (t, h) => {
    t.is(features(h), DEFAULT_FEATURES);
    t.is(h['Block count'], '262144');
    t.is(h['Inode count'], '65536');
    t.is(h['Total journal blocks'], '8192');
  } },
  // mke2fs rounds inodes per group to whole inode-table blocks, then down to a multiple of 8.
  { title: '-N 5000', size: '64M', args: ['-N', '5000'], check: (t, h) => t.true(Math.abs(Number(h['Inode count']) - 5000) < 8 * 8) },
  { title: '-i 8192', size: '64M', args: ['-i', '8192'], check: (t, h) => t.is(h['Inode count'], String((64 << 20) / 8192)) },
  { title: '-L label', size: '32M', args: ['-L', 'kfs-volume'], check: (t, h) => t.is(h['Filesystem volume name'], 'kfs-volume') },
  { title: '-U uuid', size: '32M', args: ['-U', '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0'], check: (t, h) => t.is(h['Filesystem UUID'], '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0') },
  { title: '-m 1', size: '64M', args: ['-m', '1'], check: (t, h) => t.is(h['Reserved block count'], String(Math.floor(65536 / 100))) },
  { title: '-J size=8', size: '128M', args: ['-J', 'size=8'], check: (t, h) => t.is(h['Total journal blocks'], String(8 * 1024)) },
  { title: '-O ^has_journal', size: '64M', args: ['-O', '^has_journal'], check: (t, h) => {
    t.is(features(h), DEFAULT_FEATURES.replace('has_journal ', ''));
    t.false('Journal inode' in h);
  } },
  { title: '-O ^64bit', size: '256M', args: ['-O', '^64bit'], check: (t, h) => {
    t.is(features(h), DEFAULT_FEATURES.replace(' 64bit', ''));
    t.false('Group descriptor size' in h); // dumpe2fs shows it only for 64bit
  } },
  { title: '-b 2048', size: '64M', args: ['-b', '2048'], check: (t, h) => {
    t.is(h['Block size'], '2048');
    t.is(h['Blocks per group'], '16384');
  } },
  { title: '-O ^metadata_csum,^flex_bg', size: '96M', args: ['-O', '^metadata_csum,^flex_bg'], check: (t, h) => {
    t.is(features(h), 'has_journal ext_attr dir_index filetype extent 64bit sparse_super large_file huge_file dir_nlink extra_isize');
  } },
];

for (const c of cases) {
  // Serial: loop devices are allocated one mount at a time.
  test.serial(`kfs mkfs ${c.title}: clean, as mkfs.ext4, mountable`, (t) => {
    const img = fresh('img');
    const r = kfsMkfs(['-q', '--size', c.size, ...c.args, img]);
    t.is(r.code, 0, r.stderr);
    t.is(r.stderr, '');
    fsck(t, img, 'after kfs mkfs');
    c.check(t, header(img));
    compareWithMke2fs(t, img, c.size, c.args);
    mountRoundTrip(t, img);
    rmSync(img, { force: true });
  });
}

test.serial('kfs mkfs 8 GiB: stays sparse, as mkfs.ext4, mountable; reformatting punches', (t) => {
  const img = fresh('big');
  const started = Date.now();
  const r = kfsMkfs(['--size', '8G', img]);
  const ms = Date.now() - started;
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /Creating filesystem with 2097152 4k blocks and 524288 inodes/);
  t.log(`8 GiB format through the CLI: ${ms} ms, ${statSync(img).blocks * 512} bytes allocated`);
  t.is(statSync(img).size, 8 * 2 ** 30);
  t.true(statSync(img).blocks * 512 < 4 << 20, 'a few hundred KiB allocated, not GiB');
  fsck(t, img, 'after kfs mkfs');
  const h = header(img);
  t.is(h['Block size'], '4096');
  t.is(h['Total journal blocks'], '16384');
  compareWithMke2fs(t, img, '8G', []);
  mountRoundTrip(t, img);

  // An existing filesystem is kept unless -F, and -F reformats by punching, not writing.
  const again = kfsMkfs(['-q', img]);
  t.not(again.code, 0);
  t.regex(again.stderr, /^kfs mkfs: .*already contains an ext2\/ext3\/ext4 filesystem; pass -F/);
  const forced = kfsMkfs(['-q', '-F', img]);
  t.is(forced.code, 0, forced.stderr);
  t.true(statSync(img).blocks * 512 < 4 << 20, 'still sparse after reformatting');
  fsck(t, img, 'after reformatting');
  rmSync(img, { force: true });
});

test.serial('kfs mkfs formats a block device, and refuses a mounted one', (t) => {
  const backing = fresh('blockdev');
  t.is(run('truncate', ['-s', '64M', backing]).code, 0);
  const attach = run('losetup', ['-f', '--show', backing]);
  t.is(attach.code, 0, attach.stderr);
  const dev = attach.stdout.trim();
  // A loop device just detached by an earlier umount can take a moment to show its new size.
  for (let i = 0; i < 50 && run('blockdev', ['--getsize64', dev]).stdout.trim() !== String(64 << 20); i++) {
    spawnSync('sleep', ['0.1']);
  }
  const mnt = `${backing}.mnt`;
  mkdirSync(mnt);
  let mounted = false;
  try {
    const r = kfsMkfs(['-q', dev]);
    t.is(r.code, 0, r.stderr);
    fsck(t, dev, 'on the block device');
    t.is(header(dev)['Block count'], '65536', 'size taken from the device');
    mounted = run('mount', [dev, mnt]).code === 0;
    t.true(mounted);
    for (const target of [dev, backing]) {
      const busy = kfsMkfs(['-q', '-F', target]);
      t.is(busy.code, 1);
      t.regex(busy.stderr, /^kfs mkfs: .* is mounted on .*; unmount it before formatting\n$/);
    }
  } finally {
    if (mounted) run('umount', [mnt]);
    run('losetup', ['-d', dev]);
    rmSync(mnt, { recursive: true, force: true });
    rmSync(backing, { force: true });
  }
});

/** Calls back with every byte offset where two files differ (read in chunks: images are big). */
function forEachDifference(a: string, b: string, onDiff: (offset: number) => void): void {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const ba = Buffer.alloc(16 << 20);
  const bb = Buffer.alloc(16 << 20);
  try {
    for (let pos = 0; ; pos += ba.length) {
      const na = readSync(fa, ba, 0, ba.length, pos);
      const nb = readSync(fb, bb, 0, bb.length, pos);
      const n = Math.min(na, nb);
      if (n === 0) break;
      if (ba.compare(bb, 0, n, 0, n) !== 0) for (let i = 0; i < n; i++) if (ba[i] !== bb[i]) onDiff(pos + i);
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/** Byte-level oracle: mkfs.ext4 at a fixed time with the same UUID and hash seed. */
function compareBytes(t: ExecutionContext, size: string, args: string[], opts: Parameters<typeof formatImage>[1]): Promise<void> {
  const uuid = '11111111-2222-3333-4444-555555555555';
  const seed = '66666666-7777-8888-9999-000000000000';
  const time = 1700000000;
  const ref = fresh('ref');
  const img = fresh('bytes');
  mkfsExt4(ref, size, [...args, '-U', uuid, '-E', `hash_seed=${seed}`], { E2FSPROGS_FAKE_TIME: String(time) });
  return formatImage(img, { ...opts, size: parseSize(size), uuid, hashSeed: seed, timestamp: time }).then((res) => {
    t.is(statSync(ref).size, statSync(img).size);
    // Only s_kbytes_written (mke2fs counts its own I/O) and therefore s_checksum may differ,
    // in every superblock copy.
    const sbOffsets = [1024, ...res.superblockBackups.map((blk) => blk * res.blockSize)];
    const kb = SuperblockLayout.offsetOf('s_kbytes_written');
    const cs = SuperblockLayout.offsetOf('s_checksum');
    const unexpected: number[] = [];
    forEachDifference(ref, img, (i) => {
      const sb = sbOffsets.find((o) => i >= o && i < o + 1024);
      const rel = sb === undefined ? -1 : i - sb;
      if (!((rel >= kb && rel < kb + 8) || (rel >= cs && rel < cs + 4))) unexpected.push(i);
    });
    if (unexpected.length) t.log(`first differing bytes: ${unexpected.slice(0, 16).join(', ')}`);
    t.deepEqual(unexpected, [], `image bytes identical to mkfs.ext4 ${args.join(' ')}`);
    rmSync(ref, { force: true });
    rmSync(img, { force: true });
  });
}

test('16 MiB image is byte-identical to mkfs.ext4 (bar s_kbytes_written)', async (t) => {
  if (!MIRRORED_MKE2FS) return t.pass('mke2fs is not 1.47.0; byte comparison skipped');
  await compareBytes(t, '16M', [], {});
});

test('300 MiB, 2 KiB blocks, no metadata_csum: byte-identical to mkfs.ext4', async (t) => {
  if (!MIRRORED_MKE2FS) return t.pass('mke2fs is not 1.47.0; byte comparison skipped');
  await compareBytes(t, '300M', ['-b', '2048', '-O', '^metadata_csum'], { blockSize: 2048, features: '^metadata_csum' });
});

test('1 GiB without flex_bg and 64bit: byte-identical to mkfs.ext4', async (t) => {
  if (!MIRRORED_MKE2FS) return t.pass('mke2fs is not 1.47.0; byte comparison skipped');
  await compareBytes(t, '1G', ['-O', '^flex_bg,^64bit'], { features: '^flex_bg,^64bit' });
});

test('journal superblock: fresh V2, empty, the filesystem UUID; codec round-trips', async (t) => {
  const img = fresh('jsb');
  const uuid = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';
  const res = await formatImage(img, { size: 32 << 20, uuid });
  const layout = computeLayout({ sizeBytes: 32 << 20, sizeExplicit: true, features: resolveFeatures(undefined) });
  const first = layout.journal!.extents[0].physical;
  const fd = openSync(img, 'r');
  const buf = Buffer.alloc(1024);
  readSync(fd, buf, 0, 1024, first * res.blockSize);
  closeSync(fd);
  const jsb = decodeJournalSuperblock(buf);
  t.is(jsb.h_magic, JBD2_MAGIC_NUMBER);
  t.is(jsb.h_blocktype, JBD2_SUPERBLOCK_V2);
  t.is(jsb.s_blocksize, res.blockSize);
  t.is(jsb.s_maxlen, res.journalBlocks);
  t.is(jsb.s_first, 1);
  t.is(jsb.s_sequence, 1);
  t.is(jsb.s_start, 0);
  t.is(jsb.s_nr_users, 1);
  t.is(jsb.s_uuid.toString('hex'), uuid.replace(/-/g, ''));
  t.deepEqual(encodeJournalSuperblock(jsb), buf, 'decode/encode round trip');
  // Checksum helper: stored big-endian, verified by recomputation.
  const raw = encodeJournalSuperblock(newJournalSuperblock({ blockSize: 4096, maxLen: 1024, uuid: Buffer.alloc(16, 7) }));
  const crc = setJournalSuperblockChecksum(raw);
  t.is(raw.readUInt32BE(0xfc), crc);
  t.is(journalSuperblockChecksum(raw), crc);
  const c = new ByteCursor(Buffer.alloc(14));
  c.putU16be(0xbeef).putU32be(0xc03b3998).putU64be(2 ** 40 + 5);
  c.seek(0);
  t.deepEqual([c.u16be(), c.u32be(), c.u64be()], [0xbeef, 0xc03b3998, 2 ** 40 + 5]);
  rmSync(img, { force: true });
});

// ---------- bad input: exit code != 0, exactly one line on stderr, nothing left behind ----------

const badInputs: { title: string; args: string[]; message: RegExp }[] = [
  { title: 'too small a size', args: ['--size', '16K'], message: /too small/ },
  { title: 'unknown feature', args: ['--size', '16M', '-O', 'frobnicate'], message: /unknown filesystem feature 'frobnicate'/ },
  { title: 'unsupported feature', args: ['--size', '16M', '-O', 'inline_data'], message: /'inline_data' is not supported/ },
  { title: 'bad number', args: ['--size', '16M', '-N', 'lots'], message: /invalid inode count 'lots'/ },
  { title: 'bad size', args: ['--size', '16Q'], message: /invalid size '16Q'/ },
  { title: 'block size 512', args: ['--size', '16M', '-b', '512'], message: /block size 512 is not supported/ },
  { title: 'label too long', args: ['--size', '16M', '-L', 'a-label-of-17-chr'], message: /at most 16/ },
  { title: 'reserved percent out of range', args: ['--size', '16M', '-m', '60'], message: /between 0 and 50/ },
  { title: 'journal larger than half the filesystem', args: ['--size', '16M', '-J', 'size=12'], message: /half of the free space/ },
  { title: '-J without a journal', args: ['--size', '16M', '-J', 'size=4', '-O', '^has_journal'], message: /removes the journal/ },
  { title: 'missing image without --size', args: [], message: /does not exist; pass --size/ },
  { title: 'unknown option', args: ['--size', '16M', '--bogus'], message: /unknown option '--bogus'/ },
];

for (const b of badInputs) {
  test(`kfs mkfs rejects ${b.title} with one line`, (t) => {
    const img = fresh('bad');
    const r = kfsMkfs([...b.args, img]);
    t.not(r.code, 0);
    const lines = r.stderr.trimEnd().split('\n');
    t.is(lines.length, 1, r.stderr);
    t.regex(lines[0], /^kfs mkfs: .+; .+/);
    t.regex(lines[0], b.message);
    t.is(r.stdout, '');
    t.false(existsSync(img), 'no image left behind');
  });
}

test('bad options are usage errors (exit 2), failures exit 1', (t) => {
  t.is(kfsMkfs(['--size', '16M', '-b', '512', fresh('u')]).code, 2);
  t.is(kfsMkfs(['--size', '16K', fresh('u')]).code, 1);
  t.is(run(process.execPath, [KFS, 'nosuchcommand']).code, 2);
  t.is(run(process.execPath, [KFS, '--version']).code, 0);
});

test('option parsing: mke2fs syntax to MkfsOptions', (t) => {
  t.deepEqual(mkfsOptionsFromCli({ size: '1.5G', blockSize: '4k', features: ['^has_journal', '^64bit'], journal: undefined, reservedPercent: '2.5' }),
    { size: 1.5 * 2 ** 30, blockSize: 4096, features: '^has_journal,^64bit', reservedPercent: 2.5 });
  t.deepEqual(mkfsOptionsFromCli({ journal: ['size=64'], uuid: 'TIME' }), { journalSizeMiB: 64, uuid: 'time' });
  t.is(parseSize('4096'), 4096);
  t.is(parseSize('64MiB'), 64 << 20);
  t.is(parseSize('1T'), 2 ** 40);
  t.is(parseSize('-1'), undefined);
  t.throws(() => mkfsOptionsFromCli({ inodes: '10', bytesPerInode: '4096' }), { instanceOf: MkfsUsageError, message: /only one/ });
  t.throws(() => resolveFeatures('^ext_attr'), { instanceOf: MkfsUsageError, message: /needs the ext_attr feature/ });
  t.deepEqual([...resolveFeatures('^resize_inode,^dir_index')].includes('dir_index'), false);
});
