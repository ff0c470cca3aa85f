/**
 * ext4 directory-index (htree) name hashes, bit-for-bit as linux fs/ext4/hash.c
 * ext4fs_dirhash() and e2fsprogs lib/ext2fs/dirhash.c: legacy (dx_hack_hash), half_md4 and
 * tea, each in a "signed" and an "unsigned" flavour. The flavour exists because the original
 * code read name bytes through a plain `char`, which is signed on x86 and unsigned on ARM/PPC;
 * the superblock flag (EXT2_FLAGS_SIGNED_HASH / UNSIGNED_HASH) records which one the volume was
 * created with, and the directory code maps s_def_hash_version + that flag to versions 0-5.
 * The seed is s_hash_seed (16 bytes read as 4 little-endian u32s, as ext4_fill_super does).
 * Casefolded and encrypted (siphash) directories are out of scope.
 */
import { ByteCursor } from '../util/cursor';

export const DX_HASH = {
  LEGACY: 0,
  HALF_MD4: 1,
  TEA: 2,
  LEGACY_UNSIGNED: 3,
  HALF_MD4_UNSIGNED: 4,
  TEA_UNSIGNED: 5,
} as const;

/** EXT4_HTREE_EOF_32BIT: the hash value reserved to mean "end of directory" for 32-bit readdir cookies. */
const HTREE_EOF_32BIT = 0x7fffffff;
const DEFAULT_SEED = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];

/** A name byte as the kernel's `(int) *cp` sees it: sign-extended when read through signed char. */
function charValue(b: number, signed: boolean): number {
  return signed && b >= 0x80 ? b - 0x100 : b;
}

/** dx_hack_hash / dx_hack_hash_unsigned: the pre-htree-v1 hash, kept for old volumes. */
function dxHackHash(name: Buffer, signed: boolean): number {
  let hash0 = 0x12a3fe2d;
  let hash1 = 0x37abe8f9;
  for (let i = 0; i < name.length; i++) {
    // The product fits in int32 for any char value, so Math.imul reproduces C's int arithmetic.
    let hash = (hash1 + ((hash0 ^ Math.imul(charValue(name[i], signed), 7152373)) >>> 0)) >>> 0;
    if (hash & 0x80000000) hash = (hash - 0x7fffffff) >>> 0;
    hash1 = hash0;
    hash0 = hash;
  }
  return (hash0 << 1) >>> 0;
}

/**
 * str2hashbuf_signed / str2hashbuf_unsigned: pack up to num*4 name bytes big-endian-ish into
 * num words, padding with a length-derived pattern so that names differing only in trailing
 * NULs (impossible in a dirent, but the pad also mixes in the length) hash differently.
 * `len` is the remaining length from `off`, which can exceed what is packed.
 */
function str2hashbuf(name: Buffer, off: number, len: number, num: number, signed: boolean): number[] {
  const out: number[] = [];
  let pad = (len | (len << 8)) >>> 0;
  pad = (pad | (pad << 16)) >>> 0;
  let val = pad;
  const n = Math.min(len, num * 4);
  for (let i = 0; i < n; i++) {
    val = (charValue(name[off + i], signed) + (val << 8)) >>> 0;
    if (i % 4 === 3) {
      out.push(val);
      val = pad;
    }
  }
  if (out.length < num) out.push(val);
  while (out.length < num) out.push(pad);
  return out;
}

const rol32 = (x: number, s: number): number => ((x << s) | (x >>> (32 - s))) >>> 0;

// MD4's round functions, built once rather than as four closures per name hashed.
const mdF = (x: number, y: number, z: number): number => (z ^ (x & (y ^ z))) >>> 0;
const mdG = (x: number, y: number, z: number): number => (((x & y) >>> 0) + (((x ^ y) & z) >>> 0)) >>> 0;
const mdH = (x: number, y: number, z: number): number => (x ^ y ^ z) >>> 0;
type MdFn = (x: number, y: number, z: number) => number;
const mdR = (f: MdFn, w: number, x: number, y: number, z: number, k: number, s: number): number =>
  rol32((w + f(x, y, z) + ((k) >>> 0)) >>> 0, s);

/** half_md4_transform: MD4's three rounds over 8 input words, folded into the 4-word state. */
function halfMd4Transform(buf: number[], inp: number[]): void {
  let a = buf[0];
  let b = buf[1];
  let c = buf[2];
  let d = buf[3];
  const F = mdF;
  const G = mdG;
  const H = mdH;
  const R = mdR;
  const K1 = 0;
  const K2 = 0o13240474631; // 0x5a827999
  const K3 = 0o15666365641; // 0x6ed9eba1

  // Round 1
  a = R(F, a, b, c, d, inp[0] + K1, 3);
  d = R(F, d, a, b, c, inp[1] + K1, 7);
  c = R(F, c, d, a, b, inp[2] + K1, 11);
  b = R(F, b, c, d, a, inp[3] + K1, 19);
  a = R(F, a, b, c, d, inp[4] + K1, 3);
  d = R(F, d, a, b, c, inp[5] + K1, 7);
  c = R(F, c, d, a, b, inp[6] + K1, 11);
  b = R(F, b, c, d, a, inp[7] + K1, 19);
  // Round 2
  a = R(G, a, b, c, d, inp[1] + K2, 3);
  d = R(G, d, a, b, c, inp[3] + K2, 5);
  c = R(G, c, d, a, b, inp[5] + K2, 9);
  b = R(G, b, c, d, a, inp[7] + K2, 13);
  a = R(G, a, b, c, d, inp[0] + K2, 3);
  d = R(G, d, a, b, c, inp[2] + K2, 5);
  c = R(G, c, d, a, b, inp[4] + K2, 9);
  b = R(G, b, c, d, a, inp[6] + K2, 13);
  // Round 3
  a = R(H, a, b, c, d, inp[3] + K3, 3);
  d = R(H, d, a, b, c, inp[7] + K3, 9);
  c = R(H, c, d, a, b, inp[2] + K3, 11);
  b = R(H, b, c, d, a, inp[6] + K3, 15);
  a = R(H, a, b, c, d, inp[1] + K3, 3);
  d = R(H, d, a, b, c, inp[5] + K3, 9);
  c = R(H, c, d, a, b, inp[0] + K3, 11);
  b = R(H, b, c, d, a, inp[4] + K3, 15);

  buf[0] = (buf[0] + a) >>> 0;
  buf[1] = (buf[1] + b) >>> 0;
  buf[2] = (buf[2] + c) >>> 0;
  buf[3] = (buf[3] + d) >>> 0;
}

