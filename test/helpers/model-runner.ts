/**
 * Model-based random testing of Ext4Fs against the host kernel's filesystem.
 *
 * A seeded PRNG generates a sequence of operations on relative paths. Each operation runs on a
 * real host directory (the oracle: node:fs, plus python3 for renameat2/xattr/fallocate/utimens)
 * and on a fresh mkfs.ext4 image through Ext4Fs. The outcome (success or errno, and the bytes
 * for reads) must match after every operation; the touched paths' attributes are compared
 * after every operation; whole trees (names, types, modes, sizes, link counts, hard-link
 * identity, content, symlink targets, xattrs, readdir paging) are compared at every reopen and
 * at the end; e2fsck -fn must pass at the end.
 *
 * Ext4Fs is addressed by inode number like a FUSE filesystem, so the kfs side does what the
 * Linux VFS would do before the request reaches the filesystem: path walk (every symlink the
 * model makes dangles, so following one gives ENOENT), open(2) of a directory for writing is
 * EISDIR, mkdir's mode is masked to 01777, link(2) and rename(2) existence and ancestor checks
 * in the order do_linkat/do_renameat2 make them. Everything else is the library's answer.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Ext4Fs, Attr } from '../../src/ext4/fs';
import { FsError } from '../../src/util/errors';
import { HostSyscalls, HostResult } from './model-host';

// ---------------------------------------------------------------- configuration

export interface ModelConfig {
  name: string;
  sizeMiB: number;
  blockSize: number;
  mkfsArgs: string[];
}

export const CONFIGS: ModelConfig[] = [
  { name: '1k-256M', sizeMiB: 256, blockSize: 1024, mkfsArgs: [] },
  { name: '4k-512M', sizeMiB: 512, blockSize: 4096, mkfsArgs: [] },
  { name: '2k-128M-nocsum-nodirindex', sizeMiB: 128, blockSize: 2048, mkfsArgs: ['-O', '^metadata_csum,^dir_index'] },
];

export function configForSeed(seed: number): ModelConfig {
  return CONFIGS[(seed >>> 0) % CONFIGS.length];
}

const ROOT = 2;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const EXT4_TIME_MIN = -(2 ** 31);
const EXT4_TIME_MAX = 2 ** 34 - 1 - 2 ** 31;
/** ext4 with extents: (2^32 - 1) blocks per file. */
const MAX_BLOCKS = 2 ** 32 - 1;
const XATTR_NAMES = ['user.a', 'user.bb', 'user.ccc', 'user.a-rather-long-name'];
/** Largest bulk create (KFS_MODEL_BULK_MAX; lower it to steer a soak around a known bug). */
const BULK_MAX = Number(process.env.KFS_MODEL_BULK_MAX ?? 2500);
const NAME_POOL = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'];
const E = os.constants.errno;
const ERRNO_NAME = new Map<number, string>(Object.entries(E).map(([k, v]) => [v, k]));
const errName = (n: number): string => (n === 0 ? 'OK' : ERRNO_NAME.get(n) ?? `errno ${n}`);

// ---------------------------------------------------------------- PRNG

/** mulberry32: small, fast, good enough to drive a test; fully determined by the seed. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  u32(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  float(): number {
    return (this.u32() * 2 ** 21 + (this.u32() >>> 11)) / 2 ** 53;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.float() * n);
  }
  /** Integer in [a, b]. */
  range(a: number, b: number): number {
    return a + this.int(b - a + 1);
  }
  chance(p: number): boolean {
    return this.float() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  weighted<T extends string>(w: Record<T, number>): T {
    const entries = Object.entries(w) as [T, number][];
    let total = 0;
    for (const [, v] of entries) total += v;
    let r = this.float() * total;
    for (const [k, v] of entries) {
      if ((r -= v) < 0) return k;
    }
    return entries[entries.length - 1][0];
  }
}

/** Deterministic pseudo-random bytes for a data seed. */
export function dataFor(seed: number, len: number): Buffer {
  const buf = Buffer.allocUnsafe(len);
  let s = seed >>> 0;
  let i = 0;
  for (; i + 4 <= len; i += 4) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    buf.writeUInt32LE((t ^ (t >>> 14)) >>> 0, i);
  }
  for (; i < len; i++) buf[i] = (seed + i * 131) & 0xff;
  return buf;
}

// ---------------------------------------------------------------- operations

export type Op =
  | { k: 'create'; p: string; mode: number }
  | { k: 'mkdir'; p: string; mode: number }
  | { k: 'write'; p: string; off: number; len: number; d: number }
  | { k: 'read'; p: string; off: number; len: number }
  | { k: 'truncate'; p: string; size: number }
  | { k: 'unlink'; p: string }
  | { k: 'rmdir'; p: string }
  | { k: 'rename'; a: string; b: string; flags: number }
  | { k: 'link'; a: string; b: string }
  | { k: 'symlink'; target: string; p: string }
  | { k: 'setxattr'; p: string; name: string; len: number; d: number; flags: number }
  | { k: 'removexattr'; p: string; name: string }
  | { k: 'fallocate'; p: string; mode: number; off: number; len: number }
  | { k: 'chmod'; p: string; mode: number }
  | { k: 'utimens'; p: string; at: [number, number]; mt: [number, number] }
  | { k: 'bulkcreate'; dir: string; prefix: string; n: number }
  | { k: 'bulkunlink'; dir: string; mod: number; rem: number }
  | { k: 'openh'; p: string; h: number }
  | { k: 'hwrite'; h: number; off: number; len: number; d: number }
  | { k: 'hread'; h: number; off: number; len: number }
  | { k: 'hclose'; h: number }
  | { k: 'readdirmix'; dir: string; create: string[]; unlink: number[] }
  | { k: 'fragment'; p: string; start: number; n: number; stride: number; d: number }
  | { k: 'mknod'; p: string; type: 'fifo' | 'chr' | 'blk' | 'sock'; mode: number; major: number; minor: number }
  | { k: 'reopen' };

export const opText = (op: Op): string => JSON.stringify(op);

// ---------------------------------------------------------------- failures

export class ModelFailure extends Error {
  constructor(
    /** What kind of check failed and on which operation kind: used to keep shrinking on the same bug. */
    readonly signature: string,
    message: string,
    readonly opIndex: number,
  ) {
    super(message);
    this.name = 'ModelFailure';
  }
}

// ---------------------------------------------------------------- host view

interface HostEntry {
  path: string;
  /** 'o': fifo, socket or device node. */
  type: 'f' | 'd' | 'l' | 'o';
  size: number;
  blocks: number;
  ino: number;
}

function scanHost(root: string): HostEntry[] {
  const out: HostEntry[] = [];
  const walk = (rel: string): void => {
    const abs = rel ? path.join(root, rel) : root;
    for (const name of fs.readdirSync(abs).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = fs.lstatSync(path.join(root, r));
      const type = st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : st.isFile() ? 'f' : 'o';
      out.push({ path: r, type, size: st.size, blocks: st.blocks, ino: st.ino });
      if (type === 'd') walk(r);
    }
  };
  walk('');
  return out;
}

// ---------------------------------------------------------------- generator

class Generator {
  entries: HostEntry[] = [];
  usedBytes = 0;
  nextHandle = 1;
  handles: number[] = [];
  /** Path each handle was opened by (it may have been renamed or unlinked since). */
  handlePaths = new Map<number, string>();
  /** Recent setxattr targets, so that removexattr and XATTR_REPLACE often hit something. */
  private xattrHits: { p: string; name: string }[] = [];
  constructor(private rng: Rng, private cfg: ModelConfig, private inodeBudget: number) {}

  refresh(entries: HostEntry[]): void {
    this.entries = entries;
    const seen = new Set<number>();
    let used = 0;
    for (const e of entries) {
      if (seen.has(e.ino)) continue;
      seen.add(e.ino);
      used += e.blocks * 512;
    }
    this.usedBytes = used;
  }

  private get spaceTight(): boolean {
    return this.usedBytes > this.cfg.sizeMiB * 2 ** 20 * 0.3;
  }

