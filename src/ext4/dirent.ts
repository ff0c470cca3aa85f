/**
 * Linear directory blocks (ext4_dir_entry_2): {inode u32, rec_len u16, name_len u8,
 * file_type u8, name[name_len]} with rec_len a multiple of 4 covering the whole block. With
 * metadata_csum each leaf block ends in a 12-byte ext4_dir_entry_tail {inode 0, rec_len 12,
 * name_len 0, file_type 0xDE, checksum = crc32c(inode csum seed, block up to the tail)}.
 */
import { ByteCursor } from '../util/cursor';
import { CorruptionError } from '../util/errors';
import { ext4Crc } from './crc';

export const DIRENT_HEADER = 8;
export const TAIL_SIZE = 12;
const TAIL_FT = 0xde;

/** ext4 file_type values. */
export const FT = { UNKNOWN: 0, REG: 1, DIR: 2, CHR: 3, BLK: 4, FIFO: 5, SOCK: 6, SYMLINK: 7 } as const;

export function fileTypeOfMode(mode: number): number {
  switch (mode & 0o170000) {
    case 0o100000: return FT.REG;
    case 0o040000: return FT.DIR;
    case 0o020000: return FT.CHR;
    case 0o060000: return FT.BLK;
    case 0o010000: return FT.FIFO;
    case 0o140000: return FT.SOCK;
    case 0o120000: return FT.SYMLINK;
    default: return FT.UNKNOWN;
  }
}

export interface Dirent {
  /** Byte offset of the entry in its block. */
  offset: number;
  inode: number;
  recLen: number;
  name: Buffer;
  fileType: number;
}

export const direntSize = (nameLen: number): number => (DIRENT_HEADER + nameLen + 3) & ~3;

/** End of the entry area: the block size, less the tail when checksums are on. */
export function entriesEnd(blockSize: number, csum: boolean): number {
  return csum ? blockSize - TAIL_SIZE : blockSize;
}

/**
 * All entries of a leaf block (including empty ones, inode 0), validated: every rec_len
 * must be aligned, large enough for its name, and stay inside the block.
 */
export function parseDirBlock(buf: Buffer, end: number, where: string): Dirent[] {
  const out: Dirent[] = [];
  const c = new ByteCursor(buf, 0, end);
  let off = 0;
  while (off < end) {
    c.seek(off);
    if (end - off < DIRENT_HEADER) throw new CorruptionError(`${where}: directory entry at ${off} runs past the block end`);
    const inode = c.u32();
    const recLen = c.u16();
    const nameLen = c.u8();
    const fileType = c.u8();
    if (recLen < DIRENT_HEADER || recLen % 4 || off + recLen > end || DIRENT_HEADER + nameLen > recLen) {
      throw new CorruptionError(`${where}: directory entry at ${off} has bad rec_len ${recLen} (name_len ${nameLen})`);
    }
    out.push({ offset: off, inode, recLen, name: buf.subarray(off + DIRENT_HEADER, off + DIRENT_HEADER + nameLen), fileType });
    off += recLen;
  }
  return out;
}

export function writeDirent(buf: Buffer, off: number, inode: number, recLen: number, name: Buffer, fileType: number): void {
  const c = new ByteCursor(buf, off, off + recLen);
  c.putU32(inode).putU16(recLen).putU8(name.length).putU8(fileType).putBytes(name);
  c.fill(Math.min(c.remaining, (4 - (name.length % 4)) % 4));
}

/**
 * Find a live entry by name without building entry objects (the lookup hot path). Validates
 * each rec_len like parseDirBlock. Returns the entry's offset, or -1.
 */
export function findDirent(buf: Buffer, end: number, where: string, name: Buffer): number {
  const n = name.length;
  let off = 0;
  while (off < end) {
    if (end - off < DIRENT_HEADER) throw new CorruptionError(`${where}: directory entry at ${off} runs past the block end`);
    const recLen = buf.readUInt16LE(off + 4);
    const nameLen = buf[off + 6];
    if (recLen < DIRENT_HEADER || recLen % 4 || off + recLen > end || DIRENT_HEADER + nameLen > recLen) {
      throw new CorruptionError(`${where}: directory entry at ${off} has bad rec_len ${recLen} (name_len ${nameLen})`);
    }
    if (nameLen === n && sameName(buf, off + DIRENT_HEADER, name, n) && buf.readUInt32LE(off) !== 0) return off;
    off += recLen;
  }
  return -1;
}

