/**
 * ByteCursor: the one little-endian reader/writer for every binary format in kfs (ext4
 * structures, FUSE messages, vhost-user messages). Every access is bounds-checked against the
 * cursor's window; a short buffer raises ShortBufferError, which protocol layers turn into an
 * error reply and ext4 turns into a corruption error.
 */
export class ShortBufferError extends Error {
  constructor(what: string, need: number, have: number) {
    super(`short buffer: ${what} needs ${need} bytes, ${have} left`);
    this.name = 'ShortBufferError';
  }
}

export class ByteCursor {
  /** Absolute position in `buf`. */
  pos: number;
  readonly start: number;
  readonly end: number;

  constructor(readonly buf: Buffer, start = 0, end = buf.length) {
    if (start < 0 || end > buf.length || start > end) throw new RangeError('cursor window outside buffer');
    this.start = start;
    this.end = end;
    this.pos = start;
  }

  /** Bytes left before the window's end. */
  get remaining(): number {
    return this.end - this.pos;
  }
  /** Position relative to the window's start. */
  get offset(): number {
    return this.pos - this.start;
  }

  seek(offset: number): this {
    if (offset < 0 || this.start + offset > this.end) throw new ShortBufferError('seek', offset, this.end - this.start);
    this.pos = this.start + offset;
    return this;
  }

  skip(n: number): this {
    this.need(n, 'skip');
    this.pos += n;
    return this;
  }

  private need(n: number, what: string): void {
    if (n < 0 || this.pos + n > this.end) throw new ShortBufferError(what, n, this.end - this.pos);
  }

  u8(): number {
    this.need(1, 'u8');
    return this.buf[this.pos++];
  }
  // The little-endian accessors read and write bytes themselves after need(): Buffer's
  // readUInt32LE/writeUInt32LE check offset and value again, and cost ~4x as much per field
  // (inode and FUSE attribute encoding are tens of fields each).
  u16(): number {
    this.need(2, 'u16');
    const b = this.buf;
    const p = this.pos;
    this.pos = p + 2;
    return b[p] | (b[p + 1] << 8);
  }
  u32(): number {
    this.need(4, 'u32');
    const b = this.buf;
    const p = this.pos;
    this.pos = p + 4;
    return getLe32(b, p);
  }
  i32(): number {
    this.need(4, 'i32');
    const b = this.buf;
    const p = this.pos;
    this.pos = p + 4;
    return b[p] | (b[p + 1] << 8) | (b[p + 2] << 16) | (b[p + 3] << 24);
  }
  /** u64 as a number: exact below 2^53, which covers every block, byte and inode count here. */
  u64(): number {
    this.need(8, 'u64');
    const b = this.buf;
    const p = this.pos;
    this.pos = p + 8;
    return getLe32(b, p + 4) * 0x100000000 + getLe32(b, p);
  }
  /** u64 exactly, for identifiers that use all 64 bits (FUSE unique, fh, flags). */
  u64n(): bigint {
    this.need(8, 'u64');
    const v = this.buf.readBigUInt64LE(this.pos);
    this.pos += 8;
    return v;
  }
  /** s64 exactly (getdents64's d_off). */
  i64n(): bigint {
    this.need(8, 'i64');
    const v = this.buf.readBigInt64LE(this.pos);
    this.pos += 8;
    return v;
  }
  i64(): number {
    this.need(8, 'i64');
    const v = this.buf.readBigInt64LE(this.pos);
    this.pos += 8;
    return Number(v);
  }
  /** A view (no copy) of the next n bytes. */
  bytes(n: number): Buffer {
    this.need(n, 'bytes');
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }
  /** A NUL-terminated string within the window (the NUL is consumed). */
  cstring(): Buffer {
    const nul = this.buf.indexOf(0, this.pos);
    if (nul < 0 || nul >= this.end) throw new ShortBufferError('NUL-terminated string', this.end - this.pos + 1, this.end - this.pos);
    const v = this.buf.subarray(this.pos, nul);
    this.pos = nul + 1;
    return v;
  }

