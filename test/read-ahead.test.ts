/**
 * `kfs mount -o read_ahead_kb=N` (FuseDevice.setReadAhead): the mount's bdi read-ahead caps the
 * READ requests the kernel sends for a sequential read. Served in this process through the real
 * kernel FUSE driver; a separate client process reads a file that is not in the page cache (the
 * image is mounted afresh for the read). Needs root (sysfs) and /dev/fuse.
 */
import test, { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Ext4Fs } from '../src/ext4/fs';
import { Ext4FuseFs } from '../src/ext4/fuse-adapter';
import { FuseSession } from '../src/fuse/dispatcher';
import { FuseDevice } from '../src/transport/fusedev';
import { makeImage, tempDir, requireRoot, assertFsckClean } from './helpers/image';
import { parseMountOptions } from '../src/cli/mount-command';
import { readMountInfo } from '../src/util/mountinfo';

const MiB = 1 << 20;
const FILE_MIB = 8;

/** Mount `image` in this process, run `script` in a client process, unmount; the session's request counts. */
async function serve(t: ExecutionContext, image: string, mnt: string, readAheadKb: number, script: string): Promise<{ counts: Map<string, number>; bdiKb: string | null }> {
  const ext4 = await Ext4Fs.open(image, { commitIntervalMs: 0 });
  const session = new FuseSession(new Ext4FuseFs(ext4), {});
  const dev = FuseDevice.mount(mnt, session);
  if (readAheadKb > 0) dev.setReadAhead(readAheadKb);
  dev.start();
  const majMin = readMountInfo().filter((m) => m.mountpoint === mnt).pop()?.majorMinor;
  const bdiKb = majMin ? fs.readFileSync(`/sys/class/bdi/${majMin}/read_ahead_kb`, 'utf8').trim() : null;
  try {
    // The client must not be this process: its event loop serves the mount.
    const child = spawn(process.execPath, ['-e', script, path.join(mnt, 'big')], { stdio: 'inherit' });
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    t.is(code, 0, 'the client ran');
  } finally {
    dev.unmount();
    await dev.done;
    dev.close();
    await ext4.close();
  }
  return { counts: new Map(session.counts), bdiKb };
}

const WRITE = `const fs = require('fs'); const b = Buffer.alloc(${MiB}, 7); const fd = fs.openSync(process.argv[1], 'w');
  for (let i = 0; i < ${FILE_MIB}; i++) fs.writeSync(fd, b); fs.closeSync(fd);`;
const READ = `const fs = require('fs'); const b = Buffer.alloc(${MiB}); const fd = fs.openSync(process.argv[1], 'r'); let n = 0, got;
  while ((got = fs.readSync(fd, b, 0, b.length, null)) > 0) { n += got; if (b[0] !== 7 || b[got - 1] !== 7) process.exit(4); }
  process.exit(n === ${FILE_MIB * MiB} ? 0 : 3);`;

async function coldReads(t: ExecutionContext, readAheadKb: number): Promise<{ reads: number; bdiKb: string | null }> {
  requireRoot(t);
  const dir = tempDir(t, 'read-ahead');
  const image = makeImage(t, { dir, size: '64M' });
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  await serve(t, image, mnt, readAheadKb, WRITE);
  // A fresh mount: a new superblock, so nothing of the file is in the page cache.
  const r = await serve(t, image, mnt, readAheadKb, READ);
  assertFsckClean(t, image);
  return { reads: r.counts.get('read') ?? 0, bdiKb: r.bdiKb };
}

test.serial('read_ahead_kb=1024: a sequential read of 8 MiB comes as 1 MiB READs', async (t) => {
  const r = await coldReads(t, 1024);
  t.is(r.bdiKb, '1024', "the mount's bdi read-ahead");
  t.log(`${r.reads} READ requests for ${FILE_MIB} MiB`);
  t.true(r.reads >= FILE_MIB && r.reads <= FILE_MIB + 4, `${r.reads} READ requests for ${FILE_MIB} MiB`);
});

test.serial("without it the kernel's 128 KiB read-ahead makes 8x as many", async (t) => {
  const r = await coldReads(t, 0);
  t.is(r.bdiKb, '128', 'the kernel default');
  t.true(r.reads >= (FILE_MIB * 1024) / 128, `${r.reads} READ requests for ${FILE_MIB} MiB`);
});

test('read_ahead_kb: 1024 by default, 0 leaves the kernel default, nonsense is a usage error', (t) => {
  t.is(parseMountOptions([]).read_ahead_kb, 1024);
  t.is(parseMountOptions(['read_ahead_kb=0']).read_ahead_kb, 0);
  t.throws(() => parseMountOptions(['read_ahead_kb=lots']), { message: /read_ahead_kb needs a number/ });
  t.throws(() => parseMountOptions(['read_ahead_kb=-1']), { message: /read_ahead_kb/ });
});

test.serial('a mount point whose name the kernel escapes in mountinfo (space, tab, backslash) still gets its read-ahead', async (t) => {
  requireRoot(t);
  const dir = tempDir(t, 'read-ahead');
  const image = makeImage(t, { dir, size: '64M' });
  const mnt = path.join(dir, 'mount point\twith\\escapes');
  fs.mkdirSync(mnt);
  const r = await serve(t, image, mnt, 1024, WRITE);
  t.is(r.bdiKb, '1024', "the mount's bdi read-ahead");
  assertFsckClean(t, image);
});
