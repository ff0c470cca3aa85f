/**
 * Child processes for the benchmarks: asynchronous (so that SIGINT/SIGTERM handlers run while a
 * workload is in flight), timed, with an optional timeout, and all tracked so that an interrupt
 * can kill the ones still running.
 */
import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';

export interface RunOptions {
  /** Kill the child (SIGKILL) after this many seconds; the result then has timedOut set. */
  timeoutSec?: number;
  cwd?: string;
  /** Keep stdout (default true); false sends it to /dev/null (e.g. `ls -lR`). */
  captureStdout?: boolean;
  /** Run even after an interrupt (cleanup commands). */
  force?: boolean;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  seconds: number;
  timedOut: boolean;
}

const running = new Set<ChildProcess>();
let interruptedBy: string | null = null;

export class Interrupted extends Error {
  constructor(sig: string) {
    super(`interrupted by ${sig}`);
  }
}

/** Mark the run as interrupted and kill every child still running; later run() calls reject. */
export function interrupt(sig: string): void {
  interruptedBy = sig;
  for (const c of running) c.kill('SIGKILL');
}

export function interrupted(): string | null {
  return interruptedBy;
}

/** Throw Interrupted if a signal arrived. */
export function checkInterrupt(): void {
  if (interruptedBy) throw new Interrupted(interruptedBy);
}

export const now = (): number => Number(process.hrtime.bigint()) / 1e9;

/** The machine's CPU time so far (/proc/stat "cpu" line, in ticks): all of it, and the steal part. */
export function cpuTicks(): { total: number; steal: number } {
  // cpu  user nice system idle iowait irq softirq steal guest guest_nice (proc(5)); guest time
  // is already counted in user and nice.
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return { total: f.slice(0, 8).reduce((a, b) => a + b, 0), steal: f[7] ?? 0 };
}

/**
 * Percent of the machine's CPU time between two cpuTicks() readings that the hypervisor gave to
 * something else (steal): on a shared host, the measure of how much a figure was disturbed.
 */
export function stealPercent(a: { total: number; steal: number }, b: { total: number; steal: number }): number {
  const total = b.total - a.total;
  return total > 0 ? Math.round((1000 * (b.steal - a.steal)) / total) / 10 : 0;
}

/** Steal at or above this (% of all CPU time during a measured part) makes a figure "disturbed". */
export const STEAL_NOTE_PCT = 5;

/** The benchmarks' note naming the figures taken with too much steal (null: none). */
export function stealNote(figures: { name: string; stealPct: number }[]): string | null {
  const hit = figures.filter((f) => f.stealPct >= STEAL_NOTE_PCT).map((f) => `${f.name} ${f.stealPct}%`);
  return hit.length ? `CPU steal (time the hypervisor gave other guests) of ${STEAL_NOTE_PCT}% or more during: ${hit.join(', ')}; those figures are disturbed` : null;
}

/** The median of some values (null for none). */
export function median(xs: number[]): number | null {
  if (!xs.length) return null;
  const v = [...xs].sort((a, b) => a - b);
  const mid = Math.floor((v.length - 1) / 2);
  return v.length % 2 ? v[mid] : (v[mid] + v[mid + 1]) / 2;
}

/**
 * One figure over its rounds: the median of all of them (the headline), and the median of
 * those taken with less than STEAL_NOTE_PCT steal when there are any (the "quiet" median).
 * The quiet one is not the headline because steal is partly the workload's own doing: a vCPU
 * woken from halt waits for the hypervisor and that wait counts as steal, so a server that
 * sleeps between requests (fuse2fs; kfs with busy_poll_us=0: 24-26% in a stat loop) shows more
 * of it than one that polls (kfs: 6%) or a CPU loop on both vCPUs (3-5%) in the same minutes.
 */
export function roundsSummary(rounds: { value: number; stealPct?: number }[]): { median: number; quietMedian: number; quietNote: string } | null {
  const all = median(rounds.map((r) => r.value));
  if (all === null) return null;
  const quiet = rounds.filter((r) => (r.stealPct ?? 0) < STEAL_NOTE_PCT);
  return {
    median: all,
    quietMedian: median((quiet.length ? quiet : rounds).map((r) => r.value))!,
    quietNote: quiet.length ? `${quiet.length} undisturbed of ${rounds.length}` : `all ${rounds.length}, every one disturbed`,
  };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Run fn(0..total-1) with at most n in flight. */
export async function pool(total: number, n: number, fn: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < total) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(n, total) }, worker));
}

/** Seconds fn takes. */
export async function timed(fn: () => Promise<void> | void): Promise<number> {
  const t0 = now();
  await fn();
  return now() - t0;
}

/** Run a command to completion; wall time is measured around the child (spawn included). */
export function run(cmd: string, args: string[], o: RunOptions = {}): Promise<RunResult> {
  if (!o.force) checkInterrupt();
  return new Promise((resolve, reject) => {
    const t0 = now();
    const child = spawn(cmd, args, { cwd: o.cwd, stdio: ['ignore', o.captureStdout === false ? 'ignore' : 'pipe', 'pipe'] });
    if (!o.force) running.add(child);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout?.on('data', (d: Buffer) => {
      if (stdout.length < 1 << 22) stdout += d.toString();
    });
    child.stderr?.on('data', (d: Buffer) => {
      if (stderr.length < 1 << 20) stderr += d.toString();
    });
    const timer = o.timeoutSec ? setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, o.timeoutSec * 1000) : null;
    child.on('error', (e) => {
      running.delete(child);
      if (timer) clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      const seconds = now() - t0;
      running.delete(child);
      if (timer) clearTimeout(timer);
      if (interruptedBy && !o.force) return reject(new Interrupted(interruptedBy));
      resolve({ code, signal, stdout, stderr, seconds, timedOut });
    });
  });
}

/** run() that throws on a non-zero exit, a signal or a timeout. */
export async function runOk(cmd: string, args: string[], o: RunOptions = {}): Promise<RunResult> {
  const r = await run(cmd, args, o);
  if (r.timedOut) throw new Error(`${cmd} ${args.join(' ')}: timed out after ${o.timeoutSec} s`);
  if (r.code !== 0) {
    const why = r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
    const msg = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-3).join(' | ');
    throw new Error(`${cmd} ${args.join(' ')}: ${why}${msg ? `: ${msg}` : ''}`);
  }
  return r;
}

/**
 * Walk a benchmark's command-line options: `each(option, value)` per option, where value()
 * takes the argument after it (an error naming the option when there is none).
 */
export function forEachOption(argv: string[], each: (option: string, value: () => string) => void): void {
  for (let i = 0; i < argv.length; i++) {
    const option = argv[i];
    each(option, () => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${option} needs a value`);
      return x;
    });
  }
}
