/**
 * dxHash against e2fsprogs' debugfs `dx_hash`, which runs libext2fs's ext2fs_dirhash (the
 * userspace twin of the kernel's ext4fs_dirhash that e2fsck uses to validate htrees).
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DX_HASH, dxHash } from '../src/ext4/dx-hash';

const dir = mkdtempSync(join(tmpdir(), 'kfs-dxhash-'));
const img = join(dir, 'fs.img');
test.before(() => {
  execFileSync('mkfs.ext4', ['-q', '-F', img, '4M'], { stdio: 'pipe' });
});
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

function uuidToBuf(uuid: string): Buffer {
  return Buffer.from(uuid.replace(/-/g, ''), 'hex');
}

/** Characters that debugfs' command-line splitter (libss) treats specially, or option-like starts. */
const UNSAFE = new Set([0x20, 0x09, 0x0a, 0x0d, 0x22, 0x27, 0x5c, 0x23, 0x3b, 0x00]);
function safeName(bytes: Buffer): Buffer {
  const out = Buffer.from(bytes.map((b) => (UNSAFE.has(b) || b < 0x20 ? 0x41 + (b % 26) : b)));
  if (out[0] === 0x2d) out[0] = 0x7a; // a leading '-' would be parsed as an option
  return out;
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s;
  };
}

function makeNames(): Buffer[] {
  const names: Buffer[] = [];
  const ascii = ['a', 'b', 'Z', '.', '..', 'hello', 'lost+found', 'README.md', 'file_000123', 'x'.repeat(31), 'y'.repeat(32),
    'z'.repeat(33), 'q'.repeat(15), 'r'.repeat(16), 's'.repeat(17), 'abcdefghijklmnopqrstuvwxyz0123456789'];
  for (const s of ascii) names.push(Buffer.from(s));
  for (const s of ['héllo', 'naïve-café', '日本語のファイル名', 'Ελληνικά', 'emoji-😀-🎉', 'ß', 'ÿ']) names.push(Buffer.from(s, 'utf8'));
  // Single bytes across the high range, where signed and unsigned char differ.
  for (const b of [0x7f, 0x80, 0x81, 0xa0, 0xc3, 0xfe, 0xff]) names.push(Buffer.from([b]));
  // Full-length names (the dirent maximum) in ASCII and high bytes.
  names.push(Buffer.from('L'.repeat(255)));
  names.push(safeName(Buffer.alloc(255, 0xe9)));
  const next = rng(12345);
  for (let i = 0; i < 60; i++) {
    const len = 1 + (next() % 255);
    const bytes = Buffer.alloc(len);
    for (let j = 0; j < len; j++) bytes[j] = 0x21 + (next() % 0xde); // 0x21..0xfe
    names.push(safeName(bytes));
  }
  // Random bytes in the exact block-boundary lengths for both algorithms (16 and 32 byte chunks).
  for (const len of [4, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 127, 128, 254]) {
    names.push(safeName(Buffer.from(Array.from({ length: len }, () => next() & 0xff))));
  }
  return names;
}

interface Case {
  name: Buffer;
  version: number;
  seed: string | null;
}