  private name(): string {
    const r = this.rng;
    const x = r.float();
    if (x < 0.7) return r.pick(NAME_POOL);
    if (x < 0.85) return randomLetters(r, r.range(1, 12));
    if (x < 0.95) return randomLetters(r, r.range(100, 255));
    // Multi-byte UTF-8; at most 255 bytes.
    const chars = ['é', 'ß', '日', '本', 'ø', 'x', '—'];
    let s = '';
    while (Buffer.byteLength(s) < r.range(1, 80)) s += r.pick(chars);
    return s;
  }

  private dirs(): string[] {
    return ['', ...this.entries.filter((e) => e.type === 'd').map((e) => e.path)];
  }

  private existing(filter?: (e: HostEntry) => boolean): string | null {
    const r = this.rng;
    const pool = filter ? this.entries.filter(filter) : this.entries;
    if (!pool.length) return null;
    if (r.chance(0.5)) return r.pick(pool).path;
    // Pick a directory first so that a huge directory does not swallow every pick.
    const dirs = this.dirs().filter((d) => pool.some((e) => parentOf(e.path) === d));
    const d = r.pick(dirs);
    return r.pick(pool.filter((e) => parentOf(e.path) === d)).path;
  }

  private fresh(): string {
    const d = this.rng.pick(this.dirs());
    return joinRel(d, this.name());
  }

  /** Mostly an existing path of the wanted kind, sometimes any path, sometimes a new one. */
  private target(kind?: 'f' | 'd' | 'l' | 'o'): string {
    const r = this.rng.float();
    if (r < 0.75) return this.existing(kind ? (e) => e.type === kind : undefined) ?? this.fresh();
    if (r < 0.9) return this.existing() ?? this.fresh();
    return this.fresh();
  }

  private writeShape(size: number): { off: number; len: number } {
    const w = this.rawWriteShape(size);
    // Files truncated near the size limit: keep appends from crossing it (a known kfs bug with
    // its own regression test in model.test.ts).
    const max = MAX_BLOCKS * this.cfg.blockSize;
    if (w.off < max && w.off + w.len > max) w.len = max - w.off;
    return w;
  }

  private rawWriteShape(size: number): { off: number; len: number } {
    const r = this.rng;
    const bs = this.cfg.blockSize;
    const shape = r.weighted({ small: 40, medium: 18, append: 12, large: 8, far: 6, aligned: 10, tiny: 6 });
    switch (shape) {
      case 'small': return { off: r.int(65536), len: r.range(1, 8192) };
      case 'medium': return { off: r.int(4 << 20), len: r.range(1, 256 << 10) };
      case 'append': return { off: size + r.int(3 * bs), len: r.range(1, 65536) };
      case 'large': return { off: r.int(16 << 20), len: r.range(1 << 20, 8 << 20) };
      case 'far': return { off: r.range(64 << 20, 8 * 2 ** 30), len: r.range(1, 65536) };
      case 'aligned': return { off: r.int(2048) * bs, len: r.range(1, 64) * bs };
      default: return { off: Math.max(0, size - r.int(bs)), len: r.range(1, 16) };
    }
  }

