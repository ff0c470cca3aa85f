/**
 * Node's own helper threads (V8's compiler and garbage-collector workers, the platform's
 * delayed-task thread) under SCHED_IDLE: they run only on a CPU nothing else wants, and any other
 * thread waking up preempts them at once. A back-end shares the machine with the threads that
 * wait on it: a VMM's vCPU and main-loop threads (which carry the guest's kicks and our
 * interrupts) and the processes using the mount. With V8 compiling the request path on the only
 * free CPU, the VMM's main loop waited up to 3.6 ms to deliver an interrupt (`perf sched` during
 * a guest's cold stat, 2 vCPUs, QEMU under TCG). The work still gets done, later or by the main
 * thread itself.
 *
 * Which threads those are is recorded when this module is first loaded: an entry point imports it
 * before anything else, so before libuv starts its thread pool, whose threads read and write the
 * image and keep normal scheduling (a thread inherits its creator's policy, and the main thread
 * keeps SCHED_OTHER).
 */
import fs from 'node:fs';
import { native } from '../native';

function threadsNow(): number[] {
  try {
    return fs.readdirSync('/proc/self/task').map(Number).filter((t) => t !== process.pid);
  } catch {
    return [];
  }
}

const RUNTIME_THREADS = threadsNow();

/** Put the runtime's helper threads under SCHED_IDLE; returns how many were, and why any was not. */
export function idleRuntimeThreads(): { idle: number; failures: string[] } {
  let idle = 0;
  const failures: string[] = [];
  for (const tid of RUNTIME_THREADS) {
    try {
      native.idleThread(tid);
      idle++;
    } catch (e) {
      failures.push(`thread ${tid}: ${(e as Error).message}`);
    }
  }
  return { idle, failures };
}