/**
 * name == buf[at, at+n). Compared in JS from the last byte: a leaf holds ~200 names of one
 * length that often share a prefix (f000123, f000124...), and a native Buffer.compare call per
 * candidate costs more than the bytes it looks at.
 */
function sameName(buf: Buffer, at: number, name: Buffer, n: number): boolean {
  for (let i = n - 1; i >= 0; i--) if (buf[at + i] !== name[i]) return false;
  return true;
}

/** Lay entries out compactly from offset 0; the last one stretches to `end`. */
export function packDirBlock(buf: Buffer, end: number, entries: { inode: number; name: Buffer; fileType: number }[]): void {
  buf.fill(0, 0, end);
  let off = 0;
  if (entries.length === 0) {
    writeDirent(buf, 0, 0, end, Buffer.alloc(0), 0);
    return;
  }
  entries.forEach((e, i) => {
    const size = i === entries.length - 1 ? end - off : direntSize(e.name.length);
    writeDirent(buf, off, e.inode, size, e.name, e.fileType);
    off += size;
  });
  if (off > end) throw new Error('packDirBlock: entries overflow the block');
}

export function packedSize(entries: { name: Buffer }[]): number {
  let n = 0;
  for (const e of entries) n += direntSize(e.name.length);
  return n;
}

/** Put the checksum tail on a leaf block. */
export function sealDirBlock(buf: Buffer, csumSeed: number | null): void {
  if (csumSeed === null) return;
  const t = buf.length - TAIL_SIZE;
  const c = new ByteCursor(buf, t);
  c.putU32(0).putU16(TAIL_SIZE).putU8(0).putU8(TAIL_FT).putU32(ext4Crc(csumSeed, buf.subarray(0, t)));
}

export function hasDirTail(buf: Buffer): boolean {
  const t = buf.length - TAIL_SIZE;
  return buf.readUInt32LE(t) === 0 && buf.readUInt16LE(t + 4) === TAIL_SIZE && buf[t + 6] === 0 && buf[t + 7] === TAIL_FT;
}

export function verifyDirBlock(buf: Buffer, csumSeed: number, where: string): void {
  if (!hasDirTail(buf)) throw new CorruptionError(`${where}: directory block has no checksum tail`);
  const t = buf.length - TAIL_SIZE;
  if (buf.readUInt32LE(t + 8) !== ext4Crc(csumSeed, buf.subarray(0, t))) throw new CorruptionError(`${where}: directory block checksum mismatch`);
}

/**
 * Insert an entry where it fits (ext4_insert_dentry): in an empty slot, or in the slack
 * after a live entry. Returns false when the block has no room.
 */
export function insertDirent(buf: Buffer, end: number, where: string, inode: number, name: Buffer, fileType: number): boolean {
  const need = direntSize(name.length);
  let off = 0;
  while (off < end) {
    if (end - off < DIRENT_HEADER) throw new CorruptionError(`${where}: directory entry at ${off} runs past the block end`);
    const ino = buf.readUInt32LE(off);
    const recLen = buf.readUInt16LE(off + 4);
    const nameLen = buf[off + 6];
    if (recLen < DIRENT_HEADER || recLen % 4 || off + recLen > end || DIRENT_HEADER + nameLen > recLen) {
      throw new CorruptionError(`${where}: directory entry at ${off} has bad rec_len ${recLen} (name_len ${nameLen})`);
    }
    if (ino === 0 && recLen >= need) {
      writeDirent(buf, off, inode, recLen, name, fileType);
      return true;
    }
    const used = direntSize(nameLen);
    if (ino !== 0 && recLen - used >= need) {
      buf.writeUInt16LE(used, off + 4);
      writeDirent(buf, off + used, inode, recLen - used, name, fileType);
      return true;
    }
    off += recLen;
  }
  return false;
}

/** Remove the live entry `name`; it merges into its predecessor (or is blanked if first). */
export function removeDirent(buf: Buffer, end: number, where: string, name: Buffer): Dirent | null {
  const off = findDirent(buf, end, where, name);
  if (off < 0) return null;
  const removed = { offset: off, inode: buf.readUInt32LE(off), recLen: buf.readUInt16LE(off + 4), name: Buffer.from(name), fileType: buf[off + 7] };
  // The predecessor: walk again up to `off` (findDirent validated every rec_len before it).
  let prev = -1;
  for (let p = 0; p < off; p += buf.readUInt16LE(p + 4)) prev = p;
  if (prev >= 0) buf.writeUInt16LE(buf.readUInt16LE(prev + 4) + removed.recLen, prev + 4);
  else buf.writeUInt32LE(0, off);
  return removed;
}
