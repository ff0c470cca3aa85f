/**
 * PassthroughFs (kfsd --shared-dir) through the real kernel FUSE client: a temp directory is
 * served by `dist/src/passthrough/host-mount.js` (a child process: this one uses the mount with
 * synchronous calls) at a temp mount point, with name/attribute timeouts 0 so that every path
 * walk reaches the server. Behaviour is compared with the same operations on a plain host
 * directory; confinement is checked through the mount and against the server API directly
 * (a second PassthroughFs instance on the same directory, in this process).
 *
 * Layout under one temp base:
 *   share/          served;   share/evil -> /,  share/evil2 -> ../../..
 *   m/mnt/          the mount (so a client-side follow of "../outside" finds nothing)
 *   outside/        CANARY: must never be read, listed, changed or linked by the server
 *   ref/            plain host directory: the reference for behaviour
 * The POSIX suite (test/posix/suite.ts) runs at the end on a second passthrough mount whose
 * shared directory is a kernel ext4 loop mount, against a kernel ext4 loop mount of the same
 * image (as test/posix.test.ts does for kfs images): observations and the trees left behind
 * must be identical.
 * Needs root, /dev/fuse, python3, mkfs.ext4, setfacl/getfacl, fallocate.
 */
import test from 'ava';
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassthroughFs } from '../src/passthrough/passthrough-fs';
import { parseDirents } from '../src/passthrough/host-calls';
import { native } from '../src/native';
import { RequestContext } from '../src/fuse/filesystem';
import { errnoOf } from '../src/util/errors';
import { setLogLevel } from '../src/util/log';
import { snapshotHost, NodeSnap } from './helpers/tree';
import { errOf, py, pattern, dropCaches } from './posix/util';
import { posixCases, Observations } from './posix/suite';
import { mustRun, runCmd } from './helpers/image';

const ROOT_CTX: RequestContext = { uid: 0, gid: 0, pid: process.pid };
const HOST_MOUNT_JS = join(__dirname, '..', 'src', 'passthrough', 'host-mount.js');
const CANARY_TEXT = 'CANARY-SECRET outside the share\n';
const OLD = new Date('2001-09-09T01:46:40Z'); // far in the past: relatime updates atime on any read

interface Env {
  base: string;
  share: string;
  mnt: string;
  outside: string;
  canary: string;
  ref: string;
  server: ChildProcess;
  serverErr: () => string;
  fs: PassthroughFs;
  canaryBefore: { file: fs.BigIntStats; dir: fs.BigIntStats; list: string[] };
}

let env: Env | undefined;
let setupError = '';

function isMountPoint(dir: string): boolean {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === dir);
}

test.before(async () => {
  setLogLevel('error'); // the in-process server warns about what these tests provoke on purpose
  if (process.getuid?.() !== 0) {
    setupError = 'must run as root (/dev/fuse, mount(2), other uids)';
    return;
  }
  const base = fs.mkdtempSync(join(tmpdir(), 'kfs-passthrough-'));
  fs.chmodSync(base, 0o755);
  const share = join(base, 'share');
  const mnt = join(base, 'm', 'mnt');
  const outside = join(base, 'outside');
  const ref = join(base, 'ref');
  for (const d of [share, mnt, outside, ref]) fs.mkdirSync(d, { recursive: true, mode: 0o755 });
  const canary = join(outside, 'CANARY-outside.txt');
  fs.writeFileSync(canary, CANARY_TEXT, { mode: 0o644 });
  fs.symlinkSync('/', join(share, 'evil'));
  fs.symlinkSync('../../..', join(share, 'evil2'));
  fs.utimesSync(canary, OLD, OLD);
  fs.utimesSync(outside, OLD, OLD);
  const canaryBefore = { file: fs.statSync(canary, { bigint: true }), dir: fs.statSync(outside, { bigint: true }), list: fs.readdirSync(outside) };
  // readdirSync just read the directory: stamp it old again and take its times afresh.
  fs.utimesSync(outside, OLD, OLD);
  canaryBefore.dir = fs.statSync(outside, { bigint: true });

  try {
    const server = await startServer(share, mnt, 0);
    env = { base, share, mnt, outside, canary, ref, server: server.child, serverErr: server.stderr, fs: await PassthroughFs.open(share), canaryBefore };
  } catch (e) {
    setupError = (e as Error).message;
  }
});

interface Server {
  child: ChildProcess;
  stderr: () => string;
}

/** Serve `share` at `mnt` from a child process; resolves once the mount is live. */
async function startServer(share: string, mnt: string, timeout: number, extra: string[] = []): Promise<Server> {
  const child = spawn(process.execPath, [HOST_MOUNT_JS, share, mnt, '--timeout', String(timeout), '--log-level', 'warn', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const word = await new Promise<string>((resolve) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out.split('\n')[0]);
    });
    child.on('exit', (code) => resolve(`exited ${code}`));
  });
  if (word !== 'ready' || !isMountPoint(mnt)) throw new Error(`passthrough mount of ${share} at ${mnt} did not come up (${word}): ${err}`);
  process.on('exit', () => {
    if (isMountPoint(mnt)) spawnSync('umount', ['-l', mnt]);
  });
  return { child, stderr: () => err };
}

/** Unmount (retrying while busy) and wait for the serving process to exit. */
async function stopServer(server: ChildProcess, mnt: string): Promise<void> {
  const exited = new Promise<void>((r) => (server.exitCode !== null ? r() : server.on('exit', () => r())));
  for (let i = 0; i < 40 && isMountPoint(mnt); i++) {
    if (spawnSync('umount', [mnt]).status === 0) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  if (isMountPoint(mnt)) spawnSync('umount', ['-l', mnt]);
  await Promise.race([exited, new Promise((r) => setTimeout(r, 30_000))]);
  if (server.exitCode === null) server.kill('SIGKILL');
}

test.after.always(async () => {
  if (!env) return;
  await env.fs.destroy();
  await stopServer(env.server, env.mnt);
  if (posixEnv) {
    const p = await posixEnv.catch(() => undefined);
    if (p) await stopServer(p.server.child, p.ptDir);
    for (const d of [join(env.base, 'posix', 'kernel'), join(env.base, 'posix', 'shared')]) {
      if (isMountPoint(d) && runCmd('umount', [d]).code !== 0) runCmd('umount', ['-l', d]);
    }
  }
  fs.rmSync(env.base, { recursive: true, force: true });
});

function need(): Env {
  if (!env) throw new Error(`setup failed: ${setupError}`);
  return env;
}

/** errno name of a rejected promise (or 'ok'). */
async function errOfP(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    const n = errnoOf(e);
    return (e as { code?: string }).code ?? String(n);
  }
}

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex').slice(0, 16);

/** A tree as comparable data: no inode numbers, no times. */
function tree(dir: string): Record<string, Partial<NodeSnap>> {
  const out: Record<string, Partial<NodeSnap>> = {};
  for (const [p, n] of [...snapshotHost(dir)].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
    const { ino: _i, atimeNs: _a, mtimeNs: _m, ctimeNs: _c, crtimeNs: _b, ...rest } = n;
    if (n.type === 'dir') {
      delete rest.size;
      delete rest.blocks;
    }
    out[p] = rest;
  }
  return out;
}

// ------------------------------------------------------------------------------------------
// Behaviour: the same operations through the mount and on a plain host directory.

