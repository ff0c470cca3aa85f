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
 * `len` is the remaining length from `off`, which can exceed what is packed. The words go to
 * `hashIn` (int32 bits of the C code's u32s), reused for every block: hashing is on the path of
 * every listing, lookup and insert, so it allocates nothing per name.
 */
const hashIn = new Int32Array(8);

function str2hashbuf(name: Buffer, off: number, len: number, num: number, signed: boolean): void {
  let pad = len | (len << 8);
  pad |= pad << 16;
  let val = pad;
  const n = Math.min(len, num * 4);
  let w = 0;
  for (let i = 0; i < n; i++) {
    val = (charValue(name[off + i], signed) + (val << 8)) | 0;
    if ((i & 3) === 3) {
      hashIn[w++] = val;
      val = pad;
    }
  }
  if (w < num) hashIn[w++] = val;
  while (w < num) hashIn[w++] = pad;
}

/**
 * rol32 on a sum of u32s: the shifts take their operand modulo 2^32 (ToInt32 / ToUint32), so
 * the C code's wrapping additions need no truncation first. The result is the int32 bits.
 */
const rol = (x: number, s: number): number => (x << s) | (x >>> (32 - s));

/** MD4's round constants (half_md4_transform's K2, K3; K1 is 0). */
const K2 = 0x5a827999;
const K3 = 0x6ed9eba1;

/**
 * half_md4_transform: MD4's three rounds over the 8 words in hashIn, folded into the 4-word
 * state `st` (int32 bits). The round functions are written out: F(x,y,z) = z ^ (x & (y ^ z)),
 * G(x,y,z) = (x & y) + ((x ^ y) & z), H(x,y,z) = x ^ y ^ z.
 */
function halfMd4Transform(st: Int32Array): void {
  let a = st[0];
  let b = st[1];
  let c = st[2];
  let d = st[3];
  const x0 = hashIn[0], x1 = hashIn[1], x2 = hashIn[2], x3 = hashIn[3];
  const x4 = hashIn[4], x5 = hashIn[5], x6 = hashIn[6], x7 = hashIn[7];

  // Round 1
  a = rol(a + (d ^ (b & (c ^ d))) + x0, 3);
  d = rol(d + (c ^ (a & (b ^ c))) + x1, 7);
  c = rol(c + (b ^ (d & (a ^ b))) + x2, 11);
  b = rol(b + (a ^ (c & (d ^ a))) + x3, 19);
  a = rol(a + (d ^ (b & (c ^ d))) + x4, 3);
  d = rol(d + (c ^ (a & (b ^ c))) + x5, 7);
  c = rol(c + (b ^ (d & (a ^ b))) + x6, 11);
  b = rol(b + (a ^ (c & (d ^ a))) + x7, 19);
  // Round 2
  a = rol(a + (b & c) + ((b ^ c) & d) + x1 + K2, 3);
  d = rol(d + (a & b) + ((a ^ b) & c) + x3 + K2, 5);
  c = rol(c + (d & a) + ((d ^ a) & b) + x5 + K2, 9);
  b = rol(b + (c & d) + ((c ^ d) & a) + x7 + K2, 13);
  a = rol(a + (b & c) + ((b ^ c) & d) + x0 + K2, 3);
  d = rol(d + (a & b) + ((a ^ b) & c) + x2 + K2, 5);
  c = rol(c + (d & a) + ((d ^ a) & b) + x4 + K2, 9);
  b = rol(b + (c & d) + ((c ^ d) & a) + x6 + K2, 13);
  // Round 3
  a = rol(a + (b ^ c ^ d) + x3 + K3, 3);
  d = rol(d + (a ^ b ^ c) + x7 + K3, 9);
  c = rol(c + (d ^ a ^ b) + x2 + K3, 11);
  b = rol(b + (c ^ d ^ a) + x6 + K3, 15);
  a = rol(a + (b ^ c ^ d) + x1 + K3, 3);
  d = rol(d + (a ^ b ^ c) + x5 + K3, 9);
  c = rol(c + (d ^ a ^ b) + x0 + K3, 11);
  b = rol(b + (c ^ d ^ a) + x4 + K3, 15);

  st[0] = (st[0] + a) | 0;
  st[1] = (st[1] + b) | 0;
  st[2] = (st[2] + c) | 0;
  st[3] = (st[3] + d) | 0;
}

/** TEA_transform: 16 rounds of the Tiny Encryption Algorithm keyed by 4 name words. */
function teaTransform(buf: Int32Array): void {
  const DELTA = 0x9e3779b9;
  let sum = 0;
  let b0 = buf[0] >>> 0;
  let b1 = buf[1] >>> 0;
  const a = hashIn[0], b = hashIn[1], c = hashIn[2], d = hashIn[3];
  for (let n = 0; n < 16; n++) {
    sum = (sum + DELTA) >>> 0;
    b0 = (b0 + ((((b1 << 4) + a) >>> 0) ^ ((b1 + sum) >>> 0) ^ (((b1 >>> 5) + b) >>> 0))) >>> 0;
    b1 = (b1 + ((((b0 << 4) + c) >>> 0) ^ ((b0 + sum) >>> 0) ^ (((b0 >>> 5) + d) >>> 0))) >>> 0;
  }
  buf[0] = (buf[0] + b0) | 0;
  buf[1] = (buf[1] + b1) | 0;
}

/** The last seed decoded (a volume has one s_hash_seed; every name hash starts from it). */
const lastSeed = Buffer.alloc(16);
let lastWords: readonly number[] | null = null;

/** The hash state, set from the seed for each name (int32 bits of the C code's u32 buf[4]). */
const hashState = new Int32Array(4);

function seedWords(seed: Buffer): Int32Array {
  if (seed.length !== 16) throw new RangeError(`dx hash seed must be 16 bytes, got ${seed.length}`);
  if (!lastWords || !sameSeed(seed)) {
    const cur = new ByteCursor(seed);
    const words = [cur.u32(), cur.u32(), cur.u32(), cur.u32()];
    // An all-zero s_hash_seed means "never initialised" (pre-htree mkfs), so the MD4 IV is used.
    lastWords = words.some((w) => w !== 0) ? words : DEFAULT_SEED;
    seed.copy(lastSeed);
  }
  for (let i = 0; i < 4; i++) hashState[i] = lastWords[i];
  return hashState;
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
    for (let i = 0; i < name.length; i++) memoName[i] = name[i];
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
        str2hashbuf(name, off, name.length - off, 8, signed);
        halfMd4Transform(buf);
      }
      hash = buf[1];
      minor = buf[2];
      break;
    }
    case DX_HASH.TEA:
    case DX_HASH.TEA_UNSIGNED: {
      const signed = version === DX_HASH.TEA;
      for (let off = 0; off < name.length; off += 16) {
        str2hashbuf(name, off, name.length - off, 4, signed);
        teaTransform(buf);
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
