/**
 * FileSystem: what the FUSE dispatcher asks of a filesystem (Ext4 image or passthrough),
 * addressed by FUSE node ids. Every method may throw an error carrying an errno (FsError);
 * the dispatcher turns it into the error reply. Optional methods answer ENOSYS when missing.
 *
 * Lookup counts (fuse.h): every successful lookup, mknod, mkdir, symlink, link, create and
 * readdirplus entry gives the kernel one reference to the node; FORGET returns them. A
 * filesystem whose node ids are stable (ext4: the inode number) may ignore forget.
 */
import { FuseAttr, Kstatfs } from './structs';

export interface RequestContext {
  uid: number;
  gid: number;
  pid: number;
}

export interface EntryAttr extends FuseAttr {
  /** ext4 i_generation: (nodeid, generation) is unique for the filesystem's life. */
  generation: number;
  /** The FUSE node id, when it is not `ino` (ext4's root, inode 2, is node 1: a LOOKUP of ".."). */
  nodeid?: number;
}

export type TimeSet = { sec: number; nsec: number } | 'now';

export interface SetAttrRequest {
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  atime?: TimeSet;
  mtime?: TimeSet;
  ctime?: { sec: number; nsec: number };
  /** FATTR_KILL_SUIDGID (an unprivileged truncate): clear setuid, and setgid by the host's rules. */
  killSuidgid?: boolean;
  /** A chown (possibly to the same owner): clears setuid, and setgid when group-executable. */
  ownerChange?: boolean;
}

export interface OpenResult {
  fh: number;
  /** FOPEN_* flags. */
  openFlags?: number;
}

export interface DirEntryOut {
  name: Buffer;
  /** Node id of the entry (ino for ext4), 0 if unknown. */
  node: number;
  /** DT_* type. */
  type: number;
  /** Offset to resume after this entry. */
  next: number;
}

/** statfs answers are fuse_kstatfs's fields. */
export type StatfsResult = Kstatfs;