async function basicOps(root: string): Promise<Record<string, unknown>> {
  const o: Record<string, unknown> = {};
  const f = join(root, 'f');
  fs.writeFileSync(f, 'hello');
  fs.appendFileSync(f, ' world');
  o.read = fs.readFileSync(f, 'utf8');
  let fd = fs.openSync(f, fs.constants.O_WRONLY | fs.constants.O_APPEND);
  fs.writeSync(fd, '!', 0); // O_APPEND: the position is ignored
  fs.closeSync(fd);
  o.append = fs.readFileSync(f, 'utf8');
  fd = fs.openSync(f, fs.constants.O_RDWR | fs.constants.O_TRUNC);
  o.afterTrunc = fs.fstatSync(fd).size;
  fs.writeSync(fd, 'abc');
  fs.closeSync(fd);
  fs.truncateSync(f, 100);
  o.size100 = fs.statSync(f).size;
  fs.truncateSync(f, 2);
  o.content2 = fs.readFileSync(f, 'utf8');
  fs.chmodSync(f, 0o640);
  o.mode640 = (fs.statSync(f).mode & 0o7777).toString(8);
  fs.chmodSync(f, 0o4755);
  o.mode4755 = (fs.statSync(f).mode & 0o7777).toString(8);
  fs.chownSync(f, 1000, 1001);
  o.owner = [fs.statSync(f).uid, fs.statSync(f).gid];
  o.modeAfterChown = (fs.statSync(f).mode & 0o7777).toString(8);
  o.excl1 = errOf(() => fs.closeSync(fs.openSync(join(root, 'x'), 'wx')));
  o.excl2 = errOf(() => fs.closeSync(fs.openSync(join(root, 'x'), 'wx')));
  fs.mkdirSync(join(root, 'd'), { mode: 0o750 });
  o.dirMode = (fs.statSync(join(root, 'd')).mode & 0o7777).toString(8);
  o.mkdirExisting = errOf(() => fs.mkdirSync(join(root, 'd')));
  fs.mkdirSync(join(root, 'd', 'e'));
  fs.writeFileSync(join(root, 'd', 'e', 'g'), 'g');
  o.rmdirNonEmpty = errOf(() => fs.rmdirSync(join(root, 'd', 'e')));
  fs.unlinkSync(join(root, 'd', 'e', 'g'));
  fs.rmdirSync(join(root, 'd', 'e'));
  o.emptyDir = fs.readdirSync(join(root, 'd'));
  fs.symlinkSync('f', join(root, 's'));
  o.readlink = fs.readlinkSync(join(root, 's'));
  o.statThroughLink = fs.statSync(join(root, 's')).size;
  o.lstatLink = fs.lstatSync(join(root, 's')).isSymbolicLink();
  o.unlinkMissing = errOf(() => fs.unlinkSync(join(root, 'missing')));
  o.rmdirFile = errOf(() => fs.rmdirSync(f));
  o.unlinkDir = errOf(() => fs.unlinkSync(join(root, 'd')));
  fs.renameSync(f, join(root, 'g'));
  o.renamed = [fs.existsSync(f), fs.existsSync(join(root, 'g'))];
  fs.utimesSync(join(root, 'g'), 1_000_000_000.25, 1_100_000_000.5);
  const st = fs.statSync(join(root, 'g'), { bigint: true });
  o.times = [st.atimeNs.toString(), st.mtimeNs.toString()];
  const big = pattern(7, 3 * 1024 * 1024 + 123);
  fs.writeFileSync(join(root, 'big'), big);
  o.bigSha = sha(fs.readFileSync(join(root, 'big')));
  o.bigSize = fs.statSync(join(root, 'big')).size;
  // Creations by an unprivileged caller: owner and group come from the caller; a setgid
  // directory's group is inherited (host kernel rules, through setfsuid/setfsgid).
  fs.mkdirSync(join(root, 'pub'), { mode: 0o777 });
  fs.chmodSync(join(root, 'pub'), 0o777);
  fs.mkdirSync(join(root, 'sgid'));
  fs.chownSync(join(root, 'sgid'), 0, 1234);
  fs.chmodSync(join(root, 'sgid'), 0o2777);
  o.user = await py(`
os.umask(0o027)
p = A['root']
r = {}
r['file'] = K(lambda: os.close(os.open(p + '/pub/uf', os.O_CREAT | os.O_WRONLY, 0o666)))
r['dir'] = K(os.mkdir, p + '/pub/ud', 0o777)
r['sym'] = K(os.symlink, 'uf', p + '/pub/us')
r['fifo'] = K(os.mkfifo, p + '/pub/up', 0o666)
r['sg'] = K(lambda: os.close(os.open(p + '/sgid/uf', os.O_CREAT | os.O_WRONLY, 0o666)))
r['sgdir'] = K(os.mkdir, p + '/sgid/ud', 0o777)
r['denied'] = K(lambda: os.close(os.open(p + '/d/nope', os.O_CREAT | os.O_WRONLY, 0o666)))
for n in ['pub/uf', 'pub/ud', 'pub/us', 'pub/up', 'sgid/uf', 'sgid/ud']:
    s = os.lstat(p + '/' + n)
    r[n] = [s.st_uid, s.st_gid, oct(s.st_mode)]
out(r)`, { root }, { uid: 1000, gid: 1000 });
  o.list = fs.readdirSync(root).sort();
  return o;
}

test.serial('basic POSIX operations through the mount match the same operations on a host directory', async (t) => {
  const e = need();
  fs.mkdirSync(join(e.mnt, 'basic'));
  fs.mkdirSync(join(e.ref, 'basic'));
  const viaMount = await basicOps(join(e.mnt, 'basic'));
  const onHost = await basicOps(join(e.ref, 'basic'));
  t.deepEqual(viaMount, onHost);
  // What the server left in the share is what the host calls left in the reference directory.
  t.deepEqual(tree(join(e.share, 'basic')), tree(join(e.ref, 'basic')));
  // And the mount shows the share as it is.
  t.deepEqual(tree(join(e.mnt, 'basic')), tree(join(e.share, 'basic')));
});

test.serial('hard links: one node, host inode numbers, link counts', (t) => {
  const e = need();
  const d = join(e.mnt, 'links');
  fs.mkdirSync(d);
  fs.writeFileSync(join(d, 'a'), 'data');
  fs.linkSync(join(d, 'a'), join(d, 'b'));
  fs.mkdirSync(join(d, 'sub'));
  fs.linkSync(join(d, 'a'), join(d, 'sub', 'c'));
  const [a, b, c] = ['a', 'b', 'sub/c'].map((n) => fs.statSync(join(d, n)));
  t.is(a.ino, b.ino);
  t.is(a.ino, c.ino);
  t.is(a.nlink, 3);
  t.is(a.ino, fs.statSync(join(e.share, 'links', 'a')).ino, 'the mount shows the host inode number');
  t.is(fs.statSync(join(e.share, 'links', 'sub', 'c')).ino, fs.statSync(join(e.share, 'links', 'a')).ino);
  fs.writeFileSync(join(d, 'b'), 'changed');
  t.is(fs.readFileSync(join(d, 'sub', 'c'), 'utf8'), 'changed');
  fs.unlinkSync(join(d, 'a'));
  t.is(fs.statSync(join(d, 'b')).nlink, 2);
  t.is(errOf(() => fs.linkSync(join(d, 'sub'), join(d, 'dirlink'))), 'EPERM');
  t.is(errOf(() => fs.linkSync(join(d, 'b'), join(d, 'sub', 'c'))), 'EEXIST');
});

