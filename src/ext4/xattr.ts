/**
 * ext4 extended attributes: the in-inode area and the external xattr block, as in linux
 * fs/ext4/xattr.{c,h} and e2fsprogs lib/ext2fs/ext2_ext_attr.h + ext_attr.c.
 *
 * Both places hold a table of struct ext4_xattr_entry {u8 e_name_len, u8 e_name_index,
 * le16 e_value_offs, le32 e_value_inum, le32 e_value_size, le32 e_hash, name[e_name_len]}
 * (each padded to 4 bytes) ended by a zero u32, with the values packed downwards from the end
 * of the space (each padded to 4 bytes).
 *  - In-inode: at 128 + i_extra_isize, a le32 magic 0xEA020000 then the table; e_value_offs
 *    counts from the first entry (just after the magic).
 *  - Block: a 32-byte header {h_magic, h_refcount, h_blocks = 1, h_hash, h_checksum,
 *    h_reserved[3]} then the table; e_value_offs counts from the block start. The kernel looks
 *    names up in a block with an early-exit scan, so entries must be sorted by
 *    (e_name_index, e_name_len, name bytes) or lookups miss.
 * Hashes: e_hash mixes name bytes then value words (ext4_xattr_hash_entry); h_hash mixes the
 * entry hashes (ext4_xattr_rehash) and lets the kernel share identical blocks via mbcache.
 * With metadata_csum, h_checksum = crc32c(csum_seed, le64 block number, block with h_checksum
 * zeroed). Values stored in separate ea_inodes (e_value_inum != 0) are not supported.
 */
import { ByteCursor } from '../util/cursor';
import { CorruptionError, FsError } from '../util/errors';
import { ext4Crc } from './crc';

export interface XattrEntry {
  name: string;
  value: Buffer;
}

export const XATTR_MAGIC = 0xea020000;
export const XATTR_BLOCK_HEADER_SIZE = 32;
const ENTRY_HEADER_SIZE = 16;
/** e_name_len is a u8. */
const NAME_MAX = 255;
/** Attribute names are byte strings on disk; kfs presents them as UTF-8 like Linux userspace does. */
export const XATTR_NAME_ENCODING = 'utf8';

interface PrefixDef {
  index: number;
  prefix: string;
  /** The whole name is the prefix and the stored suffix is empty (the ACL attributes). */
  exact: boolean;
  /** Not settable through the kernel's xattr handlers; kept only so that they round-trip. */
  internal: boolean;
}

/**
 * ext4_xattr_handler_map and e2fsprogs' ea_names. Index 5 (Lustre) and 8 (RichACL) come from
 * out-of-tree code; index 9 holds the fscrypt context under the name "c" and has no
 * user-visible prefix at all, so kfs invents an internal one to keep it through rewrites.
 */
export const XATTR_PREFIXES: readonly PrefixDef[] = [
  { index: 1, prefix: 'user.', exact: false, internal: false },
  { index: 2, prefix: 'system.posix_acl_access', exact: true, internal: false },
  { index: 3, prefix: 'system.posix_acl_default', exact: true, internal: false },
  { index: 4, prefix: 'trusted.', exact: false, internal: false },
  { index: 5, prefix: 'lustre.', exact: false, internal: true },
  { index: 6, prefix: 'security.', exact: false, internal: false },
  { index: 7, prefix: 'system.', exact: false, internal: false },
  { index: 8, prefix: 'system.richacl', exact: true, internal: true },
  { index: 9, prefix: 'encryption.', exact: false, internal: true },
  { index: 10, prefix: 'gnu.', exact: false, internal: false },
];
const BY_INDEX = new Map(XATTR_PREFIXES.map((p) => [p.index, p]));
// Longest prefix first, so "system.posix_acl_access" wins over "system.".
const BY_LENGTH = [...XATTR_PREFIXES].sort((a, b) => b.prefix.length - a.prefix.length);

interface EncodedName {
  index: number;
  suffix: Buffer;
}

function matchPrefix(name: string): { def: PrefixDef; suffix: string } | null {
  for (const def of BY_LENGTH) {
    if (def.exact ? name === def.prefix : name.startsWith(def.prefix)) return { def, suffix: name.slice(def.prefix.length) };
  }
  return null;
}