export interface FileSystem {
  /** The filesystem keeps POSIX ACLs and the mode in step and inherits default ACLs. */
  readonly posixAcl?: boolean;
  /**
   * Regular files are served without handles: OPEN answers ENOSYS, which makes the kernel stop
   * sending OPEN and RELEASE (fc->no_open; FOPEN_KEEP_CACHE implied), and READ, WRITE and the
   * rest carry fh 0. The kernel's lookup reference, not an open count, then keeps an unlinked
   * file that is still open. ATOMIC_O_TRUNC is not negotiated: O_TRUNC must come as SETATTR.
   */
  readonly noOpen?: boolean;
  lookup(ctx: RequestContext, parent: number, name: Buffer): Promise<EntryAttr>;
  forget?(node: number, nlookup: number): void;
  getattr(ctx: RequestContext, node: number): Promise<FuseAttr>;
  setattr(ctx: RequestContext, node: number, set: SetAttrRequest): Promise<FuseAttr>;
  readlink(ctx: RequestContext, node: number): Promise<Buffer>;
  /** `umask`: apply it unless the parent's default ACL takes its place (FUSE_DONT_MASK). */
  mknod(ctx: RequestContext, parent: number, name: Buffer, mode: number, rdev: number, umask: number): Promise<EntryAttr>;
  mkdir(ctx: RequestContext, parent: number, name: Buffer, mode: number, umask: number): Promise<EntryAttr>;
  symlink(ctx: RequestContext, parent: number, name: Buffer, target: Buffer): Promise<EntryAttr>;
  unlink(ctx: RequestContext, parent: number, name: Buffer): Promise<void>;
  rmdir(ctx: RequestContext, parent: number, name: Buffer): Promise<void>;
  rename(ctx: RequestContext, parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number): Promise<void>;
  link(ctx: RequestContext, node: number, newParent: number, newName: Buffer): Promise<EntryAttr>;
  open(ctx: RequestContext, node: number, flags: number, killSuidgid: boolean): Promise<OpenResult>;
  create(ctx: RequestContext, parent: number, name: Buffer, mode: number, flags: number, umask: number): Promise<EntryAttr & OpenResult>;
  read(ctx: RequestContext, node: number, fh: number, offset: number, size: number): Promise<Buffer>;
  write(ctx: RequestContext, node: number, fh: number, offset: number, data: Buffer, killSuidgid: boolean): Promise<number>;
  flush?(ctx: RequestContext, node: number, fh: number): Promise<void>;
  release(ctx: RequestContext, node: number, fh: number): Promise<void>;
  fsync(ctx: RequestContext, node: number, fh: number, datasync: boolean): Promise<void>;
  opendir(ctx: RequestContext, node: number): Promise<OpenResult>;
  /**
   * Entries after `offset` (0: from the start); `limit`: the caller can use no more than this
   * many (a reply buffer's worth), so a filesystem holding the whole listing need not copy the
   * rest.
   */
  readdir(ctx: RequestContext, node: number, fh: number, offset: number, limit?: number): Promise<DirEntryOut[]>;
  releasedir(ctx: RequestContext, node: number, fh: number): Promise<void>;
  fsyncdir?(ctx: RequestContext, node: number, fh: number, datasync: boolean): Promise<void>;
  statfs(ctx: RequestContext, node: number): Promise<StatfsResult>;
  setxattr(ctx: RequestContext, node: number, name: string, value: Buffer, flags: number): Promise<void>;
  getxattr(ctx: RequestContext, node: number, name: string): Promise<Buffer>;
  listxattr(ctx: RequestContext, node: number): Promise<string[]>;
  removexattr(ctx: RequestContext, node: number, name: string): Promise<void>;
  access?(ctx: RequestContext, node: number, mask: number): Promise<void>;
  fallocate?(ctx: RequestContext, node: number, fh: number, offset: number, length: number, mode: number): Promise<void>;
  lseek?(ctx: RequestContext, node: number, fh: number, offset: number, whence: number): Promise<number>;
  copyFileRange?(ctx: RequestContext, nodeIn: number, fhIn: number, offIn: number, nodeOut: number, fhOut: number, offOut: number, len: number): Promise<number>;
  tmpfile?(ctx: RequestContext, parent: number, mode: number, flags: number, umask: number): Promise<EntryAttr & OpenResult>;
  syncfs?(ctx: RequestContext): Promise<void>;
  /**
   * Synchronous answers for the fast path (fast-path.ts): what the filesystem can tell from
   * memory right now, or undefined when it would have to wait (I/O, a lock). A result must be
   * the one the ordinary method would give at this moment. `name` and `ctx` are views of
   * buffers the caller reuses: do not keep them past the call. Throwing means "use the
   * ordinary method" too (it then reports the error).
   */
  getattrSync?(ctx: RequestContext, node: number): FuseAttr | undefined;
  /**
   * GETXATTR shortcut: true when the inode is in memory and has no extended attributes at all,
   * so any name is ENODATA (the kernel asks for security.capability before the first write to
   * each file); false or undefined: ask getxattr.
   */
  noXattrsSync?(ctx: RequestContext, node: number): boolean | undefined;
  /** OPEN (never with O_TRUNC) done at once when the inode is in memory; undefined: call open(). */
  openSync?(ctx: RequestContext, node: number, flags: number): OpenResult | undefined;
  /**
   * RELEASE done at once when it needs no I/O (the common case: the file keeps a name or
   * another opener): true; false or undefined: call release().
   */
  releaseSync?(ctx: RequestContext, node: number, fh: number): boolean | undefined;
  /** LOOKUP: the entry (counted as a lookup, as lookup() counts it), null for a miss, undefined: not now. */
  lookupSync?(ctx: RequestContext, parent: number, name: Buffer): EntryAttr | null | undefined;
  /**
   * READDIRPLUS, first half: readdir's answer on handle `fh` from memory (at most `limit`
   * entries after `offset`), taking nothing; undefined: not now.
   */
  readdirSync?(ctx: RequestContext, node: number, fh: number, offset: number, limit: number): DirEntryOut[] | undefined;
  /**
   * READDIRPLUS, second half: the attributes of `entries` (from readdirSync, "." and ".." left
   * out), each counted as a lookup, as the ordinary path's; all of them or, with undefined,
   * none (nothing counted).
   */
  readdirplusEntriesSync?(ctx: RequestContext, parent: number, fh: number, entries: readonly DirEntryOut[]): EntryAttr[] | undefined;
  /**
   * READ into the transport's buffers (a guest's writable descriptors) instead of a Buffer of
   * its own: `dest` are consecutive views holding `size` bytes; returns the bytes read (short at
   * the end of the file). Bytes past the returned count are left as they were.
   */
  readInto?(ctx: RequestContext, node: number, fh: number, offset: number, size: number, dest: Buffer[]): Promise<number>;
  /**
   * readInto answered on the spot: bytes read, or undefined: not now. Without `mayWait` only
   * from memory or the host's page cache; with it the read may also wait for the disk (the
   * transport has nothing else in flight, so a hand-off to the thread pool would only add a
   * thread switch to the request's latency).
   */
  readSync?(ctx: RequestContext, node: number, fh: number, offset: number, size: number, dest: Buffer[], mayWait: boolean): number | undefined;
  /** Unmount or connection end: make everything durable. */
  destroy(): Promise<void>;
  /**
   * The client went away without releasing what it held (a VM's front-end disconnected): drop
   * every open file and directory handle, as if each had been released (unlinked files that
   * were still open are freed).
   */
  releaseAll?(): Promise<void>;
}

/** DAX (virtio-fs): file ranges mapped into the guest's cache window; provided by the transport. */
export interface DaxMapper {
  setup(node: number, fh: number, foffset: number, len: number, moffset: number, writable: boolean): Promise<void>;
  remove(items: { moffset: number; len: number }[]): Promise<void>;
}
