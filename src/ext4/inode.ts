/**
 * ext4 inode (struct ext4_inode, s_inode_size bytes, usually 256): the 128-byte base, then
 * i_extra_isize bytes of extra fields (nanosecond times, crtime, checksum_hi), then the in-inode
 * xattr area up to s_inode_size. Times: seconds in the base field, and in *_extra the low 2 bits
 * extend the epoch (bits 32-33 of seconds) and the high 30 bits hold nanoseconds.
 * Checksum (metadata_csum): crc32c(csum_seed, le32 ino, le32 generation, inode with the
 * checksum fields zeroed); low 16 bits in l_i_checksum_lo, high 16 in i_checksum_hi.
 */
import { Struct, Decoded } from '../util/struct';
import { ByteCursor, join64, lo32, hi32 } from '../util/cursor';
import { ext4Crc, ext4CrcU32 } from './crc';

export const InodeLayout = new Struct('ext4_inode', {
  i_mode: 'u16', i_uid: 'u16', i_size_lo: 'u32', i_atime: 'u32', i_ctime: 'u32', i_mtime: 'u32',
  i_dtime: 'u32', i_gid: 'u16', i_links_count: 'u16', i_blocks_lo: 'u32', i_flags: 'u32', i_version: 'u32',
  i_block: 60, i_generation: 'u32', i_file_acl_lo: 'u32', i_size_high: 'u32', i_faddr: 'u32',
  i_blocks_high: 'u16', i_file_acl_high: 'u16', i_uid_high: 'u16', i_gid_high: 'u16',
  i_checksum_lo: 'u16', i_reserved: 'u16',
  // extra fields, present when i_extra_isize covers them
  i_extra_isize: 'u16', i_checksum_hi: 'u16', i_ctime_extra: 'u32', i_mtime_extra: 'u32',
  i_atime_extra: 'u32', i_crtime: 'u32', i_crtime_extra: 'u32', i_version_hi: 'u32', i_projid: 'u32',
}, 160);

export type InodeFields = Decoded<typeof InodeLayout.layout>;
export const GOOD_OLD_INODE_SIZE = 128;
const CSUM_LO_OFF = InodeLayout.offsetOf('i_checksum_lo');
const CSUM_HI_OFF = InodeLayout.offsetOf('i_checksum_hi');
const EXTRA_ISIZE_OFF = InodeLayout.offsetOf('i_extra_isize');
const GENERATION_OFF = InodeLayout.offsetOf('i_generation');
/** i_extra_isize needed for i_checksum_hi to exist. */
const CSUM_HI_EXTRA_END = CSUM_HI_OFF + 2 - GOOD_OLD_INODE_SIZE;

export const ROOT_INO = 2;
export const JOURNAL_INO = 8;
export const RESIZE_INO = 7;
export const BAD_INO = 1;

export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

export const INODE_FLAGS = {
  SYNC: 0x8, IMMUTABLE: 0x10, APPEND: 0x20, NOATIME: 0x80, INDEX: 0x1000, HUGE_FILE: 0x40000,
  EXTENTS: 0x80000, EA_INODE: 0x200000, INLINE_DATA: 0x10000000,
} as const;

/** A time with nanoseconds; seconds may exceed 32 bits (epoch bits). */
export interface Timespec {
  sec: number;
  nsec: number;
}

export function encodeExtraTime(t: Timespec): { base: number; extra: number } {
  // ext4_encode_extra_time: epoch = (sec - (s32)sec) >> 32, i.e. the bits above a signed 32-bit.
  const base = t.sec | 0;
  const epoch = ((t.sec - base) / 0x100000000) & 3;
  return { base: base >>> 0, extra: ((t.nsec << 2) | epoch) >>> 0 };
}

export function decodeExtraTime(base: number, extra: number | undefined): Timespec {
  const signed = base | 0;
  if (extra === undefined) return { sec: signed, nsec: 0 };
  return { sec: signed + (extra & 3) * 0x100000000, nsec: extra >>> 2 };
}

/**
 * An inode as loaded from the table: decoded fields plus the raw bytes (which keep the in-inode
 * xattr area and anything kfs does not interpret).
 */
export class Inode {
  constructor(readonly ino: number, public f: InodeFields, readonly raw: Buffer) {}

  private seedGeneration = -1;
  private seedValue = 0;
  /**
   * crc32c(fs seed, le32 ino, le32 generation) (ext4_inode_csum_seed), the seed of the inode's
   * own checksum and of its extent and directory blocks. Cached until the generation changes:
   * every inode write and directory block seal needs it, and each crc32c call is a native call.
   */
  csumSeed(fsSeed: number): number {
    const gen = this.f.i_generation;
    if (gen !== this.seedGeneration) {
      this.seedValue = ext4CrcU32(ext4CrcU32(fsSeed, this.ino), gen);
      this.seedGeneration = gen;
    }
    return this.seedValue;
  }