const RENAME_PY = `
R = {}
p = A['root']
def ren(x, y, fl): return C('renameat2', -100, (p + '/' + x).encode(), -100, (p + '/' + y).encode(), fl)
def rd(n):
    try:
        with open(p + '/' + n) as f: return f.read()
    except OSError as e: return en(e.errno)
open(p + '/a', 'w').write('A'); open(p + '/b', 'w').write('B'); os.mkdir(p + '/dir')
R['noreplace_existing'] = ren('a', 'b', 1)
R['noreplace_new'] = ren('a', 'c', 1)
R['after_noreplace'] = [rd('a'), rd('c')]
R['exchange'] = ren('c', 'b', 2)
R['after_exchange'] = [rd('c'), rd('b')]
R['exchange_missing'] = ren('c', 'nothere', 2)
R['exchange_file_dir'] = ren('c', 'dir', 2)
R['types'] = [os.path.isdir(p + '/c'), os.path.isfile(p + '/dir')]
R['both_flags'] = ren('b', 'c', 3)
R['plain_over_file'] = ren('b', 'dir', 0)
R['dir_over_file'] = ren('c', 'dir', 0)
R['list'] = sorted(os.listdir(p))
out(R)`;

test.serial('rename with RENAME_NOREPLACE and RENAME_EXCHANGE behaves as on the host', async (t) => {
  const e = need();
  fs.mkdirSync(join(e.mnt, 'ren'));
  fs.mkdirSync(join(e.ref, 'ren'));
  const viaMount = await py(RENAME_PY, { root: join(e.mnt, 'ren') });
  const onHost = await py(RENAME_PY, { root: join(e.ref, 'ren') });
  t.deepEqual(viaMount, onHost);
  t.is(viaMount.noreplace_existing, 'EEXIST');
  t.deepEqual(viaMount.after_exchange, ['B', 'A']);
  t.deepEqual(tree(join(e.share, 'ren')), tree(join(e.ref, 'ren')));
});

const XATTR_PY = `
R = {}
p = A['root'] + '/f'
open(p, 'w').write('x')
R['set'] = K(os.setxattr, p, 'user.a', b'1')
R['create_existing'] = K(os.setxattr, p, 'user.a', b'2', os.XATTR_CREATE)
R['replace_missing'] = K(os.setxattr, p, 'user.b', b'2', os.XATTR_REPLACE)
R['replace'] = K(os.setxattr, p, 'user.a', b'3', os.XATTR_REPLACE)
R['big'] = K(os.setxattr, p, 'user.big', bytes(range(256)) * 12)
R['trusted'] = K(os.setxattr, p, 'trusted.t', b'root only')
R['get'] = E(lambda: os.getxattr(p, 'user.a').decode())
R['get_big_len'] = E(lambda: len(os.getxattr(p, 'user.big')))
R['get_missing'] = E(os.getxattr, p, 'user.none')
R['list'] = sorted(os.listxattr(p))
R['remove'] = K(os.removexattr, p, 'user.big')
R['remove_missing'] = K(os.removexattr, p, 'user.big')
R['list2'] = sorted(os.listxattr(p))
os.symlink('f', A['root'] + '/s')
R['symlink_user'] = K(os.setxattr, A['root'] + '/s', 'user.x', b'1', follow_symlinks=False)
R['small_buffer'] = C('getxattr', p.encode(), b'user.a', ctypes.create_string_buffer(0), 0)
out(R)`;

test.serial('xattrs: set/get/list/remove, flags, sizes, through to the host file', async (t) => {
  const e = need();
  fs.mkdirSync(join(e.mnt, 'xa'));
  fs.mkdirSync(join(e.ref, 'xa'));
  const viaMount = await py(XATTR_PY, { root: join(e.mnt, 'xa') });
  const onHost = await py(XATTR_PY, { root: join(e.ref, 'xa') });
  t.deepEqual(viaMount, onHost);
  t.deepEqual(viaMount.list2, ['trusted.t', 'user.a']);
  const hostView = await py(`out(E(lambda: os.getxattr(A['p'], 'user.a').decode()))`, { p: join(e.share, 'xa', 'f') });
  t.is(hostView as unknown as string, '3');
  // An unprivileged caller does not see trusted.* (as on ext4).
  const userList = await py(`out(sorted(os.listxattr(A['p'])))`, { p: join(e.mnt, 'xa', 'f') }, { uid: 1000 });
  t.deepEqual(userList as unknown as string[], ['user.a']);
});

const TMPFILE_PY = `
R = {}
d = A['root']
fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o640)
os.write(fd, b'tmpdata')
s = os.fstat(fd)
R['nlink'] = s.st_nlink
R['mode'] = oct(s.st_mode)
R['listed'] = sorted(os.listdir(d))
# linkat(AT_SYMLINK_FOLLOW) of the magic link (os.link would call link(2), which does not follow).
R['link'] = C('linkat', -100, b('/proc/self/fd/%d' % fd), -100, b(d + '/named'), 0x400)
os.close(fd)
R['content'] = open(d + '/named').read()
R['nlink_after'] = os.stat(d + '/named').st_nlink
fd = os.open(d, os.O_TMPFILE | os.O_RDWR | os.O_EXCL, 0o600)
R['excl_link'] = C('linkat', -100, b('/proc/self/fd/%d' % fd), -100, b(d + '/named2'), 0x400)
os.close(fd)
R['rdonly'] = K(lambda: os.close(os.open(d, os.O_TMPFILE | os.O_RDONLY, 0o600)))
R['list'] = sorted(os.listdir(d))
out(R)`;

test.serial('O_TMPFILE: unnamed file, linked in later; O_EXCL keeps it unlinkable', async (t) => {
  const e = need();
  fs.mkdirSync(join(e.mnt, 'tmpf'));
  fs.mkdirSync(join(e.ref, 'tmpf'));
  const viaMount = await py(TMPFILE_PY, { root: join(e.mnt, 'tmpf') });
  const onHost = await py(TMPFILE_PY, { root: join(e.ref, 'tmpf') });
  t.deepEqual(viaMount, onHost);
  t.is(viaMount.content, 'tmpdata');
  t.is(viaMount.nlink, 0);
  t.is(fs.readFileSync(join(e.share, 'tmpf', 'named'), 'utf8'), 'tmpdata');
});

const SEEK_PY = `
R = {}
p = A['root'] + '/sparse'
fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
for off in [0, 1 << 20, 3 << 20]:
    os.pwrite(fd, b'x' * 4096, off)
os.ftruncate(fd, 5 << 20)
os.fsync(fd)
def sk(off, wh):
    try: return os.lseek(fd, off, wh)
    except OSError as e: return en(e.errno)
for off in [0, 100, 4096, 65536, (1 << 20) + 1, 2 << 20, (3 << 20) + 4095, 4 << 20, (5 << 20) - 1, 5 << 20, 6 << 20]:
    R['data_%d' % off] = sk(off, os.SEEK_DATA)
    R['hole_%d' % off] = sk(off, os.SEEK_HOLE)
R['blocks_small'] = os.fstat(fd).st_blocks < 200
os.close(fd)
out(R)`;

test.serial('SEEK_DATA / SEEK_HOLE answer as on the host file', async (t) => {
  const e = need();
  fs.mkdirSync(join(e.mnt, 'seek'));
  fs.mkdirSync(join(e.ref, 'seek'));
  const viaMount = await py(SEEK_PY, { root: join(e.mnt, 'seek') });
  const onHost = await py(SEEK_PY, { root: join(e.ref, 'seek') });
  t.deepEqual(viaMount, onHost);
  t.is(viaMount.data_65536, 1 << 20);
  t.is(viaMount['data_6291456'], 'ENXIO');
});

