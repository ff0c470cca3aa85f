/**
 * Hashed directory index nodes (linux fs/ext4/namei.c, "htree"/dx):
 * - dx_root, logical block 0: "." dirent (rec_len 12), ".." dirent (rec_len blocksize-12),
 *   dx_root_info at byte 24 {reserved_zero u32, hash_version u8, info_length u8 = 8,
 *   indirect_levels u8, unused_flags u8}, then dx_countlimit {limit u16, count u16} at byte 32
 *   overlaying the hash of entry 0; entries {hash u32, block u32}.
 * - dx_node: a fake dirent {inode 0, rec_len blocksize} then countlimit at byte 8.
 * - With metadata_csum, a dx_tail {dt_reserved u32, dt_checksum u32} follows `limit` entries:
 *   crc32c(inode seed, block[0 .. countlimit + count*8]) continued over dt_reserved.
 * Entry 0's hash is implicitly 0; a hash with bit 0 set in an index entry means "this leaf
 * continues a run of equal hashes from the previous leaf".
 */
import { ByteCursor } from '../util/cursor';
import { CorruptionError } from '../util/errors';
import { ext4Crc } from './crc';

export const DX_ROOT_COUNT_OFFSET = 32;
export const DX_NODE_COUNT_OFFSET = 8;
const DX_TAIL_SIZE = 8;
const ZERO4 = Buffer.alloc(4);

export interface DxEntry {
  hash: number;
  block: number;
}

export interface DxRootInfo {
  hashVersion: number;
  levels: number;
}

/** An index node (root or interior) decoded from its block. */
export class DxNode {
  constructor(
    readonly isRoot: boolean,
    public entries: DxEntry[],
    readonly limit: number,
    public info: DxRootInfo | null,
  ) {}

  static limitFor(blockSize: number, isRoot: boolean, csum: boolean): number {
    const countOff = isRoot ? DX_ROOT_COUNT_OFFSET : DX_NODE_COUNT_OFFSET;
    return Math.floor((blockSize - countOff - (csum ? DX_TAIL_SIZE : 0)) / 8);
  }

  /** Decode a node; `verify` false skips the checksum (the block was verified when read). */
  static parse(buf: Buffer, isRoot: boolean, csumSeed: number | null, where: string, verify = true): DxNode {
    const countOff = isRoot ? DX_ROOT_COUNT_OFFSET : DX_NODE_COUNT_OFFSET;
    let info: DxRootInfo | null = null;
    if (isRoot) {
      const c = new ByteCursor(buf, 24, 32);
      const reserved = c.u32();
      const hashVersion = c.u8();
      const infoLen = c.u8();
      const levels = c.u8();
      if (reserved !== 0 || infoLen !== 8 || levels > 2) {
        throw new CorruptionError(`${where}: bad htree root (info length ${infoLen}, levels ${levels})`);
      }
      info = { hashVersion, levels };
    } else if (buf.readUInt32LE(0) !== 0 || buf.readUInt16LE(4) !== buf.length) {
      throw new CorruptionError(`${where}: htree node without its empty dirent header`);
    }
    const c = new ByteCursor(buf, countOff);
    const limit = c.u16();
    const count = c.u16();
    const csum = csumSeed !== null;
    const expectLimit = DxNode.limitFor(buf.length, isRoot, csum);
    if (limit !== expectLimit || count === 0 || count > limit) {
      throw new CorruptionError(`${where}: htree node has limit ${limit} (want ${expectLimit}) and count ${count}`);
    }
    const entries: DxEntry[] = [{ hash: 0, block: c.u32() }];
    for (let i = 1; i < count; i++) entries.push({ hash: c.u32(), block: c.u32() });
    if (csumSeed !== null && verify) {
      const want = dxChecksum(buf, countOff, count, limit, csumSeed);
      if (buf.readUInt32LE(countOff + limit * 8 + 4) !== want) throw new CorruptionError(`${where}: htree node checksum mismatch`);
    }
    return new DxNode(isRoot, entries, limit, info);
  }

  /** Index of the entry whose subtree holds `hash` (last entry with hash <= target). */
  find(hash: number): number {
    let lo = 1;
    let hi = this.entries.length - 1;
    let ans = 0;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.entries[mid].hash <= hash) {
        ans = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return ans;
  }

  get full(): boolean {
    return this.entries.length >= this.limit;
  }

  /**
   * Encode into buf. A root is written over the directory's block 0, whose "." and ".." file
   * types it keeps (FT_DIR, or 0 on a filesystem without the filetype feature).
   */
  write(buf: Buffer, csumSeed: number | null, dotIno?: number, dotdotIno?: number): void {
    const bs = buf.length;
    const dotType = buf[7];
    const dotdotType = buf[19];
    buf.fill(0);
    if (this.isRoot) {
      const c = new ByteCursor(buf);
      c.putU32(dotIno ?? 0).putU16(12).putU8(1).putU8(dotType).putBytes(Buffer.from('.\0\0\0', 'latin1'));
      c.putU32(dotdotIno ?? 0).putU16(bs - 12).putU8(2).putU8(dotdotType).putBytes(Buffer.from('..\0\0', 'latin1'));
      c.putU32(0).putU8(this.info!.hashVersion).putU8(8).putU8(this.info!.levels).putU8(0);
    } else {
      new ByteCursor(buf).putU32(0).putU16(bs).putU8(0).putU8(0);
    }
    const countOff = this.isRoot ? DX_ROOT_COUNT_OFFSET : DX_NODE_COUNT_OFFSET;
    const c = new ByteCursor(buf, countOff);
    c.putU16(this.limit).putU16(this.entries.length).putU32(this.entries[0].block);
    for (let i = 1; i < this.entries.length; i++) c.putU32(this.entries[i].hash).putU32(this.entries[i].block);
    if (csumSeed !== null) {
      const tail = countOff + this.limit * 8;
      buf.writeUInt32LE(0, tail);
      buf.writeUInt32LE(dxChecksum(buf, countOff, this.entries.length, this.limit, csumSeed), tail + 4);
    }
  }
}

function dxChecksum(buf: Buffer, countOff: number, count: number, limit: number, seed: number): number {
  const tail = countOff + limit * 8;
  // ext4_dx_csum: entries in use, dt_reserved, then a zeroed dt_checksum.
  let crc = ext4Crc(seed, buf.subarray(0, countOff + count * 8));
  crc = ext4Crc(crc, buf.subarray(tail, tail + 4));
  return ext4Crc(crc, ZERO4);
}

/** Is this directory block an htree interior node (as opposed to a leaf)? */
export function looksLikeDxNode(buf: Buffer): boolean {
  return buf.readUInt32LE(0) === 0 && buf.readUInt16LE(4) === buf.length && buf[6] === 0;
}
