/**
 * Mounting one image three ways for the mount benchmark: kfs (our FUSE server, `kfs mount`),
 * fuse2fs (e2fsprogs' FUSE ext4) and the kernel's ext4 on a loop device. Every mount is recorded
 * in a registry so that it is undone on any exit path: Target.unmount() in a finally,
 * cleanupAll() at the end of main, and cleanupAllSync() from process 'exit' as a last resort.
 * The FUSE servers flush their caches after the unmount, asynchronously: unmount() waits for the
 * serving process to exit before it returns, so the image is quiescent afterwards (and the time
 * that took is reported as the flush time).
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { now, run, sleep } from './proc';

/**
 * kfs-async: kfs with `-o nocommit_before_reply`, replies before the log-only commit as fuse2fs
 * and the kernel do (their changes too are lost to a crash until fsync or the 5 s commit).
 */
export type Kind = 'kfs' | 'kfs-async' | 'fuse2fs' | 'kernel';
export const KINDS: readonly Kind[] = ['kfs', 'kfs-async', 'fuse2fs', 'kernel'];
/** Mount options each kfs kind adds to --kfs-opts. */
const KFS_KIND_OPTIONS: Partial<Record<Kind, string[]>> = { kfs: [], 'kfs-async': ['nocommit_before_reply'] };

export const KFS_CLI = path.join(__dirname, '..', '..', '..', 'src', 'cli', 'kfs.js');

/** Is `dir` (absolute) a mount point right now? */
export function isMounted(dir: string): boolean {
  const info = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  for (const line of info.split('\n')) {
    const mp = line.split(' ')[4];
    if (mp !== undefined && mp.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))) === dir) return true;
  }
  return false;
}

/**
 * Is process `pid` still running? A zombie counts as gone: the detached kfs server is reparented
 * to init, which may reap it only seconds later, and kill(pid, 0) succeeds on a zombie.
 */
function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

const registry = new Set<Target>();
const CLK_TCK = 100;

/** Does `p` settle within `sec` seconds? (The timer is cleared, so it never holds the process.) */
async function within(p: Promise<unknown>, sec: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), sec * 1000)));
  try {
    return await Promise.race([p.then(() => true), t]);
  } finally {
    clearTimeout(timer);
  }
}

export interface TargetOptions {
  /** extra `-o` for kfs mount (e.g. writeback_cache) */
  kfsOptions?: string[];
  /** --log-level for the kfs server */
  kfsLogLevel?: string;
  /** seconds to wait for a FUSE server to finish flushing after the unmount */
  flushTimeoutSec?: number;
  /** the kfs CLI to run (default: this checkout's dist/src/cli/kfs.js) */
  kfsCli?: string;
}

export class Target {
  private pid: number | null = null;
  private child: ChildProcess | null = null;
  private childExited: Promise<void> | null = null;
  readonly logFile: string;
  private readonly pidFile: string;
  /** served by kfs (either kfs kind) */
  readonly isKfs: boolean;
  private readonly kfsOptions: string[];

  constructor(readonly kind: Kind, readonly image: string, readonly dir: string, work: string, private o: TargetOptions = {}) {
    this.isKfs = KFS_KIND_OPTIONS[kind] !== undefined;
    this.kfsOptions = [...(o.kfsOptions ?? []), ...(KFS_KIND_OPTIONS[kind] ?? [])];
    this.logFile = path.join(work, `${kind}.log`);
    this.pidFile = path.join(work, `${kind}.pid`);
  }

