/**
 * kfsd's scheduling of its own threads (src/cli/helper-threads.ts, native/src/thread.cc): the
 * threads Node starts before any JavaScript (V8's compiler and GC workers among them) run under
 * SCHED_IDLE; the main thread and libuv's pool, which does the I/O requests wait for, keep the
 * normal policy; --no-idle-helpers leaves every thread as it was. Read from
 * /proc/PID/task/TID/stat (field 41, policy: 0 SCHED_OTHER, 5 SCHED_IDLE), as the kernel has it.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { makeImage, tempDir } from './helpers/image';
import { spawnKfsd } from './helpers/vhost-frontend';
import { waitFor } from './posix/util';

const NATIVE = path.join(__dirname, '..', 'src', 'native.js');
const SCHED_OTHER = 0;
const SCHED_IDLE = 5;
const WARMED_UP = /JIT warm-up on a scratch image: \d+ requests in \d+ ms \(done\)/;
const IDLED = /(\d+) runtime helper threads \(V8's compiler and GC workers among them\) run under SCHED_IDLE/;

/** Each thread of `pid` and its scheduling policy. */
function policies(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const name of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      // Fields after "(comm) " start at field 3 (state); policy is field 41.
      const stat = fs.readFileSync(`/proc/${pid}/task/${name}/stat`, 'utf8');
      out.set(Number(name), Number(stat.slice(stat.lastIndexOf(') ') + 2).split(' ')[41 - 3]));
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}

/** How many threads a Node process has before it runs any JavaScript, the main one included. */
const bareNodeThreads = (): number =>
  Number(execFileSync(process.execPath, ['-e', "process.stdout.write(String(require('fs').readdirSync('/proc/self/task').length))"], { encoding: 'utf8' }));

test('setThreadIdle: the given thread of this process goes to SCHED_IDLE; another process\'s task is ESRCH; a bad tid is EINVAL', (t) => {
  // In a child: this test's own process keeps its policy.
  const script = `
    const { native } = require(${JSON.stringify(NATIVE)});
    const policy = () => { const s = require('fs').readFileSync('/proc/thread-self/stat', 'utf8'); return Number(s.slice(s.lastIndexOf(') ') + 2).split(' ')[38]); };
    const before = policy();
    native.setThreadIdle(process.pid);
    const errs = [1, -1, 0, 1.5, 'x', 2 ** 31].map((tid) => { try { native.setThreadIdle(tid); return 'none'; } catch (e) { return e.code; } });
    process.stdout.write(JSON.stringify({ before, after: policy(), errs }));`;
  const r = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' }));
  t.deepEqual(r, { before: SCHED_OTHER, after: SCHED_IDLE, errs: ['ESRCH', 'EINVAL', 'EINVAL', 'EINVAL', 'EINVAL', 'EINVAL'] });
});

test.serial('kfsd: the runtime\'s helper threads run under SCHED_IDLE; the main thread and the I/O pool do not', async (t) => {
  const image = makeImage(t, { size: '256M', mkfs: 'kfs' });
  const socket = path.join(tempDir(t, 'helper-threads'), 'vhost.sock');
  const helpers = bareNodeThreads() - 1;
  t.true(helpers >= 1, `a bare node has ${helpers} threads besides its main one`);
  const kfsd = spawnKfsd(['--image', image], socket, ['--log-level', 'info']);
  t.teardown(() => kfsd.stop());
  // The warm-up formats and serves a scratch image: libuv's pool has started by its end.
  t.true(await waitFor(() => WARMED_UP.test(kfsd.output), 60_000), kfsd.output);
  const pid = kfsd.proc.pid!;
  const p = policies(pid);
  t.is(p.get(pid), SCHED_OTHER, 'the main thread');
  const idle = [...p].filter(([, v]) => v === SCHED_IDLE).map(([tid]) => tid);
  const normal = [...p].filter(([tid, v]) => v === SCHED_OTHER && tid !== pid);
  t.is(idle.length, helpers, `the threads Node starts before any JavaScript: ${JSON.stringify([...p])}`);
  t.true(normal.length >= 1, `libuv's pool keeps the normal policy: ${JSON.stringify([...p])}`);
  t.is(Number(IDLED.exec(kfsd.output)?.[1]), helpers, kfsd.output);
  t.deepEqual(await kfsd.stop(), { code: 0, signal: null });
});

test.serial('kfsd --no-idle-helpers: every thread keeps the normal policy', async (t) => {
  const image = makeImage(t, { size: '256M', mkfs: 'kfs' });
  const socket = path.join(tempDir(t, 'helper-threads'), 'vhost.sock');
  const kfsd = spawnKfsd(['--image', image], socket, ['--log-level', 'info', '--no-idle-helpers']);
  t.teardown(() => kfsd.stop());
  t.true(await waitFor(() => WARMED_UP.test(kfsd.output), 60_000), kfsd.output);
  const p = policies(kfsd.proc.pid!);
  t.true(p.size > 1);
  t.deepEqual([...p.values()].filter((v) => v !== SCHED_OTHER), [], JSON.stringify([...p]));
  t.notRegex(kfsd.output, /SCHED_IDLE/);
  t.deepEqual(await kfsd.stop(), { code: 0, signal: null });
});
