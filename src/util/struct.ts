/**
 * Fixed-layout structures described once as a field list; decode and encode go through
 * ByteCursor. Little-endian by default (ext4, FUSE, vhost-user); big-endian for jbd2. A layout's total size is checked against the spec's size when defined,
 * so a missing or mistyped field fails at load time, not on disk.
 */
import { ByteCursor } from './cursor';

/** A field is a scalar type name or a byte-array length. */
export type FieldType = 'u8' | 'u16' | 'u32' | 'i32' | 'u64' | number;
export type Layout = Record<string, FieldType>;
export type Decoded<L extends Layout> = { [K in keyof L]: L[K] extends number ? Buffer : number };

const SCALAR_SIZE = { u8: 1, u16: 2, u32: 4, i32: 4, u64: 8 } as const;
const sizeOf = (t: FieldType): number => (typeof t === 'number' ? t : SCALAR_SIZE[t]);

/** Decoder and encoder of one layout as straight-line code (see compile()). */
type Reader = (c: ByteCursor) => Record<string, number | Buffer>;
type Writer = (c: ByteCursor, v: Record<string, number | Buffer>) => void;

/** The cursor call that reads, and the one that writes, each scalar type in each byte order. */
const READ = {
  le: { u8: 'c.u8()', u16: 'c.u16()', u32: 'c.u32()', i32: 'c.i32()', u64: 'c.u64()' },
  be: { u8: 'c.u8()', u16: 'c.u16be()', u32: 'c.u32be()', i32: '(c.u32be() | 0)', u64: 'c.u64be()' },
} as const;
const WRITE = {
  le: { u8: 'c.putU8(x)', u16: 'c.putU16(x)', u32: 'c.putU32(x)', i32: 'c.putI32(x)', u64: 'c.putU64(x)' },
  be: { u8: 'c.putU8(x)', u16: 'c.putU16be(x)', u32: 'c.putU32be(x)', i32: 'c.putU32be(x >>> 0)', u64: 'c.putU64be(x)' },
} as const;

/** Byte arrays: copied on read (the result owns them), zero-padded on write. */
function readBytes(c: ByteCursor, n: number): Buffer {
  return Buffer.from(c.bytes(n));
}
function writeBytes(c: ByteCursor, b: Buffer, n: number): void {
  const k = Math.min(b.length, n);
  c.putBytes(k === b.length ? b : b.subarray(0, k));
  c.fill(n - k);
}

/**
 * Build a layout's read and write functions once: one object literal in layout order (so every
 * decoded value shares a hidden class) and one cursor call per field, instead of a per-field
 * loop with keyed stores into an object that grows field by field. Field names come from the
 * layout literals in the source, and are emitted as JSON strings, never as code.
 */
function compile(fields: [string, FieldType][], endian: 'le' | 'be'): { read: Reader; write: Writer } {
  const key = (k: string) => JSON.stringify(k);
  const reads = fields.map(([k, t]) => `${key(k)}: ${typeof t === 'number' ? `readBytes(c, ${t})` : READ[endian][t]}`);
  const writes = fields.map(([k, t]) => (typeof t === 'number'
    ? `writeBytes(c, v[${key(k)}], ${t});`
    : `x = v[${key(k)}]; ${WRITE[endian][t]};`));
  const read = new Function('readBytes', `return function read(c) { return { ${reads.join(', ')} }; };`)(readBytes) as Reader;
  const write = new Function('writeBytes', `return function write(c, v) { let x; ${writes.join(' ')} };`)(writeBytes) as Writer;
  return { read, write };
}

export class Struct<L extends Layout> {
  readonly size: number;
  private readonly offsets: Record<string, number> = {};
  private readonly compiled: { read: Reader; write: Writer };

  constructor(readonly name: string, readonly layout: L, expectedSize: number, readonly endian: 'le' | 'be' = 'le') {
    const fields = Object.entries(layout);
    let off = 0;
    for (const [k, t] of fields) {
      this.offsets[k] = off;
      off += sizeOf(t);
    }
    this.size = off;
    if (off !== expectedSize) throw new Error(`${name}: layout is ${off} bytes, spec says ${expectedSize}`);
    this.compiled = compile(fields, endian);
  }

  offsetOf(field: keyof L & string): number {
    return this.offsets[field];
  }

  /** Decode from a cursor (advancing it). Byte arrays are copied so the result owns them. */
  read(c: ByteCursor): Decoded<L> {
    return this.compiled.read(c) as Decoded<L>;
  }

  decode(buf: Buffer, offset = 0): Decoded<L> {
    return this.read(new ByteCursor(buf, offset, Math.min(buf.length, offset + this.size)));
  }

  /** Encode into a cursor (advancing it). Byte arrays shorter than the field are zero-padded. */
  write(c: ByteCursor, v: Decoded<L>): void {
    this.compiled.write(c, v as Record<string, number | Buffer>);
  }

  encode(v: Decoded<L>, buf: Buffer, offset = 0): void {
    this.write(new ByteCursor(buf, offset, offset + this.size), v);
  }

  /** All-zero value of this layout. */
  zero(): Decoded<L> {
    return this.decode(Buffer.alloc(this.size));
  }
}
