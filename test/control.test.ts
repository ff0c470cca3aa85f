/**
 * The control socket of a real `kfs mount` (and of a control server started here on a real
 * image): malformed, oversized, wrong-version and unknown messages get error replies and the
 * server keeps answering; other users are refused (a client run as nobody through setpriv).
 */
import test, { ExecutionContext } from 'ava';
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { makeImage, requireRoot, runCmd, tempDir } from './helpers/image';
import { mountKfs } from './helpers/mount';
import { ControlClient } from '../src/control/client';
import { findByMountpoint, listEntries } from '../src/control/registry';
import { startControlServer } from '../src/control/server';
import { Ext4Fs } from '../src/ext4/fs';

const KFSCTL = path.resolve(__dirname, '..', 'ctl', 'kfsctl.js');
const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];

interface RawReply {
  version: number;
  id: number | null;
  type: string;
  error?: { code: string; message: string };
  result?: { pid?: number; server?: string };
}

/** A raw connection: write bytes, collect reply lines. */
function rawConnection(socket: string): Promise<{ send: (b: string | Buffer) => void; replies: RawReply[]; waitFor: (pred: (r: RawReply[]) => boolean) => Promise<void>; close: () => void }> {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection({ path: socket });
    const replies: RawReply[] = [];
    let buf = '';
    const waiters: (() => void)[] = [];
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      buf += d;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        replies.push(JSON.parse(buf.slice(0, nl)) as RawReply);
        buf = buf.slice(nl + 1);
      }
      for (const w of waiters.splice(0)) w();
    });
    sock.once('error', reject);
    sock.once('connect', () => resolve({
      send: (b) => sock.write(b),
      replies,
      waitFor: async (pred) => {
        while (!pred(replies)) {
          await new Promise<void>((r, rej) => {
            waiters.push(r);
            sock.once('close', () => rej(new Error(`connection closed; replies so far: ${JSON.stringify(replies)}`)));
          });
        }
      },
      close: () => sock.destroy(),
    }));
  });
}

