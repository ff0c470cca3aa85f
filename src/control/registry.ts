/**
 * Where control sockets live and how kfsctl finds them.
 *
 * Each serving process (kfs mount, kfsd) owns two files in the control directory
 * (/run/kfs for root, $XDG_RUNTIME_DIR/kfs or /tmp/kfs-UID otherwise; KFS_CONTROL_DIR
 * overrides), named after a hash of what it serves and its pid:
 *   <hash>-<pid>.sock   the control socket (mode 0600)
 *   <hash>-<pid>.json   its registry entry: image, mount point, vhost-user socket, pid
 * The directory is mode 0700. An entry whose process is gone is stale and ignored (and removed
 * when its owner's directory is writable). Lookups go by image path or mount point; the mount
 * point of a host mount is also found from /proc/self/mountinfo (fstype fuse.kfs, source = the
 * image), which is how kfsctl finds "the kfs filesystem holding the current directory".
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { MountInfo, readMountInfo } from '../util/mountinfo';

export const RegistryEntrySchema = z.object({
  version: z.literal(1),
  pid: z.number().int().positive(),
  uid: z.number().int().nonnegative(),
  kind: z.enum(['mount', 'kfsd']),
  image: z.string().nullable(),
  mountpoint: z.string().nullable(),
  vhostSocket: z.string().nullable(),
  socket: z.string(),
  started: z.string(),
});
export type RegistryEntry = z.infer<typeof RegistryEntrySchema>;

export function controlDir(): string {
  if (process.env.KFS_CONTROL_DIR) return process.env.KFS_CONTROL_DIR;
  const uid = process.getuid?.() ?? 0;
  if (uid === 0) return '/run/kfs';
  return process.env.XDG_RUNTIME_DIR ? path.join(process.env.XDG_RUNTIME_DIR, 'kfs') : `/tmp/kfs-${uid}`;
}

/** realpath when the file exists, else the absolute path. */
export function canonical(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

export function entryBase(servedPath: string, pid = process.pid): string {
  const h = createHash('sha256').update(canonical(servedPath)).digest('hex').slice(0, 16);
  return `${h}-${pid}`;
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    return !/^\d+ \(.*\) Z /s.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** Live registry entries (stale ones are removed when possible). Unreadable directory: none. */
export function listEntries(dir = controlDir()): RegistryEntry[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const out: RegistryEntry[] = [];
  for (const n of names.filter((x) => x.endsWith('.json'))) {
    const file = path.join(dir, n);
    let entry: RegistryEntry;
    try {
      const r = RegistryEntrySchema.safeParse(JSON.parse(fs.readFileSync(file, 'utf8')));
      if (!r.success) continue;
      entry = r.data;
    } catch {
      continue;
    }
    if (!pidAlive(entry.pid)) {
      for (const f of [file, entry.socket]) fs.rmSync(f, { force: true });
      continue;
    }
    out.push(entry);
  }
  return out;
}

export function findByImage(image: string): RegistryEntry | undefined {
  const want = canonical(image);
  return listEntries().find((e) => e.image !== null && canonical(e.image) === want);
}

export function findByMountpoint(dir: string): RegistryEntry | undefined {
  const want = canonical(dir);
  return listEntries().find((e) => e.mountpoint !== null && canonical(e.mountpoint) === want);
}

export function findBySocket(sock: string): RegistryEntry | undefined {
  const want = canonical(sock);
  return listEntries().find((e) => canonical(e.socket) === want);
}

/** The mount holding `p` (longest mount point that is a prefix; the last one mounted wins). */
export function mountOf(p: string): MountInfo | undefined {
  const abs = canonical(p);
  let best: MountInfo | undefined;
  for (const m of readMountInfo()) {
    const inside = m.mountpoint === '/' || abs === m.mountpoint || abs.startsWith(m.mountpoint + '/');
    if (inside && (!best || m.mountpoint.length >= best.mountpoint.length)) best = m;
  }
  return best;
}

/** Write this process's entry (atomically: a reader never sees half of it). */
export function writeEntry(dir: string, base: string, entry: RegistryEntry): string {
  const file = path.join(dir, `${base}.json`);
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(entry) + '\n', { mode: 0o600 });
  fs.renameSync(tmp, file);
  return file;
}

/** The control directory, created 0700 (an existing one must not be writable by others). */
export function ensureControlDir(dir = controlDir()): string {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.statSync(dir);
  const uid = process.getuid?.() ?? 0;
  if (st.uid !== uid || st.mode & 0o022) {
    throw new Error(`control directory ${dir} is not owned by uid ${uid} or is writable by others; remove it or set KFS_CONTROL_DIR`);
  }
  return dir;
}

/** The locks on `file` (from /proc/locks): who holds each and whether it is exclusive. */
export function lockHolders(file: string): { pid: number; exclusive: boolean }[] {
  let st: fs.Stats;
  let text: string;
  try {
    st = fs.statSync(file);
    text = fs.readFileSync('/proc/locks', 'utf8');
  } catch {
    return [];
  }
  // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF": type, pid, then major:minor:inode in hex.
  const out: { pid: number; exclusive: boolean }[] = [];
  for (const line of text.split('\n')) {
    const m = /^\d+:\s+\S+\s+\S+\s+(\S+)\s+(\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s/.exec(line);
    if (m && Number(m[5]) === st.ino) out.push({ pid: Number(m[2]), exclusive: m[1] === 'WRITE' });
  }
  return out;
}
