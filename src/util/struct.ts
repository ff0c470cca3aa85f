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

export class Struct<L extends Layout> {
  readonly size: number;
  private readonly offsets: Record<string, number> = {};
  private readonly fields: [string, FieldType][];

  constructor(readonly name: string, readonly layout: L, expectedSize: number, readonly endian: 'le' | 'be' = 'le') {
    this.fields = Object.entries(layout);
    let off = 0;
    for (const [k, t] of this.fields) {
      this.offsets[k] = off;
      off += sizeOf(t);
    }
    this.size = off;
    if (off !== expectedSize) throw new Error(`${name}: layout is ${off} bytes, spec says ${expectedSize}`);
  }

  offsetOf(field: keyof L & string): number {
    return this.offsets[field];
  }

  /** Decode from a cursor (advancing it). Byte arrays are copied so the result owns them. */
  read(c: ByteCursor): Decoded<L> {
    const out: Record<string, number | Buffer> = {};
    const be = this.endian === 'be';
    for (const [k, t] of this.fields) {
      switch (t) {
        case 'u8': out[k] = c.u8(); break;
        case 'u16': out[k] = be ? c.u16be() : c.u16(); break;
        case 'u32': out[k] = be ? c.u32be() : c.u32(); break;
        case 'i32': out[k] = be ? c.u32be() | 0 : c.i32(); break;
        case 'u64': out[k] = be ? c.u64be() : c.u64(); break;
        default: out[k] = Buffer.from(c.bytes(t));
      }
    }
    return out as Decoded<L>;
  }

  decode(buf: Buffer, offset = 0): Decoded<L> {
    return this.read(new ByteCursor(buf, offset, Math.min(buf.length, offset + this.size)));
  }

  /** Encode into a cursor (advancing it). Byte arrays shorter than the field are zero-padded. */
  write(c: ByteCursor, v: Decoded<L>): void {
    const be = this.endian === 'be';
    for (const [k, t] of this.fields) {
      const x = (v as Record<string, number | Buffer>)[k];
      switch (t) {
        case 'u8': c.putU8(x as number); break;
        case 'u16': if (be) c.putU16be(x as number); else c.putU16(x as number); break;
        case 'u32': if (be) c.putU32be(x as number); else c.putU32(x as number); break;
        case 'i32': if (be) c.putU32be((x as number) >>> 0); else c.putI32(x as number); break;
        case 'u64': if (be) c.putU64be(x as number); else c.putU64(x as number); break;
        default: {
          const b = x as Buffer;
          const n = Math.min(b.length, t);
          c.putBytes(b.subarray(0, n));
          c.fill(t - n);
        }
      }
    }
  }

  encode(v: Decoded<L>, buf: Buffer, offset = 0): void {
    this.write(new ByteCursor(buf, offset, offset + this.size), v);
  }

  /** All-zero value of this layout. */
  zero(): Decoded<L> {
    return this.decode(Buffer.alloc(this.size));
  }
}