/** A name the kernel's xattr handlers would accept and that fits e_name_len. */
export function xattrNameValid(name: string): boolean {
  const m = matchPrefix(name);
  if (!m || m.def.internal) return false;
  if (m.def.exact) return true;
  const len = Buffer.byteLength(m.suffix, XATTR_NAME_ENCODING);
  return len >= 1 && len <= NAME_MAX && !m.suffix.includes('\0');
}

/**
 * Index 0 means "no prefix, the full name is stored" (what libext2fs writes for names it has
 * no prefix for), so any name without a known prefix still round-trips.
 */
function encodeName(name: string): EncodedName {
  const m = matchPrefix(name);
  const index = m ? m.def.index : 0;
  const suffix = Buffer.from(m ? m.suffix : name, XATTR_NAME_ENCODING);
  if (suffix.length > NAME_MAX) throw new FsError('ERANGE', `xattr name too long: ${name}`);
  if (suffix.includes(0)) throw new FsError('EINVAL', `xattr name contains NUL: ${JSON.stringify(name)}`);
  if (suffix.length === 0 && !(m && m.def.exact)) throw new FsError('EINVAL', `empty xattr name: ${JSON.stringify(name)}`);
  return { index, suffix };
}

function decodeName(index: number, suffix: Buffer, where: string): string {
  if (index === 0) return suffix.toString(XATTR_NAME_ENCODING);
  const def = BY_INDEX.get(index);
  if (!def) throw new CorruptionError(`${where}: unknown xattr name index ${index}`);
  return def.prefix + suffix.toString(XATTR_NAME_ENCODING);
}

const pad4 = (n: number): number => (n + 3) & ~3;
/** EXT4_XATTR_LEN: bytes one table entry takes. */
const entryLen = (nameLen: number): number => pad4(ENTRY_HEADER_SIZE + nameLen);

/** ext4_xattr_hash_entry over the stored (suffix) name and the value's zero-padded le32 words. */
export function xattrEntryHash(suffix: Buffer, value: Buffer): number {
  let hash = 0;
  for (let i = 0; i < suffix.length; i++) hash = ((hash << 5) ^ (hash >>> 27) ^ suffix[i]) >>> 0;
  const words = pad4(value.length) >>> 2;
  for (let w = 0; w < words; w++) {
    const o = w * 4;
    const word = o + 4 <= value.length
      ? value.readUInt32LE(o)
      : (value[o] | ((value[o + 1] ?? 0) << 8) | ((value[o + 2] ?? 0) << 16)) >>> 0;
    hash = ((hash << 16) ^ (hash >>> 16) ^ word) >>> 0;
  }
  return hash;
}

/** ext4_xattr_rehash: a zero entry hash marks the block unshareable and forces h_hash to 0. */
function blockHash(entryHashes: number[]): number {
  let hash = 0;
  for (const h of entryHashes) {
    if (h === 0) return 0;
    hash = ((hash << 16) ^ (hash >>> 16) ^ h) >>> 0;
  }
  return hash;
}

/** ext4_xattr_block_csum. */
export function xattrBlockChecksum(block: Buffer, blockNo: number, csumSeed: number): number {
  const le64 = Buffer.alloc(8);
  new ByteCursor(le64).putU64(blockNo);
  let crc = ext4Crc(csumSeed, le64);
  crc = ext4Crc(crc, block.subarray(0, 16));
  crc = ext4Crc(crc, Buffer.alloc(4));
  return ext4Crc(crc, block.subarray(20));
}

/**
 * Walk an entry table the way the kernel's check_xattrs does: names first (each entry must
 * leave room for the next one's first word, so a missing terminator is caught), then every
 * value must lie after the table's terminator and, padded, inside `end`.
 */
