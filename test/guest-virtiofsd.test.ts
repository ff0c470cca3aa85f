/**
 * The test guest (images/) and its QEMU helper (test/helpers/guest.ts) against known-good
 * backends, so that later kfsd tests can trust them: the C virtiofsd of QEMU 7.2
 * (/usr/lib/qemu/virtiofsd) serving a host directory, and the guest kernel's own ext4 on a
 * virtio-blk disk made by mkfs.ext4.
 */
import test, { ExecutionContext } from 'ava';
import { ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { guestAvailable, guestKernelVersion, runGuest } from './helpers/guest';
import { assertFsckClean, loopMount, mustRun, requireRoot, tempDir } from './helpers/image';

const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test.before(() => {
  guestAvailable();
  if (!existsSync(VIRTIOFSD)) throw new Error(`${VIRTIOFSD} missing: the set-up (npm run setup) installs qemu-system-x86`);
});

interface Virtiofsd {
  socketPath: string;
  output(): string;
}

/** C virtiofsd on `dir`; it serves one QEMU connection and exits when QEMU goes away. */
async function startVirtiofsd(t: ExecutionContext, dir: string, socketPath: string): Promise<Virtiofsd> {
  const child: ChildProcess = spawn(VIRTIOFSD, [`--socket-path=${socketPath}`, '-o', `source=${dir}`, '-o', 'cache=auto'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (b: Buffer) => (output += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (output += b.toString()));
  let exited = false;
  child.on('exit', () => (exited = true));
  t.teardown(() => {
    if (!exited) child.kill('SIGKILL');
  });
  for (let i = 0; i < 200 && !existsSync(socketPath); i++) {
    if (exited) break;
    await sleep(50);
  }
  if (!existsSync(socketPath)) throw new Error(`virtiofsd did not create ${socketPath}:\n${output}`);
  return { socketPath, output: () => output };
}

test('guest mounts a directory served by the C virtiofsd, reads and writes it', async (t) => {
  requireRoot(t);
  const work = tempDir(t, 'guest-vfsd');
  const share = join(work, 'share');
  const hello = Buffer.from('hello from the host\n');
  const blob = randomBytes(3 * 1024 * 1024 + 123);
  const payload = randomBytes(1024 * 1024 + 7);
  mkdirSync(join(share, 'sub', 'deep'), { recursive: true });
  writeFileSync(join(share, 'hello.txt'), hello);
  writeFileSync(join(share, 'sub', 'deep', 'blob.bin'), blob);
  writeFileSync(join(share, 'delete-me'), 'x');
  const backend = await startVirtiofsd(t, share, join(work, 'vfsd.sock'));

  const script = `set -e
echo "uname $(uname -r)"
grep -q ' /mnt virtiofs ' /proc/mounts && echo "mounted virtiofs"
find . | sort | sed 's/^/entry /'
for f in hello.txt sub/deep/blob.bin; do echo "sum $(sha256sum $f)"; done
mkdir -p out/dir
cp /data/payload.bin out/payload.bin
echo "written by the guest" > out/note.txt
mv out/note.txt out/dir/note.txt
ln out/payload.bin out/payload.link
ln -s payload.bin out/payload.sym
dd if=/dev/zero of=out/sized bs=4096 count=3 2>/dev/null
truncate -s 5000 out/sized
rm delete-me
sync
echo "sum-out $(sha256sum out/payload.bin)"
echo "links $(stat -c %h out/payload.bin)"
`;
  const r = await runGuest({ socketPath: backend.socketPath, script, files: { '/data/payload.bin': payload }, timeoutMs: 5 * 60_000 });
  const context = `${r.console.slice(-4000)}\n--- qemu:\n${r.qemuStderr.slice(-2000)}\n--- virtiofsd:\n${backend.output().slice(-2000)}`;
  t.is(r.exit, '0', context);
  t.is(r.qemuCode, 0, context);
  t.log(`guest run took ${r.elapsedMs} ms`);

  // What the guest saw of the host's files.
  t.true(r.console.includes(`uname ${guestKernelVersion()}\n`), context);
  t.true(r.console.includes('mounted virtiofs\n'), context);
  for (const e of ['.', './hello.txt', './sub', './sub/deep', './sub/deep/blob.bin', './delete-me']) {
    t.true(r.console.includes(`entry ${e}\n`), `guest listing lacks ${e}\n${context}`);
  }
  t.true(r.console.includes(`sum ${sha256(hello)}  hello.txt\n`), context);
  t.true(r.console.includes(`sum ${sha256(blob)}  sub/deep/blob.bin\n`), context);
  t.true(r.console.includes(`sum-out ${sha256(payload)}  out/payload.bin\n`), context);
  t.true(r.console.includes('links 2\n'), context);

  // What the host sees of the guest's writes.
  t.deepEqual(readFileSync(join(share, 'out', 'payload.bin')), payload);
  t.is(statSync(join(share, 'out', 'payload.link')).ino, statSync(join(share, 'out', 'payload.bin')).ino);
  t.true(lstatSync(join(share, 'out', 'payload.sym')).isSymbolicLink());
  t.is(readlinkSync(join(share, 'out', 'payload.sym')), 'payload.bin');
  t.is(readFileSync(join(share, 'out', 'dir', 'note.txt'), 'utf8'), 'written by the guest\n');
  t.false(existsSync(join(share, 'out', 'note.txt')));
  t.false(existsSync(join(share, 'delete-me')));
  t.deepEqual(readFileSync(join(share, 'out', 'sized')), Buffer.alloc(5000));
});

test('a mount that fails ends the run with KFS-EXIT mount-failed', async (t) => {
  requireRoot(t);
  const work = tempDir(t, 'guest-badtag');
  mkdirSync(join(work, 'share'));
  const backend = await startVirtiofsd(t, join(work, 'share'), join(work, 'vfsd.sock'));
  // The device's tag is 'myfs'; the guest asks for another one.
  const r = await runGuest({ socketPath: backend.socketPath, script: 'echo script-ran', kernelArgs: ['kfs.tag=nosuchtag'], timeoutMs: 5 * 60_000 });
  t.is(r.exit, 'mount-failed', r.console);
  t.false(r.console.includes('script-ran'), r.console);
  t.is(r.qemuCode, 0, r.qemuStderr);
});

test('guest kernel ext4 on a virtio-blk disk made by mkfs.ext4 (kfs.nomount=1)', async (t) => {
  requireRoot(t);
  const work = tempDir(t, 'guest-ext4');
  const seedDir = join(work, 'seed');
  mkdirSync(seedDir);
  const seed = randomBytes(200 * 1024 + 5);
  writeFileSync(join(seedDir, 'seed.bin'), seed);
  const image = join(work, 'disk.img');
  mustRun('mkfs.ext4', ['-q', '-F', '-d', seedDir, image, '64M']);
  const payload = randomBytes(512 * 1024 + 1);

  const script = `set -e
grep -q ' /mnt ' /proc/mounts && { echo "unexpected mount on /mnt"; exit 1; }
mount -t ext4 /dev/vda /mnt
grep ' /mnt ext4 ' /proc/mounts | sed 's/^/mounted /'
echo "sum $(sha256sum /mnt/seed.bin)"
mkdir /mnt/fromguest
cp /data/payload.bin /mnt/fromguest/payload.bin
ln -s fromguest/payload.bin /mnt/link
`;
  const r = await runGuest({ mount: false, disk: image, script, files: { '/data/payload.bin': payload }, timeoutMs: 5 * 60_000 });
  t.is(r.exit, '0', `${r.console.slice(-4000)}\n--- qemu:\n${r.qemuStderr}`);
  t.true(r.console.includes('mounted /dev/vda /mnt ext4 '), r.console);
  t.true(r.console.includes(`sum ${sha256(seed)}  /mnt/seed.bin\n`), r.console);

  // The init unmounted the disk before powering off: a clean filesystem with the guest's files.
  assertFsckClean(t, image);
  const m = loopMount(t, image, { readOnly: true });
  try {
    t.deepEqual(readFileSync(join(m.dir, 'fromguest', 'payload.bin')), payload);
    t.is(readlinkSync(join(m.dir, 'link')), 'fromguest/payload.bin');
  } finally {
    m.unmount();
  }
});
