/**
 * The host side of the model test: a real directory on the host's kernel filesystem is the
 * oracle. Plain operations go through node:fs; the few that node:fs lacks (renameat2 flags,
 * xattrs, fallocate modes, nanosecond utimens, SEEK_DATA/SEEK_HOLE) go through one long-lived
 * python3 process that makes the same system calls (ctypes for renameat2 and fallocate) and
 * answers with the raw errno.
 */
import { ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { createInterface, Interface } from 'node:readline';

const SCRIPT = String.raw`
import sys, os, json, ctypes, base64, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
libc.renameat2.restype = ctypes.c_int
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
libc.fallocate.restype = ctypes.c_int
AT_FDCWD = -100

def fail():
    e = ctypes.get_errno()
    raise OSError(e, os.strerror(e))

def renameat2(a, b, flags):
    if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags) != 0:
        fail()

def fallocate(p, mode, off, ln):
    fd = os.open(p, os.O_RDWR)
    try:
        if libc.fallocate(fd, mode, off, ln) != 0:
            fail()
    finally:
        os.close(fd)

def regions(p):
    fd = os.open(p, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        out = []
        off = 0
        while off < size:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            h = os.lseek(fd, d, os.SEEK_HOLE)
            out.append([d, h])
            off = h
        return out
    finally:
        os.close(fd)

def xattrs(p):
    out = {}
    for n in os.listxattr(p, follow_symlinks=False):
        out[n] = base64.b64encode(os.getxattr(p, n, follow_symlinks=False)).decode()
    return out

def handle(r):
    op = r['op']
    if op == 'renameat2':
        return renameat2(r['a'], r['b'], r['flags'])
    if op == 'fallocate':
        return fallocate(r['p'], r['mode'], r['off'], r['len'])
    if op == 'setxattr':
        return os.setxattr(r['p'], r['name'], base64.b64decode(r['value']), r['flags'])
    if op == 'removexattr':
        return os.removexattr(r['p'], r['name'])
    if op == 'getxattr':
        return base64.b64encode(os.getxattr(r['p'], r['name'])).decode()
    if op == 'xattrs':
        return xattrs(r['p'])
    if op == 'utimens':
        ns = lambda t: t[0] * 1000000000 + t[1]
        return os.utime(r['p'], ns=(ns(r['at']), ns(r['mt'])))
    if op == 'mknod':
        fmt = {'fifo': 0o010000, 'chr': 0o020000, 'blk': 0o060000, 'sock': 0o140000}[r['type']]
        return os.mknod(r['p'], r['mode'] | fmt, os.makedev(r['major'], r['minor']))
    if op == 'regions':
        return regions(r['p'])
    raise ValueError('unknown op ' + op)

for line in sys.stdin:
    r = json.loads(line)
    try:
        res = {'ok': handle(r)}
    except OSError as e:
        res = {'err': e.errno}
    except Exception as e:
        res = {'fatal': repr(e)}
    sys.stdout.write(json.dumps(res) + '\n')
    sys.stdout.flush()
`;

/** A result from the helper: a value, or the errno of the failed system call. */
export type HostResult<T> = { ok: T; err?: undefined } | { ok?: undefined; err: number };

export class HostSyscalls {
  private proc: ChildProcessWithoutNullStreams;
  private rl: Interface;
  private waiting: ((line: string) => void)[] = [];
  private dead: Error | null = null;

  constructor() {
    this.proc = spawn('python3', ['-u', '-c', SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    this.proc.stderr.on('data', (d) => (stderr += d.toString()));
    this.proc.on('exit', (code) => {
      this.dead = new Error(`host syscall helper exited (${code}): ${stderr}`);
      for (const w of this.waiting.splice(0)) w(JSON.stringify({ fatal: this.dead.message }));
    });
    this.rl = createInterface({ input: this.proc.stdout });
    this.rl.on('line', (line) => this.waiting.shift()?.(line));
  }

  async call<T>(req: Record<string, unknown>): Promise<HostResult<T>> {
    if (this.dead) throw this.dead;
    const line = await new Promise<string>((resolve) => {
      this.waiting.push(resolve);
      this.proc.stdin.write(JSON.stringify(req) + '\n');
    });
    const r = JSON.parse(line) as { ok?: T; err?: number; fatal?: string };
    if (r.fatal !== undefined) throw new Error(`host syscall helper: ${r.fatal} (request ${JSON.stringify(req).slice(0, 200)})`);
    if (r.err !== undefined) return { err: r.err };
    return { ok: r.ok as T };
  }

  close(): void {
    this.proc.stdin.end();
    this.proc.kill();
  }
}