function parseTable(buf: Buffer, tableStart: number, valueBase: number, where: string, views = false): XattrEntry[] {
  const end = buf.length;
  const cur = new ByteCursor(buf);
  interface Raw { index: number; suffix: Buffer; offs: number; inum: number; size: number; at: number }
  const raws: Raw[] = [];
  let pos = tableStart;
  for (;;) {
    if (pos + 4 > end) throw new CorruptionError(`${where}: xattr entry table has no terminator`);
    if (buf.readUInt32LE(pos) === 0) break;
    if (pos + ENTRY_HEADER_SIZE > end) throw new CorruptionError(`${where}: xattr entry at ${pos} runs past the end`);
    cur.seek(pos);
    const nameLen = cur.u8();
    const index = cur.u8();
    const offs = cur.u16();
    const inum = cur.u32();
    const size = cur.u32();
    cur.skip(4); // e_hash: the kernel never checks it for values stored in place
    const next = pos + entryLen(nameLen);
    if (next >= end) throw new CorruptionError(`${where}: xattr name at ${pos} runs past the end`);
    const suffix = cur.bytes(nameLen);
    if (suffix.includes(0)) throw new CorruptionError(`${where}: xattr name at ${pos} contains NUL`);
    raws.push({ index, suffix, offs, inum, size, at: pos });
    pos = next;
  }
  const tableEnd = pos + 4;
  return raws.map((r) => {
    const name = decodeName(r.index, r.suffix, where);
    if (r.inum !== 0) throw new CorruptionError(`${where}: xattr ${name} is stored in ea_inode ${r.inum}, which kfs does not support`);
    if (r.size === 0) return { name, value: Buffer.alloc(0) };
    const start = valueBase + r.offs;
    if (start < tableEnd || start > end || r.size > end - start || pad4(r.size) > end - start) {
      throw new CorruptionError(`${where}: xattr ${name} value (offset ${r.offs}, size ${r.size}) is out of bounds`);
    }
    const value = cur.seek(start).bytes(r.size);
    return { name, value: views ? value : Buffer.from(value) };
  });
}

/** The in-inode xattr area (the inode bytes after the extra fields). No magic = no xattrs. */
export function parseInodeXattrs(area: Buffer): XattrEntry[] {
  if (area.length < 4) return [];
  if (new ByteCursor(area).u32() !== XATTR_MAGIC) return [];
  return parseTable(area, 4, 4, 'in-inode xattr area');
}

/** The value of the in-inode attribute `name` as a view of `area` (writing to it writes the inode), or null. */
export function inodeXattrValue(area: Buffer, name: string): Buffer | null {
  if (area.length < 4 || new ByteCursor(area).u32() !== XATTR_MAGIC) return null;
  const e = parseTable(area, 4, 4, 'in-inode xattr area', true).find((x) => x.name === name);
  return e ? e.value : null;
}

export function parseBlockXattrs(block: Buffer, blockNo: number, csumSeed: number | null): { entries: XattrEntry[]; refcount: number } {
  const where = `xattr block ${blockNo}`;
  if (block.length < XATTR_BLOCK_HEADER_SIZE + 4) throw new CorruptionError(`${where}: too short (${block.length} bytes)`);
  const cur = new ByteCursor(block);
  const magic = cur.u32();
  const refcount = cur.u32();
  const blocks = cur.u32();
  cur.skip(4); // h_hash: only a sharing hint
  const checksum = cur.u32();
  if (magic !== XATTR_MAGIC) throw new CorruptionError(`${where}: bad magic 0x${magic.toString(16)}`);
  if (blocks !== 1) throw new CorruptionError(`${where}: h_blocks is ${blocks}, not 1`);
  if (csumSeed !== null) {
    const want = xattrBlockChecksum(block, blockNo, csumSeed);
    if (want !== checksum) {
      throw new CorruptionError(`${where}: checksum 0x${checksum.toString(16)} does not match 0x${want.toString(16)}`);
    }
  }
  return { entries: parseTable(block, XATTR_BLOCK_HEADER_SIZE, 0, where), refcount };
}

interface Prepared {
  name: string;
  index: number;
  suffix: Buffer;
  value: Buffer;
  /** Bytes in the table plus bytes in the value area. */
  cost: number;
}

function prepare(entries: XattrEntry[]): Prepared[] {
  const seen = new Set<string>();
  const out = entries.map((e): Prepared => {
    if (seen.has(e.name)) throw new FsError('EINVAL', `duplicate xattr name ${e.name}`);
    seen.add(e.name);
    const { index, suffix } = encodeName(e.name);
    return { name: e.name, index, suffix, value: e.value, cost: entryLen(suffix.length) + pad4(e.value.length) };
  });
  // The kernel's block lookup order; harmless (and deterministic) for the in-inode table too.
  return out.sort((a, b) => a.index - b.index || a.suffix.length - b.suffix.length || Buffer.compare(a.suffix, b.suffix));
}

/**
 * Lay out a table at `tableStart` with values packed down from the end of `buf`.
 * Returns the entry hashes in table order.
 */