  next(): Op {
    const r = this.rng;
    const tight = this.spaceTight;
    const kind = r.weighted({
      create: 10, mkdir: 5, write: tight ? 2 : 14, read: 5, truncate: 6, unlink: tight ? 12 : 6, rmdir: 3, rename: 10,
      link: 4, symlink: 4, setxattr: 6, removexattr: 3, fallocate: tight ? 1 : 6, chmod: 3, utimens: 3,
      bulkcreate: this.entries.length * 2 > this.inodeBudget ? 0 : 0.6, bulkunlink: 1,
      openh: this.handles.length < 3 ? 2 : 0, hwrite: this.handles.length ? 4 : 0, hread: this.handles.length ? 1 : 0,
      hclose: this.handles.length ? 1.5 : 0, reopen: 0.7, readdirmix: 1, fragment: tight ? 0 : 1.5, mknod: 1.5,
      edge: this.cfg.blockSize === 4096 ? 1 : 0,
    });
    const sizeOf = (p: string): number => this.entries.find((e) => e.path === p)?.size ?? 0;
    switch (kind) {
      case 'create': return { k: 'create', p: r.chance(0.85) ? this.fresh() : this.target(), mode: r.chance(0.7) ? 0o644 : r.int(0o10000) };
      case 'mkdir': return { k: 'mkdir', p: r.chance(0.85) ? this.fresh() : this.target(), mode: r.chance(0.7) ? 0o755 : r.int(0o10000) };
      case 'write': {
        const p = this.target('f');
        return { k: 'write', p, ...this.writeShape(sizeOf(p)), d: r.u32() };
      }
      case 'read': {
        const p = this.target('f');
        const size = sizeOf(p);
        const off = r.chance(0.8) ? r.int(size + 1) : r.int(size + 100000);
        return { k: 'read', p, off, len: r.range(1, r.chance(0.8) ? 70000 : 4 << 20) };
      }
      case 'truncate': {
        const p = this.target('f');
        const size = sizeOf(p);
        const bs = this.cfg.blockSize;
        const how = r.weighted({ zero: 10, down: 30, up: 25, aligned: 15, far: tight ? 0 : 5, small: 15 });
        const s = how === 'zero' ? 0 : how === 'down' ? r.int(size + 1) : how === 'up' ? size + r.range(1, 16 << 20)
          : how === 'aligned' ? r.int(4096) * bs : how === 'far' ? r.range(64 << 20, 8 * 2 ** 30) : r.int(3 * bs);
        return { k: 'truncate', p, size: s };
      }
      case 'unlink': {
        // Often the file behind an open handle: unlinked-but-open files (orphans) must survive.
        const open = [...this.handlePaths.values()];
        return { k: 'unlink', p: open.length && r.chance(0.3) ? r.pick(open) : this.target(r.chance(0.5) ? 'f' : undefined) };
      }
      case 'rmdir': {
        const empty = this.entries.filter((e) => e.type === 'd' && !this.entries.some((c) => parentOf(c.path) === e.path));
        return { k: 'rmdir', p: empty.length && r.chance(0.5) ? r.pick(empty).path : this.target('d') };
      }
      case 'rename': {
        const a = this.target();
        const flags = r.weighted({ plain: 70, noreplace: 15, exchange: 15 });
        let b: string;
        const x = r.float();
        if (x < 0.4) b = this.fresh();
        else if (x < 0.85) b = this.existing() ?? this.fresh();
        else b = r.chance(0.5) ? joinRel(a, this.name()) : parentOf(a) || this.fresh(); // into itself / onto an ancestor
        return { k: 'rename', a, b, flags: flags === 'plain' ? 0 : flags === 'noreplace' ? 1 : 2 };
      }
      case 'link': return { k: 'link', a: this.target(r.chance(0.8) ? 'f' : undefined), b: r.chance(0.85) ? this.fresh() : this.target() };
      case 'symlink': {
        // Every target must dangle (see danglingTarget): the host would follow it otherwise.
        const x = r.float();
        const target = x < 0.3 ? 'Q' + randomUpper(r, r.range(0, 8))
          : x < 0.6 ? '/kfs-model-nowhere/' + randomLetters(r, r.range(1, 40))
            : (r.chance(0.5) ? '/kfs-model-nowhere/' : 'Qnowhere/') + randomLetters(r, r.range(41, 880));
        return { k: 'symlink', target, p: r.chance(0.85) ? this.fresh() : this.target() };
      }
      case 'setxattr': {
        const hit = this.xattrHits.length && r.chance(0.3) ? r.pick(this.xattrHits) : { p: this.target(), name: r.pick(XATTR_NAMES) };
        this.xattrHits = [...this.xattrHits.slice(-20), hit];
        return { k: 'setxattr', ...hit, len: r.chance(0.1) ? 0 : r.range(1, 160), d: r.u32(), flags: Number(r.weighted({ 0: 70, 1: 15, 2: 15 })) };
      }
      case 'removexattr': {
        const hit = this.xattrHits.length && r.chance(0.6) ? r.pick(this.xattrHits) : { p: this.target(), name: r.pick(XATTR_NAMES) };
        return { k: 'removexattr', ...hit };
      }
      case 'fallocate': {
        const p = this.target('f');
        const size = sizeOf(p);
        const mode = r.pick([0, 0x01, 0x03, 0x03, 0x10, 0x11]);
        const bs = this.cfg.blockSize;
        const x = r.float();
        let off: number;
        let len: number;
        if (x < 0.5 && size > 0) {
          // Inside the file, where punching and zeroing change data.
          off = r.int(size);
          len = r.range(1, Math.max(1, size - off + bs));
        } else if (x < 0.75) {
          off = r.int(2048) * bs;
          len = r.range(1, 256) * bs;
        } else {
          off = r.int(4 << 20);
          len = r.range(1, r.chance(0.8) ? 256 << 10 : 4 << 20);
        }
        // Allocating modes must not run the (small) image out of space where the host has room.
        if (mode !== 0x03) len = Math.min(len, 8 << 20);
        return { k: 'fallocate', p, mode, off, len };
      }
      case 'chmod': return { k: 'chmod', p: this.target(), mode: r.int(0o10000) };
      case 'utimens': {
        const t = (): [number, number] => {
          const x = r.float();
          // At exactly s_time_min/max the kernel's timestamp_truncate() zeroes tv_nsec (VFS, not the fs).
          if (x < 0.2) return [x < 0.1 ? EXT4_TIME_MIN : EXT4_TIME_MAX, 0];
          const sec = x < 0.1 ? EXT4_TIME_MIN : x < 0.2 ? EXT4_TIME_MAX : x < 0.4 ? r.range(EXT4_TIME_MIN, 0) : x < 0.7 ? r.range(0, 2 ** 31 - 1) : r.range(2 ** 31, EXT4_TIME_MAX);
          return [sec, r.chance(0.2) ? 0 : r.int(1e9)];
        };
        return { k: 'utimens', p: this.target(), at: t(), mt: t() };
      }
      case 'bulkcreate': {
        const big = r.chance(0.2) && this.inodeBudget > 6000;
        const n = Math.min(BULK_MAX, big ? r.range(1500, 2500) : r.range(40, 400));
        const prefix = randomLetters(r, big ? r.range(150, 220) : r.range(1, 60)) + '-';
        const dirs = this.dirs();
        return { k: 'bulkcreate', dir: r.chance(0.5) && dirs.length > 1 ? r.pick(dirs.slice(1)) : this.fresh(), prefix, n };
      }
      case 'bulkunlink': {
        const dirs = this.dirs();
        const counts = dirs.map((d) => this.entries.filter((e) => parentOf(e.path) === d).length);
        const biggest = dirs[counts.indexOf(Math.max(...counts))];
        const mod = r.range(1, 4);
        return { k: 'bulkunlink', dir: r.chance(0.7) ? biggest : r.pick(dirs), mod, rem: r.int(mod) };
      }
      case 'openh': {
        const op: Op = { k: 'openh', p: this.target('f'), h: this.nextHandle++ };
        this.handlePaths.set(op.h, op.p);
        return op;
      }
      case 'hwrite': return { k: 'hwrite', h: r.pick(this.handles), ...this.writeShape(r.int(65536)), d: r.u32() };
      case 'hread': return { k: 'hread', h: r.pick(this.handles), off: r.int(100000), len: r.range(1, 70000) };
      case 'hclose': return { k: 'hclose', h: r.pick(this.handles) };
      case 'readdirmix': {
        const dirs = this.dirs().filter((d) => this.entries.filter((e) => parentOf(e.path) === d).length >= 4);
        if (!dirs.length) return { k: 'reopen' };
        const dir = r.pick(dirs);
        const n = this.entries.filter((e) => parentOf(e.path) === dir).length;
        const create = Array.from({ length: r.range(0, 20) }, () => `rd-${randomLetters(r, r.range(1, 30))}`);
        const unlink = Array.from({ length: r.range(0, Math.min(10, n)) }, () => r.int(n));
        return { k: 'readdirmix', dir, create, unlink };
      }
      case 'fragment': {
        // Many one-block extents with gaps: deep extent trees (depth 2 needs > 4 * (bs - 12) / 12).
        const n = r.range(20, r.chance(0.3) ? 1500 : 400);
        return { k: 'fragment', p: this.target('f'), start: r.int(64), n, stride: r.range(2, 3), d: r.u32() };
      }
      case 'mknod': {
        const type = r.pick(['fifo', 'chr', 'blk', 'sock'] as const);
        const dev = type === 'chr' || type === 'blk';
        return { k: 'mknod', p: r.chance(0.9) ? this.fresh() : this.target(), type, mode: r.int(0o10000) & 0o7777, major: dev ? r.pick([0, 1, 7, 200, 255, 256, 4095]) : 0, minor: dev ? r.pick([0, 3, 255, 256, 65536, 2 ** 20 - 1]) : 0 };
      }
      case 'edge': {
        // Around the largest file size ext4 allows with 4 KiB blocks ((2^32 - 1) blocks).
        const max = MAX_BLOCKS * 4096;
        const p = this.target('f');
        // Writes that cross the limit are left to their own regression test (model.test.ts: a
        // short write is due, kfs answers EFBIG), so that they do not mask everything else.
        if (r.chance(0.5)) {
          const below = r.chance(0.7);
          const off = below ? max - r.range(1, 3 * 4096) : max + r.int(4096);
          return { k: 'write', p, off, len: below ? r.range(1, max - off) : r.range(1, 8192), d: r.u32() };
        }
        return { k: 'truncate', p, size: max - 4096 + r.int(2 * 4096) };
      }
      case 'reopen': return { k: 'reopen' };
    }
  }
}

function randomLetters(r: Rng, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += String.fromCharCode(97 + r.int(26));
  return s;
}

/** Uppercase letters and digits: no generated file name contains them. */
function randomUpper(r: Rng, n: number): string {
  const cs = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
  let s = '';
  for (let i = 0; i < n; i++) s += cs[r.int(cs.length)];
  return s;
}

/**
 * Targets the generator makes can never resolve: absolute ones under a directory that does not
 * exist, relative ones starting with "Q" (no generated name has an uppercase letter). The runner
 * refuses (as a test bug) to run anything else, so that no operation follows a symlink out of
 * the host tree.
 */
export function danglingTarget(t: string): boolean {
  return t.startsWith('/kfs-model-nowhere/') || (t.startsWith('Q') && !t.includes('..'));
}

function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
}
function baseOf(p: string): string {
  return p.slice(p.lastIndexOf('/') + 1);
}
function joinRel(d: string, n: string): string {
  return d ? `${d}/${n}` : n;
}
/** Is `a` a proper ancestor of `b` (by path; the model makes no directory hard links)? */
function isAncestor(a: string, b: string): boolean {
  return a === '' ? b !== '' : b.startsWith(a + '/');
}

// ---------------------------------------------------------------- the kfs side (with VFS emulation)

class Errno extends Error {
  constructor(readonly errno: number, why: string) {
    super(`${errName(errno)} (${why})`);
  }
}

function kfsErrno(e: unknown): number {
  if (e instanceof FsError) return e.errno;
  if (e instanceof Errno) return e.errno;
  throw e; // anything else is a crash of the library: let it surface
}

function hostErrno(e: unknown): number {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (typeof code === 'string' && code in E) return E[code as keyof typeof E];
  throw e;
}

const isDir = (a: Attr): boolean => (a.mode & S_IFMT) === S_IFDIR;
const isLnk = (a: Attr): boolean => (a.mode & S_IFMT) === S_IFLNK;
const isReg = (a: Attr): boolean => (a.mode & S_IFMT) === S_IFREG;
const S_IF: Record<string, number> = { fifo: 0o010000, chr: 0o020000, blk: 0o060000, sock: 0o140000 };
/** glibc makedev(), as far as a JS number carries it exactly. */
const makedev = (major: number, minor: number): number => ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;