function runOracle(cases: Case[]): { major: number; minor: number }[] {
  const lines = cases.map((c) => {
    const seedOpt = c.seed ? `-s ${c.seed} ` : '';
    return Buffer.concat([Buffer.from(`dx_hash -h ${c.version} ${seedOpt}"`), c.name, Buffer.from('"\n')]);
  });
  const cmdFile = join(dir, 'cmds');
  writeFileSync(cmdFile, Buffer.concat(lines));
  const out = execFileSync('debugfs', ['-f', cmdFile, img], { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
  const results: { major: number; minor: number }[] = [];
  for (const line of out.toString('latin1').split('\n')) {
    const m = /^Hash of .* is 0x([0-9a-f]+) \(minor 0x([0-9a-f]+)\)$/.exec(line);
    if (m) results.push({ major: parseInt(m[1], 16), minor: parseInt(m[2], 16) });
  }
  return results;
}

const SEEDS = [null, '244d1500-5ebf-47a8-9676-be23be54b993', 'ffffffff-0000-8000-7fff-0123456789ab'];
const VERSIONS = [DX_HASH.LEGACY, DX_HASH.HALF_MD4, DX_HASH.TEA, DX_HASH.LEGACY_UNSIGNED, DX_HASH.HALF_MD4_UNSIGNED, DX_HASH.TEA_UNSIGNED];

test('dxHash matches debugfs dx_hash for every version, seed and many names', (t) => {
  const cases: Case[] = [];
  for (const name of makeNames()) for (const version of VERSIONS) for (const seed of SEEDS) cases.push({ name, version, seed });
  const expected = runOracle(cases);
  t.is(expected.length, cases.length, 'debugfs answered every dx_hash command');
  let mismatches = 0;
  for (let i = 0; i < cases.length; i++) {
    const c = cases[i];
    const got = dxHash(c.name, c.version, c.seed ? uuidToBuf(c.seed) : Buffer.alloc(16));
    if (got.major !== expected[i].major || got.minor !== expected[i].minor) {
      mismatches++;
      if (mismatches <= 5) {
        t.fail(`v${c.version} seed=${c.seed} name=${c.name.toString('hex')}: got ${got.major.toString(16)}/${got.minor.toString(16)}, ` +
          `want ${expected[i].major.toString(16)}/${expected[i].minor.toString(16)}`);
      }
    }
  }
  t.is(mismatches, 0);
});

test('signed and unsigned variants differ only for names with bytes >= 0x80', (t) => {
  const seed = uuidToBuf(SEEDS[1] as string);
  const ascii = Buffer.from('plain-ascii-name');
  const high = Buffer.from('café', 'utf8');
  for (const [s, u] of [[0, 3], [1, 4], [2, 5]]) {
    t.deepEqual(dxHash(ascii, s, seed), dxHash(ascii, u, seed));
    t.notDeepEqual(dxHash(high, s, seed), dxHash(high, u, seed));
  }
});

test('major hash always has bit 0 clear and never equals the 32-bit EOF cookie', (t) => {
  const next = rng(7);
  for (let i = 0; i < 2000; i++) {
    const name = Buffer.alloc(1 + (next() % 40));
    for (let j = 0; j < name.length; j++) name[j] = next() & 0xff;
    for (const v of VERSIONS) {
      const { major, minor } = dxHash(name, v, Buffer.alloc(16));
      t.is(major & 1, 0);
      t.not(major, 0xfffffffe);
      t.true(major >= 0 && major <= 0xffffffff && minor >= 0 && minor <= 0xffffffff);
    }
  }
});

test('dxHash rejects unknown versions and bad seeds', (t) => {
  t.throws(() => dxHash(Buffer.from('a'), 6, Buffer.alloc(16)));
  t.throws(() => dxHash(Buffer.from('a'), 1, Buffer.alloc(8)));
});

test('a hash does not depend on what was hashed before it (the hash state and words are reused between calls)', (t) => {
  // Reference: each (name, version, seed) hashed first thing after a different, unrelated call.
  const next = rng(11);
  const seeds = [Buffer.alloc(16), uuidToBuf(SEEDS[1] as string), uuidToBuf(SEEDS[2] as string)];
  const names: Buffer[] = [Buffer.alloc(0)];
  for (let i = 0; i < 300; i++) {
    const name = Buffer.alloc(1 + (next() % 120)); // up to 4 MD4 blocks and 8 TEA blocks
    for (let j = 0; j < name.length; j++) name[j] = next() & 0xff;
    names.push(name);
  }
  const cases = names.flatMap((name) => VERSIONS.flatMap((version) => seeds.map((seed) => ({ name, version, seed }))));
  const reference = cases.map((c) => {
    dxHash(Buffer.from('unrelated'), DX_HASH.TEA, uuidToBuf(SEEDS[2] as string));
    return dxHash(c.name, c.version, c.seed);
  });
  // Interleaved: reversed order, a long name or a failing call between each pair.
  let mismatches = 0;
  for (let i = cases.length - 1; i >= 0; i--) {
    if (i % 3 === 0) t.throws(() => dxHash(cases[i].name, 1, Buffer.alloc(8)));
    if (i % 3 === 1) dxHash(names[(i * 7) % names.length], DX_HASH.HALF_MD4_UNSIGNED, seeds[i % 3]);
    const got = dxHash(cases[i].name, cases[i].version, cases[i].seed);
    if (got.major !== reference[i].major || got.minor !== reference[i].minor) mismatches++;
  }
  t.is(mismatches, 0);
});
