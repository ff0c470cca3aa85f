/**
 * POSIX ACLs: conversion between the VFS xattr form that userspace (and FUSE) exchange in
 * system.posix_acl_access / system.posix_acl_default (linux include/uapi/linux/posix_acl_xattr.h:
 * le32 a_version = 2, then 8-byte entries {le16 e_tag, le16 e_perm, le32 e_id}) and the form
 * ext4 stores on disk (linux fs/ext4/acl.h: le32 a_version = 1, then 4-byte entries
 * {le16 tag, le16 perm} for USER_OBJ, GROUP_OBJ, MASK and OTHER, which need no id, and 8-byte
 * entries with le32 e_id for USER and GROUP). Validation follows posix_acl_from_xattr +
 * posix_acl_valid for input from userspace and ext4_acl_from_disk for data from disk.
 */
import { ByteCursor } from '../util/cursor';
import { CorruptionError, FsError } from '../util/errors';

export const ACL_TAG = {
  USER_OBJ: 0x01,
  USER: 0x02,
  GROUP_OBJ: 0x04,
  GROUP: 0x08,
  MASK: 0x10,
  OTHER: 0x20,
} as const;
const ACL_READ = 0x04;
const ACL_WRITE = 0x02;
const ACL_EXECUTE = 0x01;
const VFS_VERSION = 2;
const DISK_VERSION = 1;
/** ACL_UNDEFINED_ID: what the kernel puts in e_id of entries that carry no id. */
const UNDEFINED_ID = 0xffffffff;
const VFS_ENTRY = 8;
const DISK_SHORT = 4;
const DISK_FULL = 8;

export interface AclEntry {
  tag: number;
  perm: number;
  id: number;
}

/** posix_acl_valid's parser states: which entry kinds may come next. */
const enum S { UserObj, User, Group, Other, Done }

const hasId = (tag: number): boolean => tag === ACL_TAG.USER || tag === ACL_TAG.GROUP;

/**
 * posix_acl_valid: exactly one USER_OBJ, GROUP_OBJ and OTHER in canonical order with the named
 * entries between them, and a MASK whenever named entries exist (it bounds their rights).
 */
function validate(entries: AclEntry[]): void {
  const bad = (why: string): never => {
    throw new FsError('EINVAL', `invalid POSIX ACL: ${why}`);
  };
  let state = S.UserObj;
  let needsMask = false;
  for (const e of entries) {
    if (e.perm & ~(ACL_READ | ACL_WRITE | ACL_EXECUTE)) bad(`permission bits 0x${e.perm.toString(16)}`);
    switch (e.tag) {
      case ACL_TAG.USER_OBJ:
        if (state !== S.UserObj) bad('USER_OBJ out of place');
        state = S.User;
        break;
      case ACL_TAG.USER:
        if (state !== S.User) bad('USER entry out of place');
        needsMask = true;
        break;
      case ACL_TAG.GROUP_OBJ:
        if (state !== S.User) bad('GROUP_OBJ out of place');
        state = S.Group;
        break;
      case ACL_TAG.GROUP:
        if (state !== S.Group) bad('GROUP entry out of place');
        needsMask = true;
        break;
      case ACL_TAG.MASK:
        if (state !== S.Group) bad('MASK out of place');
        state = S.Other;
        break;
      case ACL_TAG.OTHER:
        if (!(state === S.Other || (state === S.Group && !needsMask))) bad('OTHER out of place or MASK missing');
        state = S.Done;
        break;
      default:
        bad(`unknown tag 0x${e.tag.toString(16)}`);
    }
  }
  if (state !== S.Done) bad('incomplete ACL');
}

/**
 * VFS xattr value -> ext4 on-disk value. A header with no entries (what userspace sends to
 * mean "no ACL") maps to a header with no entries, which ext4_acl_from_disk also reads as none.
 */
export function aclToDisk(vfs: Buffer): Buffer {
  if (vfs.length < 4) throw new FsError('EINVAL', `POSIX ACL too short (${vfs.length} bytes)`);
  const cur = new ByteCursor(vfs);
  const version = cur.u32();
  if (version !== VFS_VERSION) throw new FsError('EINVAL', `POSIX ACL version ${version}, expected ${VFS_VERSION}`);
  if ((vfs.length - 4) % VFS_ENTRY !== 0) throw new FsError('EINVAL', `POSIX ACL size ${vfs.length} is not 4 + 8n`);
  const entries: AclEntry[] = [];
  while (cur.remaining > 0) {
    const tag = cur.u16();
    const perm = cur.u16();
    const id = cur.u32();
    // make_kuid of (uid_t)-1 is INVALID_UID, which posix_acl_valid rejects.
    if (hasId(tag) && id === UNDEFINED_ID) throw new FsError('EINVAL', 'POSIX ACL entry with undefined id');
    entries.push({ tag, perm, id });
  }
  if (entries.length > 0) validate(entries);

  const size = 4 + entries.reduce((s, e) => s + (hasId(e.tag) ? DISK_FULL : DISK_SHORT), 0);
  const out = Buffer.alloc(size);
  const w = new ByteCursor(out);
  w.putU32(DISK_VERSION);
  for (const e of entries) {
    w.putU16(e.tag).putU16(e.perm);
    if (hasId(e.tag)) w.putU32(e.id);
  }
  return out;
}

/**
 * ext4_acl_count: the entry count implied by the size, assuming the four short entries of a
 * full ACL; a size that fits no such shape is corrupt. -1 = impossible size.
 */
function diskCount(size: number): number {
  const body = size - 4;
  const rest = body - 4 * DISK_SHORT;
  if (rest < 0) return body % DISK_SHORT ? -1 : body / DISK_SHORT;
  return rest % DISK_FULL ? -1 : rest / DISK_FULL + 4;
}

