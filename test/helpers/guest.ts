/**
 * Boots the test guest (images/out/, built by images/build.sh) under QEMU with a virtio-fs
 * device whose vhost-user backend listens on `socketPath`, runs a shell script in the guest
 * and returns what it printed on the serial console and its exit status.
 *
 *   const r = await runGuest({ socketPath, script: 'ls -l; md5sum data/*' });
 *   t.is(r.exit, '0', r.console);
 *
 * The guest (images/init.sh) mounts `-t virtiofs TAG /mnt`, runs the script with busybox `sh`
 * in /mnt, unmounts everything, prints `KFS-EXIT <status>` and powers off. The script and the
 * extra `files` reach the guest in a small cpio archive placed in front of the base initrd:
 * the kernel unpacks every archive of the initrd image in turn (the base one last, so it wins
 * on a clash; /init cannot be replaced). QEMU runs with TCG (KVM is unusable on these
 * machines), guest RAM in a shared memfd as vhost-user requires, and is always gone when the
 * promise settles.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join, posix, resolve } from 'node:path';

export interface GuestOptions {
  /** The vhost-user socket the backend listens on (not needed with mount: false). */
  socketPath?: string;
  /** sh script (busybox) run in the guest, in /mnt (in / with mount: false). */
  script: string;
  /** virtio-fs tag (default 'myfs'). */
  tag?: string;
  /** `mount -o` options for the virtio-fs mount, e.g. 'dax' (no whitespace). */
  mountOptions?: string;
  /** Mount virtio-fs on /mnt before the script (default true; false = kernel arg kfs.nomount=1). */
  mount?: boolean;
  /** Guest RAM (default 512). */
  memMiB?: number;
  /** vhost-user-fs-pci num-request-queues (default 1). */
  numRequestQueues?: number;
  /** vhost-user-fs-pci queue-size (default 1024). */
  queueSize?: number;
  /** A raw image attached as virtio-blk (/dev/vda in the guest). */
  disk?: string;
  /**
   * Extra files put into the guest at these absolute paths (mode 0644; parents are created).
   * They live in the guest's RAM (the initramfs), so large ones need a larger memMiB.
   */
  files?: Record<string, Buffer>;
  /** Kill QEMU after this long (default 10 min); the result's exit is then 'timeout'. */
  timeoutMs?: number;
  /** Guest CPUs (default 1). */
  cpus?: number;
  /** More kernel command line arguments (no whitespace inside one). */
  kernelArgs?: string[];
}

export interface GuestResult {
  /** The KFS-EXIT value ('0' when the script succeeded, or the init's word, e.g. 'mount-failed'), or 'timeout' / 'no-exit'. */
  exit: string;
  /** Everything the guest printed on its serial console (\n line ends). */
  console: string;
  /** QEMU's exit code (null when it was killed by a signal). */
  qemuCode: number | null;
  /** QEMU's own messages (stderr), e.g. why it could not start. */
  qemuStderr: string;
  /** From spawning QEMU to its exit. */
  elapsedMs: number;
}

const REPO_ROOT = resolve(__dirname, '..', '..', '..'); // this file runs as dist/test/helpers/guest.js
export const GUEST_DIR = join(REPO_ROOT, 'images', 'out');
const QEMU = 'qemu-system-x86_64';
const SETUP_HINT = 'run `sudo npm run setup` (or `sudo bash scripts/setup-guest.sh`)';

function onPath(cmd: string): string | null {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(delimiter)) {
    const p = join(dir, cmd);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // keep looking
    }
  }
  return null;
}

/** Throws, naming the set-up command, when the guest images or QEMU are missing. */
export function guestAvailable(): void {
  const missing = ['initrd.gz', 'vmlinuz', 'STAMP'].filter((f) => !existsSync(join(GUEST_DIR, f)));
  if (missing.length > 0) {
    throw new Error(`the test guest is not built (${missing.map((f) => join(GUEST_DIR, f)).join(', ')} missing): ${SETUP_HINT}`);
  }
  if (!onPath(QEMU)) throw new Error(`${QEMU} not found on PATH: ${SETUP_HINT}`);
}

/** The guest kernel release (images/out/VERSION). */
export function guestKernelVersion(): string {
  return readFileSync(join(GUEST_DIR, 'VERSION'), 'utf8').trim();
}

// ---------- cpio "newc" (the format the kernel's initramfs unpacker reads) ----------

interface CpioEntry {
  /** Path without the leading '/'. */
  name: string;
  /** File type and permission bits. */
  mode: number;
  data: Buffer;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/**
 * newc: a 110-byte ASCII header (magic 070701, then 13 fields of 8 hex digits), the name with
 * its NUL padded to 4 bytes, the data padded to 4 bytes; the archive ends with TRAILER!!!.
 */
export function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const mtime = Math.floor(Date.now() / 1000);
  const hex = (v: number) => v.toString(16).padStart(8, '0');
  const add = (e: CpioEntry, ino: number) => {
    const name = Buffer.from(e.name + '\0');
    const fields = [ino, e.mode, 0, 0, 1, mtime, e.data.length, 0, 0, 0, 0, name.length, 0];
    const header = Buffer.from('070701' + fields.map(hex).join(''), 'ascii');
    parts.push(header, name, Buffer.alloc(pad4(header.length + name.length)), e.data, Buffer.alloc(pad4(e.data.length)));
  };
  entries.forEach((e, i) => add(e, i + 1));
  add({ name: 'TRAILER!!!', mode: 0, data: Buffer.alloc(0) }, 0);
  return Buffer.concat(parts);
}

