/**
 * `kfs mount` as an ordinary user (nobody): mount(2) is the setuid fusermount3's, which hands
 * the /dev/fuse fd back over a socket (src/transport/fusermount.ts). The supervised mount (its
 * supervisor mounts, the server serves) and -o nosupervisor; writes through the mount, a
 * SIGKILL of the server survived, `kfs umount` as that user, then e2fsck and debugfs on the
 * image. /dev/fuse is 0600 in some containers (udev makes it 0666 on a normal host): the test
 * opens it up for its duration and restores the mode.
 */
import test, { ExecutionContext } from 'ava';
import fs from 'node:fs';
import { join } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { tempDir, kfsCliPath, mustRun, fsck, debugfs, requireRoot } from './helpers/image';
import { isMountPoint } from './helpers/mount';
import { waitFor } from './posix/util';
import { lockHolders } from '../src/control/registry';

const NOBODY = 65534;

function asNobody(cmd: string, args: string[], cwd: string): { code: number; out: string } {
  const r = spawnSync('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', cmd, ...args], { cwd, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status ?? -1, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

function kfs(args: string[], cwd: string): { code: number; out: string } {
  return asNobody(process.execPath, [kfsCliPath()!, ...args], cwd);
}

/** A user-owned image (root directory owned by nobody too) and mount point. */
function setup(t: ExecutionContext): { dir: string; image: string; mnt: string } {
  requireRoot(t);
  const mode = fs.statSync('/dev/fuse').mode & 0o777;
  if ((mode & 0o006) !== 0o006) {
    fs.chmodSync('/dev/fuse', 0o666);
    t.teardown(() => fs.chmodSync('/dev/fuse', mode));
  }
  const dir = tempDir(t, 'nonroot');
  fs.chmodSync(dir, 0o755);
  const image = join(dir, 'user.img');
  mustRun('mkfs.ext4', ['-q', '-F', '-E', `root_owner=${NOBODY}:${NOBODY}`, image, '64M']);
  const mnt = join(dir, 'mnt');
  fs.mkdirSync(mnt);
  fs.chownSync(image, NOBODY, NOBODY);
  fs.chownSync(mnt, NOBODY, NOBODY);
  fs.chownSync(dir, NOBODY, NOBODY);
  t.teardown(() => {
    if (isMountPoint(mnt)) spawnSync('umount', ['-l', mnt]);
  });
  return { dir, image, mnt };
}

function mountInfo(mnt: string): string {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === mnt) ?? '';
}

test.serial('a user mounts through fusermount3; the supervised mount survives a SIGKILL of its server; kfs umount as the user', async (t) => {
  const { dir, image, mnt } = setup(t);
  const pidFile = join(dir, 'server.pid');
  const m = kfs(['mount', image, mnt, '--pid-file', pidFile], dir);
  t.is(m.code, 0, m.out);
  const info = mountInfo(mnt);
  t.regex(info, /fuse\.kfs/, info);
  t.regex(info, /user_id=65534/, 'mounted on behalf of the user');
  t.notRegex(info, /allow_other/, 'allow_other only when asked for (it needs user_allow_other)');
  const w = asNobody('sh', ['-c', 'printf hello > mnt/a && mkdir mnt/d && printf x > mnt/d/b && stat -c %U mnt/a'], dir);
  t.is(w.code, 0, w.out);
  t.is(w.out.trim(), 'nobody');
  // The server is the user's process; the supervisor starts another on the same connection.
  const pid = Number(fs.readFileSync(pidFile, 'utf8'));
  t.is(fs.statSync(`/proc/${pid}`).uid, NOBODY);
  process.kill(pid, 'SIGKILL');
  t.true(await waitFor(() => fs.existsSync(pidFile) && Number(fs.readFileSync(pidFile, 'utf8')) !== pid, 20_000), 'a new server took over');
  const r = asNobody('sh', ['-c', 'cat mnt/a mnt/d/b && printf more >> mnt/a && cat mnt/a'], dir);
  t.is(r.code, 0, r.out);
  t.is(r.out, 'helloxhellomore');
  const server = Number(fs.readFileSync(pidFile, 'utf8'));
  const u = kfs(['umount', mnt], dir);
  t.is(u.code, 0, u.out);
  t.false(isMountPoint(mnt), 'unmounted');
  t.deepEqual(lockHolders(image), [], 'the server let go of the image before kfs umount returned');
  t.true(await waitFor(() => !fs.existsSync(`/proc/${server}`), 10_000), 'the server exited');
  const ck = fsck(image);
  t.is(ck.code, 0, ck.output);
  t.is(debugfs(image, 'cat /a').replace(/^debugfs.*\n/, ''), 'hellomore');
});

test.serial('a user mounts with -o nosupervisor; a mistake gets one line and a non-zero exit; kfs umount waits for the server to let go of the image', async (t) => {
  const { dir, image, mnt } = setup(t);
  const pidFile = join(dir, 'server.pid');
  const m = kfs(['mount', image, mnt, '-o', 'nosupervisor', '--pid-file', pidFile], dir);
  t.is(m.code, 0, m.out);
  t.true(isMountPoint(mnt));
  const server = Number(fs.readFileSync(pidFile, 'utf8'));
  const w = asNobody('sh', ['-c', 'printf data > mnt/f && cat mnt/f'], dir);
  t.is(w.out, 'data');
  // allow_other: fusermount3 grants it only with user_allow_other in /etc/fuse.conf, else kfs says why.
  const other = join(dir, 'mnt2');
  fs.mkdirSync(other);
  fs.chownSync(other, NOBODY, NOBODY);
  const copy = join(dir, 'copy.img');
  fs.copyFileSync(image, copy);
  fs.chownSync(copy, NOBODY, NOBODY);
  // The host's /etc/fuse.conf decides which answer is right; either way it is checked.
  const allowed = /^\s*user_allow_other/m.test(fs.existsSync('/etc/fuse.conf') ? fs.readFileSync('/etc/fuse.conf', 'utf8') : '');
  const withOther = kfs(['mount', copy, other, '-o', 'allow_other'], dir);
  if (allowed) {
    t.is(withOther.code, 0, withOther.out);
    t.regex(mountInfo(other), /allow_other/);
    t.is(kfs(['umount', other], dir).code, 0);
    t.true(await waitFor(() => !isMountPoint(other), 10_000));
  } else {
    t.not(withOther.code, 0);
    t.regex(withOther.out.trim(), /^kfs mount: .*user_allow_other/);
    t.is(withOther.out.trim().split('\n').length, 1, withOther.out);
    t.false(isMountPoint(other));
  }
  // kfs umount returns only once the server has flushed the image and let go of it. A stopped
  // server cannot flush: the unmount happens, and kfs umount waits until the server goes on.
  t.deepEqual(lockHolders(image).map((l) => l.pid), [server], 'the server holds the image while mounted');
  process.kill(server, 'SIGSTOP');
  t.teardown(() => {
    try {
      process.kill(server, 'SIGCONT');
    } catch {
      // already gone
    }
  });
  const umount = spawn('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, kfsCliPath()!, 'umount', mnt], { cwd: dir, stdio: 'ignore' });
  const exited = new Promise<number | null>((resolve) => umount.on('exit', (code) => resolve(code)));
  t.true(await waitFor(() => !isMountPoint(mnt), 10_000), 'unmounted while the server is stopped');
  await new Promise((r) => setTimeout(r, 1000));
  t.is(umount.exitCode, null, 'kfs umount is still waiting for the stopped server');
  process.kill(server, 'SIGCONT');
  t.is(await exited, 0);
  t.deepEqual(lockHolders(image), [], 'no process holds the image after kfs umount');
  const ck = fsck(image);
  t.is(ck.code, 0, ck.output);
});