/** TEA_transform: 16 rounds of the Tiny Encryption Algorithm keyed by 4 name words. */
function teaTransform(buf: number[], inp: number[]): void {
  const DELTA = 0x9e3779b9;
  let sum = 0;
  let b0 = buf[0];
  let b1 = buf[1];
  const [a, b, c, d] = inp;
  for (let n = 0; n < 16; n++) {
    sum = (sum + DELTA) >>> 0;
    b0 = (b0 + ((((b1 << 4) + a) >>> 0) ^ ((b1 + sum) >>> 0) ^ (((b1 >>> 5) + b) >>> 0))) >>> 0;
    b1 = (b1 + ((((b0 << 4) + c) >>> 0) ^ ((b0 + sum) >>> 0) ^ (((b0 >>> 5) + d) >>> 0))) >>> 0;
  }
  buf[0] = (buf[0] + b0) >>> 0;
  buf[1] = (buf[1] + b1) >>> 0;
}

/** The last seed decoded (a volume has one s_hash_seed; every name hash starts from it). */
const lastSeed = Buffer.alloc(16);
let lastWords: readonly number[] | null = null;

function seedWords(seed: Buffer): number[] {
  if (seed.length !== 16) throw new RangeError(`dx hash seed must be 16 bytes, got ${seed.length}`);
  if (lastWords && sameSeed(seed)) return lastWords.slice();
  const cur = new ByteCursor(seed);
  const words = [cur.u32(), cur.u32(), cur.u32(), cur.u32()];
  // An all-zero s_hash_seed means "never initialised" (pre-htree mkfs), so the MD4 IV is used.
  lastWords = words.some((w) => w !== 0) ? words : DEFAULT_SEED;
  seed.copy(lastSeed);
  return lastWords.slice();
}

function sameSeed(seed: Buffer): boolean {
  for (let i = 0; i < 16; i++) if (seed[i] !== lastSeed[i]) return false;
  return true;
}

/**
 * The last name hashed, its hash version and hash, under the seed in lastSeed: a create hashes
 * its name three times (LOOKUP's miss, the EEXIST check, the insert), a rename or unlink twice.
 */
const memoName = Buffer.alloc(255);
let memoLen = -1;
let memoVersion = -1;
let memoMajor = 0;
let memoMinor = 0;

function isMemoName(name: Buffer): boolean {
  if (name.length !== memoLen) return false;
  for (let i = name.length - 1; i >= 0; i--) if (name[i] !== memoName[i]) return false;
  return true;
}

/**
 * ext4fs_dirhash for a name (raw bytes, as stored in the dirent). major has bit 0 cleared:
 * htree uses that bit in index entries as the "hash collision continues in next block" flag.
 */
export function dxHash(name: Buffer, version: number, seed: Buffer): { major: number; minor: number } {
  if (version === memoVersion && seed.length === 16 && isMemoName(name) && sameSeed(seed)) return { major: memoMajor, minor: memoMinor };
  // Forgotten first: computing it replaces lastSeed, even when it then throws.
  memoLen = -1;
  const h = computeDxHash(name, version, seed);
  if (name.length <= memoName.length) {
    name.copy(memoName);
    memoLen = name.length;
    memoVersion = version;
    memoMajor = h.major;
    memoMinor = h.minor;
  }
  return h;
}

function computeDxHash(name: Buffer, version: number, seed: Buffer): { major: number; minor: number } {
  const buf = seedWords(seed);
  let hash: number;
  let minor = 0;
  switch (version) {
    case DX_HASH.LEGACY:
    case DX_HASH.LEGACY_UNSIGNED:
      hash = dxHackHash(name, version === DX_HASH.LEGACY);
      break;
    case DX_HASH.HALF_MD4:
    case DX_HASH.HALF_MD4_UNSIGNED: {
      const signed = version === DX_HASH.HALF_MD4;
      for (let off = 0; off < name.length; off += 32) {
        halfMd4Transform(buf, str2hashbuf(name, off, name.length - off, 8, signed));
      }
      hash = buf[1];
      minor = buf[2];
      break;
    }
    case DX_HASH.TEA:
    case DX_HASH.TEA_UNSIGNED: {
      const signed = version === DX_HASH.TEA;
      for (let off = 0; off < name.length; off += 16) {
        teaTransform(buf, str2hashbuf(name, off, name.length - off, 4, signed));
      }
      hash = buf[0];
      minor = buf[1];
      break;
    }
    default:
      throw new RangeError(`unsupported directory hash version ${version}`);
  }
  let major = (hash & ~1) >>> 0;
  // 0xfffffffe is EXT4_HTREE_EOF_32BIT << 1; a real name must never produce the EOF cookie.
  if (major === (HTREE_EOF_32BIT << 1) >>> 0) major = ((HTREE_EOF_32BIT - 1) << 1) >>> 0;
  return { major, minor: minor >>> 0 };
}
