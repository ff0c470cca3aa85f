/**
 * kfs FUSE mounts for tests, made the way a user makes them: `kfs mount IMG DIR` (which returns
 * once the mount is live while a detached process serves it), always with a log file and a pid
 * file so that the serving process can be watched and its log shown when something goes wrong.
 *
 *   const m = await mountKfs(t, image, dir);          // unmounted at teardown
 *   ... use m.dir ...
 *   await m.unmount();                                // earlier, e.g. before e2fsck
 *
 * Unmounting is `kfs umount DIR` (retried while busy), then `umount -l DIR` as a fallback, and
 * then waiting for the serving process to exit and checking that it closed the image cleanly
 * (its log's "closed" line). A serving process that does not exit is killed (by its pid) and
 * reported. When the test fails, the tail of the mount's log is attached to the test output.
 *
 * Hooks cannot register teardowns in AVA: pass { teardown: false } there, unmount in an
 * after.always hook and call attachLogOnFailure from an afterEach.always hook.
 */
import type { ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { kfsCliPath } from './image';

export interface MountKfsOptions {
  /** `-o` options (e.g. ['ro'], ['writeback_cache', 'attr_timeout=0']). */
  options?: string[];
  /** More `kfs mount` arguments (e.g. ['--snapshot', 's1']). */
  args?: string[];
  /** --log-level (default info: the log then records INIT, the unmount and the image's close). */
  logLevel?: 'error' | 'warn' | 'info' | 'debug';
  /** Where the log and pid files go (default: next to the image). */
  stateDir?: string;
  /** Register a teardown that unmounts (default true; AVA hooks cannot). */
  teardown?: boolean;
  /** How long to wait for the serving process to exit after the unmount (default 60 s). */
  exitTimeoutMs?: number;
}

export interface KfsMount {
  readonly dir: string;
  readonly image: string;
  readonly logFile: string;
  readonly pidFile: string;
  /** The serving process. */
  readonly pid: number;
  readonly mounted: boolean;
  /** Is the serving process still running? */
  alive(): boolean;
  /** The last `lines` lines of the mount's log. */
  logTail(lines?: number): string;
  /** Log lines at level warn or error (a clean run has none). */
  logProblems(): string[];
  /**
   * Unmount (idempotent), wait for the serving process to exit, and throw (with the log tail) if
   * the unmount needed force, the process had to be killed, or it did not close the image.
   */
  unmount(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Mounts not yet unmounted: a worker that dies (uncaught exception) detaches them on exit. */
const active = new Set<string>();
let exitHook = false;
function track(dir: string): void {
  active.add(dir);
  if (exitHook) return;
  exitHook = true;
  process.on('exit', () => {
    // Lazily: the serving process then exits by itself once nothing uses the mount.
    for (const d of active) spawnSync('umount', ['-l', d]);
  });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  // A zombie is not serving anything.
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z /.test(stat);
  } catch {
    return false;
  }
}

function readTail(file: string, lines: number): string {
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    return `(no log: ${(e as Error).message})`;
  }
  const all = text.split('\n');
  if (all[all.length - 1] === '') all.pop();
  return all.slice(-lines).join('\n');
}

/** Is something mounted exactly at dir (per /proc/self/mountinfo)? */
export function isMountPoint(dir: string): boolean {
  const want = path.resolve(dir);
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length > 4 && unescape(f[4]) === want) return true;
  }
  return false;
}

/** Attach a mount's log tail to a failed test's output (call from afterEach.always or teardown). */
export function attachLogOnFailure(t: ExecutionContext, m: KfsMount | undefined, lines = 60): void {
  if (m && !t.passed) t.log(`--- kfs mount log ${m.logFile} (last ${lines} lines) ---\n${m.logTail(lines)}`);
}

