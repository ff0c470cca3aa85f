/**
 * Extended attributes of an inode: the in-inode area first, then one xattr block (which may be
 * shared between inodes with a refcount, as the kernel's mbcache makes them; kfs never shares
 * a block it writes, and copies a shared one before changing it). POSIX ACLs are converted
 * between the VFS xattr format and ext4's compact on-disk format.
 */
import { CorruptionError, FsError } from '../util/errors';
import { InodeStore, InodeState, now } from './inode-store';
import {
  XattrEntry, parseInodeXattrs, inodeXattrValue, parseBlockXattrs, encodeInodeXattrs, encodeBlockXattrs, splitXattrs, xattrNameValid,
} from './xattr';
import { aclToDisk, aclFromDisk } from './acl';
import { GOOD_OLD_INODE_SIZE } from './inode';
import { XATTR_MAGIC } from './xattr';

export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;
const ACL_NAMES = new Set(['system.posix_acl_access', 'system.posix_acl_default']);

/**
 * The namespaces ext4 accepts from userspace (fs/ext4/xattr.c handlers): user., trusted.,
 * security. and the two POSIX ACL names; anything else in system. or without a known prefix is
 * EOPNOTSUPP, an empty suffix EINVAL, a suffix over 255 bytes ERANGE.
 */
function checkSettableName(name: string): void {
  if (ACL_NAMES.has(name)) return;
  const m = /^(user|trusted|security)\.(.*)$/s.exec(name);
  if (!m) throw new FsError('EOPNOTSUPP', `attribute namespace of ${JSON.stringify(name)} is not supported`);
  const len = Buffer.byteLength(m[2], 'utf8');
  if (len === 0) throw new FsError('EINVAL', `attribute name ${JSON.stringify(name)} has an empty suffix`);
  if (len > 255) throw new FsError('ERANGE', `attribute name ${JSON.stringify(name)} is longer than 255 bytes`);
  if (!xattrNameValid(name)) throw new FsError('EINVAL', `attribute name ${JSON.stringify(name)} is invalid`);
}

/** Does `list` hold attribute e, with the same value? */
const holds = (list: XattrEntry[], e: XattrEntry): boolean => list.some((x) => x.name === e.name && x.value.equals(e.value));

/** keepShared: the layout that leaves a shared block's attributes where they are, or null. */
function keepShared(entries: XattrEntry[], block: XattrEntry[], area: number): { inode: XattrEntry[]; block: XattrEntry[] } | null {
  if (!block.every((b) => holds(entries, b))) return null;
  const inode = entries.filter((e) => !block.some((b) => b.name === e.name));
  if (inode.length && (area < 4 || !encodeInodeXattrs(inode, area))) return null;
  return { inode, block };
}

/** The same attributes, in any order. */
function sameEntries(a: XattrEntry[], b: XattrEntry[]): boolean {
  return a.length === b.length && b.every((e) => holds(a, e));
}

export class XattrStore {
  constructor(private store: InodeStore) {}

  private areaSize(st: InodeState): number {
    const raw = st.inode.raw;
    return raw.length > GOOD_OLD_INODE_SIZE ? raw.length - GOOD_OLD_INODE_SIZE - st.inode.f.i_extra_isize : 0;
  }

  private async blockEntries(st: InodeState): Promise<{ entries: XattrEntry[]; refcount: number }> {
    const b = st.inode.fileAcl;
    if (!b) return { entries: [], refcount: 0 };
    const vol = this.store.vol;
    if (b < vol.firstDataBlock || b >= vol.blocksCount) throw new FsError('EIO', `inode ${st.inode.ino}: xattr block ${b} is outside the filesystem`);
    const buf = await vol.dev.read(b);
    return parseBlockXattrs(buf, b, vol.metadataCsum ? vol.csumSeed : null);
  }

  async all(st: InodeState): Promise<XattrEntry[]> {
    const inodeEntries = this.areaSize(st) >= 4 ? parseInodeXattrs(st.inode.xattrArea()) : [];
    const { entries } = await this.blockEntries(st);
    return [...inodeEntries, ...entries];
  }

  async get(st: InodeState, name: string): Promise<Buffer> {
    const v = await this.find(st, name);
    if (!v) throw new FsError('ENODATA', `no attribute ${name}`);
    return v;
  }

  /** An attribute from the inode's own xattr area only (where ext4 keeps system.data), or null. */
  findInInode(st: InodeState, name: string): Buffer | null {
    if (!st.inode.hasInodeXattrHeader(XATTR_MAGIC) || this.areaSize(st) < 4) return null;
    return parseInodeXattrs(st.inode.xattrArea()).find((e) => e.name === name)?.value ?? null;
  }

  /** No attributes in the inode's area or a block. */
  none(st: InodeState): boolean {
    return !st.inode.fileAcl && !st.inode.hasInodeXattrHeader(XATTR_MAGIC);
  }

  /** The value, or null when absent. An inode without xattrs answers without parsing anything. */
  async find(st: InodeState, name: string): Promise<Buffer | null> {
    if (this.none(st)) return null;
    const e = (await this.all(st)).find((x) => x.name === name);
    if (!e) return null;
    return ACL_NAMES.has(name) ? aclFromDisk(e.value) : e.value;
  }

  async list(st: InodeState): Promise<string[]> {
    return (await this.all(st)).map((e) => e.name);
  }