interface Resolved {
  parent: number;
  name: Buffer;
  attr: Attr | null;
}

class KfsSide {
  constructor(public fsys: Ext4Fs) {}

  async lookupOrNull(dir: number, name: Buffer): Promise<Attr | null> {
    try {
      return await this.fsys.lookup(dir, name);
    } catch (e) {
      if (e instanceof FsError && e.code === 'ENOENT') return null;
      throw e;
    }
  }

  /** Path walk: intermediate symlinks dangle (ENOENT), non-directories are ENOTDIR. */
  async resolve(rel: string, follow: boolean): Promise<Resolved> {
    const comps = rel.split('/');
    let cur = ROOT;
    for (const c of comps.slice(0, -1)) {
      const a = await this.lookupOrNull(cur, Buffer.from(c));
      if (!a) throw new Errno(E.ENOENT, `path component ${c} missing`);
      if (isLnk(a)) throw new Errno(E.ENOENT, `path component ${c} is a dangling symlink`);
      if (!isDir(a)) throw new Errno(E.ENOTDIR, `path component ${c} is not a directory`);
      cur = a.ino;
    }
    const name = Buffer.from(comps[comps.length - 1]);
    const attr = await this.lookupOrNull(cur, name);
    if (attr && follow && isLnk(attr)) throw new Errno(E.ENOENT, 'dangling symlink followed');
    return { parent: cur, name, attr };
  }

  async existing(rel: string, follow: boolean): Promise<Attr> {
    const r = await this.resolve(rel, follow);
    if (!r.attr) throw new Errno(E.ENOENT, `${rel} missing`);
    return r.attr;
  }
}

// ---------------------------------------------------------------- outcome comparison

interface Outcome {
  err: number;
  /** Result payload to compare (read data), when successful. */
  data?: Buffer;
}

async function outcome(fn: () => Promise<Buffer | void>, toErrno: (e: unknown) => number): Promise<Outcome> {
  try {
    const d = await fn();
    return { err: 0, data: d ?? undefined };
  } catch (e) {
    return { err: toErrno(e) };
  }
}

function describeOutcome(o: Outcome): string {
  if (o.err) return errName(o.err);
  if (!o.data) return 'OK';
  return o.data.subarray(0, 6).toString() === 'wrote ' ? `OK (${o.data.toString()})` : `OK (${o.data.length} bytes)`;
}

