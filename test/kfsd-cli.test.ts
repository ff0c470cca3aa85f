/**
 * kfsd's command line, as users run it (node dist/src/cli/kfsd.js): every mistake is one line
 * on stderr naming what is wrong and what to do, a non-zero exit (2 for usage), and nothing is
 * served or created; --thread-pool-size sizes libuv's pool, with or without --log-file. No QEMU
 * needed: each case fails, or is checked, before a front-end connects.
 */
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { makeImage, tempDir } from './helpers/image';
import { spawnKfsd } from './helpers/vhost-frontend';
import { waitFor } from './posix/util';

const KFSD = path.join(__dirname, '..', 'src', 'cli', 'kfsd.js');

function kfsd(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [KFSD, ...args], { encoding: 'utf8', timeout: 30_000, stdio: ['ignore', 'pipe', 'pipe'] });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('kfsd: bad command lines get one line and a non-zero exit, and no socket is made', (t) => {
  const dir = tempDir(t, 'kfsd-cli');
  const image = makeImage(t, { size: '32M', mkfs: 'kfs', dir });
  const sock = path.join(dir, 'vhost.sock');
  const notSocket = path.join(dir, 'plain-file');
  fs.writeFileSync(notSocket, 'x');
  const cases: { title: string; args: string[]; code: number; message: RegExp }[] = [
    { title: 'no --socket-path', args: ['--image', image], code: 2, message: /required option '--socket-path <path>' not specified; run 'kfsd --help' for usage/ },
    { title: 'neither --image nor --shared-dir', args: ['--socket-path', sock], code: 2, message: /give exactly one of --image IMAGE or --shared-dir DIR/ },
    { title: 'both --image and --shared-dir', args: ['--image', image, '--shared-dir', dir, '--socket-path', sock], code: 2, message: /exactly one/ },
    { title: 'socket directory missing', args: ['--image', image, '--socket-path', path.join(dir, 'no', 'such', 'sock')], code: 2, message: /directory .*\/no\/such does not exist; create it first/ },
    { title: 'socket path too long', args: ['--image', image, '--socket-path', path.join(dir, 'x'.repeat(120))], code: 2, message: /longer than the 107 bytes/ },
    { title: 'socket path is a regular file', args: ['--image', image, '--socket-path', notSocket], code: 1, message: /exists and is not a socket; choose another --socket-path/ },
    { title: 'image missing', args: ['--image', path.join(dir, 'missing.img'), '--socket-path', sock], code: 1, message: /missing\.img/ },
    { title: 'shared directory missing', args: ['--shared-dir', path.join(dir, 'nope'), '--socket-path', sock], code: 1, message: /--shared-dir .*nope does not exist; create it first/ },
    { title: 'shared directory is a file', args: ['--shared-dir', notSocket, '--socket-path', sock], code: 1, message: /is not a directory; name the directory to share/ },
    { title: 'bad --cache', args: ['--image', image, '--socket-path', sock, '--cache', 'sometimes'], code: 2, message: /sometimes/ },
    { title: 'unknown option', args: ['--image', image, '--socket-path', sock, '--bogus'], code: 2, message: /unknown option '--bogus'/ },
  ];
  for (const c of cases) {
    const r = kfsd(c.args);
    const lines = r.stderr.trimEnd().split('\n');
    t.is(r.code, c.code, `${c.title}: exit code (stderr: ${r.stderr})`);
    t.is(lines.length, 1, `${c.title}: one line (${r.stderr})`);
    t.regex(lines[0], /^kfsd: /, c.title);
    t.regex(lines[0], c.message, c.title);
    t.is(r.stdout, '', c.title);
    t.false(fs.existsSync(sock), `${c.title}: no socket left behind`);
  }
  t.true(fs.readFileSync(notSocket, 'utf8') === 'x', 'the file named as the socket is untouched');
  t.is(kfsd(['--help']).code, 0);
});

test.serial('kfsd --thread-pool-size N: libuv\'s pool has N threads, also with --log-file (whose stream opens on the pool)', async (t) => {
  const dir = tempDir(t, 'kfsd-pool');
  const image = makeImage(t, { size: '64M', mkfs: 'kfs', dir });
  // The threads a Node process has before it runs any JavaScript (V8's workers and the like).
  const bare = Number(execFileSync(process.execPath, ['-e', "process.stdout.write(String(require('fs').readdirSync('/proc/self/task').length))"], { encoding: 'utf8' }));
  for (const [n, extra] of [[2, []], [2, ['--log-file', path.join(dir, 'kfsd.log')]], [6, ['--log-file', path.join(dir, 'kfsd6.log')]]] as const) {
    const kfsd = spawnKfsd(['--image', image], path.join(dir, `vhost-${n}-${extra.length}.sock`), ['--log-level', 'info', '--thread-pool-size', String(n), ...extra]);
    t.teardown(() => kfsd.stop());
    // The JIT warm-up formats and serves a scratch image: the pool has started by its end.
    const log = () => (extra.length ? fs.readFileSync(extra[1], 'utf8') : kfsd.output);
    t.true(await waitFor(() => { try { return /JIT warm-up on a scratch image: \d+ requests/.test(log()); } catch { return false; } }, 60_000), kfsd.output);
    t.is(fs.readdirSync(`/proc/${kfsd.proc.pid}/task`).length, bare + n, `--thread-pool-size ${n} ${extra.join(' ')}`);
    t.deepEqual(await kfsd.stop(), { code: 0, signal: null });
  }
});