/** Run a command without blocking this process's event loop (the server under test lives here). */
function runAsync(cmd: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

function socketOf(t: ExecutionContext, dir: string): string {
  const e = findByMountpoint(dir);
  if (!e) t.fail(`no control socket registered for ${dir}`);
  return e!.socket;
}

test.serial('the control socket answers malformed, huge, wrong-version and unknown messages with errors and keeps serving', async (t) => {
  requireRoot(t);
  const img = makeImage(t, { size: '64M', blockSize: 4096 });
  const m = await mountKfs(t, img, path.join(tempDir(t, 'ctl'), 'mnt'));
  const sock = socketOf(t, m.dir);
  const st = fs.statSync(sock);
  t.true(st.isSocket());
  t.is(st.mode & 0o777, 0o600, 'socket is mode 0600');

  const c = await rawConnection(sock);
  c.send('this is not json\n');
  c.send('{"version":1}\n');
  c.send(Buffer.concat([Buffer.alloc(1 << 20, 'x'), Buffer.from('\n')]));
  // A huge line arriving in pieces, and one huge line in one write with a newline.
  for (let i = 0; i < 4; i++) c.send(Buffer.alloc(40 * 1024, '{'));
  c.send('}\n');
  c.send(JSON.stringify({ version: 99, id: 5, command: 'status', args: {} }) + '\n');
  c.send(JSON.stringify({ version: 1, id: 6, command: 'format-the-disk', args: {} }) + '\n');
  c.send(JSON.stringify({ version: 1, id: 7, command: 'map', args: { maxCells: -1 } }) + '\n');
  c.send(JSON.stringify({ version: 1, id: 8, command: 'status', args: { extra: true } }) + '\n');
  c.send(Buffer.from([0xff, 0xfe, 0x00, 0x0a]));
  c.send(JSON.stringify({ version: 1, id: 9, command: 'defrag-check', args: { path: '/no/such/file' } }) + '\n');
  c.send(JSON.stringify({ version: 1, id: 10, command: 'hello', args: {} }) + '\n');
  await c.waitFor((r) => r.some((x) => x.id === 10));
  const codes = c.replies.map((r) => `${r.id}:${r.type === 'error' ? r.error!.code : r.type}`);
  t.deepEqual(codes, ['null:EBADMSG', 'null:EPROTO', 'null:E2BIG', 'null:E2BIG', '5:EPROTONOSUPPORT', '6:ENOSYS', '7:EINVAL', '8:EINVAL', 'null:EBADMSG', '9:ENOENT', '10:result'], JSON.stringify(c.replies));
  t.regex(c.replies[4].error!.message, /version 99 .*version 1/);
  const hello = c.replies[c.replies.length - 1].result!;
  t.is(hello.server, 'kfs');
  t.is(hello.pid, m.pid);
  // A client that vanishes mid-message, and one that connects and says nothing.
  const quitter = await rawConnection(sock);
  quitter.send('{"version":1,"id":1,"comm');
  quitter.close();
  const silent = await rawConnection(sock);
  silent.close();
  // The same connection and a new one still answer; the filesystem is still served.
  c.send(JSON.stringify({ version: 1, id: 11, command: 'status', args: {} }) + '\n');
  await c.waitFor((r) => r.some((x) => x.id === 11));
  t.is(c.replies[c.replies.length - 1].type, 'result');
  c.close();
  const client = await ControlClient.connect(sock);
  const s = await client.request('status', {});
  client.close();
  t.is(s.kind, 'mount');
  t.is(s.mountpoint, path.resolve(m.dir));
  t.true(m.alive());
  fs.writeFileSync(path.join(m.dir, 'after'), 'still here');
  t.is(fs.readFileSync(path.join(m.dir, 'after'), 'utf8'), 'still here');
  await m.unmount();
  t.false(fs.existsSync(sock), 'the socket is removed at unmount');
});

test.serial('the control socket refuses other users: the file mode first, the peer credentials second', async (t) => {
  requireRoot(t);
  const img = makeImage(t, { size: '64M', blockSize: 4096 });
  const m = await mountKfs(t, img, path.join(tempDir(t, 'ctl'), 'mnt'));
  const sock = socketOf(t, m.dir);
  // nobody cannot even reach the 0600 socket in the 0700 control directory.
  const r1 = runCmd('setpriv', [...NOBODY, process.execPath, KFSCTL, '-t', sock, 'status']);
  t.is(r1.code, 1, r1.stderr);
  t.regex(r1.stderr, /^kfsctl: .*permission denied/);
  t.is(r1.stderr.trim().split('\n').length, 1);

  // A server whose socket file lets anyone connect: the peer-credential check must refuse nobody.
  const other = makeImage(t, { size: '32M' });
  const dir = tempDir(t, 'ctl-open');
  fs.chmodSync(dir, 0o755);
  const ext4 = await Ext4Fs.open(other, { readOnly: true });
  const srv = await startControlServer({ kind: 'mount', image: other, fs: ext4, socketPath: path.join(dir, 'open.sock'), socketMode: 0o666 });
  t.teardown(async () => {
    srv.close();
    await ext4.close();
  });
  t.true(srv.listening);
  t.is(fs.statSync(srv.socketPath).mode & 0o777, 0o666);
  const r2 = await runAsync('setpriv', [...NOBODY, process.execPath, KFSCTL, '-t', srv.socketPath, 'status', '--json']);
  t.is(r2.code, 1, r2.stderr + r2.stdout);
  t.regex(r2.stderr, /^kfsctl: uid 65534 may not use this control socket/);
  t.is(r2.stderr.trim().split('\n').length, 1);
  t.is(r2.stdout, '');
  // Root is let in.
  const r3 = await runAsync(process.execPath, [KFSCTL, '-t', srv.socketPath, 'status', '--json']);
  t.is(r3.code, 0, r3.stderr);
  const s = JSON.parse(r3.stdout) as { image: string; kind: string };
  t.is(s.image, path.resolve(other));
  t.is(s.kind, 'mount');
});

test.serial('kfsd serves its control socket too: status names the vhost-user socket and no front-end', async (t) => {
  requireRoot(t);
  const img = makeImage(t, { size: '64M', blockSize: 4096 });
  const dir = tempDir(t, 'kfsd');
  const vhost = path.join(dir, 'vhost.sock');
  const kfsd = spawn(process.execPath, [path.resolve(__dirname, '..', 'src', 'cli', 'kfsd.js'), '--image', img, '--socket-path', vhost], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  kfsd.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((r) => kfsd.on('exit', (code) => r(code)));
  t.teardown(() => {
    if (kfsd.exitCode === null) kfsd.kill('SIGKILL');
  });
  let entry;
  for (let i = 0; i < 300 && !(entry = listEntries().find((e) => e.vhostSocket === vhost)); i++) await new Promise((r) => setTimeout(r, 100));
  t.truthy(entry, `kfsd registered no control socket; stderr: ${stderr}`);
  t.is(entry!.pid, kfsd.pid!);
  t.is(entry!.kind, 'kfsd');
  const r = await runAsync(process.execPath, [KFSCTL, '-t', img, 'status', '--json']);
  t.is(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout) as { kind: string; pid: number; mountpoint: string; clients: { frontEndConnected: boolean }; requests: { total: number }; journal: { active: boolean }; vhost: unknown };
  t.is(s.kind, 'kfsd');
  t.is(s.pid, kfsd.pid!);
  t.is(s.mountpoint, vhost);
  t.false(s.clients.frontEndConnected);
  t.is(s.vhost, null, 'no front-end, no connection counts');
  t.is(s.requests.total, 0);
  t.true(s.journal.active);
  const d = await runAsync(process.execPath, [KFSCTL, '-t', entry!.socket, 'defrag', '--check', '--json']);
  t.is(d.code, 0, d.stderr);
  kfsd.kill('SIGTERM');
  t.is(await exited, 0, stderr);
  t.false(fs.existsSync(entry!.socket));
  t.false(listEntries().some((e) => e.pid === kfsd.pid));
});