  static decode(ino: number, raw: Buffer): Inode {
    return new Inode(ino, decodeInodeFields(raw), Buffer.from(raw));
  }

  static fresh(ino: number, inodeSize: number, extraIsize: number): Inode {
    // From Buffer's pool (an inode is smaller than half a pool): cheaper than its own ArrayBuffer.
    const raw = Buffer.allocUnsafe(inodeSize).fill(0);
    const f = decodeInodeFields(raw);
    f.i_extra_isize = inodeSize > GOOD_OLD_INODE_SIZE ? extraIsize : 0;
    return new Inode(ino, f, raw);
  }

  /** Serialize the decoded fields into raw (only the extra fields i_extra_isize covers). */
  encode(): Buffer {
    encodeInodeFields(this.f, encodeScratch);
    const fixedEnd = this.raw.length > GOOD_OLD_INODE_SIZE ? GOOD_OLD_INODE_SIZE + this.f.i_extra_isize : GOOD_OLD_INODE_SIZE;
    encodeScratch.copy(this.raw, 0, 0, Math.min(fixedEnd, INODE_FIELDS_SIZE));
    return this.raw;
  }

  get mode(): number { return this.f.i_mode; }
  get type(): number { return this.f.i_mode & S_IFMT; }
  isDir(): boolean { return this.type === S_IFDIR; }
  isReg(): boolean { return this.type === S_IFREG; }
  isSymlink(): boolean { return this.type === S_IFLNK; }
  hasFlag(fl: number): boolean { return (this.f.i_flags & fl) !== 0; }

  get size(): number { return join64(this.f.i_size_lo, this.f.i_size_high); }
  set size(v: number) { this.f.i_size_lo = lo32(v); this.f.i_size_high = hi32(v); }

  get uid(): number { return (this.f.i_uid | (this.f.i_uid_high << 16)) >>> 0; }
  set uid(v: number) { this.f.i_uid = v & 0xffff; this.f.i_uid_high = v >>> 16; }
  get gid(): number { return (this.f.i_gid | (this.f.i_gid_high << 16)) >>> 0; }
  set gid(v: number) { this.f.i_gid = v & 0xffff; this.f.i_gid_high = v >>> 16; }

  get links(): number { return this.f.i_links_count; }
  set links(v: number) { this.f.i_links_count = v; }

  get fileAcl(): number { return join64(this.f.i_file_acl_lo, this.f.i_file_acl_high); }
  set fileAcl(v: number) { this.f.i_file_acl_lo = lo32(v); this.f.i_file_acl_high = hi32(v) & 0xffff; }

  /** i_blocks in 512-byte sectors (kfs writes huge_file inodes without HUGE_FILE_FL: sectors). */
  getSectors(blockSize: number): number {
    const n = join64(this.f.i_blocks_lo, this.f.i_blocks_high);
    return this.hasFlag(INODE_FLAGS.HUGE_FILE) ? n * (blockSize / 512) : n;
  }
  setSectors(sectors: number): void {
    this.f.i_flags &= ~INODE_FLAGS.HUGE_FILE;
    this.f.i_blocks_lo = lo32(sectors);
    this.f.i_blocks_high = hi32(sectors) & 0xffff;
  }