function firstDiff(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

// ---------------------------------------------------------------- the sequence runner

export interface SequenceOptions {
  seed: number;
  ops: number;
  /** Replay this exact operation list instead of generating. */
  replay?: Op[];
  config?: ModelConfig;
  workDir: string;
  /** Keep the image and host tree on failure (for debugging). */
  keep?: boolean;
  log?: (s: string) => void;
}

export interface SequenceResult {
  ops: Op[];
  stats: Record<string, number>;
  mismatchesChecked: number;
  reopens: number;
  ms: number;
}

export async function runSequence(o: SequenceOptions): Promise<SequenceResult> {
  const cfg = o.config ?? configForSeed(o.seed);
  const dir = fs.mkdtempSync(path.join(o.workDir, `seq-${o.seed}-`));
  const img = path.join(dir, 'fs.img');
  const hostRoot = path.join(dir, 'host');
  fs.mkdirSync(hostRoot);
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', String(cfg.blockSize), ...cfg.mkfsArgs, img, `${cfg.sizeMiB}M`], { stdio: 'pipe' });
  const t0 = Date.now();
  const sys = new HostSyscalls();
  let fsys = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  const k = new KfsSide(fsys);
  const inodeBudget = (await fsys.statfs()).files;
  const rng = new Rng(o.seed);
  const gen = new Generator(rng, cfg, inodeBudget);
  const ops: Op[] = [];
  const stats: Record<string, number> = {};
  const hostFds = new Map<number, number>();
  const kfsHandles = new Map<number, number>(); // handle -> inode
  let checks = 0;
  let reopens = 0;
  let failed = false;
  const H = (rel: string): string => (rel ? path.join(hostRoot, rel) : hostRoot);

  const fail = (sig: string, i: number, msg: string): never => {
    const tail = ops.slice(Math.max(0, i - 15), i + 1).map((op, j) => `  #${Math.max(0, i - 15) + j} ${opText(op)}`).join('\n');
    throw new ModelFailure(sig, `[seed ${o.seed}, config ${cfg.name}] op #${i}: ${msg}\nlast operations:\n${tail}\nimage: ${img}\nhost tree: ${hostRoot}`, i);
  };

  const hostCall = async (req: Record<string, unknown>): Promise<void> => {
    const r = await sys.call(req);
    if (r.err !== undefined) throw Object.assign(new Error(`host ${req.op}: ${errName(r.err)}`), { code: errName(r.err) });
  };

  /** Attributes of one path compared right after an operation. */
  const checkPath = async (i: number, rel: string, op: Op): Promise<void> => {
    if (!rel) return;
    let hst: fs.Stats | null = null;
    try {
      hst = fs.lstatSync(H(rel));
    } catch (e) {
      const n = hostErrno(e);
      if (n !== E.ENOENT && n !== E.ENOTDIR) throw e;
    }
    let ka: Attr | null = null;
    try {
      ka = (await k.resolve(rel, false)).attr;
    } catch (e) {
      const n = kfsErrno(e);
      if (n !== E.ENOENT && n !== E.ENOTDIR) fail(`post:${op.k}`, i, `resolving ${rel} on kfs failed with ${errName(n)}: ${(e as Error).message}`);
    }
    checks++;
    if (!hst || !ka) {
      if (!!hst !== !!ka) fail(`post:${op.k}`, i, `after ${op.k}: ${rel} exists on ${hst ? 'host' : 'kfs'} only`);
      return;
    }
    const what: string[] = [];
    if (hst.mode !== ka.mode) what.push(`mode host 0${hst.mode.toString(8)} kfs 0${ka.mode.toString(8)}`);
    if (hst.nlink !== ka.nlink) what.push(`nlink host ${hst.nlink} kfs ${ka.nlink}`);
    if (!hst.isDirectory() && hst.size !== ka.size) what.push(`size host ${hst.size} kfs ${ka.size}`);
    if ((hst.isCharacterDevice() || hst.isBlockDevice()) && hst.rdev !== ka.rdev) what.push(`rdev host ${hst.rdev.toString(16)} kfs ${ka.rdev.toString(16)}`);
    if (what.length) fail(`post:${op.k}`, i, `after ${op.k}: ${rel}: ${what.join(', ')}`);
  };

  const applyOp = async (i: number, op: Op): Promise<void> => {
    stats[op.k] = (stats[op.k] ?? 0) + 1;
    if (op.k === 'symlink' && !danglingTarget(op.target)) throw new Error(`test bug: symlink target ${op.target} might resolve`);
    // Never open a fifo, socket or device node on the host (a fifo blocks, a device is real).
    if (['write', 'read', 'truncate', 'fallocate', 'openh', 'fragment'].includes(op.k) && 'p' in op) {
      let st: fs.Stats | null = null;
      try {
        st = fs.statSync(H(op.p));
      } catch {
        /* absent: the open fails on both sides */
      }
      if (st && !st.isFile() && !st.isDirectory()) {
        stats[`${op.k} skipped (special file)`] = (stats[`${op.k} skipped (special file)`] ?? 0) + 1;
        if (op.k === 'openh') gen.handlePaths.delete(op.h);
        return;
      }
    }
    // Belt and braces: no host path may lead outside the host tree through a symlink.
    for (const p of ['p' in op ? op.p : '', 'a' in op ? op.a : '', 'b' in op ? op.b : '', 'dir' in op ? op.dir : '']) {
      let cur = hostRoot;
      for (const c of p ? p.split('/') : []) {
        cur = path.join(cur, c);
        let st: fs.Stats;
        try {
          st = fs.lstatSync(cur);
        } catch {
          break;
        }
        if (st.isSymbolicLink() && fs.existsSync(cur)) throw new Error(`test bug: host symlink ${cur} resolves (to ${fs.realpathSync(cur)})`);
      }
    }
    let host: Outcome;
    let kfs: Outcome;
    const compare = (h: Outcome, kk: Outcome, what = ''): void => {
      checks++;
      if (h.err) stats[`${op.k}!`] = (stats[`${op.k}!`] ?? 0) + 1;
      if (h.err !== kk.err) fail(`outcome:${op.k}`, i, `${what || op.k}: host ${describeOutcome(h)}, kfs ${describeOutcome(kk)}`);
      if (h.data || kk.data) {
        const hd = h.data ?? Buffer.alloc(0);
        const kd = kk.data ?? Buffer.alloc(0);
        if (!hd.equals(kd)) fail(`data:${op.k}`, i, `${what || op.k}: returned data differs (host ${hd.length} bytes, kfs ${kd.length} bytes, first difference at ${firstDiff(hd, kd)})`);
      }
    };
    switch (op.k) {
      case 'create':
        host = await outcome(async () => fs.closeSync(fs.openSync(H(op.p), 'wx', op.mode)), hostErrno);
        kfs = await outcome(async () => {
          const r = await k.resolve(op.p, false);
          await k.fsys.create(r.parent, r.name, op.mode, 0, 0);
        }, kfsErrno);
        break;
      case 'mkdir':
        host = await outcome(async () => fs.mkdirSync(H(op.p), { mode: op.mode }), hostErrno);
        kfs = await outcome(async () => {
          const r = await k.resolve(op.p, false);
          await k.fsys.mkdir(r.parent, r.name, op.mode & 0o1777, 0, 0); // vfs_mkdir masks to S_IRWXUGO|S_ISVTX
        }, kfsErrno);
        break;
      case 'write':
        host = await outcome(async () => {
          const fd = fs.openSync(H(op.p), 'r+');
          try {
            return Buffer.from(`wrote ${fs.writeSync(fd, dataFor(op.d, op.len), 0, op.len, op.off)}`);
          } finally {
            fs.closeSync(fd);
          }
        }, hostErrno);
        kfs = await outcome(async () => {
          const a = await k.existing(op.p, true);
          if (isDir(a)) throw new Errno(E.EISDIR, 'open(O_RDWR) of a directory');
          await k.fsys.open(a.ino);
          try {
            return Buffer.from(`wrote ${await k.fsys.write(a.ino, op.off, dataFor(op.d, op.len))}`);
          } finally {
            await k.fsys.release(a.ino);
          }
        }, kfsErrno);
        break;
      case 'read':
        host = await outcome(async () => {
          const fd = fs.openSync(H(op.p), 'r');
          try {
            const buf = Buffer.alloc(op.len);
            const n = fs.readSync(fd, buf, 0, op.len, op.off);
            return buf.subarray(0, n);
          } finally {
            fs.closeSync(fd);
          }
        }, hostErrno);
        kfs = await outcome(async () => {
          const a = await k.existing(op.p, true);
          await k.fsys.open(a.ino);
          try {
            return await k.fsys.read(a.ino, op.off, op.len);
          } finally {
            await k.fsys.release(a.ino);
          }
        }, kfsErrno);
        break;
      case 'truncate':
        host = await outcome(async () => fs.truncateSync(H(op.p), op.size), hostErrno);
        kfs = await outcome(async () => {
          const a = await k.existing(op.p, true);
          await k.fsys.setattr(a.ino, { size: op.size });
        }, kfsErrno);
        break;
      case 'unlink':
        host = await outcome(async () => fs.unlinkSync(H(op.p)), hostErrno);
        kfs = await outcome(async () => {
          const r = await k.resolve(op.p, false);
          await k.fsys.unlink(r.parent, r.name);
        }, kfsErrno);
        break;
      case 'rmdir':
        host = await outcome(async () => fs.rmdirSync(H(op.p)), hostErrno);
        kfs = await outcome(async () => {
          const r = await k.resolve(op.p, false);
          await k.fsys.rmdir(r.parent, r.name);
        }, kfsErrno);
        break;
      case 'rename':
        host = await outcome(async () => {
          if (op.flags === 0) fs.renameSync(H(op.a), H(op.b));
          else await hostCall({ op: 'renameat2', a: H(op.a), b: H(op.b), flags: op.flags });
        }, hostErrno);
        kfs = await outcome(async () => {
          // do_renameat2: both parents, the source, the flags' existence rules, then the
          // lock_rename "trap" (a directory moved under itself, or onto one of its ancestors).
          const s = await k.resolve(op.a, false);
          const t = await k.resolve(op.b, false);
          if (!s.attr) throw new Errno(E.ENOENT, 'source missing');
          if (op.flags & 1 && t.attr) throw new Errno(E.EEXIST, 'RENAME_NOREPLACE and the target exists');
          if (op.flags & 2 && !t.attr) throw new Errno(E.ENOENT, 'RENAME_EXCHANGE and the target is missing');
          if (isAncestor(op.a, op.b)) throw new Errno(E.EINVAL, 'source is an ancestor of the target');
          if (isAncestor(op.b, op.a)) throw new Errno(op.flags & 2 ? E.EINVAL : E.ENOTEMPTY, 'target is an ancestor of the source');
          await k.fsys.rename(s.parent, s.name, t.parent, t.name, op.flags);
        }, kfsErrno);
        break;
      case 'link':
        host = await outcome(async () => fs.linkSync(H(op.a), H(op.b)), hostErrno);
        kfs = await outcome(async () => {
          const s = await k.existing(op.a, false);
          const t = await k.resolve(op.b, false);
          if (t.attr) throw new Errno(E.EEXIST, 'filename_create: target exists');
          await k.fsys.link(s.ino, t.parent, t.name);
        }, kfsErrno);
        break;
      case 'symlink':
        host = await outcome(async () => fs.symlinkSync(op.target, H(op.p)), hostErrno);
        kfs = await outcome(async () => {
          const r = await k.resolve(op.p, false);
          await k.fsys.symlink(r.parent, r.name, Buffer.from(op.target), 0, 0);
        }, kfsErrno);
        break;
      case 'setxattr': {
        const value = dataFor(op.d, op.len);
        host = await outcome(() => hostCall({ op: 'setxattr', p: H(op.p), name: op.name, value: value.toString('base64'), flags: op.flags }), hostErrno);
        kfs = await outcome(async () => {
          const a = await k.existing(op.p, true);
          if (!isDir(a) && !isReg(a)) throw new Errno(E.EPERM, 'xattr_permission: user.* only on regular files and directories');
          await k.fsys.setxattr(a.ino, op.name, value, op.flags);
        }, kfsErrno);
        break;
      }
      case 'removexattr':
        host = await outcome(() => hostCall({ op: 'removexattr', p: H(op.p), name: op.name }), hostErrno);
        kfs = await outcome(async () => {
          const a = await k.existing(op.p, true);
          if (!isDir(a) && !isReg(a)) throw new Errno(E.EPERM, 'xattr_permission: user.* only on regular files and directories');
          await k.fsys.removexattr(a.ino, op.name);
        }, kfsErrno);
        break;
      case 'fallocate':
        host = await outcome(() => hostCall({ op: 'fallocate', p: H(op.p), mode: op.mode, off: op.off, len: op.len }), hostErrno);
        kfs = await outcome(async () => {
          const a = await k.existing(op.p, true);
          if (isDir(a)) throw new Errno(E.EISDIR, 'open(O_RDWR) of a directory');
          await k.fsys.fallocate(a.ino, op.mode, op.off, op.len);
        }, kfsErrno);
        break;
      case 'chmod':
        host = await outcome(async () => fs.chmodSync(H(op.p), op.mode), hostErrno);
        kfs = await outcome(async () => {
          const a = await k.existing(op.p, true);
          await k.fsys.setattr(a.ino, { mode: op.mode });
        }, kfsErrno);
        break;
      case 'utimens': {
        host = await outcome(() => hostCall({ op: 'utimens', p: H(op.p), at: op.at, mt: op.mt }), hostErrno);
        kfs = await outcome(async () => {
          const a = await k.existing(op.p, true);
          await k.fsys.setattr(a.ino, { atime: { sec: op.at[0], nsec: op.at[1] }, mtime: { sec: op.mt[0], nsec: op.mt[1] } });
        }, kfsErrno);
        compare(host, kfs);
        if (!host.err) {
          const hs = fs.statSync(H(op.p), { bigint: true });
          const ka = await k.existing(op.p, true);
          const kns = (t: { sec: number; nsec: number }): bigint => BigInt(t.sec) * 1000000000n + BigInt(t.nsec);
          if (hs.atimeNs !== kns(ka.atime) || hs.mtimeNs !== kns(ka.mtime)) {
            fail('post:utimens', i, `times differ: host atime ${hs.atimeNs} mtime ${hs.mtimeNs}, kfs atime ${kns(ka.atime)} mtime ${kns(ka.mtime)}`);
          }
        }
        await checkPath(i, op.p, op);
        return;
      }
      case 'bulkcreate': {
        host = await outcome(async () => {
          let st: fs.Stats | null = null;
          try {
            st = fs.lstatSync(H(op.dir));
          } catch {
            /* absent */
          }
          if (!st?.isDirectory()) fs.mkdirSync(H(op.dir), { mode: 0o755 });
        }, hostErrno);
        kfs = await outcome(async () => {
          const r = op.dir ? await k.resolve(op.dir, false) : { parent: ROOT, name: Buffer.from('.'), attr: await k.fsys.getattr(ROOT) };
          if (!r.attr) await k.fsys.mkdir(r.parent, r.name, 0o755, 0, 0);
          else if (!isDir(r.attr)) throw new Errno(E.EEXIST, 'mkdir -p over a non-directory');
        }, kfsErrno);
        compare(host, kfs, 'bulkcreate mkdir');
        if (host.err) return;
        const d = op.dir ? (await k.resolve(op.dir, false)).attr!.ino : ROOT;
        for (let j = 0; j < op.n; j++) {
          const name = `${op.prefix}${j}`;
          const h = await outcome(async () => fs.closeSync(fs.openSync(path.join(H(op.dir), name), 'wx', 0o644)), hostErrno);
          const kk = await outcome(async () => void (await k.fsys.create(d, Buffer.from(name), 0o644, 0, 0)), kfsErrno);
          compare(h, kk, `bulkcreate ${name}`);
        }
        return;
      }
      case 'bulkunlink': {
        let names: string[];
        try {
          names = fs.readdirSync(H(op.dir)).sort();
        } catch {
          return;
        }
        const d = op.dir ? (await k.resolve(op.dir, false)).attr : await k.fsys.getattr(ROOT);
        if (!d) fail('outcome:bulkunlink', i, `${op.dir} missing on kfs`);
        for (let j = 0; j < names.length; j++) {
          if (j % op.mod !== op.rem) continue;
          const h = await outcome(async () => fs.unlinkSync(path.join(H(op.dir), names[j])), hostErrno);
          const kk = await outcome(() => k.fsys.unlink(d!.ino, Buffer.from(names[j])), kfsErrno);
          compare(h, kk, `bulkunlink ${names[j]}`);
        }
        return;
      }
      case 'openh':
        host = await outcome(async () => void hostFds.set(op.h, fs.openSync(H(op.p), 'r+')), hostErrno);
        kfs = await outcome(async () => {
          const a = await k.existing(op.p, true);
          if (isDir(a)) throw new Errno(E.EISDIR, 'open(O_RDWR) of a directory');
          await k.fsys.open(a.ino);
          kfsHandles.set(op.h, a.ino);
        }, kfsErrno);
        compare(host, kfs);
        if (!host.err) gen.handles.push(op.h);
        else gen.handlePaths.delete(op.h);
        return;
      case 'hwrite':
      case 'hread': {
        const fd = hostFds.get(op.h);
        const ino = kfsHandles.get(op.h);
        if (fd === undefined || ino === undefined) return; // (replay of a shrunk list)
        if (op.k === 'hwrite') {
          host = await outcome(async () => void fs.writeSync(fd, dataFor(op.d, op.len), 0, op.len, op.off), hostErrno);
          kfs = await outcome(async () => void (await k.fsys.write(ino, op.off, dataFor(op.d, op.len))), kfsErrno);
        } else {
          host = await outcome(async () => {
            const buf = Buffer.alloc(op.len);
            return buf.subarray(0, fs.readSync(fd, buf, 0, op.len, op.off));
          }, hostErrno);
          kfs = await outcome(() => k.fsys.read(ino, op.off, op.len), kfsErrno);
        }
        compare(host, kfs);
        // The handle's file may be unlinked: compare its attributes through the handle.
        const hs = fs.fstatSync(fd);
        const ka = await k.fsys.getattr(ino);
        if (hs.size !== ka.size || hs.nlink !== ka.nlink) fail(`post:${op.k}`, i, `open handle ${op.h}: host size ${hs.size} nlink ${hs.nlink}, kfs size ${ka.size} nlink ${ka.nlink}`);
        return;
      }
      case 'hclose': {
        const fd = hostFds.get(op.h);
        const ino = kfsHandles.get(op.h);
        if (fd !== undefined) fs.closeSync(fd);
        if (ino !== undefined) {
          const r = await outcome(() => k.fsys.release(ino), kfsErrno);
          if (r.err) fail('outcome:hclose', i, `release failed: ${errName(r.err)}`);
        }
        hostFds.delete(op.h);
        kfsHandles.delete(op.h);
        gen.handles = gen.handles.filter((h) => h !== op.h);
        gen.handlePaths.delete(op.h);
        return;
      }
      case 'mknod':
        host = await outcome(() => hostCall({ op: 'mknod', p: H(op.p), type: op.type, mode: op.mode, major: op.major, minor: op.minor }), hostErrno);
        kfs = await outcome(async () => {
          const r = await k.resolve(op.p, false);
          await k.fsys.mknod(r.parent, r.name, op.mode | S_IF[op.type], makedev(op.major, op.minor), 0, 0);
        }, kfsErrno);
        break;
      case 'fragment': {
        const bs = cfg.blockSize;
        const piece = (j: number): Buffer => dataFor(op.d + j, bs);
        host = await outcome(async () => {
          const fd = fs.openSync(H(op.p), 'r+');
          try {
            for (let j = 0; j < op.n; j++) fs.writeSync(fd, piece(j), 0, bs, (op.start + j * op.stride) * bs);
          } finally {
            fs.closeSync(fd);
          }
        }, hostErrno);
        kfs = await outcome(async () => {
          const a = await k.existing(op.p, true);
          if (isDir(a)) throw new Errno(E.EISDIR, 'open(O_RDWR) of a directory');
          await k.fsys.open(a.ino);
          try {
            for (let j = 0; j < op.n; j++) await k.fsys.write(a.ino, (op.start + j * op.stride) * bs, piece(j));
          } finally {
            await k.fsys.release(a.ino);
          }
        }, kfsErrno);
        break;
      }
      case 'readdirmix': {
        // readdir resumed from a cookie after the directory changed (as a FUSE readdir on a new
        // handle, or after the snapshot is gone): entries that were not removed and come after
        // the cookie must each appear exactly once, entries before it must not reappear.
        const d = op.dir ? (await k.resolve(op.dir, false)).attr : await k.fsys.getattr(ROOT);
        if (!d || !isDir(d)) return;
        const first = await k.fsys.readdir(d.ino, 0);
        const at = Math.floor(first.length / 2);
        const cookie = first[at].next;
        const names = fs.readdirSync(H(op.dir)).sort();
        const removed = new Set<string>();
        for (const idx of op.unlink) {
          const name = names[idx];
          if (name === undefined || removed.has(name) || !fs.lstatSync(path.join(H(op.dir), name)).isFile()) continue;
          removed.add(name);
          const h = await outcome(async () => fs.unlinkSync(path.join(H(op.dir), name)), hostErrno);
          const kk = await outcome(() => k.fsys.unlink(d.ino, Buffer.from(name)), kfsErrno);
          compare(h, kk, `readdirmix unlink ${name}`);
        }
        for (const name of op.create) {
          const h = await outcome(async () => fs.closeSync(fs.openSync(path.join(H(op.dir), name), 'wx', 0o600)), hostErrno);
          const kk = await outcome(async () => void (await k.fsys.create(d.ino, Buffer.from(name), 0o600, 0, 0)), kfsErrno);
          compare(h, kk, `readdirmix create ${name}`);
        }
        const rest = (await k.fsys.readdir(d.ino, cookie)).map((e) => e.name.toString());
        const count = new Map<string, number>();
        for (const n of rest) count.set(n, (count.get(n) ?? 0) + 1);
        for (const [n, c] of count) if (c > 1) fail('readdir:cookie', i, `${op.dir || '/'}: ${n} returned ${c} times after resuming from cookie ${cookie}`);
        first.forEach((e, j) => {
          const n = e.name.toString();
          if (n === '.' || n === '..') return;
          if (j <= at && count.has(n)) fail('readdir:cookie', i, `${op.dir || '/'}: ${n} (at or before cookie ${cookie}) returned again`);
          if (j > at && !removed.has(n) && !count.has(n)) fail('readdir:cookie', i, `${op.dir || '/'}: ${n} (after cookie ${cookie}) skipped after the directory changed`);
        });
        return;
      }
      case 'reopen': {
        for (const fd of hostFds.values()) fs.closeSync(fd);
        // Closed without release: unlinked-but-open files stay on the orphan list for the reopen.
        let orphans = 0;
        for (const ino of kfsHandles.values()) if ((await k.fsys.getattr(ino)).nlink === 0) orphans++;
        if (orphans) stats['reopen with orphans'] = (stats['reopen with orphans'] ?? 0) + 1;
        const openHandles = kfsHandles.size > 0;
        hostFds.clear();
        kfsHandles.clear();
        gen.handles = [];
        gen.handlePaths.clear();
        await k.fsys.close();
        if (!openHandles) await fsck(img, (m) => fail('fsck', i, m));
        reopens++;
        fsys = await Ext4Fs.open(img, { commitIntervalMs: 0 });
        k.fsys = fsys;
        await compareTrees(k, sys, hostRoot, (m) => fail('tree', i, `after reopen: ${m}`));
        return;
      }
    }
    compare(host, kfs);
    for (const p of ['p' in op ? op.p : '', 'a' in op ? op.a : '', 'b' in op ? op.b : '']) await checkPath(i, p, op);
    // Data changes: compare the file's whole content at once (when it is not huge).
    if (!host.err && (op.k === 'write' || op.k === 'truncate' || op.k === 'fallocate' || op.k === 'fragment')) {
      const hs = fs.statSync(H(op.p));
      if (hs.size <= POST_CONTENT_LIMIT) {
        const a = await k.existing(op.p, true);
        await compareContent(k.fsys, sys, a.ino, H(op.p), hs.size, (m) => fail(`content:${op.k}`, i, `after ${op.k}: ${op.p}: ${m}`));
      }
    }
  };

  try {
    const n = o.replay ? o.replay.length : o.ops;
    for (let i = 0; i < n; i++) {
      const op = o.replay ? o.replay[i] : gen.next();
      ops.push(op);
      if (op.k === 'openh' && o.replay) gen.nextHandle = Math.max(gen.nextHandle, op.h + 1);
      try {
        await applyOp(i, op);
      } catch (e) {
        if (e instanceof ModelFailure) throw e;
        fail(`crash:${op.k}`, i, `unexpected exception: ${(e as Error).stack ?? e}`);
      }
      const namespaceOp = !['write', 'read', 'setxattr', 'removexattr', 'chmod', 'utimens', 'hread', 'hwrite', 'openh', 'hclose'].includes(op.k);
      if (namespaceOp || op.k === 'write' || op.k === 'hwrite' || op.k === 'fragment' || i % 10 === 0) gen.refresh(scanHost(hostRoot));
    }
    // End of the sequence: release handles, compare, close, fsck, reopen read-only, compare.
    for (const [h, fd] of hostFds) {
      fs.closeSync(fd);
      await k.fsys.release(kfsHandles.get(h)!);
    }
    hostFds.clear();
    kfsHandles.clear();
    await compareTrees(k, sys, hostRoot, (m) => fail('tree', n, `final: ${m}`));
    await k.fsys.close();
    await fsck(img, (m) => fail('fsck', n, m));
    fsys = await Ext4Fs.open(img, { commitIntervalMs: 0, readOnly: true });
    k.fsys = fsys;
    await compareTrees(k, sys, hostRoot, (m) => fail('tree', n, `after the final reopen (read-only): ${m}`));
    await fsys.close();
    return { ops, stats, mismatchesChecked: checks, reopens, ms: Date.now() - t0 };
  } catch (e) {
    failed = true;
    try {
      await k.fsys.close();
    } catch {
      /* already closed or broken */
    }
    if (e instanceof ModelFailure) {
      const file = path.join(o.workDir, `failure-seed-${o.seed}.json`);
      fs.writeFileSync(file, JSON.stringify({ seed: o.seed, config: cfg, failedAt: e.opIndex, signature: e.signature, ops }, null, 1));
      e.message += `\nreplay list: ${file}`;
    }
    throw e;
  } finally {
    for (const fd of hostFds.values()) fs.closeSync(fd);
    sys.close();
    if (!(failed && o.keep)) fs.rmSync(dir, { recursive: true, force: true });
  }
}

export async function fsck(img: string, onFail: (msg: string) => void): Promise<void> {
  const r = spawnSync('e2fsck', ['-fn', img], { encoding: 'utf8' });
  if (r.status !== 0) onFail(`e2fsck -fn exited ${r.status}:\n${(r.stdout + r.stderr).split('\n').slice(0, 60).join('\n')}`);
}

// ---------------------------------------------------------------- whole-tree comparison

interface TreeNode {
  type: 'f' | 'd' | 'l';
  mode: number;
  nlink: number;
  size: number;
  ino: number;
}

async function compareTrees(k: KfsSide, sys: HostSyscalls, hostRoot: string, fail: (m: string) => never): Promise<void> {
  const fsys = k.fsys;
  const inoMap = new Map<number, number>(); // host ino -> kfs ino
  const backMap = new Map<number, number>();
  const walk = async (rel: string, kIno: number, kParent: number): Promise<void> => {
    const hostNames = fs.readdirSync(rel ? path.join(hostRoot, rel) : hostRoot).sort();
    const list = await fsys.readdir(kIno, 0);
    const dot = list.find((e) => e.name.equals(Buffer.from('.')));
    const dotdot = list.find((e) => e.name.equals(Buffer.from('..')));
    if (!dot || dot.ino !== kIno) fail(`${rel || '/'}: "." is ${dot?.ino}, expected ${kIno}`);
    if (!dotdot || dotdot.ino !== kParent) fail(`${rel || '/'}: ".." is ${dotdot?.ino}, expected ${kParent}`);
    const kNames = list.map((e) => e.name.toString()).filter((n) => n !== '.' && n !== '..' && !(rel === '' && n === 'lost+found'));
    const seen = new Set<string>();
    for (const n of kNames) {
      if (seen.has(n)) fail(`${rel || '/'}: readdir returns ${n} twice`);
      seen.add(n);
    }
    const sortedK = [...kNames].sort();
    if (sortedK.join('\0') !== hostNames.join('\0')) {
      const onlyHost = hostNames.filter((n) => !seen.has(n)).slice(0, 5);
      const hs = new Set(hostNames);
      const onlyK = sortedK.filter((n) => !hs.has(n)).slice(0, 5);
      fail(`${rel || '/'}: names differ (${hostNames.length} on host, ${sortedK.length} on kfs); only on host: ${JSON.stringify(onlyHost)}, only on kfs: ${JSON.stringify(onlyK)}`);
    }
    // readdir resumption from a cookie must give exactly the rest.
    if (list.length > 3) {
      for (const at of [1, Math.floor(list.length / 2), list.length - 2]) {
        const rest = await fsys.readdir(kIno, list[at].next);
        const want = list.slice(at + 1).map((e) => e.name.toString());
        const got = rest.map((e) => e.name.toString());
        if (want.join('\0') !== got.join('\0')) fail(`${rel || '/'}: readdir from cookie ${list[at].next} (after ${list[at].name}) gives ${got.length} entries, expected ${want.length}`);
      }
    }
    const byName = new Map(list.map((e) => [e.name.toString(), e]));
    for (const name of hostNames) {
      const r = rel ? `${rel}/${name}` : name;
      const hp = path.join(hostRoot, r);
      const hs = fs.lstatSync(hp);
      const entry = byName.get(name)!;
      const a = await fsys.lookup(kIno, Buffer.from(name));
      if (a.ino !== entry.ino) fail(`${r}: lookup gives inode ${a.ino} but readdir ${entry.ino}`);
      const dt = (a.mode & S_IFMT) >>> 12;
      if (entry.type !== dt) fail(`${r}: readdir type ${entry.type} but inode type ${dt}`);
      const what: string[] = [];
      if (hs.mode !== a.mode) what.push(`mode host 0${hs.mode.toString(8)} kfs 0${a.mode.toString(8)}`);
      if (hs.nlink !== a.nlink) what.push(`nlink host ${hs.nlink} kfs ${a.nlink}`);
      if (!hs.isDirectory() && hs.size !== a.size) what.push(`size host ${hs.size} kfs ${a.size}`);
      if (a.uid !== 0 || a.gid !== 0) what.push(`owner ${a.uid}:${a.gid}`);
      if ((hs.isCharacterDevice() || hs.isBlockDevice()) && hs.rdev !== a.rdev) what.push(`rdev host ${hs.rdev.toString(16)} kfs ${a.rdev.toString(16)}`);
      if (what.length) fail(`${r}: ${what.join(', ')}`);
      // Hard links: the same host inode must be the same kfs inode, and only it.
      const prevK = inoMap.get(hs.ino);
      const prevH = backMap.get(a.ino);
      if ((prevK !== undefined && prevK !== a.ino) || (prevH !== undefined && prevH !== hs.ino)) fail(`${r}: hard-link identity differs (host inode ${hs.ino}, kfs inode ${a.ino})`);
      inoMap.set(hs.ino, a.ino);
      backMap.set(a.ino, hs.ino);
      // xattrs (never follow: symlinks dangle).
      const hx = await sys.call<Record<string, string>>({ op: 'xattrs', p: hp });
      if (hx.err !== undefined) throw new Error(`host xattrs of ${r}: ${errName(hx.err)}`);
      const hxNames = Object.keys(hx.ok).sort();
      const kxNames = (await fsys.listxattr(a.ino)).sort();
      if (hxNames.join(',') !== kxNames.join(',')) fail(`${r}: xattr names host [${hxNames}] kfs [${kxNames}]`);
      for (const xn of hxNames) {
        const kv = await fsys.getxattr(a.ino, xn);
        if (!kv.equals(Buffer.from(hx.ok[xn], 'base64'))) fail(`${r}: xattr ${xn} value differs`);
      }
      if (hs.isSymbolicLink()) {
        const ht = fs.readlinkSync(hp);
        const kt = (await fsys.readlink(a.ino)).toString();
        if (ht !== kt) fail(`${r}: symlink target host ${JSON.stringify(ht.slice(0, 80))} (${ht.length}) kfs ${JSON.stringify(kt.slice(0, 80))} (${kt.length})`);
      } else if (hs.isFile()) {
        await compareContent(fsys, sys, a.ino, hp, hs.size, (m) => fail(`${r}: ${m}`));
      } else if (hs.isDirectory()) {
        await walk(r, a.ino, kIno);
      }
    }
  };
  await walk('', ROOT, ROOT);
  const sf = await fsys.statfs();
  if (sf.bfree > sf.blocks + 1e9 || sf.ffree > sf.files) fail(`statfs is inconsistent: ${JSON.stringify(sf)}`);
}

const FULL_COMPARE_LIMIT = 64 << 20;
const POST_CONTENT_LIMIT = 16 << 20;
const CHUNK = 4 << 20;

async function compareContent(fsys: Ext4Fs, sys: HostSyscalls, ino: number, hp: string, size: number, fail: (m: string) => never): Promise<void> {
  let ranges: [number, number][];
  if (size <= FULL_COMPARE_LIMIT) {
    ranges = [[0, size]];
  } else {
    // Big sparse files: compare the union of both sides' data regions (rounded to 1 MiB),
    // and sample some of the remaining holes on kfs.
    const hr = await sys.call<[number, number][]>({ op: 'regions', p: hp });
    if (hr.err !== undefined) throw new Error(`host regions: ${errName(hr.err)}`);
    const kr: [number, number][] = [];
    let off = 0;
    while (off < size) {
      let d: number;
      try {
        d = await fsys.lseek(ino, off, SEEK_DATA);
      } catch (e) {
        if (e instanceof FsError && e.code === 'ENXIO') break;
        throw e;
      }
      const h = await fsys.lseek(ino, d, SEEK_HOLE);
      if (h <= d) fail(`SEEK_HOLE from ${d} gives ${h}`);
      kr.push([d, h]);
      off = h;
    }
    const M = 1 << 20;
    const all = [...hr.ok, ...kr].map(([a, b]) => [Math.floor(a / M) * M, Math.min(size, Math.ceil(b / M) * M)] as [number, number]).sort((x, y) => x[0] - y[0]);
    ranges = [];
    for (const r of all) {
      const last = ranges[ranges.length - 1];
      if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
      else ranges.push([r[0], r[1]]);
    }
    const samples = [0, size - 1, Math.floor(size / 2), Math.floor(size / 3)];
    for (const s of samples) {
      if (ranges.some(([a, b]) => s >= a && s < b)) continue;
      const b = await fsys.read(ino, s, 1);
      if (b.length !== 1 || b[0] !== 0) fail(`byte ${s} in a hole reads ${b[0]} on kfs`);
    }
  }
  const fd = fs.openSync(hp, 'r');
  try {
    for (const [a, b] of ranges) {
      for (let off = a; off < b; off += CHUNK) {
        const len = Math.min(CHUNK, b - off);
        const hb = Buffer.alloc(len);
        const n = fs.readSync(fd, hb, 0, len, off);
        const kb = await fsys.read(ino, off, len);
        if (n !== kb.length || !hb.subarray(0, n).equals(kb)) {
          const d = firstDiff(hb.subarray(0, n), kb);
          fail(`content differs at byte ${off + d} (host 0x${hb[d]?.toString(16)}, kfs 0x${kb[d]?.toString(16)}; host read ${n}, kfs read ${kb.length})`);
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------- shrinking

/**
 * Delta-debug a failing operation list: remove chunks while the failure signature stays the
 * same. Returns the smallest list found.
 */
export async function shrink(ops: Op[], cfg: ModelConfig, signature: string, workDir: string, log: (s: string) => void = () => undefined, budgetMs = 10 * 60_000): Promise<Op[]> {
  const t0 = Date.now();
  const fails = async (list: Op[]): Promise<boolean> => {
    try {
      await runSequence({ seed: 0, ops: list.length, replay: list, config: cfg, workDir });
      return false;
    } catch (e) {
      return e instanceof ModelFailure && e.signature === signature;
    }
  };
  let cur = ops;
  let n = 2;
  while (cur.length >= 2 && Date.now() - t0 < budgetMs) {
    const chunk = Math.ceil(cur.length / n);
    let reduced = false;
    for (let s = 0; s < cur.length && Date.now() - t0 < budgetMs; s += chunk) {
      const cand = [...cur.slice(0, s), ...cur.slice(s + chunk)];
      if (cand.length && (await fails(cand))) {
        cur = cand;
        n = Math.max(n - 1, 2);
        reduced = true;
        log(`shrink: ${cur.length} operations`);
        break;
      }
    }
    if (!reduced) {
      if (n >= cur.length) break;
      n = Math.min(cur.length, n * 2);
    }
  }
  return cur;
}
