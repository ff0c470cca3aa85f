/**
 * Canonical snapshots of a directory tree, taken three independent ways so they can be
 * compared with each other:
 *  - snapshotHost: a tree on the host (e.g. a kernel loop mount), lstat-based, never following
 *    symlinks, xattrs from getfattr;
 *  - snapshotExt4: the same through the Ext4Fs API (readdir, lookup, getattr, read, readlink,
 *    listxattr, getxattr);
 *  - TreeModel: what a test expects, kept by the test itself as it changes a tree.
 * diffSnapshots reports differences readably; fields an expectation leaves undefined are not
 * compared, and times may be given as ranges ({min, max}) when only "recent" is known.
 *
 * Paths are keys like "/dir/name" ("/" is the root). Names are bytes; a name that is valid
 * UTF-8 is shown as text (control characters and "\" escaped as \xNN), other names byte by
 * byte, so the mapping stays one-to-one.
 */
import type { ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import type { Ext4Fs, Attr } from '../../src/ext4/fs';
import { runCmd } from './image';

export type NodeType = 'file' | 'dir' | 'symlink' | 'fifo' | 'chr' | 'blk' | 'sock';

/** A time known exactly (ns since the epoch) or only within bounds (inclusive). */
export type TimeExpect = bigint | { min?: bigint; max?: bigint };

export interface NodeSnap {
  type: NodeType;
  /** Permission bits including setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  nlink?: number;
  size?: number;
  /** 512-byte units. */
  blocks?: number;
  /** Inode number (comparable between two views of one image, never in a model). */
  ino?: number;
  /** Regular files: ContentDigest of the content (a sha256-based hash, hex). */
  digest?: string;
  /** Symlinks: the target (bytes shown like names). */
  target?: string;
  /** Character and block devices: Linux dev_t as stat returns it. */
  rdev?: number;
  /** name -> value in hex, names sorted. */
  xattrs?: Record<string, string>;
  atimeNs?: TimeExpect;
  mtimeNs?: TimeExpect;
  ctimeNs?: TimeExpect;
  crtimeNs?: TimeExpect;
  /** Non-directories with more than one name in the tree: the smallest such path; else null. */
  linkGroup?: string | null;
}

export type Snapshot = Map<string, NodeSnap>;

// ---------- names and paths ----------

/** Show a name (or symlink target) as text, one-to-one. */
export function bytesKey(b: Buffer): string {
  const s = b.toString('utf8');
  if (Buffer.from(s, 'utf8').equals(b)) {
    // eslint-disable-next-line no-control-regex
    return s.replace(/[\x00-\x1f\x7f\\]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  }
  let out = '';
  for (const c of b) out += c >= 0x20 && c < 0x7f && c !== 0x5c ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, '0')}`;
  return out;
}

export function childKey(parent: string, name: Buffer | string): string {
  const n = typeof name === 'string' ? name : bytesKey(name);
  return parent === '/' ? `/${n}` : `${parent}/${n}`;
}

/** Split "/a/b" into ["a", "b"] ("/" gives []). */
export function splitPath(p: string): string[] {
  if (!p.startsWith('/')) throw new Error(`path ${p} must be absolute`);
  return p.split('/').filter((x) => x.length > 0);
}

/** A child path from raw (unescaped) strings, for model paths. */
export function rawChild(parent: string, name: string): string {
  return parent === '/' ? `/${name}` : `${parent}/${name}`;
}

export function parentOf(p: string): string {
  const parts = splitPath(p);
  if (!parts.length) throw new Error('the root has no parent');
  return parts.length === 1 ? '/' : '/' + parts.slice(0, -1).join('/');
}

export function baseName(p: string): string {
  const parts = splitPath(p);
  if (!parts.length) throw new Error('the root has no name');
  return parts[parts.length - 1];
}

// ---------- content digests ----------

const CHUNK = 1 << 20;
const ZERO_CHUNK = Buffer.alloc(CHUNK);

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/**
 * A digest of file content that is cheap for sparse files: the content is cut into 1 MiB
 * chunks; an all-zero chunk contributes its length, any other chunk its sha256; the digest is
 * the sha256 of that list and the size. Equal contents give equal digests however they are
 * fed in (data that happens to be zeros digests like a hole), and a difference anywhere shows.
 */
export class ContentDigest {
  private h = createHash('sha256');
  private pending: Buffer[] = [];
  private pendingLen = 0;
  private total = 0;

  private chunk(c: Buffer): void {
    if (c.equals(c.length === CHUNK ? ZERO_CHUNK : ZERO_CHUNK.subarray(0, c.length))) this.h.update(`z${c.length};`);
    else this.h.update(`${sha256(c)};`);
  }

  update(b: Buffer): this {
    this.total += b.length;
    let off = 0;
    if (this.pendingLen) {
      const k = Math.min(b.length, CHUNK - this.pendingLen);
      this.pending.push(Buffer.from(b.subarray(0, k)));
      this.pendingLen += k;
      off = k;
      if (this.pendingLen === CHUNK) {
        this.chunk(Buffer.concat(this.pending));
        this.pending = [];
        this.pendingLen = 0;
      }
    }
    while (b.length - off >= CHUNK) {
      this.chunk(b.subarray(off, off + CHUNK));
      off += CHUNK;
    }
    if (off < b.length) {
      this.pending.push(Buffer.from(b.subarray(off)));
      this.pendingLen += b.length - off;
    }
    return this;
  }

  /** n zero bytes (a hole), without materializing them. */
  zeros(n: number): this {
    while (n > 0) {
      if (this.pendingLen === 0 && n >= CHUNK) {
        this.h.update(`z${CHUNK};`);
        this.total += CHUNK;
        n -= CHUNK;
      } else {
        const k = Math.min(n, CHUNK - this.pendingLen);
        this.update(ZERO_CHUNK.subarray(0, k));
        n -= k;
      }
    }
    return this;
  }

  digest(): string {
    if (this.pendingLen) this.chunk(Buffer.concat(this.pending));
    this.pending = [];
    this.pendingLen = 0;
    this.h.update(`size=${this.total}`);
    return this.h.digest('hex');
  }
}

/** The ContentDigest of a buffer. */
export function contentDigest(b: Buffer): string {
  return new ContentDigest().update(b).digest();
}

export function typeOfMode(mode: number): NodeType {
  switch (mode & 0o170000) {
    case 0o100000: return 'file';
    case 0o040000: return 'dir';
    case 0o120000: return 'symlink';
    case 0o010000: return 'fifo';
    case 0o020000: return 'chr';
    case 0o060000: return 'blk';
    case 0o140000: return 'sock';
    default: throw new Error(`unknown file type in mode 0${mode.toString(8)}`);
  }
}

function assignLinkGroups(snap: Snapshot, identity: Map<string, string | number | object>): void {
  const groups = new Map<string | number | object, string[]>();
  for (const [p, id] of identity) {
    const g = groups.get(id);
    if (g) g.push(p);
    else groups.set(id, [p]);
  }
  for (const paths of groups.values()) {
    const first = paths.reduce((a, b) => (b < a ? b : a));
    for (const p of paths) snap.get(p)!.linkGroup = paths.length > 1 ? first : null;
  }
  for (const n of snap.values()) if (n.linkGroup === undefined) n.linkGroup = null;
}

function sortedRecord(entries: Iterable<[string, string]>): Record<string, string> {
  const arr = [...entries].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const r: Record<string, string> = {};
  for (const [k, v] of arr) r[k] = v;
  return r;
}

export interface WalkOptions {
  /** Hash file contents (default true). */
  content?: boolean;
  /** Collect xattrs (default true). */
  xattrs?: boolean;
  /** Leave a path (and everything below it) out, e.g. (p) => p === '/lost+found'. */
  skip?: (path: string) => boolean;
}

// ---------- the host view ----------

/** getfattr's escaping: \ooo for special bytes (and "\\" for a backslash). */
function unescapeGetfattr(s: string): Buffer {
  const raw = Buffer.from(s, 'utf8');
  const out: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] === 0x5c && i + 3 < raw.length && /^[0-7]{3}$/.test(raw.subarray(i + 1, i + 4).toString('latin1'))) {
      out.push(parseInt(raw.subarray(i + 1, i + 4).toString('latin1'), 8));
      i += 3;
    } else if (raw[i] === 0x5c && raw[i + 1] === 0x5c) {
      out.push(0x5c);
      i += 1;
    } else {
      out.push(raw[i]);
    }
  }
  return Buffer.from(out);
}

/** Every xattr under root (getfattr -R, not following symlinks), by absolute path bytes. */
function hostXattrs(root: string): Map<string, Map<string, string>> {
  const r = runCmd('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', root]);
  if (r.code !== 0) throw new Error(`getfattr -R ${root} failed (exit ${r.code}): ${r.stderr.trim().slice(0, 2000)}`);
  const out = new Map<string, Map<string, string>>();
  let cur: Map<string, string> | null = null;
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('# file: ')) {
      cur = new Map();
      out.set(unescapeGetfattr(line.slice(8)).toString('latin1'), cur);
    } else if (line.length && cur) {
      const eq = line.lastIndexOf('=');
      const name = unescapeGetfattr(eq < 0 ? line : line.slice(0, eq)).toString('utf8');
      const v = eq < 0 ? '' : line.slice(eq + 1);
      if (v !== '' && !v.startsWith('0x')) throw new Error(`getfattr printed a non-hex value for ${name}: ${v}`);
      cur.set(name, v.slice(2));
    }
  }
  return out;
}

/**
 * A buffer whose memory is 4 KiB-aligned, as O_DIRECT wants, found by probing: Node does not
 * expose addresses, so try offsets into a larger buffer until a direct read is accepted.
 */
let directBuf: Buffer | null = null;
function directRead(fd: number, pos: number, size: number): number {
  if (directBuf) return fs.readSync(fd, directBuf, 0, directBuf.length, pos);
  const raw = Buffer.allocUnsafeSlow(size + 4096);
  for (let off = 0; off < 4096; off += 512) {
    const b = raw.subarray(off, off + size);
    try {
      const n = fs.readSync(fd, b, 0, b.length, pos);
      directBuf = b;
      return n;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
    }
  }
  throw new Error('no O_DIRECT-compatible buffer alignment found');
}

/**
 * Large files are read with O_DIRECT where the filesystem allows it: reading long holes
 * through the page cache is slow (every zero page is cached), a direct read of a hole is not.
 */
const DIRECT_MIN = 64 * CHUNK;
let readBuf: Buffer | null = null;
function hashHostFile(p: Buffer, size: number): string {
  const h = new ContentDigest();
  if (size >= DIRECT_MIN) {
    let fd = -1;
    try {
      fd = fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
    } catch {
      fd = -1;
    }
    if (fd >= 0) {
      try {
        let pos = 0;
        let ok = true;
        for (;;) {
          let n: number;
          try {
            n = directRead(fd, pos, 8 * CHUNK);
          } catch (e) {
            if (pos === 0) { ok = false; break; }
            throw e;
          }
          if (n === 0) break;
          h.update(directBuf!.subarray(0, n));
          pos += n;
        }
        if (ok) return h.digest();
      } finally {
        fs.closeSync(fd);
      }
    }
  }
  const fd = fs.openSync(p, 'r');
  try {
    const buf = (readBuf ??= Buffer.allocUnsafeSlow(4 * CHUNK));
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(n === buf.length ? buf : buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest();
}

/** Snapshot of the tree under `root` on the host (e.g. a kernel mount point). */
export function snapshotHost(root: string, opts: WalkOptions = {}): Snapshot {
  const snap: Snapshot = new Map();
  const identity = new Map<string, string>();
  const rootBuf = Buffer.from(fs.realpathSync(root));
  const xattrs = opts.xattrs === false ? null : hostXattrs(rootBuf.toString());
  const walk = (abs: Buffer, key: string): void => {
    if (opts.skip?.(key)) return;
    const st = fs.lstatSync(abs, { bigint: true });
    const type = typeOfMode(Number(st.mode));
    const n: NodeSnap = {
      type, mode: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid), nlink: Number(st.nlink),
      size: Number(st.size), blocks: Number(st.blocks), ino: Number(st.ino),
      atimeNs: st.atimeNs, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs, crtimeNs: st.birthtimeNs,
    };
    if (type === 'file' && opts.content !== false) n.digest = hashHostFile(abs, Number(st.size));
    if (type === 'symlink') n.target = bytesKey(fs.readlinkSync(abs, { encoding: 'buffer' }));
    if (type === 'chr' || type === 'blk') n.rdev = Number(st.rdev);
    if (xattrs) n.xattrs = sortedRecord(xattrs.get(abs.toString('latin1'))?.entries() ?? []);
    snap.set(key, n);
    if (type !== 'dir') identity.set(key, String(st.ino));
    if (type === 'dir') {
      const names = fs.readdirSync(abs, { encoding: 'buffer' });
      for (const name of names) walk(Buffer.concat([abs, Buffer.from('/'), name]), childKey(key, name));
    }
  };
  walk(rootBuf, '/');
  assignLinkGroups(snap, identity);
  return snap;
}

// ---------- the Ext4Fs view ----------

const DT_OF_TYPE: Record<NodeType, number> = { fifo: 1, chr: 2, dir: 4, blk: 6, file: 8, symlink: 10, sock: 12 };
const tsNs = (t: { sec: number; nsec: number }): bigint => BigInt(t.sec) * 1000000000n + BigInt(t.nsec);

/** ContentDigest of a file's content through Ext4Fs.read in chunks, checking that reads stop at EOF. */
export async function hashExt4File(f: Ext4Fs, ino: number, size: number, chunk = 8 * CHUNK): Promise<string> {
  const h = new ContentDigest();
  let off = 0;
  while (off < size) {
    const want = Math.min(chunk, size - off);
    const b = await f.read(ino, off, want);
    if (b.length !== want) throw new Error(`inode ${ino}: read(${off}, ${want}) returned ${b.length} bytes before EOF (size ${size})`);
    h.update(b);
    off += b.length;
  }
  const past = await f.read(ino, size, 4096);
  if (past.length !== 0) throw new Error(`inode ${ino}: read at EOF (${size}) returned ${past.length} bytes`);
  return h.digest();
}

/** Every entry of a directory through opendir/readdir/releasedir, resuming from offsets. */
export async function readAllDir(f: Ext4Fs, ino: number): Promise<{ name: Buffer; ino: number; type: number }[]> {
  const h = await f.opendir(ino);
  const out: { name: Buffer; ino: number; type: number }[] = [];
  try {
    let off = 0;
    for (let guard = 0; guard < 1e7; guard++) {
      const batch = await f.readdir(ino, off, h);
      if (!batch.length) break;
      for (const e of batch) {
        if (e.next <= off) throw new Error(`directory inode ${ino}: readdir offset did not advance (${off} -> ${e.next})`);
        out.push({ name: e.name, ino: e.ino, type: e.type });
        off = e.next;
      }
    }
  } finally {
    await f.releasedir(ino, h);
  }
  return out;
}

/**
 * Snapshot through the Ext4Fs API, starting at rootIno (default 2). Also checks that readdir
 * and lookup agree (same inode, dirent type matching the inode's mode, no duplicate names,
 * "." and ".." right); any disagreement is thrown as an Error listing the problems.
 */
export async function snapshotExt4(f: Ext4Fs, opts: WalkOptions & { rootIno?: number } = {}): Promise<Snapshot> {
  const snap: Snapshot = new Map();
  const identity = new Map<string, number>();
  const problems: string[] = [];
  const rootIno = opts.rootIno ?? 2;
  const record = async (key: string, a: Attr): Promise<NodeSnap> => {
    const type = typeOfMode(a.mode);
    const n: NodeSnap = {
      type, mode: a.mode & 0o7777, uid: a.uid, gid: a.gid, nlink: a.nlink, size: a.size, blocks: a.blocks, ino: a.ino,
      atimeNs: tsNs(a.atime), mtimeNs: tsNs(a.mtime), ctimeNs: tsNs(a.ctime), crtimeNs: tsNs(a.crtime),
    };
    if (type === 'file' && opts.content !== false) n.digest = await hashExt4File(f, a.ino, a.size);
    if (type === 'symlink') {
      const t = await f.readlink(a.ino);
      if (t.length !== a.size) problems.push(`${key}: readlink gave ${t.length} bytes but size is ${a.size}`);
      n.target = bytesKey(t);
    }
    if (type === 'chr' || type === 'blk') n.rdev = a.rdev;
    if (opts.xattrs !== false) {
      const names = await f.listxattr(a.ino);
      if (new Set(names).size !== names.length) problems.push(`${key}: listxattr repeats names: ${names.join(', ')}`);
      const vals: [string, string][] = [];
      for (const name of names) vals.push([name, (await f.getxattr(a.ino, name)).toString('hex')]);
      n.xattrs = sortedRecord(vals);
    }
    snap.set(key, n);
    if (type !== 'dir') identity.set(key, a.ino);
    return n;
  };
  const walkDir = async (ino: number, parentIno: number, key: string): Promise<void> => {
    const entries = await readAllDir(f, ino);
    const seen = new Set<string>();
    let dot = 0;
    let dotdot = 0;
    for (const e of entries) {
      const s = e.name.toString('latin1');
      if (s === '.') { dot++; if (e.ino !== ino) problems.push(`${key}: "." points at inode ${e.ino}, not ${ino}`); continue; }
      if (s === '..') { dotdot++; if (e.ino !== parentIno) problems.push(`${key}: ".." points at inode ${e.ino}, not ${parentIno}`); continue; }
      const ck = childKey(key, e.name);
      if (seen.has(s)) { problems.push(`${ck}: listed twice by readdir`); continue; }
      seen.add(s);
      if (opts.skip?.(ck)) continue;
      let a: Attr;
      try {
        a = await f.lookup(ino, e.name);
      } catch (err) {
        problems.push(`${ck}: readdir lists it (inode ${e.ino}) but lookup fails: ${(err as Error).message}`);
        continue;
      }
      if (a.ino !== e.ino) problems.push(`${ck}: readdir says inode ${e.ino}, lookup says ${a.ino}`);
      const n = await record(ck, a);
      if (e.type !== DT_OF_TYPE[n.type]) problems.push(`${ck}: dirent type ${e.type} but inode is a ${n.type}`);
      if (n.type === 'dir') await walkDir(a.ino, ino, ck);
    }
    if (dot !== 1 || dotdot !== 1) problems.push(`${key}: readdir listed "." ${dot} and ".." ${dotdot} times`);
  };
  const rootAttr = await f.getattr(rootIno);
  await record('/', rootAttr);
  await walkDir(rootIno, rootIno === 2 ? 2 : (await f.lookup(rootIno, Buffer.from('..'))).ino, '/');
  if (problems.length) throw new Error(`Ext4Fs tree walk found ${problems.length} problem(s):\n  ${problems.slice(0, 30).join('\n  ')}`);
  assignLinkGroups(snap, identity);
  return snap;
}

// ---------- comparing ----------

export interface DiffOptions {
  /** Fields never compared (besides those the expectation leaves undefined). */
  ignore?: (keyof NodeSnap)[];
  /** Compare only these fields. */
  only?: (keyof NodeSnap)[];
  /** Paths to leave out of the comparison on both sides. */
  skip?: (path: string) => boolean;
  /** How many differences to report at most (default 40). */
  limit?: number;
}

function showTime(v: TimeExpect): string {
  if (typeof v === 'bigint') {
    const sec = v / 1000000000n;
    const ns = ((v % 1000000000n) + 1000000000n) % 1000000000n;
    const s = v < 0n && ns ? sec - 1n : sec;
    let iso = '?';
    try { iso = new Date(Number(s) * 1000).toISOString().replace('.000Z', 'Z'); } catch { /* out of Date range */ }
    return `${s}.${ns.toString().padStart(9, '0')} (${iso})`;
  }
  return `[${v.min !== undefined ? showTime(v.min) : '-inf'} .. ${v.max !== undefined ? showTime(v.max) : '+inf'}]`;
}

function timeMatches(exp: TimeExpect, act: TimeExpect): boolean {
  if (typeof act !== 'bigint') return typeof exp !== 'bigint' && exp.min === act.min && exp.max === act.max;
  if (typeof exp === 'bigint') return exp === act;
  return (exp.min === undefined || act >= exp.min) && (exp.max === undefined || act <= exp.max);
}

function showValue(k: keyof NodeSnap, v: unknown): string {
  if (v === undefined) return 'absent';
  if (k.endsWith('Ns')) return showTime(v as TimeExpect);
  if (k === 'mode') return `0${(v as number).toString(8)}`;
  if (typeof v === 'string') return v.length > 120 ? JSON.stringify(v.slice(0, 120)) + `... (${v.length} chars)` : JSON.stringify(v);
  return String(v);
}

function diffXattrs(path: string, exp: Record<string, string>, act: Record<string, string> | undefined, out: string[]): void {
  const a = act ?? {};
  for (const name of Object.keys(exp)) {
    if (!(name in a)) out.push(`${path}: xattr ${name} missing (expected ${exp[name].length / 2} bytes)`);
    else if (a[name] !== exp[name]) {
      const e = Buffer.from(exp[name], 'hex');
      const g = Buffer.from(a[name], 'hex');
      let i = 0;
      while (i < e.length && i < g.length && e[i] === g[i]) i++;
      out.push(`${path}: xattr ${name} differs: expected ${e.length} bytes, got ${g.length}, first difference at byte ${i}`);
    }
  }
  for (const name of Object.keys(a)) if (!(name in exp)) out.push(`${path}: unexpected xattr ${name} (${a[name].length / 2} bytes)`);
}

/** Differences between an expected and an actual snapshot, one readable line each. */
export function diffSnapshots(expected: Snapshot, actual: Snapshot, opts: DiffOptions = {}): string[] {
  const out: string[] = [];
  const ignore = new Set(opts.ignore ?? []);
  const paths = [...new Set([...expected.keys(), ...actual.keys()])].sort();
  for (const p of paths) {
    if (opts.skip?.(p)) continue;
    const e = expected.get(p);
    const a = actual.get(p);
    if (!e) { out.push(`${p}: unexpected ${a!.type}`); continue; }
    if (!a) { out.push(`${p}: missing (expected ${e.type})`); continue; }
    if (e.type !== a.type) { out.push(`${p}: expected a ${e.type}, found a ${a.type}`); continue; }
    for (const k of Object.keys(e) as (keyof NodeSnap)[]) {
      const ev = e[k];
      if (ev === undefined || ignore.has(k) || (opts.only && !opts.only.includes(k)) || k === 'type') continue;
      const av = a[k];
      if (k === 'xattrs') {
        diffXattrs(p, ev as Record<string, string>, av as Record<string, string> | undefined, out);
      } else if (k.endsWith('Ns')) {
        if (av === undefined || !timeMatches(ev as TimeExpect, av as TimeExpect)) out.push(`${p}: ${k} expected ${showValue(k, ev)}, got ${showValue(k, av)}`);
      } else if (ev !== av) {
        out.push(`${p}: ${k} expected ${showValue(k, ev)}, got ${showValue(k, av)}`);
      }
    }
  }
  return out;
}

/** Fail the test with the first differences (and their count) unless the snapshots agree. */
export function assertSnapshot(t: ExecutionContext, expected: Snapshot, actual: Snapshot, label: string, opts: DiffOptions = {}): boolean {
  const d = diffSnapshots(expected, actual, opts);
  const limit = opts.limit ?? 40;
  if (d.length === 0) {
    t.pass(label);
    return true;
  }
  t.fail(`${label}: ${d.length} difference(s)${d.length > limit ? `, first ${limit}` : ''}:\n  ${d.slice(0, limit).join('\n  ')}`);
  return false;
}

// ---------- expected contents ----------

/**
 * File content as data segments over zeros (holes), so that multi-GiB sparse files can be
 * modelled: write, truncate, read a range, and hash.
 */
export class SparseContent {
  private segs: { off: number; data: Buffer }[] = [];
  size = 0;

  constructor(data?: Buffer) {
    if (data) this.write(0, data);
  }

  /** Overlay data at off (growing the size when past it). */
  write(off: number, data: Buffer): void {
    if (data.length === 0) return;
    const end = off + data.length;
    const keep: { off: number; data: Buffer }[] = [];
    for (const s of this.segs) {
      const sEnd = s.off + s.data.length;
      if (sEnd <= off || s.off >= end) { keep.push(s); continue; }
      if (s.off < off) keep.push({ off: s.off, data: s.data.subarray(0, off - s.off) });
      if (sEnd > end) keep.push({ off: end, data: s.data.subarray(end - s.off) });
    }
    keep.push({ off, data: Buffer.from(data) });
    keep.sort((a, b) => a.off - b.off);
    this.segs = keep;
    this.size = Math.max(this.size, end);
  }

  append(data: Buffer): void {
    this.write(this.size, data);
  }

  truncate(size: number): void {
    this.segs = this.segs.filter((s) => s.off < size).map((s) => (s.off + s.data.length > size ? { off: s.off, data: s.data.subarray(0, size - s.off) } : s));
    this.size = size;
  }

  read(off: number, len: number): Buffer {
    const end = Math.min(this.size, off + len);
    if (end <= off) return Buffer.alloc(0);
    const out = Buffer.alloc(end - off);
    for (const s of this.segs) {
      const a = Math.max(off, s.off);
      const b = Math.min(end, s.off + s.data.length);
      if (a < b) s.data.copy(out, a - off, a - s.off, b - s.off);
    }
    return out;
  }

  /** Bytes of data (not holes) that were written. */
  get dataBytes(): number {
    return this.segs.reduce((n, s) => n + s.data.length, 0);
  }

  /** ContentDigest of the content. */
  digest(): string {
    const h = new ContentDigest();
    let pos = 0;
    for (const s of this.segs) {
      h.zeros(s.off - pos);
      h.update(s.data);
      pos = s.off + s.data.length;
    }
    h.zeros(this.size - pos);
    return h.digest();
  }

  clone(): SparseContent {
    const c = new SparseContent();
    c.segs = this.segs.map((s) => ({ off: s.off, data: s.data }));
    c.size = this.size;
    return c;
  }
}

// ---------- the expected tree ----------

export interface ModelNode {
  type: NodeType;
  mode: number;
  uid: number;
  gid: number;
  content?: SparseContent;
  target?: Buffer;
  rdev?: number;
  xattrs: Map<string, Buffer>;
  atimeNs?: TimeExpect;
  mtimeNs?: TimeExpect;
  ctimeNs?: TimeExpect;
  crtimeNs?: TimeExpect;
  /** Only when known (e.g. adopted from a snapshot); directories' sizes depend on the implementation. */
  size?: number;
  blocks?: number;
  children?: Map<string, ModelNode>;
}

export interface Owner {
  mode: number;
  uid?: number;
  gid?: number;
}

const TIME_FIELDS = ['atimeNs', 'mtimeNs', 'ctimeNs', 'crtimeNs'] as const;
type TimeField = (typeof TIME_FIELDS)[number];

/** ns since the epoch of the host clock now. */
export function nowNs(): bigint {
  return BigInt(Date.now()) * 1000000n;
}

/**
 * The tree a test expects, addressed by plain (unescaped) paths; its snapshot() uses the
 * escaped keys of bytesKey like the other views. Every operation updates link counts, contents and xattrs exactly,
 * and times as POSIX says: times the operation sets to "now" become a range starting at
 * `since` (set it with recent(); default: one second before the model was made), so a
 * comparison checks that they did change, and explicitly set times are exact.
 */
export class TreeModel {
  readonly root: ModelNode;
  /** Lower bound for times operations set to "now". */
  since: bigint;

  constructor(root: Owner = { mode: 0o755 }) {
    this.since = nowNs() - 1000000000n;
    this.root = { type: 'dir', mode: root.mode, uid: root.uid ?? 0, gid: root.gid ?? 0, xattrs: new Map(), children: new Map() };
  }

  /** Times set from now on must be at least `ns` (default: now, less a second for coarse clocks). */
  recent(ns = nowNs() - 1000000000n): void {
    this.since = ns;
  }

  private fresh(): { min: bigint } {
    return { min: this.since };
  }

  private touch(n: ModelNode, ...fields: TimeField[]): void {
    for (const f of fields) n[f] = this.fresh();
  }

  /** A directory's entries changed: new mtime and ctime; its size and blocks are the implementation's business. */
  private changed(d: ModelNode): void {
    this.touch(d, 'mtimeNs', 'ctimeNs');
    delete d.size;
    delete d.blocks;
  }

  get(path: string): ModelNode {
    let n = this.root;
    for (const part of splitPath(path)) {
      const c = n.children?.get(part);
      if (!c) throw new Error(`model: ${path} does not exist`);
      n = c;
    }
    return n;
  }

  has(path: string): boolean {
    try {
      this.get(path);
      return true;
    } catch {
      return false;
    }
  }

  private dirOf(path: string): ModelNode {
    const d = this.get(parentOf(path));
    if (d.type !== 'dir') throw new Error(`model: ${parentOf(path)} is not a directory`);
    return d;
  }

  private add(path: string, n: ModelNode): ModelNode {
    const d = this.dirOf(path);
    const name = baseName(path);
    if (d.children!.has(name)) throw new Error(`model: ${path} exists`);
    d.children!.set(name, n);
    this.changed(d);
    return n;
  }

  private node(type: NodeType, o: Owner): ModelNode {
    const n: ModelNode = { type, mode: o.mode & 0o7777, uid: o.uid ?? 0, gid: o.gid ?? 0, xattrs: new Map() };
    this.touch(n, 'atimeNs', 'mtimeNs', 'ctimeNs', 'crtimeNs');
    return n;
  }

  /**
   * Record something that existed before the model started watching (e.g. mkfs's lost+found):
   * no time of its parent changes, and its own times stay unknown.
   */
  existing(path: string, type: 'dir' | 'file', o: Owner): ModelNode {
    const d = this.dirOf(path);
    const n: ModelNode = { type, mode: o.mode & 0o7777, uid: o.uid ?? 0, gid: o.gid ?? 0, xattrs: new Map() };
    if (type === 'dir') n.children = new Map();
    else n.content = new SparseContent();
    d.children!.set(baseName(path), n);
    return n;
  }

  mkdir(path: string, o: Owner): ModelNode {
    const n = this.node('dir', o);
    n.children = new Map();
    return this.add(path, n);
  }

  file(path: string, o: Owner, content: Buffer | SparseContent = Buffer.alloc(0)): ModelNode {
    const n = this.node('file', o);
    n.content = content instanceof SparseContent ? content : new SparseContent(content);
    return this.add(path, n);
  }

  symlink(path: string, target: Buffer | string, o: { uid?: number; gid?: number } = {}): ModelNode {
    const n = this.node('symlink', { mode: 0o777, ...o });
    n.target = Buffer.from(target);
    return this.add(path, n);
  }

  special(path: string, type: 'fifo' | 'chr' | 'blk' | 'sock', o: Owner, rdev = 0): ModelNode {
    const n = this.node(type, o);
    if (type === 'chr' || type === 'blk') n.rdev = rdev;
    return this.add(path, n);
  }

  link(existing: string, newPath: string): ModelNode {
    const n = this.get(existing);
    if (n.type === 'dir') throw new Error('model: no hard links to directories');
    this.add(newPath, n);
    this.touch(n, 'ctimeNs');
    return n;
  }

  unlink(path: string): void {
    const d = this.dirOf(path);
    const n = this.get(path);
    if (n.type === 'dir') throw new Error(`model: unlink of directory ${path}`);
    d.children!.delete(baseName(path));
    this.changed(d);
    this.touch(n, 'ctimeNs');
  }

  rmdir(path: string): void {
    const n = this.get(path);
    if (n.type !== 'dir' || n.children!.size) throw new Error(`model: rmdir of non-empty or non-directory ${path}`);
    const d = this.dirOf(path);
    d.children!.delete(baseName(path));
    this.changed(d);
  }

  /** Remove a whole tree, children first (as rm -r does). */
  rmtree(path: string): void {
    const n = this.get(path);
    if (n.type === 'dir') for (const name of [...n.children!.keys()]) this.rmtree(rawChild(path, name));
    if (n.type === 'dir') this.rmdir(path);
    else this.unlink(path);
  }

  /** rename(2) without flags: replaces an existing target of a compatible type. */
  rename(from: string, to: string): void {
    const n = this.get(from);
    const sd = this.dirOf(from);
    const td = this.dirOf(to);
    const victim = td.children!.get(baseName(to));
    if (victim === n) return;
    if (victim) {
      if ((victim.type === 'dir') !== (n.type === 'dir')) throw new Error(`model: rename ${from} over ${to}: type mismatch`);
      if (victim.type === 'dir' && victim.children!.size) throw new Error(`model: rename over non-empty directory ${to}`);
      this.touch(victim, 'ctimeNs');
    }
    sd.children!.delete(baseName(from));
    td.children!.set(baseName(to), n);
    this.changed(sd);
    this.changed(td);
    this.touch(n, 'ctimeNs');
  }

  write(path: string, off: number, data: Buffer): void {
    const n = this.get(path);
    n.content!.write(off, data);
    delete n.size;
    delete n.blocks;
    this.touch(n, 'mtimeNs', 'ctimeNs');
  }

  append(path: string, data: Buffer): void {
    this.write(path, this.get(path).content!.size, data);
  }

  truncate(path: string, size: number): void {
    const n = this.get(path);
    if (n.content!.size !== size) this.touch(n, 'mtimeNs');
    n.content!.truncate(size);
    delete n.size;
    delete n.blocks;
    this.touch(n, 'ctimeNs');
  }

  /** An attribute change (setattr): ctime changes, and explicitly given times are exact. */
  setattr(path: string, a: { mode?: number; uid?: number; gid?: number; atimeNs?: bigint; mtimeNs?: bigint }): void {
    const n = this.get(path);
    if (a.mode !== undefined) n.mode = a.mode & 0o7777;
    if (a.uid !== undefined) n.uid = a.uid;
    if (a.gid !== undefined) n.gid = a.gid;
    if (a.atimeNs !== undefined) n.atimeNs = a.atimeNs;
    if (a.mtimeNs !== undefined) n.mtimeNs = a.mtimeNs;
    this.touch(n, 'ctimeNs');
  }

  setXattr(path: string, name: string, value: Buffer): void {
    const n = this.get(path);
    n.xattrs.set(name, Buffer.from(value));
    delete n.blocks;
    this.touch(n, 'ctimeNs');
  }

  removeXattr(path: string, name: string): void {
    const n = this.get(path);
    if (!n.xattrs.delete(name)) throw new Error(`model: ${path} has no xattr ${name}`);
    delete n.blocks;
    this.touch(n, 'ctimeNs');
  }

  /**
   * Take what the model cannot know from a snapshot of the same tree (times; sizes and block
   * counts of directories and untouched files), so that later comparisons also check that
   * operations leave everything else alone. Paths missing from the snapshot are skipped.
   */
  adopt(snap: Snapshot, fields: (TimeField | 'size' | 'blocks')[] = [...TIME_FIELDS, 'size', 'blocks']): void {
    const visit = (path: string, n: ModelNode): void => {
      const s = snap.get(path);
      if (s) {
        for (const f of fields) {
          if (f === 'size' || f === 'blocks') {
            if (s[f] !== undefined) n[f] = s[f];
          } else if (s[f] !== undefined) {
            n[f] = s[f];
          }
        }
      }
      if (n.children) for (const [name, c] of n.children) visit(childKey(path, Buffer.from(name)), c);
    };
    visit('/', this.root);
  }

  /** The expected snapshot: link counts from the tree itself, contents hashed. */
  snapshot(): Snapshot {
    const snap: Snapshot = new Map();
    const refs = new Map<ModelNode, string[]>();
    const visit = (path: string, n: ModelNode): void => {
      if (n.type !== 'dir') {
        const r = refs.get(n);
        if (r) { r.push(path); return; }
        refs.set(n, [path]);
      }
      const s: NodeSnap = { type: n.type, mode: n.mode, uid: n.uid, gid: n.gid, xattrs: sortedRecord([...n.xattrs].map(([k, v]) => [k, v.toString('hex')])) };
      if (n.type === 'dir') {
        let subdirs = 0;
        for (const c of n.children!.values()) if (c.type === 'dir') subdirs++;
        // dir_nlink: a directory with too many subdirectories reports 1.
        s.nlink = 2 + subdirs >= 65000 ? 1 : 2 + subdirs;
        if (n.size !== undefined) s.size = n.size;
      } else if (n.type === 'file') {
        s.size = n.content!.size;
        s.digest = n.content!.digest();
      } else if (n.type === 'symlink') {
        s.size = n.target!.length;
        s.target = bytesKey(n.target!);
      } else {
        s.size = 0;
      }
      if (n.rdev !== undefined) s.rdev = n.rdev;
      if (n.blocks !== undefined) s.blocks = n.blocks;
      for (const f of TIME_FIELDS) if (n[f] !== undefined) s[f] = n[f];
      snap.set(path, s);
      if (n.children) for (const [name, c] of n.children) visit(childKey(path, Buffer.from(name)), c);
    };
    visit('/', this.root);
    for (const [n, paths] of refs) {
      const first = paths.reduce((a, b) => (b < a ? b : a));
      const s0 = snap.get(paths[0])!;
      s0.nlink = paths.length;
      s0.linkGroup = paths.length > 1 ? first : null;
      for (const p of paths.slice(1)) snap.set(p, { ...s0 });
      void n;
    }
    for (const s of snap.values()) if (s.linkGroup === undefined) s.linkGroup = null;
    return snap;
  }
}

// ---------- Ext4Fs by path ----------

/** Resolve a path to an inode number through Ext4Fs.lookup. */
export async function resolveExt4(f: Ext4Fs, path: string, rootIno = 2): Promise<number> {
  let ino = rootIno;
  for (const part of splitPath(path)) ino = (await f.lookup(ino, Buffer.from(part))).ino;
  return ino;
}