  private hasExtra(field: 'i_ctime_extra' | 'i_mtime_extra' | 'i_atime_extra' | 'i_crtime' | 'i_crtime_extra'): boolean {
    return this.raw.length > GOOD_OLD_INODE_SIZE && GOOD_OLD_INODE_SIZE + this.f.i_extra_isize >= EXTRA_END[field];
  }
  private getTime(base: 'i_atime' | 'i_mtime' | 'i_ctime', extra: 'i_atime_extra' | 'i_mtime_extra' | 'i_ctime_extra'): Timespec {
    return decodeExtraTime(this.f[base], this.hasExtra(extra) ? this.f[extra] : undefined);
  }
  private setTime(base: 'i_atime' | 'i_mtime' | 'i_ctime' | 'i_crtime', extra: 'i_atime_extra' | 'i_mtime_extra' | 'i_ctime_extra' | 'i_crtime_extra', t: Timespec): void {
    if (!this.hasExtra(extra)) {
      // No extra field (a 128-byte inode): whole seconds, signed 32-bit; the kernel clamps such
      // an inode's times to 1901-2038 (ext4's s_time_min/s_time_max without extra isize).
      this.f[base] = Math.min(Math.max(t.sec, -(2 ** 31)), 2 ** 31 - 1) >>> 0;
      return;
    }
    const e = encodeExtraTime(t);
    this.f[base] = e.base;
    this.f[extra] = e.extra;
  }
  get atime(): Timespec { return this.getTime('i_atime', 'i_atime_extra'); }
  set atime(t: Timespec) { this.setTime('i_atime', 'i_atime_extra', t); }
  get mtime(): Timespec { return this.getTime('i_mtime', 'i_mtime_extra'); }
  set mtime(t: Timespec) { this.setTime('i_mtime', 'i_mtime_extra', t); }
  get ctime(): Timespec { return this.getTime('i_ctime', 'i_ctime_extra'); }
  set ctime(t: Timespec) { this.setTime('i_ctime', 'i_ctime_extra', t); }
  get crtime(): Timespec {
    return this.hasExtra('i_crtime_extra') ? decodeExtraTime(this.f.i_crtime, this.f.i_crtime_extra) : { sec: 0, nsec: 0 };
  }
  set crtime(t: Timespec) { if (this.hasExtra('i_crtime')) this.setTime('i_crtime', 'i_crtime_extra', t); }

  /** Does the in-inode xattr area start with the xattr header magic (ext4_xattr_ibody_header)? */
  hasInodeXattrHeader(magic: number): boolean {
    const off = GOOD_OLD_INODE_SIZE + this.f.i_extra_isize;
    return this.raw.length > GOOD_OLD_INODE_SIZE && off + 4 <= this.raw.length && this.raw.readUInt32LE(off) === magic;
  }

  /** Byte range of the in-inode xattr area (after the extra fields). */
  xattrArea(): Buffer {
    if (this.raw.length <= GOOD_OLD_INODE_SIZE) return this.raw.subarray(0, 0);
    return this.raw.subarray(GOOD_OLD_INODE_SIZE + this.f.i_extra_isize);
  }
}

const INODE_FIELDS_SIZE = InodeLayout.size;
/** Where each optional extra field ends (the inode has it when i_extra_isize reaches there). */
const EXTRA_END = {
  i_ctime_extra: InodeLayout.offsetOf('i_ctime_extra') + 4, i_mtime_extra: InodeLayout.offsetOf('i_mtime_extra') + 4,
  i_atime_extra: InodeLayout.offsetOf('i_atime_extra') + 4, i_crtime: InodeLayout.offsetOf('i_crtime') + 4,
  i_crtime_extra: InodeLayout.offsetOf('i_crtime_extra') + 4,
} as const;
let encodeScratch = Buffer.alloc(INODE_FIELDS_SIZE);
/** A short inode padded with zeros for decodeInodeFields (which copies what it keeps). */
const shortInodeScratch = Buffer.alloc(INODE_FIELDS_SIZE);

/**
 * InodeLayout decoded as one object literal in layout order, the same reads Struct.decode makes.
 * Inodes are decoded on every table read and encoded on every change: Struct's generic
 * per-field loop (keyed stores into an object that grows field by field) cost more than the
 * rest of a lookup.
 */
function decodeInodeFields(raw: Buffer): InodeFields {
  // A 128-byte inode (s_inode_size 128: mke2fs -I 128, or its "floppy" type) ends before the
  // extra fields; they read as zero (i_extra_isize 0), as Struct.decode read them.
  if (raw.length < INODE_FIELDS_SIZE) {
    raw.copy(shortInodeScratch);
    shortInodeScratch.fill(0, raw.length);
    raw = shortInodeScratch;
  }
  const c = new ByteCursor(raw, 0, INODE_FIELDS_SIZE);
  return {
    i_mode: c.u16(), i_uid: c.u16(), i_size_lo: c.u32(), i_atime: c.u32(), i_ctime: c.u32(), i_mtime: c.u32(),
    i_dtime: c.u32(), i_gid: c.u16(), i_links_count: c.u16(), i_blocks_lo: c.u32(), i_flags: c.u32(), i_version: c.u32(),
    i_block: Buffer.from(c.bytes(60)), i_generation: c.u32(), i_file_acl_lo: c.u32(), i_size_high: c.u32(), i_faddr: c.u32(),
    i_blocks_high: c.u16(), i_file_acl_high: c.u16(), i_uid_high: c.u16(), i_gid_high: c.u16(),
    i_checksum_lo: c.u16(), i_reserved: c.u16(),
    i_extra_isize: c.u16(), i_checksum_hi: c.u16(), i_ctime_extra: c.u32(), i_mtime_extra: c.u32(),
    i_atime_extra: c.u32(), i_crtime: c.u32(), i_crtime_extra: c.u32(), i_version_hi: c.u32(), i_projid: c.u32(),
  };
}