/** The archive carrying /kfs-test.sh and the extra files, with every parent directory. */
function scriptArchive(script: string, files: Record<string, Buffer>): Buffer {
  const dirs = new Set<string>();
  const entries: CpioEntry[] = [{ name: 'kfs-test.sh', mode: S_IFREG | 0o755, data: Buffer.from(script) }];
  for (const [p, data] of Object.entries(files)) {
    const norm = posix.normalize(p);
    if (!posix.isAbsolute(p) || norm !== p || p.endsWith('/')) throw new Error(`guest file path must be absolute and normalized: ${p}`);
    if (p === '/init' || p === '/kfs-test.sh') throw new Error(`guest file path ${p} is reserved`);
    for (let d = posix.dirname(p); d !== '/'; d = posix.dirname(d)) dirs.add(d.slice(1));
    entries.push({ name: p.slice(1), mode: S_IFREG | 0o644, data });
  }
  const dirEntries = [...dirs].sort().map((name) => ({ name, mode: S_IFDIR | 0o755, data: Buffer.alloc(0) }));
  return cpioNewc([...dirEntries, ...entries]);
}

// ---------- QEMU ----------

/** QEMU option values separate sub-options with ',': a literal comma is written twice. */
const qemuOptValue = (s: string) => s.replace(/,/g, ',,');

function oneWord(what: string, v: string): string {
  if (v === '' || /\s/.test(v)) throw new Error(`${what} must be one non-empty word without whitespace: ${JSON.stringify(v)}`);
  return v;
}

/** QEMU processes still running: a worker that exits abruptly must not leave them behind. */
const running = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Boot the guest, run `script`, power off. Never rejects for guest-side failures: look at exit. */
export async function runGuest(opts: GuestOptions): Promise<GuestResult> {
  guestAvailable();
  const mount = opts.mount ?? true;
  const tag = oneWord('tag', opts.tag ?? 'myfs');
  const memMiB = opts.memMiB ?? 512;
  const cpus = opts.cpus ?? 1;
  const timeoutMs = opts.timeoutMs ?? 10 * 60_000;
  if (mount && !opts.socketPath) throw new Error('runGuest: socketPath is required unless mount is false');

  const cmdline = ['console=ttyS0', 'quiet', 'panic=-1', `kfs.tag=${tag}`];
  if (opts.mountOptions !== undefined) cmdline.push(`kfs.opts=${oneWord('mountOptions', opts.mountOptions)}`);
  if (!mount) cmdline.push('kfs.nomount=1');
  for (const a of opts.kernelArgs ?? []) cmdline.push(oneWord('kernel argument', a));

  const work = mkdtempSync(join(tmpdir(), 'kfs-guest-'));
  try {
    const initrd = join(work, 'initrd');
    writeFileSync(initrd, Buffer.concat([scriptArchive(opts.script, opts.files ?? {}), readFileSync(join(GUEST_DIR, 'initrd.gz'))]));
    // The unpacked ELF kernel boots through its PVH entry and skips the in-guest decompression.
    const kernel = existsSync(join(GUEST_DIR, 'vmlinux')) ? join(GUEST_DIR, 'vmlinux') : join(GUEST_DIR, 'vmlinuz');

    const args = [
      '-accel', 'tcg', '-cpu', 'max', '-smp', String(cpus), '-m', `${memMiB}M`,
      '-nodefaults', '-display', 'none', '-serial', 'stdio', '-no-reboot',
      '-kernel', kernel, '-initrd', initrd, '-append', cmdline.join(' '),
      '-object', `memory-backend-memfd,id=mem,size=${memMiB}M,share=on`, '-numa', 'node,memdev=mem',
    ];
    if (opts.socketPath) {
      args.push('-chardev', `socket,id=char0,path=${qemuOptValue(opts.socketPath)}`);
      args.push('-device', `vhost-user-fs-pci,queue-size=${opts.queueSize ?? 1024},chardev=char0,tag=${tag},num-request-queues=${opts.numRequestQueues ?? 1}`);
    }
    if (opts.disk) args.push('-drive', `file=${qemuOptValue(opts.disk)},format=raw,if=virtio`);
    return await runQemu(args, timeoutMs);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function runQemu(args: string[], timeoutMs: number): Promise<GuestResult> {
  return new Promise((resolvePromise, reject) => {
    const started = Date.now();
    const child = spawn(QEMU, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.on('exit', () => {
        for (const c of running) c.kill('SIGKILL');
      });
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      running.delete(child);
      child.kill('SIGKILL');
      reject(new Error(`cannot run ${QEMU}: ${e.message}`));
    });
    // 'close' comes after the process exited and its output pipes are drained.
    child.on('close', (code) => {
      clearTimeout(timer);
      running.delete(child);
      const consoleText = Buffer.concat(out).toString('utf8').replace(/\r\n/g, '\n').replace(/\r/g, '');
      const marks = [...consoleText.matchAll(/^KFS-EXIT (\S+)[ \t]*$/gm)];
      const exit = timedOut ? 'timeout' : marks.length > 0 ? marks[marks.length - 1][1] : 'no-exit';
      resolvePromise({
        exit,
        console: consoleText,
        qemuCode: code,
        qemuStderr: Buffer.concat(err).toString('utf8'),
        elapsedMs: Date.now() - started,
      });
    });
  });
}
