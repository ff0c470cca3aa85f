/**
 * Block group descriptors (struct ext4_group_desc): 32 bytes, or s_desc_size (64) with the
 * 64bit feature, in the blocks after each superblock copy. With metadata_csum, bg_checksum is
 * crc32c(csum_seed, le32 group, descriptor with bg_checksum zeroed) & 0xffff; with only
 * gdt_csum it is crc16(uuid, group, descriptor). Bitmap checksums are crc32c(csum_seed, bitmap)
 * split over _lo and (64-byte descriptors only) _hi.
 */
import { ByteCursor, join64, lo32, hi32 } from '../util/cursor';
import { ext4Crc, ext4CrcU32 } from './crc';
import { crc16 } from './crc16';

export const BG_INODE_UNINIT = 0x1;
export const BG_BLOCK_UNINIT = 0x2;
export const BG_INODE_ZEROED = 0x4;

/** One descriptor with lo/hi halves joined. */
export interface GroupDesc {
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
  freeBlocks: number;
  freeInodes: number;
  usedDirs: number;
  flags: number;
  excludeBitmap: number;
  blockBitmapCsum: number;
  inodeBitmapCsum: number;
  itableUnused: number;
  checksum: number;
}

export function decodeGroupDesc(buf: Buffer, off: number, descSize: number): GroupDesc {
  const c = new ByteCursor(buf, off, off + descSize);
  const d: GroupDesc = {
    blockBitmap: c.u32(), inodeBitmap: c.u32(), inodeTable: c.u32(),
    freeBlocks: c.u16(), freeInodes: c.u16(), usedDirs: c.u16(), flags: c.u16(),
    excludeBitmap: c.u32(), blockBitmapCsum: c.u16(), inodeBitmapCsum: c.u16(),
    itableUnused: c.u16(), checksum: c.u16(),
  };
  if (descSize >= 64) {
    d.blockBitmap = join64(d.blockBitmap, c.u32());
    d.inodeBitmap = join64(d.inodeBitmap, c.u32());
    d.inodeTable = join64(d.inodeTable, c.u32());
    d.freeBlocks += c.u16() * 0x10000;
    d.freeInodes += c.u16() * 0x10000;
    d.usedDirs += c.u16() * 0x10000;
    d.itableUnused += c.u16() * 0x10000;
    d.excludeBitmap = join64(d.excludeBitmap, c.u32());
    d.blockBitmapCsum = (d.blockBitmapCsum | (c.u16() << 16)) >>> 0;
    d.inodeBitmapCsum = (d.inodeBitmapCsum | (c.u16() << 16)) >>> 0;
  }
  return d;
}

export function encodeGroupDesc(d: GroupDesc, buf: Buffer, off: number, descSize: number): void {
  const c = new ByteCursor(buf, off, off + descSize);
  c.putU32(lo32(d.blockBitmap)).putU32(lo32(d.inodeBitmap)).putU32(lo32(d.inodeTable));
  c.putU16(d.freeBlocks).putU16(d.freeInodes).putU16(d.usedDirs).putU16(d.flags);
  c.putU32(lo32(d.excludeBitmap)).putU16(d.blockBitmapCsum).putU16(d.inodeBitmapCsum);
  c.putU16(d.itableUnused).putU16(d.checksum);
  if (descSize >= 64) {
    c.putU32(hi32(d.blockBitmap)).putU32(hi32(d.inodeBitmap)).putU32(hi32(d.inodeTable));
    c.putU16(Math.floor(d.freeBlocks / 0x10000)).putU16(Math.floor(d.freeInodes / 0x10000));
    c.putU16(Math.floor(d.usedDirs / 0x10000)).putU16(Math.floor(d.itableUnused / 0x10000));
    c.putU32(hi32(d.excludeBitmap)).putU16(d.blockBitmapCsum >>> 16).putU16(d.inodeBitmapCsum >>> 16);
    c.fill(c.remaining);
  }
}

/** bg_checksum's offset in a descriptor. */
export const GROUP_DESC_CHECKSUM_OFFSET = 0x1e;
let descScratch = Buffer.alloc(64);

/** bg_checksum over an encoded descriptor (its checksum field is skipped, not trusted). */
export function groupDescChecksum(
  raw: Buffer, off: number, descSize: number, group: number,
  csum: { metadataCsum: boolean; csumSeed: number; uuid: Buffer },
): number {
  if (csum.metadataCsum) {
    // One pass over a copy with bg_checksum zeroed (each crc32c call is a native call).
    if (descScratch.length !== descSize) descScratch = Buffer.alloc(descSize);
    raw.copy(descScratch, 0, off, off + descSize);
    descScratch.writeUInt16LE(0, GROUP_DESC_CHECKSUM_OFFSET);
    return ext4Crc(ext4CrcU32(csum.csumSeed, group), descScratch) & 0xffff;
  }
  let crc = crc16(0xffff, csum.uuid);
  const g = Buffer.alloc(4);
  g.writeUInt32LE(group, 0);
  crc = crc16(crc, g);
  crc = crc16(crc, raw.subarray(off, off + GROUP_DESC_CHECKSUM_OFFSET));
  crc = crc16(crc, raw.subarray(off + GROUP_DESC_CHECKSUM_OFFSET + 2, off + descSize));
  return crc;
}

/** Bitmap checksum as stored: full 32 bits for 64-byte descriptors, low 16 bits otherwise. */
export function bitmapChecksum(csumSeed: number, bitmap: Buffer, descSize: number): number {
  const crc = ext4Crc(csumSeed, bitmap);
  return descSize >= 64 ? crc : crc & 0xffff;
}