/** The inverse of decodeInodeFields, into a 160-byte buffer. */
function encodeInodeFields(f: InodeFields, out: Buffer): void {
  if (out.length !== INODE_FIELDS_SIZE) encodeScratch = out = Buffer.alloc(INODE_FIELDS_SIZE);
  const c = new ByteCursor(out);
  c.putU16(f.i_mode).putU16(f.i_uid).putU32(f.i_size_lo).putU32(f.i_atime).putU32(f.i_ctime).putU32(f.i_mtime)
    .putU32(f.i_dtime).putU16(f.i_gid).putU16(f.i_links_count).putU32(f.i_blocks_lo).putU32(f.i_flags).putU32(f.i_version);
  const n = Math.min(f.i_block.length, 60);
  c.putBytes(f.i_block.subarray(0, n)).fill(60 - n);
  c.putU32(f.i_generation).putU32(f.i_file_acl_lo).putU32(f.i_size_high).putU32(f.i_faddr)
    .putU16(f.i_blocks_high).putU16(f.i_file_acl_high).putU16(f.i_uid_high).putU16(f.i_gid_high)
    .putU16(f.i_checksum_lo).putU16(f.i_reserved)
    .putU16(f.i_extra_isize).putU16(f.i_checksum_hi).putU32(f.i_ctime_extra).putU32(f.i_mtime_extra)
    .putU32(f.i_atime_extra).putU32(f.i_crtime).putU32(f.i_crtime_extra).putU32(f.i_version_hi).putU32(f.i_projid);
}

/** Checksum of an encoded inode; the stored checksum bytes are skipped (taken as zero). */
export function inodeChecksum(raw: Buffer, ino: number, generation: number, csumSeed: number, extraIsize: number): number {
  const seed = ext4CrcU32(ext4CrcU32(csumSeed, ino), generation);
  const hasHi = raw.length > GOOD_OLD_INODE_SIZE && extraIsize >= CSUM_HI_EXTRA_END;
  // One pass over a copy with the checksum fields zeroed (cheaper than six partial passes).
  if (csumScratch.length !== raw.length) csumScratch = Buffer.alloc(raw.length);
  raw.copy(csumScratch);
  csumScratch.writeUInt16LE(0, CSUM_LO_OFF);
  if (hasHi) csumScratch.writeUInt16LE(0, CSUM_HI_OFF);
  const crc = ext4Crc(seed, csumScratch);
  return hasHi ? crc : crc & 0xffff;
}
let csumScratch = Buffer.alloc(256);

/** Store the checksum into raw (after encode()). */
export function setInodeChecksum(inode: Inode, csumSeed: number): void {
  const raw = inode.raw;
  const hasHi = raw.length > GOOD_OLD_INODE_SIZE && inode.f.i_extra_isize >= CSUM_HI_EXTRA_END;
  // The checksum fields are about to be overwritten: zero them in place and checksum raw itself.
  raw.writeUInt16LE(0, CSUM_LO_OFF);
  if (hasHi) raw.writeUInt16LE(0, CSUM_HI_OFF);
  const full = ext4Crc(inode.csumSeed(csumSeed), raw);
  const crc = hasHi ? full : full & 0xffff;
  raw.writeUInt16LE(crc & 0xffff, CSUM_LO_OFF);
  inode.f.i_checksum_lo = crc & 0xffff;
  if (hasHi) {
    raw.writeUInt16LE(crc >>> 16, CSUM_HI_OFF);
    inode.f.i_checksum_hi = crc >>> 16;
  }
}

/** Check a raw table inode's checksum; reads only the fields it needs (every table read does this). */
export function verifyInodeChecksum(raw: Buffer, ino: number, csumSeed: number): boolean {
  const big = raw.length > GOOD_OLD_INODE_SIZE;
  const extra = big ? raw.readUInt16LE(EXTRA_ISIZE_OFF) : 0;
  const crc = inodeChecksum(raw, ino, raw.readUInt32LE(GENERATION_OFF), csumSeed, extra);
  const lo = raw.readUInt16LE(CSUM_LO_OFF);
  const stored = big && extra >= CSUM_HI_EXTRA_END ? (lo | (raw.readUInt16LE(CSUM_HI_OFF) << 16)) >>> 0 : lo;
  return stored === crc;
}
