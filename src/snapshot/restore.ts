/**
 * Restoring from a snapshot.
 *
 * One path (`--path P`, online or offline): the snapshot's view is opened as a read-only
 * Ext4Fs and the tree at P (files, directories, symlinks, device nodes, fifos, sockets; modes,
 * owners, times, xattrs including ACLs, hard links inside the tree) is copied into the live
 * filesystem under a temporary name next to P, synced, then swapped in with one
 * RENAME_EXCHANGE (a plain rename if P does not exist any more), and the old tree, now under the
 * temporary name, is removed. Each step is one journal transaction or a sequence of them, so a
 * crash leaves the old tree or the new one at P, plus at most a temporary name (".NAME.kfs-restore-*",
 * which a later restore of P removes first).
 *
 * The whole filesystem (offline only): SnapshotStore.restoreWhole on the image, with no
 * Ext4Fs open (no cache may hold the old blocks).
 */
import { Ext4Fs, RENAME_EXCHANGE, Attr } from '../ext4/fs';
import { BlockDevice } from '../block/device';
import { FsError } from '../util/errors';
import { log } from '../util/log';
import { openSnapshotFs } from './view';

const ROOT_INO = 2;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const CHUNK = 1 << 20;
const TEMP_MARK = '.kfs-restore-';

export type ProgressFn = (phase: string, done: number, total: number) => void;

/** "/a/b/" → ['a', 'b']; rejects "." and ".." components. */
export function pathComponents(p: string): string[] {
  const parts = p.split('/').filter((x) => x.length > 0);
  if (parts.some((x) => x === '.' || x === '..')) throw new FsError('EINVAL', `path ${p}: "." and ".." are not allowed`);
  return parts;
}

async function walk(fs: Ext4Fs, parts: string[]): Promise<Attr> {
  let a = await fs.getattr(ROOT_INO);
  for (const name of parts) a = await fs.lookup(a.ino, Buffer.from(name));
  return a;
}

export interface PathRestoreResult {
  path: string;
  entries: number;
  bytes: number;
  /** The live parent directory's inode and P's last component (for cache invalidation). */
  parentIno: number;
  name: string;
  tempName: string;
  replaced: boolean;
}

/**
 * Restore path P of snapshot `name` into the live filesystem `live` (whose image is `image`).
 * The view is read through the live process's own store: the image stays locked by it.
 */
export async function restorePath(live: Ext4Fs, image: string, name: string, p: string, progress: ProgressFn = () => undefined): Promise<PathRestoreResult> {
  const parts = pathComponents(p);
  if (!parts.length) throw new FsError('EINVAL', 'restoring "/" by path is not possible: restore the whole filesystem (offline) instead');
  const view = await openSnapshotFs(image, name, { live: live.vol.dev.snapshots });
  try {
    let src: Attr;
    try {
      src = await walk(view.fs, parts);
    } catch (e) {
      if (e instanceof FsError && (e.code === 'ENOENT' || e.code === 'ENOTDIR')) throw new FsError('ENOENT', `${p} does not exist in snapshot ${name}`);
      throw e;
    }
    const leaf = parts[parts.length - 1];
    let parent: Attr;
    try {
      parent = await walk(live, parts.slice(0, -1));
    } catch (e) {
      if (e instanceof FsError && (e.code === 'ENOENT' || e.code === 'ENOTDIR')) throw new FsError('ENOENT', `the parent directory of ${p} does not exist in the live filesystem; restore it first`);
      throw e;
    }
    if ((parent.mode & S_IFMT) !== S_IFDIR) throw new FsError('ENOTDIR', `the parent of ${p} is not a directory in the live filesystem`);
    // Leftovers of an interrupted restore of this path.
    const prefix = `.${leaf}${TEMP_MARK}`;
    for (const e of await live.readdir(parent.ino, 0)) {
      const n = e.name.toString();
      if (n.startsWith(prefix)) await removeTree(live, parent.ino, e.name);
    }
    const tempName = `${prefix}${process.pid}-${Date.now()}`.slice(0, 255);
    const total = await countTree(view.fs, src);
    const copier = new TreeCopier(view.fs, live, (done) => progress('copying', done, total));
    await copier.copy(src, parent.ino, Buffer.from(tempName));
    await live.sync();
    const existing = await live.lookupOrNull(parent.ino, Buffer.from(leaf));
    if (existing) {
      await live.rename(parent.ino, Buffer.from(tempName), parent.ino, Buffer.from(leaf), RENAME_EXCHANGE);
      await live.sync();
      await removeTree(live, parent.ino, Buffer.from(tempName));
    } else {
      await live.rename(parent.ino, Buffer.from(tempName), parent.ino, Buffer.from(leaf));
    }
    await live.sync();
    log.info(`${image}: restored ${p} from snapshot ${name} (${copier.entries} entries, ${copier.bytes} bytes)`);
    return { path: '/' + parts.join('/'), entries: copier.entries, bytes: copier.bytes, parentIno: parent.ino, name: leaf, tempName, replaced: !!existing };
  } finally {
    await view.close();
  }
}