test.serial('fallocate, copy_file_range and statfs reach the host', async (t) => {
  const e = need();
  const code = `
R = {}
p = A['root']
fd = os.open(p + '/fa', os.O_CREAT | os.O_RDWR, 0o644)
R['alloc'] = K(os.posix_fallocate, fd, 0, 1 << 20)
R['size'] = os.fstat(fd).st_size
R['punch'] = C('fallocate', fd, 3, ctypes.c_long(0), ctypes.c_long(65536))
R['blocks'] = os.fstat(fd).st_blocks
os.pwrite(fd, b'abcdefgh' * 1000, 100000)
os.close(fd)
src = os.open(p + '/fa', os.O_RDONLY)
dst = os.open(p + '/copy', os.O_CREAT | os.O_WRONLY, 0o644)
n = 0
while True:
    k = os.copy_file_range(src, dst, 1 << 20)
    if k == 0: break
    n += k
R['copied'] = n
os.close(src); os.close(dst)
R['same'] = open(p + '/fa', 'rb').read() == open(p + '/copy', 'rb').read()
s = os.statvfs(p)
R['statfs'] = [s.f_bsize, s.f_namemax, s.f_blocks > 0]
out(R)`;
  fs.mkdirSync(join(e.mnt, 'fa'));
  fs.mkdirSync(join(e.ref, 'fa'));
  const viaMount = await py(code, { root: join(e.mnt, 'fa') });
  const onHost = await py(code, { root: join(e.ref, 'fa') });
  t.deepEqual(viaMount, onHost);
  t.true(viaMount.same as boolean);
});

test.serial('large directory: readdir through the mount lists exactly the host entries; offsets resume across handles', async (t) => {
  const e = need();
  const d = join(e.share, 'many');
  fs.mkdirSync(d);
  const names: string[] = [];
  for (let i = 0; i < 3000; i++) names.push(`entry-${i}-${'x'.repeat(i % 40)}`);
  for (const n of names) fs.writeFileSync(join(d, n), '');
  t.deepEqual(fs.readdirSync(join(e.mnt, 'many')).sort(), [...names].sort());
  const withTypes = fs.readdirSync(join(e.mnt, 'many'), { withFileTypes: true });
  t.true(withTypes.every((x) => x.isFile()));
  // Server API: host d_off cookies (63-bit ext4 hashes) become offsets the client can resume at,
  // also through another handle of the same directory (the kernel's readdir cache does that).
  const pfs = e.fs;
  const dir = await pfs.lookup(ROOT_CTX, 1, Buffer.from('many'));
  const h1 = await pfs.opendir(ROOT_CTX, dir.ino);
  const first = await pfs.readdir(ROOT_CTX, dir.ino, h1.fh, 0);
  t.true(first.length > 10);
  const mid = first[9].next;
  const h2 = await pfs.opendir(ROOT_CTX, dir.ino);
  const seen = first.slice(0, 10).map((x) => x.name.toString());
  for (let off = mid, guard = 0; guard < 10000; guard++) {
    const batch = await pfs.readdir(ROOT_CTX, dir.ino, h2.fh, off);
    if (batch.length === 0) break;
    seen.push(...batch.map((x) => x.name.toString()));
    off = batch[batch.length - 1].next;
  }
  t.deepEqual(seen.filter((n) => n !== '.' && n !== '..').sort(), [...names].sort());
  t.is(await errOfP(pfs.readdir(ROOT_CTX, dir.ino, h2.fh, 2 ** 52 + 1e9)), 'EINVAL');
  await pfs.releasedir(ROOT_CTX, dir.ino, h1.fh);
  await pfs.releasedir(ROOT_CTX, dir.ino, h2.fh);
  pfs.forget(dir.ino, 1);
});

test.serial('server API: readdir in small steps resumes inside what one host read brought; a rewind reads afresh', async (t) => {
  const e = need();
  const d = join(e.share, 'steps');
  fs.mkdirSync(d);
  const names = Array.from({ length: 700 }, (_, i) => `s${i}-${'y'.repeat(i % 30)}`);
  for (const n of names) fs.writeFileSync(join(d, n), '');
  const pfs = e.fs;
  const dir = await pfs.lookup(ROOT_CTX, 1, Buffer.from('steps'));
  const h = await pfs.opendir(ROOT_CTX, dir.ino);
  // Steps of 7, each continuing from the last entry taken, as the dispatcher does when fewer
  // entries fit a reply than it was handed: every name exactly once, in the host's order.
  const seen: string[] = [];
  let first: string | undefined;
  for (let off = 0, guard = 0; guard < 1000; guard++) {
    const batch = await pfs.readdir(ROOT_CTX, dir.ino, h.fh, off, 7);
    if (batch.length === 0) break;
    t.true(batch.length <= 7);
    // Take fewer than handed over now and then, so the next call starts inside the batch.
    const taken = guard % 3 === 0 && batch.length > 2 ? batch.slice(0, 2) : batch;
    first ??= taken.find((x) => x.name.toString() !== '.' && x.name.toString() !== '..')?.name.toString();
    seen.push(...taken.map((x) => x.name.toString()));
    off = taken[taken.length - 1].next;
  }
  t.deepEqual(seen.filter((n) => n !== '.' && n !== '..').sort(), [...names].sort());
  t.is(new Set(seen).size, seen.length, 'no name twice');
  // A name made after the listing shows after a rewind (offset 0), which reads the host again.
  fs.writeFileSync(join(d, 'late'), '');
  const again: string[] = [];
  for (let off = 0, guard = 0; guard < 1000; guard++) {
    const batch = await pfs.readdir(ROOT_CTX, dir.ino, h.fh, off, 50);
    if (batch.length === 0) break;
    again.push(...batch.map((x) => x.name.toString()));
    off = batch[batch.length - 1].next;
  }
  t.true(again.includes('late'));
  t.true(again.includes(first!));
  await pfs.releasedir(ROOT_CTX, dir.ino, h.fh);
  pfs.forget(dir.ino, 1);
});

