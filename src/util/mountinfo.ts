/**
 * /proc/self/mountinfo (proc(5)): "id parent maj:min root mountpoint opts [optional...] -
 * fstype source superopts". The kernel escapes space, tab, newline and backslash in paths as
 * octal (\040, \011, \012, \134; seq_file's mangle), so a path is compared only once unescaped.
 */
import fs from 'node:fs';

export interface MountInfo {
  /** The mount point, unescaped. */
  mountpoint: string;
  /** "MAJ:MIN" of the mount's device (for FUSE, its bdi under /sys/class/bdi). */
  majorMinor: string;
  fstype: string;
  source: string;
}

const unescapeMount = (s: string): string => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));

/** This process's mounts in mount order ([] if /proc cannot be read). */
export function readMountInfo(): MountInfo[] {
  let text: string;
  try {
    text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    // The separator follows the six fixed fields and any optional ones ("shared:N", ...).
    const dash = f.indexOf('-', 6);
    if (dash < 0 || f.length < dash + 3) continue;
    out.push({ mountpoint: unescapeMount(f[4]), majorMinor: f[2], fstype: f[dash + 1], source: unescapeMount(f[dash + 2]) });
  }
  return out;
}