  putU8(v: number): this {
    this.need(1, 'u8');
    this.buf[this.pos++] = v & 0xff;
    return this;
  }
  // Stores into a Uint8Array keep the low 8 bits, the same bytes as masking first.
  putU16(v: number): this {
    this.need(2, 'u16');
    const b = this.buf;
    const p = this.pos;
    b[p] = v;
    b[p + 1] = v >>> 8;
    this.pos = p + 2;
    return this;
  }
  putU32(v: number): this {
    this.need(4, 'u32');
    putLe32(this.buf, this.pos, v);
    this.pos += 4;
    return this;
  }
  putI32(v: number): this {
    this.need(4, 'i32');
    putLe32(this.buf, this.pos, v);
    this.pos += 4;
    return this;
  }
  putU64(v: number | bigint): this {
    this.need(8, 'u64');
    if (typeof v === 'bigint') this.buf.writeBigUInt64LE(v, this.pos);
    else {
      putLe32(this.buf, this.pos, v % 0x100000000 >>> 0);
      putLe32(this.buf, this.pos + 4, Math.floor(v / 0x100000000) >>> 0);
    }
    this.pos += 8;
    return this;
  }
  putI64(v: number | bigint): this {
    this.need(8, 'i64');
    this.buf.writeBigInt64LE(BigInt(v), this.pos);
    this.pos += 8;
    return this;
  }
  putBytes(src: Uint8Array): this {
    this.need(src.length, 'bytes');
    this.buf.set(src, this.pos);
    this.pos += src.length;
    return this;
  }
  fill(n: number, value = 0): this {
    this.need(n, 'fill');
    this.buf.fill(value, this.pos, this.pos + n);
    this.pos += n;
    return this;
  }

  // Big-endian accessors: the jbd2 journal is the one big-endian format kfs meets.
  u16be(): number {
    this.need(2, 'u16be');
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  u32be(): number {
    this.need(4, 'u32be');
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  u64be(): number {
    this.need(8, 'u64be');
    const hi = this.buf.readUInt32BE(this.pos);
    const lo = this.buf.readUInt32BE(this.pos + 4);
    this.pos += 8;
    return hi * 0x100000000 + lo;
  }
  putU16be(v: number): this {
    this.need(2, 'u16be');
    this.buf.writeUInt16BE(v & 0xffff, this.pos);
    this.pos += 2;
    return this;
  }
  putU32be(v: number): this {
    this.need(4, 'u32be');
    this.buf.writeUInt32BE(v >>> 0, this.pos);
    this.pos += 4;
    return this;
  }
  putU64be(v: number): this {
    this.need(8, 'u64be');
    this.buf.writeUInt32BE(Math.floor(v / 0x100000000) >>> 0, this.pos);
    this.buf.writeUInt32BE(v % 0x100000000 >>> 0, this.pos + 4);
    this.pos += 8;
    return this;
  }
}

/** The unsigned 32-bit little-endian value at p (the top byte multiplied in: `<< 24` would sign it). */
function getLe32(b: Buffer, p: number): number {
  return (b[p] | (b[p + 1] << 8) | (b[p + 2] << 16)) + b[p + 3] * 0x1000000;
}

/** The low 32 bits of v (as `v >>> 0`), little-endian at p. */
function putLe32(b: Buffer, p: number, v: number): void {
  b[p] = v;
  b[p + 1] = v >>> 8;
  b[p + 2] = v >>> 16;
  b[p + 3] = v >>> 24;
}

/** Split/join helpers for ext4's lo/hi field pairs. */
export const hi32 = (v: number): number => Math.floor(v / 0x100000000) >>> 0;
export const lo32 = (v: number): number => v % 0x100000000 >>> 0;
export const join64 = (lo: number, hi: number): number => hi * 0x100000000 + lo;