test('native readdir: reading on (null) and from cookies lists every name once; parseDirents refuses a record that lies about its length', (t) => {
  const d = fs.mkdtempSync(join(tmpdir(), 'kfs-dirents-'));
  try {
    const names = Array.from({ length: 500 }, (_, i) => `n${i}-${'z'.repeat(i % 40)}`);
    for (const n of names) fs.writeFileSync(join(d, n), '');
    const fd = fs.openSync(d, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    try {
      const H = native.passthrough;
      const list = (seekEach: boolean): { names: string[]; cookies: bigint[] } => {
        const out: string[] = [];
        const cookies: bigint[] = [];
        let cookie = 0n;
        for (let calls = 0; calls < 10_000; calls++) {
          const buf = Buffer.alloc(1024); // a few records per call
          const got = parseDirents(buf, H.readdir(fd, seekEach || calls === 0 ? cookie : null, buf));
          if (got.length === 0) break;
          for (const e of got) {
            out.push(e.name.toString());
            cookies.push(e.next);
          }
          cookie = got[got.length - 1].next;
        }
        return { names: out, cookies };
      };
      const on = list(false);
      const seeking = list(true);
      const want = ['.', '..', ...names].sort();
      t.deepEqual([...on.names].sort(), want);
      t.deepEqual(seeking.names, on.names, 'the same order either way');
      // From a cookie in the middle: exactly the rest.
      const mid = 250;
      const buf = Buffer.alloc(64 << 10);
      const rest = parseDirents(buf, H.readdir(fd, on.cookies[mid], buf)).map((e) => e.name.toString());
      t.deepEqual(rest, on.names.slice(mid + 1, mid + 1 + rest.length));
      t.true(rest.length > 0);
    } finally {
      fs.closeSync(fd);
    }
    // A record whose d_reclen runs past what getdents64 returned, or is too short for a name.
    const rec = Buffer.alloc(32);
    rec.writeUInt16LE(64, 16); // d_reclen 64 in 32 bytes
    rec.write('x\0', 19);
    t.throws(() => parseDirents(rec, 32), { code: 'EIO' });
    rec.writeUInt16LE(0, 16);
    t.throws(() => parseDirents(rec, 32), { code: 'EIO' });
    rec.writeUInt16LE(24, 16);
    t.is(parseDirents(rec, 24)[0].name.toString(), 'x');
    // A header cut short, and a name that runs to the record's end without its NUL.
    t.throws(() => parseDirents(rec, 12), { code: 'EIO' });
    rec.fill(0x78, 19, 24);
    t.throws(() => parseDirents(rec, 24), { code: 'EIO' });
  } finally {
    fs.rmSync(d, { recursive: true, force: true });
  }
});

/** What this process's descriptors name (readlink of /proc/self/fd/N: a path, " (deleted)" or not). */
function fdTargets(): string[] {
  const out: string[] = [];
  for (const n of fs.readdirSync('/proc/self/fd')) {
    try {
      out.push(fs.readlinkSync(`/proc/self/fd/${n}`));
    } catch {
      /* closed meanwhile (readdirSync's own descriptor) */
    }
  }
  return out;
}

/** This process's descriptors that name `file`. */
function fdsOn(file: string): string[] {
  return fdTargets().filter((target) => target === file || target === `${file} (deleted)`);
}

test.serial('server API: a forgotten node\'s descriptor is closed (off the event loop), so an unlinked file is freed; destroy closes the rest at once', async (t) => {
  const e = need();
  const d = join(e.share, 'forgotten');
  fs.mkdirSync(d);
  const pfs = await PassthroughFs.open(d);
  try {
    const before = pfs.nodeCount;
    const files = ['a', 'b', 'c'].map((n) => join(d, n));
    for (const f of files) fs.writeFileSync(f, Buffer.alloc(1 << 20, 7));
    const nodes = [];
    for (const n of ['a', 'b', 'c']) nodes.push(await pfs.lookup(ROOT_CTX, 1, Buffer.from(n)));
    t.deepEqual(files.map((f) => fdsOn(f).length), [1, 1, 1], 'one O_PATH descriptor per node');
    // Two names go while held, as a guest's rm sends UNLINK before the FORGET.
    await pfs.unlink(ROOT_CTX, 1, Buffer.from('a'));
    await pfs.unlink(ROOT_CTX, 1, Buffer.from('b'));
    t.is(fdsOn(files[0]).length, 1, 'the held node keeps the unlinked inode');
    pfs.forget(nodes[0].ino, 1);
    pfs.forget(nodes[1].ino, 1);
    t.is(pfs.nodeCount, before + 1, 'the nodes leave the table at once');
    t.is(fdsOn(files[1]).length, 1, 'the descriptor is not closed by forget itself (the worker closes it)');
    // The same name made again is a new node, while the old descriptors may still be closing.
    fs.writeFileSync(files[0], 'new');
    const again = await pfs.lookup(ROOT_CTX, 1, Buffer.from('a'));
    t.is(again.size, 3);
    t.not(again.ino, nodes[0].ino, 'a new inode, a new node id');
    const deadline = Date.now() + 30_000;
    while ((fdsOn(files[1]).length > 0 || fdsOn(files[0]).length > 1) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    t.deepEqual(fdsOn(files[1]), [], 'the unlinked file\'s last descriptor was closed');
    t.is(fdsOn(files[0]).length, 1, 'only the new node\'s descriptor names a');
    await pfs.destroy(false);
    t.deepEqual(fdTargets().filter((target) => target.startsWith(`${d}/`)), [], 'destroy closed the rest');
    t.is(pfs.nodeCount, 1, 'only the root is left');
  } finally {
    await pfs.close(false);
  }
  // DESTROY (the client is gone) closes every descriptor before it returns: the nodes still
  // held, those forgotten while a job runs (waiting for it to end), and those on the worker,
  // whose job is held back 200 ms here (it then closes as ever). A fresh server, so that no
  // earlier job is still running.
  const pfs2 = await PassthroughFs.open(d);
  const H = native.passthrough;
  const handOver = H.closeInBackground;
  H.closeInBackground = (fds) => new Promise((resolve, reject) => setTimeout(() => handOver.call(H, fds).then(resolve, reject), 200));
  try {
    const names = Array.from({ length: 10 }, (_, i) => `m${i}`);
    for (const n of names) fs.writeFileSync(join(d, n), Buffer.alloc(64 << 10, 7));
    const nodes = [];
    for (const n of names) nodes.push(await pfs2.lookup(ROOT_CTX, 1, Buffer.from(n)));
    for (const n of names) await pfs2.unlink(ROOT_CTX, 1, Buffer.from(n));
    for (const n of nodes.slice(0, 4)) pfs2.forget(n.ino, 1);
    await Promise.resolve(); // the hand-off to the worker runs as a microtask
    for (const n of nodes.slice(4, 7)) pfs2.forget(n.ino, 1); // these wait for that job to end
    t.is(fdTargets().filter((target) => target.startsWith(`${d}/`)).length, 10);
    await pfs2.destroy(false);
    t.deepEqual(fdTargets().filter((target) => target.startsWith(`${d}/`)), []);
  } finally {
    H.closeInBackground = handOver;
    await pfs2.close(false);
  }
  // Forgotten in the same turn as DESTROY, with no job running: closed by destroy itself, not
  // by a job (held back again, so that one would come too late).
  const pfs3 = await PassthroughFs.open(d);
  H.closeInBackground = (fds) => new Promise((resolve, reject) => setTimeout(() => handOver.call(H, fds).then(resolve, reject), 200));
  try {
    fs.writeFileSync(join(d, 'last'), Buffer.alloc(64 << 10, 7));
    const last = await pfs3.lookup(ROOT_CTX, 1, Buffer.from('last'));
    await pfs3.unlink(ROOT_CTX, 1, Buffer.from('last'));
    pfs3.forget(last.ino, 1);
    await pfs3.destroy(false);
    t.deepEqual(fdTargets().filter((target) => target.startsWith(`${d}/`)), []);
  } finally {
    H.closeInBackground = handOver;
    await pfs3.close(false);
  }
});

// ------------------------------------------------------------------------------------------
// Confinement.

test.serial('server API: symlinks are nodes of their own, never directories to walk through', async (t) => {
  const e = need();
  const pfs = e.fs;
  const evil = await pfs.lookup(ROOT_CTX, 1, Buffer.from('evil'));
  const evil2 = await pfs.lookup(ROOT_CTX, 1, Buffer.from('evil2'));
  t.is(evil.mode & 0o170000, 0o120000);
  t.is((await pfs.readlink(ROOT_CTX, evil.ino)).toString(), '/');
  for (const n of [evil, evil2]) {
    for (const name of ['etc', 'tmp', '..', '.', 'CANARY-outside.txt']) {
      t.is(await errOfP(pfs.lookup(ROOT_CTX, n.ino, Buffer.from(name))), name === '.' ? 'ok' : 'ENOTDIR', `lookup(${name}) under a symlink`);
    }
    t.is(await errOfP(pfs.opendir(ROOT_CTX, n.ino)), 'ENOTDIR');
    t.is(await errOfP(pfs.create(ROOT_CTX, n.ino, Buffer.from('x'), 0o644, fs.constants.O_WRONLY, 0)), 'ENOTDIR');
    t.is(await errOfP(pfs.mkdir(ROOT_CTX, n.ino, Buffer.from('x'), 0o755, 0)), 'ENOTDIR');
    t.is(await errOfP(pfs.open(ROOT_CTX, n.ino, fs.constants.O_RDONLY, false)), 'EINVAL');
    t.is(await errOfP(pfs.listxattr(ROOT_CTX, n.ino)), 'ok'); // the symlink's own (empty) list
    t.is(await errOfP(pfs.setattr(ROOT_CTX, n.ino, { mode: 0o777 })), 'EOPNOTSUPP');
  }
  // Node operations on a symlink act on the symlink itself, never on its target.
  fs.writeFileSync(join(e.share, 'lnk-target'), 't');
  spawnSync('setfattr', ['-n', 'user.t', '-v', 'target', join(e.share, 'lnk-target')]);
  fs.symlinkSync('lnk-target', join(e.share, 'lnk'));
  const lnk = await pfs.lookup(ROOT_CTX, 1, Buffer.from('lnk'));
  t.is(await errOfP(pfs.getxattr(ROOT_CTX, lnk.ino, 'user.t')), 'ENODATA');
  t.deepEqual(await pfs.listxattr(ROOT_CTX, lnk.ino), []);
  t.is(await errOfP(pfs.setxattr(ROOT_CTX, lnk.ino, 'user.x', Buffer.from('1'), 0)), 'EPERM');
  t.is(await errOfP(pfs.setattr(ROOT_CTX, lnk.ino, { size: 0 })), 'EINVAL');
  t.is((await pfs.getattr(ROOT_CTX, lnk.ino)).size, 'lnk-target'.length);
  t.is(fs.readFileSync(join(e.share, 'lnk-target'), 'utf8'), 't');
  pfs.forget(lnk.ino, 1);
  // A hard link to the symlink links the symlink itself, not what it points at.
  const hl = await pfs.link(ROOT_CTX, evil.ino, 1, Buffer.from('evil-hardlink'));
  t.is(hl.ino, evil.ino);
  t.is(hl.mode & 0o170000, 0o120000);
  t.is(fs.readlinkSync(join(e.share, 'evil-hardlink')), '/');
  await pfs.unlink(ROOT_CTX, 1, Buffer.from('evil-hardlink'));
  pfs.forget(evil.ino, 3);
  pfs.forget(evil2.ino, 2);
  // Through the mount: the client sees a symlink whose target the server never resolves.
  t.is(fs.readlinkSync(join(e.mnt, 'evil')), '/');
  t.true(fs.lstatSync(join(e.mnt, 'evil2')).isSymbolicLink());
});

test.serial('server API: names are single components; ".." of the root is the root', async (t) => {
  const e = need();
  const pfs = e.fs;
  const root = await pfs.getattr(ROOT_CTX, 1);
  const up = await pfs.lookup(ROOT_CTX, 1, Buffer.from('..'));
  t.is(up.ino, 1);
  t.deepEqual({ ...up, generation: undefined }, { ...root, generation: undefined });
  const dot = await pfs.lookup(ROOT_CTX, 1, Buffer.from('.'));
  t.is(dot.ino, 1);
  // ".." of a subdirectory is its parent inside the share.
  fs.mkdirSync(join(e.share, 'p', 'q'), { recursive: true });
  const p = await pfs.lookup(ROOT_CTX, 1, Buffer.from('p'));
  const q = await pfs.lookup(ROOT_CTX, p.ino, Buffer.from('q'));
  t.is((await pfs.lookup(ROOT_CTX, q.ino, Buffer.from('..'))).ino, p.ino);
  t.is((await pfs.lookup(ROOT_CTX, p.ino, Buffer.from('..'))).ino, 1);
  const bad = ['../outside', '/etc', 'p/../..', 'a/b', 'x\0y', '', '/'];
  const f = await pfs.create(ROOT_CTX, 1, Buffer.from('victim'), 0o644, fs.constants.O_WRONLY, 0);
  await pfs.release(ROOT_CTX, f.ino, f.fh);
  for (const s of bad) {
    const b = Buffer.from(s);
    const label = JSON.stringify(s);
    t.is(await errOfP(pfs.lookup(ROOT_CTX, 1, b)), 'EINVAL', `lookup ${label}`);
    t.is(await errOfP(pfs.mkdir(ROOT_CTX, 1, b, 0o755, 0)), 'EINVAL', `mkdir ${label}`);
    t.is(await errOfP(pfs.mknod(ROOT_CTX, 1, b, 0o100644, 0, 0)), 'EINVAL', `mknod ${label}`);
    t.is(await errOfP(pfs.create(ROOT_CTX, 1, b, 0o644, fs.constants.O_WRONLY, 0)), 'EINVAL', `create ${label}`);
    t.is(await errOfP(pfs.symlink(ROOT_CTX, 1, b, Buffer.from('t'))), 'EINVAL', `symlink ${label}`);
    t.is(await errOfP(pfs.unlink(ROOT_CTX, 1, b)), 'EINVAL', `unlink ${label}`);
    t.is(await errOfP(pfs.rmdir(ROOT_CTX, 1, b)), 'EINVAL', `rmdir ${label}`);
    t.is(await errOfP(pfs.link(ROOT_CTX, f.ino, 1, b)), 'EINVAL', `link to ${label}`);
    t.is(await errOfP(pfs.rename(ROOT_CTX, 1, Buffer.from('victim'), 1, b, 0)), 'EINVAL', `rename to ${label}`);
    t.is(await errOfP(pfs.rename(ROOT_CTX, 1, b, 1, Buffer.from('x'), 0)), 'EINVAL', `rename from ${label}`);
  }
  for (const s of ['.', '..']) {
    t.is(await errOfP(pfs.rename(ROOT_CTX, p.ino, Buffer.from(s), 1, Buffer.from('moved'), 0)), 'EINVAL', `rename ${s}`);
    t.is(await errOfP(pfs.link(ROOT_CTX, f.ino, q.ino, Buffer.from(s))), 'EINVAL', `link to ${s}`);
  }
  t.is(await errOfP(pfs.getattr(ROOT_CTX, 987654321)), 'ESTALE');
  t.true(fs.existsSync(join(e.share, 'victim')));
  // Lookup counts: every reference is given back, then the node is gone.
  const before = pfs.nodeCount;
  const v1 = await pfs.lookup(ROOT_CTX, 1, Buffer.from('victim'));
  const v2 = await pfs.lookup(ROOT_CTX, 1, Buffer.from('victim'));
  t.is(v1.ino, v2.ino);
  t.is(v1.ino, f.ino);
  pfs.forget(v1.ino, 3);
  t.is(pfs.nodeCount, before - 1);
  t.is(await errOfP(pfs.getattr(ROOT_CTX, v1.ino)), 'ESTALE');
  pfs.forget(q.ino, 1);
  pfs.forget(p.ino, 2); // its lookup, and the ".." lookup from q
});

test.serial('server API: ".." of a directory a host process moved out of the share is refused', async (t) => {
  const e = need();
  const pfs = e.fs;
  fs.mkdirSync(join(e.share, 'w', 'x'), { recursive: true });
  const w = await pfs.lookup(ROOT_CTX, 1, Buffer.from('w'));
  const x = await pfs.lookup(ROOT_CTX, w.ino, Buffer.from('x'));
  t.is((await pfs.lookup(ROOT_CTX, x.ino, Buffer.from('..'))).ino, w.ino);
  const away = join(e.base, 'away');
  fs.mkdirSync(away);
  fs.renameSync(join(e.share, 'w'), join(away, 'w'));
  // x's parent is now base/away/w: walking up from it never meets the share's root.
  t.is(await errOfP(pfs.lookup(ROOT_CTX, x.ino, Buffer.from('..'))), 'EACCES');
  t.is(await errOfP(pfs.lookup(ROOT_CTX, w.ino, Buffer.from('..'))), 'EACCES');
  fs.renameSync(join(away, 'w'), join(e.share, 'w'));
  t.is((await pfs.lookup(ROOT_CTX, w.ino, Buffer.from('..'))).ino, 1);
  pfs.forget(x.ino, 1);
  pfs.forget(w.ino, 2);
});

test.serial('server API: access() checks as the caller; creations are owned by the caller', async (t) => {
  const e = need();
  const pfs = e.fs;
  const user: RequestContext = { uid: 1000, gid: 1000, pid: process.pid };
  fs.writeFileSync(join(e.share, 'secret'), 's', { mode: 0o600 });
  fs.chmodSync(join(e.share, 'secret'), 0o600);
  const n = await pfs.lookup(ROOT_CTX, 1, Buffer.from('secret'));
  t.is(await errOfP(pfs.access(user, n.ino, 4)), 'EACCES');
  t.is(await errOfP(pfs.access(ROOT_CTX, n.ino, 4)), 'ok');
  await pfs.setattr(ROOT_CTX, n.ino, { mode: 0o644 });
  t.is(await errOfP(pfs.access(user, n.ino, 4)), 'ok');
  t.is(await errOfP(pfs.access(user, n.ino, 2)), 'EACCES');
  fs.mkdirSync(join(e.share, 'userdir'), { mode: 0o777 });
  fs.chmodSync(join(e.share, 'userdir'), 0o777);
  const d = await pfs.lookup(ROOT_CTX, 1, Buffer.from('userdir'));
  const c = await pfs.create(user, d.ino, Buffer.from('mine'), 0o666, fs.constants.O_WRONLY, 0o022);
  await pfs.release(user, c.ino, c.fh);
  const st = fs.statSync(join(e.share, 'userdir', 'mine'));
  t.deepEqual([st.uid, st.gid, (st.mode & 0o777).toString(8)], [1000, 1000, '644']);
  // The server's own credentials are back: a root-only creation still works.
  const m = await pfs.mkdir(ROOT_CTX, 1, Buffer.from('rootdir'), 0o700, 0);
  t.deepEqual([fs.statSync(join(e.share, 'rootdir')).uid, m.uid], [0, 0]);
  for (const [id, refs] of [[n.ino, 1], [d.ino, 1], [c.ino, 1], [m.ino, 1]]) pfs.forget(id, refs);
});

test.serial('link and rename through the mount cannot take a file outside the share', (t) => {
  const e = need();
  fs.writeFileSync(join(e.mnt, 'keep'), 'inside');
  t.is(errOf(() => fs.linkSync(join(e.mnt, 'keep'), join(e.outside, 'stolen'))), 'EXDEV');
  t.is(errOf(() => fs.renameSync(join(e.mnt, 'keep'), join(e.outside, 'stolen'))), 'EXDEV');
  t.is(errOf(() => fs.linkSync(e.canary, join(e.mnt, 'canary-link'))), 'EXDEV');
  t.is(errOf(() => fs.renameSync(e.canary, join(e.mnt, 'canary-moved'))), 'EXDEV');
  // Through the symlinks: the client resolves them itself and lands outside the mount.
  // From the mount, evil2 (../../..) resolves to base's parent (/tmp): a name nothing there uses.
  t.is(errOf(() => fs.linkSync(join(e.mnt, 'keep'), join(e.mnt, 'evil2', `kfs-link-probe-${process.pid}`))), 'EXDEV');
  t.true(fs.existsSync(join(e.share, 'keep')));
});

test.serial('racing: a directory swapped with a symlink to the outside never lets the server out', async (t) => {
  const e = need();
  const race = join(e.share, 'race');
  fs.mkdirSync(race);
  fs.writeFileSync(join(race, 'inside.txt'), 'inside');
  // From the server's point of view share/race-link -> ../outside is the canary's directory;
  // from the client's (mount at m/mnt) it is m/outside, which does not exist.
  fs.symlinkSync('../outside', join(e.share, 'race-link'));
  const swapper = py(`
import time
a = (A['share'] + '/race').encode(); b = (A['share'] + '/race-link').encode()
n = 0
while not os.path.exists(A['stop']):
    if C('renameat2', -100, a, -100, b, 2) == 0: n += 1
out({'swaps': n})`, { share: e.share, stop: join(e.base, 'stop-swapping') });
  const pfs = e.fs;
  const seen = { dir: 0, symlink: 0, notdir: 0, created: 0 };
  const leaks: string[] = [];
  try {
    // The server API, as fast as it goes, while the host swaps.
    for (let i = 0; i < 200_000 && (seen.dir < 200 || seen.symlink < 200 || i < 2000); i++) {
      let node: number;
      try {
        const r = await pfs.lookup(ROOT_CTX, 1, Buffer.from('race'));
        node = r.ino;
        if ((r.mode & 0o170000) === 0o120000) seen.symlink++;
        else seen.dir++;
      } catch (err) {
        continue; // ENOENT in the instant between the two names
      }
      try {
        const c = await pfs.lookup(ROOT_CTX, node, Buffer.from('CANARY-outside.txt'));
        leaks.push(`lookup found the canary as node ${c.ino}`);
        pfs.forget(c.ino, 1);
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code === 'ENOTDIR') seen.notdir++;
        else if (code !== 'ENOENT') leaks.push(`lookup: unexpected ${code}`);
      }
      if (i % 16 === 0) {
        try {
          const h = await pfs.opendir(ROOT_CTX, node);
          const list = await pfs.readdir(ROOT_CTX, node, h.fh, 0);
          await pfs.releasedir(ROOT_CTX, node, h.fh);
          if (list.some((x) => x.name.toString() === 'CANARY-outside.txt')) leaks.push('readdir listed the outside directory');
        } catch (err) {
          if ((err as { code?: string }).code !== 'ENOTDIR') leaks.push(`readdir: ${(err as Error).message}`);
        }
        try {
          const c = await pfs.create(ROOT_CTX, node, Buffer.from(`made-${i}`), 0o644, fs.constants.O_WRONLY | fs.constants.O_TRUNC, 0);
          await pfs.write(ROOT_CTX, c.ino, c.fh, 0, Buffer.from('x'), false);
          await pfs.release(ROOT_CTX, c.ino, c.fh);
          pfs.forget(c.ino, 1);
          seen.created++;
        } catch (err) {
          if ((err as { code?: string }).code !== 'ENOTDIR') leaks.push(`create: ${(err as Error).message}`);
        }
      }
      pfs.forget(node, 1);
    }
    // Through the mount: paths through "race" while it flips.
    for (let i = 0; i < 1000; i++) {
      const p = join(e.mnt, 'race');
      errOf(() => fs.writeFileSync(join(p, 'CANARY-outside.txt'), 'pwned'));
      const r = (() => {
        try {
          return fs.readFileSync(join(p, 'CANARY-outside.txt'), 'utf8');
        } catch {
          return '';
        }
      })();
      if (r === CANARY_TEXT) leaks.push('read the canary through the mount');
      try {
        if (fs.readdirSync(p).length > 0 && fs.readdirSync(p).includes('CANARY-outside.txt') && fs.readFileSync(join(p, 'CANARY-outside.txt'), 'utf8') === CANARY_TEXT) leaks.push('listed the outside directory');
      } catch {
        /* a symlink at this instant: the client follows it to m/outside, which does not exist */
      }
      errOf(() => fs.mkdirSync(join(p, `m${i}`)));
      errOf(() => fs.renameSync(join(p, `m${i}`), join(p, `n${i}`)));
      errOf(() => fs.linkSync(join(e.mnt, 'keep'), join(p, `l${i}`)));
    }
  } finally {
    fs.writeFileSync(join(e.base, 'stop-swapping'), '');
  }
  const swaps = (await swapper) as { swaps: number };
  t.log(`swaps ${swaps.swaps}, server saw dir ${seen.dir} / symlink ${seen.symlink} times, ENOTDIR under the symlink ${seen.notdir}, created ${seen.created}`);
  t.deepEqual(leaks, []);
  t.true(seen.dir > 0 && seen.symlink > 0, 'the race was exercised (both states seen)');
  t.true(swaps.swaps > 0);
  // Every reference the API tests took was given back: only the root's descriptor is held.
  t.is(pfs.nodeCount, 1);
});

test.serial('writeback cache: write-only and O_APPEND opens still work (the kernel reads and appends itself)', async (t) => {
  const e = need();
  const share = join(e.share, 'wb');
  const mnt = join(e.base, 'm', 'wb');
  fs.mkdirSync(share);
  fs.mkdirSync(mnt);
  const server = await startServer(share, mnt, 1, ['--writeback']);
  try {
    const f = join(mnt, 'f');
    fs.writeFileSync(f, 'abcdefgh');
    let fd = fs.openSync(f, 'r+');
    fs.writeSync(fd, 'XY', 0, 'utf8');
    fs.closeSync(fd);
    fd = fs.openSync(f, 'a');
    fs.writeSync(fd, '123');
    fs.closeSync(fd);
    fd = fs.openSync(f, fs.constants.O_WRONLY);
    fs.writeSync(fd, 'Z', 3);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    t.is(fs.readFileSync(join(share, 'f'), 'utf8'), 'XYcZefgh123');
  } finally {
    await stopServer(server.child, mnt);
  }
});

test.serial('canary: nothing outside the share was read, listed, changed or linked (after all the tests above)', (t) => {
  const e = need();
  const b = e.canaryBefore;
  const file = fs.statSync(e.canary, { bigint: true });
  // Read first: the stats above must not have been disturbed by this test.
  t.is(file.atimeNs, b.file.atimeNs, 'canary atime (a read would have updated it: relatime, old atime)');
  t.is(file.mtimeNs, b.file.mtimeNs);
  t.is(file.ctimeNs, b.file.ctimeNs, 'canary ctime (a link, rename, chmod or xattr change would have updated it)');
  t.is(file.nlink, 1n);
  const dir = fs.statSync(e.outside, { bigint: true });
  t.is(dir.atimeNs, b.dir.atimeNs, 'outside directory atime (a listing would have updated it)');
  t.is(dir.mtimeNs, b.dir.mtimeNs, 'outside directory mtime (a creation would have updated it)');
  t.deepEqual(fs.readdirSync(e.outside), b.list);
  t.is(fs.readFileSync(e.canary, 'utf8'), CANARY_TEXT);
  t.false(fs.existsSync(join(e.base, 'm', 'outside')));
  t.true(fs.existsSync(join(e.mnt, 'keep')), 'the mount still serves');
  t.is(e.serverErr().split('\n').filter((l) => /error/i.test(l)).join('\n'), '');
});

// ------------------------------------------------------------------------------------------
// The POSIX behaviour suite: passthrough of a kernel ext4 directory vs that kernel ext4 itself.

interface PosixEnv {
  kernelDir: string;
  ptDir: string;
  server: Server;
}
let posixEnv: Promise<PosixEnv> | undefined;

function setUpPosix(e: Env): Promise<PosixEnv> {
  posixEnv ??= (async () => {
    const base = join(e.base, 'posix');
    fs.mkdirSync(base, { mode: 0o755 });
    const kernelImg = join(base, 'kernel.img');
    const sharedImg = join(base, 'shared.img');
    mustRun('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', kernelImg, '1G']);
    mustRun('cp', ['--sparse=always', kernelImg, sharedImg]);
    const kernelDir = join(base, 'kernel');
    const sharedDir = join(base, 'shared');
    const ptDir = join(base, 'pt');
    for (const d of [kernelDir, sharedDir, ptDir]) fs.mkdirSync(d);
    // FUSE mounts are nosuid,nodev: the reference is mounted alike.
    for (const [img, dir] of [[kernelImg, kernelDir], [sharedImg, sharedDir]]) {
      mustRun('mount', ['-t', 'ext4', '-o', 'loop,rw,nosuid,nodev,relatime', img, dir]);
      process.on('exit', () => {
        if (isMountPoint(dir)) runCmd('umount', ['-l', dir]);
      });
    }
    // Timeouts of 1 s, like kfsd --cache auto for a shared directory.
    return { kernelDir, ptDir, server: await startServer(sharedDir, ptDir, 1) };
  })();
  return posixEnv;
}