  /** CPU seconds (user, system) the FUSE server has used so far; undefined for the kernel. */
  serverCpu(): { user: number; sys: number } | undefined {
    if (this.pid === null) return undefined;
    try {
      const stat = fs.readFileSync(`/proc/${this.pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // fields 14 and 15 (utime, stime) are the 12th and 13th after the command name
      return { user: Number(f[11]) / CLK_TCK, sys: Number(f[12]) / CLK_TCK };
    } catch {
      return undefined;
    }
  }

  /** What the mount command line looks like, for the report. */
  describe(): string {
    if (this.isKfs) {
      const opts = this.kfsOptions.length ? ` -o ${this.kfsOptions.join(',')}` : '';
      return `node dist/src/cli/kfs.js mount IMG DIR${opts}`;
    }
    if (this.kind === 'fuse2fs') return 'fuse2fs IMG DIR -f -o rw,fakeroot';
    return 'mount -o loop IMG DIR';
  }

  async mount(): Promise<void> {
    if (isMounted(this.dir)) throw new Error(`${this.dir} is already a mount point`);
    registry.add(this);
    if (this.isKfs) {
      fs.rmSync(this.pidFile, { force: true });
      const args = [this.o.kfsCli ?? KFS_CLI, 'mount', this.image, this.dir, '--pid-file', this.pidFile, '--log-file', this.logFile];
      if (this.kfsOptions.length) args.push('-o', this.kfsOptions.join(','));
      if (this.o.kfsLogLevel) args.push('--log-level', this.o.kfsLogLevel);
      const r = await run(process.execPath, args, { timeoutSec: 120 });
      if (fs.existsSync(this.pidFile)) this.pid = Number(fs.readFileSync(this.pidFile, 'utf8').trim()) || null;
      if (r.code !== 0 || !isMounted(this.dir)) throw new Error(`kfs mount failed (exit ${r.code}): ${r.stderr.trim()}`);
    } else if (this.kind === 'fuse2fs') {
      const log = fs.openSync(this.logFile, 'a');
      // Foreground (-f) so that we own the process and can wait for its exit after unmounting;
      // detached so that a Ctrl-C on the terminal does not reach it before we unmount.
      const child = spawn('fuse2fs', [this.image, this.dir, '-f', '-o', 'rw,fakeroot'], { detached: true, stdio: ['ignore', log, log] });
      fs.closeSync(log);
      this.child = child;
      this.pid = child.pid ?? null;
      let exited = false;
      this.childExited = new Promise((resolve) => child.on('exit', () => {
        exited = true;
        resolve();
      }));
      const t0 = now();
      while (!isMounted(this.dir)) {
        if (exited) throw new Error(`fuse2fs exited before mounting: ${fs.readFileSync(this.logFile, 'utf8').trim().split('\n').slice(-3).join(' | ')}`);
        if (now() - t0 > 60) throw new Error('fuse2fs did not mount within 60 s');
        await sleep(20);
      }
    } else {
      const r = await run('mount', ['-o', 'loop', this.image, this.dir], { timeoutSec: 60 });
      if (r.code !== 0) throw new Error(`mount -o loop failed: ${r.stderr.trim()}`);
    }
  }

  /**
   * Unmount and wait until the server (FUSE) has exited, i.e. the image holds everything.
   * Returns the seconds that took (the unmount itself plus the server's final flush).
   */
  async unmount(): Promise<number> {
    const t0 = now();
    if (isMounted(this.dir)) {
      let lastErr = '';
      for (let attempt = 0; attempt < 20 && isMounted(this.dir); attempt++) {
        const r = this.isKfs
          ? await run(process.execPath, [this.o.kfsCli ?? KFS_CLI, 'umount', this.dir], { timeoutSec: 60, force: true })
          : await run('umount', [this.dir], { timeoutSec: 120, force: true });
        if (r.code === 0) break;
        lastErr = r.stderr.trim();
        await sleep(250);
      }
      if (isMounted(this.dir)) {
        await run('umount', ['-l', this.dir], { timeoutSec: 60, force: true });
        if (isMounted(this.dir)) throw new Error(`cannot unmount ${this.dir}: ${lastErr}`);
      }
    }
    await this.waitServer();
    registry.delete(this);
    return now() - t0;
  }

  private async waitServer(): Promise<void> {
    const limit = this.o.flushTimeoutSec ?? 600;
    if (this.kind === 'fuse2fs' && this.child && this.childExited) {
      if (!(await within(this.childExited, limit))) {
        this.child.kill('SIGTERM');
        await within(this.childExited, 5);
      }
      this.child = null;
    } else if (this.isKfs) {
      if (this.pid === null && fs.existsSync(this.pidFile)) this.pid = Number(fs.readFileSync(this.pidFile, 'utf8').trim()) || null;
      if (this.pid !== null) {
        const t0 = now();
        while (alive(this.pid) && now() - t0 < limit) await sleep(20);
        if (alive(this.pid)) {
          process.kill(this.pid, 'SIGTERM');
          await sleep(2000);
        }
      }
    }
    this.pid = null;
  }

  /** Last-resort synchronous cleanup (process 'exit'): lazy unmount, then stop our server. */
  unmountSync(): void {
    try {
      if (isMounted(this.dir)) execFileSync('umount', ['-l', this.dir], { stdio: 'ignore' });
    } catch {
      /* nothing more we can do */
    }
    if (this.isKfs && this.pid === null && fs.existsSync(this.pidFile)) this.pid = Number(fs.readFileSync(this.pidFile, 'utf8').trim()) || null;
    // The server exits by itself once unmounted; give it a moment to flush, then stop it.
    if (this.pid !== null) {
      const t0 = Date.now();
      while (alive(this.pid) && Date.now() - t0 < 10000) execFileSync('sleep', ['0.05']);
      if (alive(this.pid)) {
        try {
          process.kill(this.pid, 'SIGTERM');
        } catch {
          /* gone */
        }
      }
    }
    registry.delete(this);
  }
}

/** Unmount everything still mounted (asynchronously, waiting for the servers). */
export async function cleanupAll(): Promise<void> {
  for (const t of [...registry]) {
    try {
      await t.unmount();
    } catch (e) {
      process.stderr.write(`cleanup: ${(e as Error).message}; trying a lazy unmount\n`);
      t.unmountSync();
    }
  }
}

export function cleanupAllSync(): void {
  for (const t of [...registry]) t.unmountSync();
}

export function activeMounts(): number {
  return registry.size;
}
