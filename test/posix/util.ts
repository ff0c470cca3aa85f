/**
 * Small tools for the POSIX behaviour suite: errno capture, python3 snippets for the system
 * calls Node does not expose (renameat2, utimensat with UTIME_NOW/UTIME_OMIT, xattrs with
 * explicit buffer sizes, SEEK_DATA/SEEK_HOLE, O_TMPFILE, mknod, mmap, fallocate modes) and for
 * running as an unprivileged user, and observation helpers that keep results comparable between
 * two filesystems (no inode numbers, no absolute "now" times).
 */
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';

/** The system python (readable by every uid; pyenv shims under /root are not). */
export const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

/** Unprivileged users for permission tests (need not exist in /etc/passwd). */
export const USER = 1000;
export const OTHER = 1001;

/** 'ok' when fn succeeds, else the errno code (EEXIST, ...) or the error message. */
export function errOf(fn: () => unknown): string {
  try {
    fn();
    return 'ok';
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String((e as Error).message);
  }
}

export async function errOfAsync(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
    return 'ok';
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String((e as Error).message);
  }
}

/** Permission bits as an octal string ("4755"). */
export function modeOf(p: string | Buffer, follow = false): string {
  const st = follow ? fs.statSync(p) : fs.lstatSync(p);
  return (st.mode & 0o7777).toString(8);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Wait until pred() is true (polling), at most ms; returns the last value of pred(). */
export async function waitFor(pred: () => boolean, ms = 5000, step = 50): Promise<boolean> {
  const t0 = Date.now();
  for (;;) {
    if (pred()) return true;
    if (Date.now() - t0 > ms) return false;
    await sleep(step);
  }
}

/**
 * Python prelude: `A` is the JSON argument, `E(f, *a)` returns f's result (or 'ok' for None)
 * or the errno name, `K(f, *a)` 'ok' or the errno name, `C(name, *a)` calls libc and returns its result or the errno name,
 * `out(obj)` prints the JSON result. With A['__uid'] the process first drops to that uid/gid
 * with no supplementary groups.
 */
const PRELUDE = String.raw`
import os, sys, json, errno, ctypes, stat, time
A = json.loads(sys.argv[1])
if A.get('__uid') is not None:
    os.setgroups([])
    g = A.get('__gid', A['__uid'])
    os.setresgid(g, g, g)
    os.setresuid(A['__uid'], A['__uid'], A['__uid'])
libc = ctypes.CDLL(None, use_errno=True)
def en(n): return errno.errorcode.get(n, str(n))
def E(f, *a, **k):
    try:
        r = f(*a, **k)
        return 'ok' if r is None else r
    except OSError as e:
        return en(e.errno)
def K(f, *a, **k):
    try:
        f(*a, **k)
        return 'ok'
    except OSError as e:
        return en(e.errno)
def C(name, *a):
    ctypes.set_errno(0)
    r = getattr(libc, name)(*a)
    if r == -1: return en(ctypes.get_errno())
    return r
def b(s): return s.encode() if isinstance(s, str) else s
def out(o): sys.stdout.write(json.dumps(o, sort_keys=True, default=repr))
`;

export interface PyOptions {
  /** Run as this uid (and gid = uid unless gid is given), no supplementary groups. */
  uid?: number;
  gid?: number;
  timeoutMs?: number;
}

/** Run a python3 snippet (see PRELUDE) with `args` as A; resolves to what it out()s. */
export function py<T = Record<string, unknown>>(code: string, args: Record<string, unknown> = {}, opts: PyOptions = {}): Promise<T> {
  const a = { ...args, __uid: opts.uid ?? null, __gid: opts.gid ?? opts.uid ?? null };
  return new Promise((resolve, reject) => {
    execFile(PYTHON, ['-c', PRELUDE + code, JSON.stringify(a)], { maxBuffer: 64 << 20, timeout: opts.timeoutMs ?? 120_000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`python snippet failed: ${err.message}\n${stderr}\n--- code ---\n${code.slice(0, 1500)}`));
      try {
        resolve((stdout.trim() ? JSON.parse(stdout) : {}) as T);
      } catch {
        reject(new Error(`python snippet printed non-JSON: ${stdout.slice(0, 500)}\n${stderr}`));
      }
    });
  });
}

/** Run a command; resolves to exit code and output (never rejects for a non-zero exit). */
export function run(cmd: string, args: string[], opts: { cwd?: string; input?: string | Buffer; timeoutMs?: number; uid?: number } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const full = opts.uid === undefined ? [cmd, ...args] : ['setpriv', `--reuid=${opts.uid}`, `--regid=${opts.uid}`, '--clear-groups', cmd, ...args];
    const child = spawn(full[0], full.slice(1), { cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      resolve({ code: code ?? (sig ? 128 : 1), stdout, stderr });
    });
    child.stdin.on('error', () => {
      /* the command may exit without reading its input */
    });
    child.stdin.end(opts.input ?? '');
  });
}

/**
 * Drop clean dentries and inodes (2: so FUSE must look things up and fetch attributes again),
 * or also the page cache (3).
 */
export function dropCaches(level: 1 | 2 | 3 = 2): void {
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', String(level));
  } catch {
    /* not permitted: comparisons then rely on cached attributes */
  }
}

/** statvfs through python: free blocks etc. */
export async function statvfs(p: string): Promise<{ bsize: number; blocks: number; bfree: number; bavail: number; files: number; ffree: number; favail: number; flag: number; namemax: number; frsize: number }> {
  return py(`s = os.statvfs(A['p']); out(dict(bsize=s.f_bsize, frsize=s.f_frsize, blocks=s.f_blocks, bfree=s.f_bfree, bavail=s.f_bavail, files=s.f_files, ffree=s.f_ffree, favail=s.f_favail, flag=s.f_flag, namemax=s.f_namemax))`, { p });
}

/** fsync a file by path (opened read-only, closed again). */
export function fsyncPath(p: string): void {
  const fd = fs.openSync(p, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Deterministic pseudo-random bytes. */
export function pattern(seed: number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}