function writeTable(buf: Buffer, items: Prepared[], tableStart: number, valueBase: number): number[] {
  const cur = new ByteCursor(buf);
  const hashes: number[] = [];
  let valueEnd = buf.length;
  cur.seek(tableStart);
  for (const it of items) {
    let offs = 0;
    if (it.value.length > 0) {
      valueEnd -= pad4(it.value.length);
      offs = valueEnd - valueBase;
      buf.set(it.value, valueEnd); // the padding stays zero: buf starts zeroed
    }
    const hash = xattrEntryHash(it.suffix, it.value);
    hashes.push(hash);
    cur.putU8(it.suffix.length).putU8(it.index).putU16(offs).putU32(0).putU32(it.value.length).putU32(hash);
    cur.putBytes(it.suffix).fill(pad4(cur.offset) - cur.offset);
  }
  cur.putU32(0);
  if (cur.pos > valueEnd) throw new Error('xattr layout overflow'); // callers size-check first
  return hashes;
}

/** Usable bytes (table + values) in an in-inode area: minus the magic and the terminator. */
const inodeCapacity = (areaSize: number): number => Math.max(0, areaSize - 8);
const blockCapacity = (blockSize: number): number => blockSize - XATTR_BLOCK_HEADER_SIZE - 4;
const totalCost = (items: Prepared[]): number => items.reduce((s, it) => s + it.cost, 0);

export function encodeInodeXattrs(entries: XattrEntry[], areaSize: number): Buffer | null {
  const area = Buffer.alloc(areaSize);
  if (entries.length === 0) return area;
  const items = prepare(entries);
  if (totalCost(items) > inodeCapacity(areaSize) || areaSize < 8) return null;
  new ByteCursor(area).putU32(XATTR_MAGIC);
  // The kernel leaves e_hash 0 for in-inode values (ext4_xattr_set_entry hashes only block
  // entries), but e2fsck accepts the real hash too, and a real hash keeps one code path.
  writeTable(area, items, 4, 4);
  return area;
}

export function encodeBlockXattrs(
  entries: XattrEntry[], blockSize: number, blockNo: number, csumSeed: number | null, refcount: number,
): Buffer | null {
  const items = prepare(entries);
  if (totalCost(items) > blockCapacity(blockSize)) return null;
  const block = Buffer.alloc(blockSize);
  const hashes = writeTable(block, items, XATTR_BLOCK_HEADER_SIZE, 0);
  const cur = new ByteCursor(block);
  cur.putU32(XATTR_MAGIC).putU32(refcount).putU32(1).putU32(blockHash(hashes));
  if (csumSeed !== null) cur.putU32(xattrBlockChecksum(block, blockNo, csumSeed));
  return block;
}

/**
 * Decide what lives in the inode and what in the block. Inline-data's system.data must stay
 * in the inode. Otherwise the smallest attributes go in first, which keeps the most
 * attributes reachable without reading the block; if that leaves the block overfull, the
 * largest-first fill (which moves the most bytes into the inode) is tried before ENOSPC.
 */
export function splitXattrs(entries: XattrEntry[], inodeAreaSize: number, blockSize: number): { inode: XattrEntry[]; block: XattrEntry[] } | null {
  const items = prepare(entries);
  const pinned = items.filter((it) => it.name === 'system.data');
  const free = items.filter((it) => it.name !== 'system.data');
  const inodeCap = inodeCapacity(inodeAreaSize);
  const pinnedCost = totalCost(pinned);
  if (pinnedCost > inodeCap) return null;

  const attempt = (order: Prepared[]): { inode: XattrEntry[]; block: XattrEntry[] } | null => {
    let used = pinnedCost;
    const inode = [...pinned];
    const block: Prepared[] = [];
    for (const it of order) {
      if (used + it.cost <= inodeCap) {
        inode.push(it);
        used += it.cost;
      } else block.push(it);
    }
    if (block.length > 0 && totalCost(block) > blockCapacity(blockSize)) return null;
    const strip = (list: Prepared[]): XattrEntry[] => list.map((it) => ({ name: it.name, value: it.value }));
    return { inode: strip(inode), block: strip(block) };
  };
  const bySize = [...free].sort((a, b) => a.cost - b.cost);
  return attempt(bySize) ?? attempt([...bySize].reverse());
}
