/**
 * Node's helper threads under SCHED_IDLE (src/util/runtime-threads.ts): a running kfsd's V8
 * compiler/GC threads must yield the CPU, while its main thread and the libuv thread pool that
 * reads and writes the image keep normal scheduling. Read from /proc/PID/task/TID/stat (field
 * 41, the policy: 0 SCHED_OTHER, 5 SCHED_IDLE).
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../src/native';
import { startKfsd } from './helpers/backends';
import { makeImage, tempDir } from './helpers/image';

const SCHED_OTHER = 0;
const SCHED_IDLE = 5;

function policies(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      // The comm field may hold spaces: the fields after it start past the last ')'.
      const stat = fs.readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(Number(t), Number(rest[38]));
    } catch {
      /* the thread ended meanwhile */
    }
  }
  return out;
}

test('idleThread refuses the main thread and threads of other processes', (t) => {
  t.is((t.throws(() => native.idleThread(process.pid)) as NodeJS.ErrnoException | undefined)?.code, 'EINVAL');
  t.is((t.throws(() => native.idleThread(1)) as NodeJS.ErrnoException | undefined)?.code, 'ESRCH');
  t.throws(() => native.idleThread(-3), { instanceOf: TypeError });
  t.is(policies(process.pid).get(process.pid), SCHED_OTHER);
});

test.serial('kfsd: V8 helper threads run under SCHED_IDLE, the main thread and the image I/O threads do not', async (t) => {
  const dir = tempDir(t, 'rt');
  const image = makeImage(t, { size: '64M', dir, mkfs: 'kfs' });
  // Opening the image (journal replay check, superblock and descriptor reads) starts libuv's pool.
  const b = await startKfsd(path.join(dir, 'k.sock'), ['--image', image]);
  try {
    const pid = b.proc.pid!;
    const p = policies(pid);
    const idle = [...p.values()].filter((x) => x === SCHED_IDLE).length;
    const normal = [...p.entries()].filter(([tid, x]) => tid !== pid && x === SCHED_OTHER).length;
    t.log(`kfsd threads: ${p.size}, SCHED_IDLE ${idle}, others with normal scheduling ${normal}`);
    t.is(p.get(pid), SCHED_OTHER, 'the serving thread keeps normal scheduling');
    t.true(idle >= 4, `V8's worker threads are SCHED_IDLE (${idle})`);
    t.true(normal >= 1, `libuv's pool threads keep normal scheduling (${normal})`);
  } finally {
    await b.stop();
  }
});