/** What a case left behind, comparable between the two (as test/posix.test.ts compares). */
function normalizedTree(dir: string): Record<string, Partial<NodeSnap>> {
  dropCaches();
  return tree(dir);
}

function diffValues(a: unknown, b: unknown, path: string, out: string[]): void {
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null;
  if (isObj(a) && isObj(b) && Array.isArray(a) === Array.isArray(b)) {
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) diffValues(a[k], b[k], path ? `${path}.${k}` : k, out);
    return;
  }
  const show = (v: unknown) => (v === undefined ? 'undefined' : JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x)));
  if (show(a) !== show(b)) out.push(`${path || '(value)'}: ${show(a)}  vs  ${show(b)}`);
}

async function observe(run: (root: string) => Promise<Observations>, root: string): Promise<Observations> {
  fs.mkdirSync(root, { mode: 0o755 });
  fs.chmodSync(root, 0o755);
  try {
    return await run(root);
  } catch (e) {
    return { __threw: (e as Error).stack ?? String(e) };
  }
}

for (const c of posixCases) {
  test.serial(`posix suite: ${c.name} (passthrough of ext4 vs kernel ext4)`, async (t) => {
    const p = await setUpPosix(need());
    const kernel = await observe(c.run, join(p.kernelDir, c.name));
    const pt = await observe(c.run, join(p.ptDir, c.name));
    const problems: string[] = [];
    if ('__threw' in kernel) problems.push(`the case failed on the kernel's ext4: ${String(kernel.__threw)}`);
    const d: string[] = [];
    diffValues(pt, kernel, '', d);
    if (d.length) problems.push(`passthrough vs kernel ext4 observations (${d.length}):\n    ${d.join('\n    ')}`);
    for (const [k, v] of Object.entries(c.expect ?? {})) diffValues(pt[k], v, `expected ${k}`, problems);
    const tr: string[] = [];
    diffValues(normalizedTree(join(p.ptDir, c.name)), normalizedTree(join(p.kernelDir, c.name)), '', tr);
    if (tr.length) problems.push(`tree left behind, passthrough vs kernel (${tr.length}):\n    ${tr.slice(0, 40).join('\n    ')}`);
    if (p.server.child.exitCode !== null) problems.push('the passthrough server is gone');
    if (problems.length) t.fail(problems.join('\n'));
    else t.pass();
  });
}

test.serial('posix suite: the passthrough server logged no errors', async (t) => {
  const p = await setUpPosix(need());
  t.is(p.server.stderr().split('\n').filter((l) => /\b(warn|error)\b/.test(l)).join('\n'), '');
});