/** Mount `image` on `dir` (created if missing) with `kfs mount`; see the file comment. */
export async function mountKfs(t: ExecutionContext, image: string, dir: string, opts: MountKfsOptions = {}): Promise<KfsMount> {
  const cli = kfsCliPath();
  if (!cli) throw new Error('dist/src/cli/kfs.js is not built (npx tsc -p .)');
  fs.mkdirSync(dir, { recursive: true });
  const stateDir = opts.stateDir ?? path.dirname(path.resolve(image));
  const base = path.join(stateDir, `kfs-mount-${path.basename(dir)}-${process.pid}-${Date.now()}`);
  const logFile = `${base}.log`;
  const pidFile = `${base}.pid`;
  const args = [cli, 'mount', image, dir, '--log-file', logFile, '--log-level', opts.logLevel ?? 'info', '--pid-file', pidFile];
  for (const o of opts.options ?? []) args.push('-o', o);
  args.push(...(opts.args ?? []));
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 60_000 });
  const failed = (why: string) => new Error(`kfs mount ${image} ${dir} ${why}\n--- log tail ---\n${readTail(logFile, 40)}`);
  if (r.error) throw failed(`could not run: ${r.error.message}`);
  if (r.status !== 0) throw failed(`exited ${r.status ?? r.signal}: ${(r.stderr + r.stdout).trim()}`);
  if (!isMountPoint(dir)) throw failed('returned 0 but nothing is mounted there');
  let pid = NaN;
  for (let i = 0; i < 50 && !(pid > 0); i++) {
    try {
      pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    } catch {
      await sleep(20);
    }
  }
  if (!(pid > 0)) throw failed(`left no pid file ${pidFile}`);

  let mounted = true;
  track(dir);
  let unmounting: Promise<void> | null = null;
  const exitTimeoutMs = opts.exitTimeoutMs ?? 60_000;

  const doUnmount = async (): Promise<void> => {
    const problems: string[] = [];
    let ok = false;
    let last = '';
    for (let attempt = 0; attempt < 40 && isMountPoint(dir); attempt++) {
      const u = spawnSync(process.execPath, [cli, 'umount', dir], { encoding: 'utf8', timeout: 30_000 });
      if (u.status === 0) {
        ok = true;
        break;
      }
      last = (u.stderr + u.stdout).trim();
      if (!/busy/i.test(last)) break;
      await sleep(250);
    }
    if (!ok && isMountPoint(dir)) {
      const l = spawnSync('umount', ['-l', dir], { encoding: 'utf8' });
      problems.push(`kfs umount failed (${last}); lazy umount ${l.status === 0 ? 'succeeded' : `failed too: ${l.stderr.trim()}`}`);
    }
    mounted = false;
    active.delete(dir);
    const t0 = Date.now();
    while (pidAlive(pid) && Date.now() - t0 < exitTimeoutMs) await sleep(50);
    if (pidAlive(pid)) {
      problems.push(`serving process ${pid} still running ${exitTimeoutMs} ms after the unmount; killed`);
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone meanwhile */
      }
    } else {
      const log = readTail(logFile, 400);
      if (!/ closed$/m.test(log)) problems.push(`serving process ${pid} exited without logging that it closed the image (crash?)`);
    }
    if (problems.length) throw new Error(`unmount of ${dir}: ${problems.join('; ')}\n--- log tail ---\n${readTail(logFile, 40)}`);
  };

  const m: KfsMount = {
    dir,
    image,
    logFile,
    pidFile,
    pid,
    get mounted() {
      return mounted;
    },
    alive: () => pidAlive(pid),
    logTail: (lines = 40) => readTail(logFile, lines),
    logProblems: () => readTail(logFile, 100000).split('\n').filter((l) => /\b(warn|error)\b/.test(l.slice(0, 40))),
    unmount: () => (unmounting ??= doUnmount()),
  };
  if (opts.teardown !== false) {
    t.teardown(async () => {
      try {
        await m.unmount();
      } finally {
        attachLogOnFailure(t, m);
      }
    });
  }
  return m;
}