/** ext4 on-disk value -> VFS xattr value (ids of short entries become ACL_UNDEFINED_ID). */
export function aclFromDisk(disk: Buffer): Buffer {
  if (disk.length < 4) throw new CorruptionError(`ext4 ACL too short (${disk.length} bytes)`);
  const cur = new ByteCursor(disk);
  const version = cur.u32();
  if (version !== DISK_VERSION) throw new CorruptionError(`ext4 ACL version ${version}, expected ${DISK_VERSION}`);
  const count = diskCount(disk.length);
  if (count < 0) throw new CorruptionError(`ext4 ACL size ${disk.length} fits no entry layout`);
  const out = Buffer.alloc(4 + count * VFS_ENTRY);
  const w = new ByteCursor(out);
  w.putU32(VFS_VERSION);
  for (let n = 0; n < count; n++) {
    if (cur.remaining < DISK_SHORT) throw new CorruptionError('ext4 ACL entry runs past the end');
    const tag = cur.u16();
    const perm = cur.u16();
    let id = UNDEFINED_ID;
    switch (tag) {
      case ACL_TAG.USER_OBJ:
      case ACL_TAG.GROUP_OBJ:
      case ACL_TAG.MASK:
      case ACL_TAG.OTHER:
        break;
      case ACL_TAG.USER:
      case ACL_TAG.GROUP:
        if (cur.remaining < 4) throw new CorruptionError('ext4 ACL entry runs past the end');
        id = cur.u32();
        break;
      default:
        throw new CorruptionError(`ext4 ACL has unknown tag 0x${tag.toString(16)}`);
    }
    w.putU16(tag).putU16(perm).putU32(id);
  }
  if (cur.remaining !== 0) throw new CorruptionError('ext4 ACL entries do not fill its size');
  return out;
}

// ---------------------------------------------------------------- ACL semantics
// What the kernel's fs/posix_acl.c does for a filesystem with ACLs (ext4): keep the mode and the
// access ACL in step, and derive a new inode's ACLs from its parent's default ACL.

/** Entries of a VFS-format ACL value (validated); [] for the header-only "no ACL" value. */
export function parseVfsAcl(vfs: Buffer): AclEntry[] {
  aclToDisk(vfs); // validates (throws EINVAL)
  const cur = new ByteCursor(vfs, 4);
  const out: AclEntry[] = [];
  while (cur.remaining > 0) out.push({ tag: cur.u16(), perm: cur.u16(), id: cur.u32() });
  return out;
}

export function encodeVfsAcl(entries: AclEntry[]): Buffer {
  const out = Buffer.alloc(4 + entries.length * VFS_ENTRY);
  const w = new ByteCursor(out);
  w.putU32(VFS_VERSION);
  for (const e of entries) w.putU16(e.tag).putU16(e.perm).putU32(hasId(e.tag) ? e.id : UNDEFINED_ID);
  return out;
}

/**
 * posix_acl_equiv_mode: the permission bits an ACL implies (group bits from MASK when there is
 * one), and whether the ACL says nothing beyond them (then it need not be stored).
 */
export function aclEquivMode(entries: AclEntry[]): { mode: number; equivalent: boolean } {
  let mode = 0;
  let equivalent = true;
  for (const e of entries) {
    switch (e.tag) {
      case ACL_TAG.USER_OBJ: mode |= (e.perm & 7) << 6; break;
      case ACL_TAG.GROUP_OBJ: mode |= (e.perm & 7) << 3; break;
      case ACL_TAG.OTHER: mode |= e.perm & 7; break;
      case ACL_TAG.MASK:
        mode = (mode & ~0o070) | ((e.perm & 7) << 3);
        equivalent = false;
        break;
      default: equivalent = false;
    }
  }
  return { mode, equivalent };
}

/** posix_acl_chmod: a chmod rewrites USER_OBJ, MASK (or GROUP_OBJ without one) and OTHER. */
export function aclChmod(entries: AclEntry[], mode: number): AclEntry[] {
  const hasMask = entries.some((e) => e.tag === ACL_TAG.MASK);
  return entries.map((e) => {
    switch (e.tag) {
      case ACL_TAG.USER_OBJ: return { ...e, perm: (mode >> 6) & 7 };
      case ACL_TAG.GROUP_OBJ: return hasMask ? e : { ...e, perm: (mode >> 3) & 7 };
      case ACL_TAG.MASK: return { ...e, perm: (mode >> 3) & 7 };
      case ACL_TAG.OTHER: return { ...e, perm: mode & 7 };
      default: return e;
    }
  });
}

/**
 * posix_acl_create_masq: a new inode's access ACL is its parent's default ACL with every entry
 * limited by the requested mode; the mode's permission bits are limited by the ACL in turn.
 */
export function aclCreateMasq(defaults: AclEntry[], mode: number): { acl: AclEntry[]; mode: number } {
  let newMode = mode & ~0o777;
  const acl = defaults.map((e) => ({ ...e }));
  const mask = acl.find((e) => e.tag === ACL_TAG.MASK);
  const groupObj = acl.find((e) => e.tag === ACL_TAG.GROUP_OBJ);
  for (const e of acl) {
    if (e.tag === ACL_TAG.USER_OBJ) {
      e.perm &= (mode >> 6) & 7;
      newMode |= e.perm << 6;
    } else if (e.tag === ACL_TAG.OTHER) {
      e.perm &= mode & 7;
      newMode |= e.perm;
    }
  }
  if (mask) {
    mask.perm &= (mode >> 3) & 7;
    newMode |= mask.perm << 3;
  } else if (groupObj) {
    groupObj.perm &= (mode >> 3) & 7;
    newMode |= groupObj.perm << 3;
  }
  return { acl, mode: newMode };
}
