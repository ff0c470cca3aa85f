/**
 * `kfs mount`'s default no_open (Ext4FuseFs.noOpen, FileSystem.noOpen): OPEN answers ENOSYS,
 * after which the kernel sends no OPEN or RELEASE for regular files and READ/WRITE carry fh 0.
 * Served in this process through the real kernel FUSE driver; the client is a child process.
 * What must still hold: O_TRUNC truncates (as a SETATTR: ATOMIC_O_TRUNC is off), a file
 * unlinked while open stays readable and is freed after its last close (by the kernel's
 * FORGET), O_TMPFILE files are freed at their close, and nothing is left behind (e2fsck).
 * Needs root and /dev/fuse.
 */
import test, { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Ext4Fs } from '../src/ext4/fs';
import { Ext4FuseFs } from '../src/ext4/fuse-adapter';
import { FuseSession } from '../src/fuse/dispatcher';
import { InitFlag } from '../src/fuse/abi';
import { FuseDevice } from '../src/transport/fusedev';
import { makeImage, tempDir, requireRoot, assertFsckClean } from './helpers/image';
import { sleep } from './posix/util';
import { parseMountOptions } from '../src/cli/mount-command';

interface Served {
  counts: Map<string, number>;
  atomicOTrunc: boolean;
  freeInodes: number;
  clientOut: string;
}

/** Serve a fresh image with noOpen, run `script` (argv[1]: the mount point) in a client, wait for the FORGETs, unmount. */
async function serve(t: ExecutionContext, noOpen: boolean, script: string): Promise<Served & { startInodes: number }> {
  requireRoot(t);
  const dir = tempDir(t, 'no-open');
  const image = makeImage(t, { dir, size: '64M' });
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  const ext4 = await Ext4Fs.open(image, { commitIntervalMs: 0 });
  const fuseFs = new Ext4FuseFs(ext4);
  fuseFs.noOpen = noOpen;
  const session = new FuseSession(fuseFs, {});
  const dev = FuseDevice.mount(mnt, session);
  dev.start();
  const startInodes = (await ext4.statfs()).ffree;
  let clientOut = '';
  let freeInodes: number;
  try {
    const child = spawn(process.execPath, ['-e', script, mnt], { stdio: ['ignore', 'pipe', 'inherit'] });
    child.stdout!.on('data', (d: Buffer) => (clientOut += d.toString()));
    // 'close': its stdout is read to the end (at 'exit' it may still be draining).
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    t.is(code, 0, 'the client ran');
    // Unlinked inodes go at their last FORGET, which follows the eviction after the last close.
    fs.writeFileSync('/proc/sys/vm/drop_caches', '2');
    for (let i = 0; i < 100 && (await ext4.statfs()).ffree !== startInodes - 2; i++) await sleep(50);
    freeInodes = (await ext4.statfs()).ffree;
  } finally {
    dev.unmount();
    await dev.done;
    dev.close();
    await ext4.close();
  }
  assertFsckClean(t, image);
  return { counts: new Map(session.counts), atomicOTrunc: (session.negotiated!.flags & InitFlag.ATOMIC_O_TRUNC) !== 0n, freeInodes, startInodes, clientOut };
}

// Leaves two files (kept, truncated); everything else it makes is gone by the end.
const CLIENT = `
const fs = require('fs'); const path = require('path'); const m = process.argv[1];
const p = (n) => path.join(m, n);
const check = (cond, what) => { if (!cond) { console.error('client: ' + what); process.exit(3); } };
fs.writeFileSync(p('kept'), 'kept bytes');
for (let i = 0; i < 20; i++) check(fs.readFileSync(p('kept'), 'utf8') === 'kept bytes', 'read back ' + i);
fs.writeFileSync(p('truncated'), '0123456789');
const t = fs.openSync(p('truncated'), fs.constants.O_WRONLY | fs.constants.O_TRUNC);
fs.writeSync(t, 'ab'); fs.closeSync(t);
check(fs.readFileSync(p('truncated'), 'utf8') === 'ab', 'O_TRUNC truncated');
fs.writeFileSync(p('gone'), Buffer.alloc(100000, 0x67));
const g = fs.openSync(p('gone'), 'r');
fs.unlinkSync(p('gone'));
for (let i = 0; i < 20; i++) fs.writeFileSync(p('filler' + i), Buffer.alloc(8192, i));
for (let i = 0; i < 20; i++) fs.unlinkSync(p('filler' + i));
const b = Buffer.alloc(100000); check(fs.readSync(g, b, 0, b.length, 0) === b.length && b.every((x) => x === 0x67), 'unlinked file reads back');
fs.closeSync(g);
const O_TMPFILE = 0o20000000 | fs.constants.O_DIRECTORY;
const tf = fs.openSync(m, O_TMPFILE | fs.constants.O_RDWR, 0o600);
fs.writeSync(tf, 'temporary'); const tb = Buffer.alloc(9); fs.readSync(tf, tb, 0, 9, 0);
check(tb.toString() === 'temporary', 'O_TMPFILE reads back'); fs.closeSync(tf);
`;

test.serial('no_open: after the first OPEN (ENOSYS) no OPEN or RELEASE comes; O_TRUNC, unlinked-open and O_TMPFILE files still behave', async (t) => {
  const r = await serve(t, true, CLIENT);
  t.false(r.atomicOTrunc, 'ATOMIC_O_TRUNC is not negotiated');
  t.is(r.counts.get('open'), 1, 'one OPEN: the one answered ENOSYS');
  // RELEASE comes only for files created before the kernel learnt no_open (the first create).
  t.true((r.counts.get('release') ?? 0) <= 1, `${r.counts.get('release')} RELEASEs`);
  t.true((r.counts.get('setattr') ?? 0) >= 1, 'the O_TRUNC came as a SETATTR');
  t.is(r.freeInodes, r.startInodes - 2, 'only kept and truncated hold inodes after the FORGETs');
});

test.serial('with -o open the same client sends an OPEN and a RELEASE per open(2)', async (t) => {
  const r = await serve(t, false, CLIENT);
  t.true(r.atomicOTrunc);
  t.true((r.counts.get('open') ?? 0) >= 22, `${r.counts.get('open')} OPENs`);
  t.true((r.counts.get('release') ?? 0) >= 40, `${r.counts.get('release')} RELEASEs`);
  t.is(r.freeInodes, r.startInodes - 2);
});

test('no_open is the default; -o open turns it off', (t) => {
  t.true(parseMountOptions([]).no_open);
  t.false(parseMountOptions(['open']).no_open);
  t.true(parseMountOptions(['no_open']).no_open);
});
