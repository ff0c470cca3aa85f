/**
 * ext4's checksum function. The kernel's ext4_chksum(seed, data) is crc32c_le() with no
 * pre- or post-inversion, so a "raw" running state r corresponds to the standard CRC-32C
 * value ~r. @node-rs/crc32 computes the standard CRC-32C (with inversions) using SSE4.2.
 */
import { crc32c as stdCrc32c } from '@node-rs/crc32';

/** ext4_chksum(seed, data): raw crc32c continuing from `seed`. */
export function ext4Crc(seed: number, data: Uint8Array): number {
  const std = stdCrc32c(Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength), ~seed >>> 0);
  return ~std >>> 0;
}

const scratch4 = Buffer.alloc(4);
/** ext4_chksum over one little-endian u32 (inode numbers, generations, group numbers). */
export function ext4CrcU32(seed: number, v: number): number {
  scratch4.writeUInt32LE(v >>> 0, 0);
  return ext4Crc(seed, scratch4);
}