  async set(st: InodeState, name: string, value: Buffer, flags: number): Promise<void> {
    checkSettableName(name);
    const stored = ACL_NAMES.has(name) ? aclToDisk(value) : value;
    const entries = await this.all(st);
    const i = entries.findIndex((e) => e.name === name);
    if (i >= 0 && flags & XATTR_CREATE) throw new FsError('EEXIST', `attribute ${name} exists`);
    if (i < 0 && flags & XATTR_REPLACE) throw new FsError('ENODATA', `no attribute ${name}`);
    if (i >= 0) entries[i] = { name, value: Buffer.from(stored) };
    else entries.push({ name, value: Buffer.from(stored) });
    await this.store_(st, entries);
  }

  async remove(st: InodeState, name: string): Promise<void> {
    const entries = await this.all(st);
    const i = entries.findIndex((e) => e.name === name);
    if (i < 0) throw new FsError('ENODATA', `no attribute ${name}`);
    entries.splice(i, 1);
    await this.store_(st, entries);
  }

  /**
   * Rewrite system.data's bytes where they lie in the inode, at the same length: an inline
   * directory losing a name (Ext4Fs.removeInlineEntry). The entry itself is left as it is,
   * e_hash included: the kernel writes 0 there and never updates it when it edits inline data in
   * place, and e2fsck checks a hash that is not 0, so a computed one goes stale at the kernel's
   * next edit.
   */
  setInlineData(st: InodeState, value: Buffer): void {
    const v = inodeXattrValue(st.inode.xattrArea(), 'system.data');
    if (!v || v.length !== value.length) throw new CorruptionError(`inode ${st.inode.ino}: its system.data attribute is not where its inline data was read`);
    value.copy(v);
  }

  /** Lay the attributes out over the inode area and (if needed) one block. */
  private async store_(st: InodeState, entries: XattrEntry[]): Promise<void> {
    const vol = this.store.vol;
    const area = this.areaSize(st);
    const old = st.inode.fileAcl;
    const kept = old ? await this.blockEntries(st) : { entries: [], refcount: 0 };
    // A shared block stays as it is while all its attributes do and the rest fit in the inode,
    // as with the kernel, which never moves attributes out of a block: laid out afresh, the
    // block would change and be copied, which a full filesystem refuses.
    const stay = kept.refcount > 1 ? keepShared(entries, kept.entries, area) : null;
    const split = stay ?? splitXattrs(entries, area, vol.blockSize);
    if (!split) throw new FsError('ENOSPC', `attributes of inode ${st.inode.ino} do not fit in the inode and one block`);
    const inodeEnc = area >= 4 ? encodeInodeXattrs(split.inode, area) : null;
    if (area >= 4 && !inodeEnc) throw new FsError('ENOSPC', 'attributes do not fit in the inode');
    // Everything that can fail (a new block: ENOSPC) comes before the first change, so that a
    // refusal leaves the attributes as they were. A block whose attributes stay the same is
    // left alone: shared, it would otherwise be copied for nothing.
    let target = 0;
    let blockEnc: Buffer | null = null;
    const sameBlock = old !== 0 && sameEntries(kept.entries, split.block);
    if (split.block.length && !sameBlock) {
      // Rewrite in place when the block is ours alone; otherwise take a new one.
      target = old && kept.refcount <= 1 ? old : (await vol.allocBlocks(old || this.store.groupGoal(st.inode.ino), 1)).start;
      blockEnc = encodeBlockXattrs(split.block, vol.blockSize, target, vol.metadataCsum ? vol.csumSeed : null, 1);
      if (!blockEnc) {
        if (target !== old) await vol.freeBlocks(target, 1);
        throw new FsError('ENOSPC', 'attributes do not fit in one block');
      }
    }
    if (inodeEnc) inodeEnc.copy(st.inode.xattrArea());
    if (split.block.length === 0) {
      if (old) await this.dropBlock(st, old, kept.refcount);
    } else if (blockEnc) {
      if (target !== old) {
        if (old) await this.dropBlock(st, old, kept.refcount);
        st.inode.fileAcl = target;
        this.store.addSectors(st.inode, 1);
      }
      const buf = vol.dev.zeroed(target);
      blockEnc.copy(buf);
      vol.dev.markDirty(target, buf);
    }
    st.inode.ctime = now();
    await this.store.write(st);
  }

  /** Let go of the inode's xattr block: free it, or drop one reference if shared. */
  private async dropBlock(st: InodeState, block: number, refcount: number): Promise<void> {
    const vol = this.store.vol;
    if (refcount <= 1) {
      await vol.freeBlocks(block, 1);
    } else {
      const buf = await vol.dev.read(block);
      const { entries } = parseBlockXattrs(buf, block, vol.metadataCsum ? vol.csumSeed : null);
      const enc = encodeBlockXattrs(entries, vol.blockSize, block, vol.metadataCsum ? vol.csumSeed : null, refcount - 1);
      if (!enc) throw new FsError('EIO', `shared xattr block ${block} cannot be re-encoded`);
      enc.copy(buf);
      vol.dev.markDirty(block, buf);
    }
    st.inode.fileAcl = 0;
    this.store.addSectors(st.inode, -1);
  }

  /** At inode destruction. */
  async freeBlockOf(st: InodeState): Promise<void> {
    const b = st.inode.fileAcl;
    if (!b) return;
    const { refcount } = await this.blockEntries(st);
    await this.dropBlock(st, b, refcount);
  }
}
