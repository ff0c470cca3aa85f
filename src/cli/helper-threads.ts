/**
 * The runtime's helper threads under SCHED_IDLE.
 *
 * Besides its main thread, a Node process starts a few threads before it runs any JavaScript:
 * V8's platform workers (the optimizing compiler, concurrent marking and parallel scavenging)
 * and two that mostly sleep (the platform's delayed-task thread, the SIGUSR1 inspector
 * watchdog). The worker jobs come in bursts of several milliseconds: a TurboFan compile of a
 * request path, a concurrent mark. On a host with no spare CPU (kfsd next to a TCG guest on 2
 * CPUs) such a burst held the guest's vCPU thread, woken onto the same CPU by QEMU's main loop,
 * in the run queue for 4.5 ms while kfsd's main thread was idle and the other CPU went idle too
 * (`perf record -k mono -e sched:sched_switch -e sched:sched_wakeup -a` over a cold stat pass);
 * a pass of 82 READDIRPLUS had 5-9 such gaps of 1.5-8 ms. Under SCHED_IDLE a woken thread of any
 * ordinary policy preempts them at once, and the kernel counts their CPU as idle when it places
 * the woken thread (sched(7); kernel/sched/fair.c).
 *
 * V8 loses nothing it needs: every job it hands those threads is one its main thread joins and
 * finishes itself when they get no CPU (a scavenge, the end of a mark), or one that can wait (a
 * compile: the function runs in its current tier until then).
 *
 * libuv's thread pool is NOT among them: its workers do the image's and host files' I/O that
 * requests wait for. It starts on the first asynchronous I/O, so this must run before any; the
 * threads it finds then are the runtime's own.
 */
import fs from 'node:fs';
import { native } from '../native';
import { log } from '../util/log';

/**
 * Put every thread of this process but the calling (main) one under SCHED_IDLE; call before any
 * asynchronous I/O. The number of threads changed. Never throws: a thread that cannot be changed
 * (gone meanwhile, a seccomp policy) is logged and left as it is.
 */
export function idleRuntimeHelpers(): number {
  let changed = 0;
  for (const name of fs.readdirSync('/proc/self/task')) {
    const tid = Number(name);
    if (tid === process.pid) continue;
    try {
      native.setThreadIdle(tid);
      changed++;
    } catch (e) {
      log.warn(`runtime helper thread ${tid} left at its scheduling policy: ${(e as Error).message}`);
    }
  }
  return changed;
}