/** Entries in the tree at a (for progress). */
async function countTree(fs: Ext4Fs, a: Attr): Promise<number> {
  if ((a.mode & S_IFMT) !== S_IFDIR) return 1;
  let n = 1;
  for (const e of await fs.readdir(a.ino, 0)) {
    const name = e.name.toString();
    if (name !== '.' && name !== '..') n += await countTree(fs, await fs.lookup(a.ino, e.name));
  }
  return n;
}

/** Remove the tree at parent/name (depth first). */
export async function removeTree(fs: Ext4Fs, parent: number, name: Buffer): Promise<void> {
  const a = await fs.lookup(parent, name);
  if ((a.mode & S_IFMT) === S_IFDIR) {
    for (const e of await fs.readdir(a.ino, 0)) {
      const n = e.name.toString();
      if (n === '.' || n === '..') continue;
      await removeTree(fs, a.ino, e.name);
    }
    await fs.rmdir(parent, name);
  } else await fs.unlink(parent, name);
}

class TreeCopier {
  entries = 0;
  bytes = 0;
  /** Source inode → destination inode, for hard links inside the tree. */
  private linked = new Map<number, number>();

  constructor(private src: Ext4Fs, private dst: Ext4Fs, private progress: (done: number) => void) {}

  async copy(a: Attr, parent: number, name: Buffer): Promise<void> {
    const type = a.mode & S_IFMT;
    const perm = a.mode & 0o7777;
    if (type !== S_IFDIR && a.nlink > 1) {
      const done = this.linked.get(a.ino);
      if (done !== undefined) {
        await this.dst.link(done, parent, name);
        this.entries++;
        return;
      }
    }
    let d: Attr;
    if (type === S_IFDIR) {
      d = await this.dst.mkdir(parent, name, perm, a.uid, a.gid);
      for (const e of await this.src.readdir(a.ino, 0)) {
        const n = e.name.toString();
        if (n === '.' || n === '..') continue;
        await this.copy(await this.src.lookup(a.ino, e.name), d.ino, e.name);
      }
    } else if (type === S_IFREG) {
      d = await this.dst.create(parent, name, perm, a.uid, a.gid);
      await this.copyData(a, d.ino);
    } else if (type === S_IFLNK) {
      d = await this.dst.symlink(parent, name, await this.src.readlink(a.ino), a.uid, a.gid);
    } else {
      d = await this.dst.mknod(parent, name, a.mode, a.rdev, a.uid, a.gid);
    }
    if (type !== S_IFDIR && a.nlink > 1) this.linked.set(a.ino, d.ino);
    await this.copyXattrs(a.ino, d.ino);
    // Owner and mode after the xattrs (an ACL write sets the mode too); times last.
    await this.dst.setattr(d.ino, type === S_IFLNK ? { uid: a.uid, gid: a.gid } : { uid: a.uid, gid: a.gid, mode: perm });
    await this.dst.setattr(d.ino, { atime: a.atime, mtime: a.mtime });
    this.entries++;
    this.progress(this.entries);
  }

  /** Data in 1 MiB steps; all-zero steps are left as holes (the size is set at the end). */
  private async copyData(a: Attr, ino: number): Promise<void> {
    for (let off = 0; off < a.size; off += CHUNK) {
      const data = await this.src.read(a.ino, off, Math.min(CHUNK, a.size - off));
      if (data.every((x) => x === 0)) continue;
      let done = 0;
      while (done < data.length) {
        const n = await this.dst.write(ino, off + done, data.subarray(done));
        if (n <= 0) throw new FsError('ENOSPC', 'no space left to restore into');
        done += n;
      }
      this.bytes += data.length;
    }
    await this.dst.setattr(ino, { size: a.size });
  }

  private async copyXattrs(from: number, to: number): Promise<void> {
    const want = await this.src.listxattr(from);
    for (const n of await this.dst.listxattr(to)) if (!want.includes(n)) await this.dst.removexattr(to, n);
    for (const n of want) await this.dst.setxattr(to, n, await this.src.getxattr(from, n));
  }
}

/**
 * Whole restore of an image nobody has open: the live filesystem becomes the snapshot's
 * image (newer snapshots keep theirs). Afterwards the superblock and the journal are the
 * snapshot's: clean, journal empty.
 */
export async function restoreWholeImage(image: string, name: string, progress: ProgressFn = () => undefined): Promise<{ blocks: number }> {
  const dev = BlockDevice.open(image, {});
  try {
    const store = dev.snapshots;
    if (!store?.find(name)) throw new FsError('ENOENT', `image ${image} has no snapshot ${name}`);
    return await store.restoreWhole(name, (d, t) => progress('restoring blocks', d, t));
  } finally {
    await dev.closeNoSync();
  }
}

