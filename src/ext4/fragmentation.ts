/**
 * File fragmentation measured the way `e4defrag -c` measures it (e2fsprogs misc/e4defrag.c),
 * but read from the extent trees instead of FIEMAP:
 *   - extents: leaf entries of the file's extent tree (what debugfs `ex` lists);
 *   - fragments: physically discontiguous runs in logical order (e4defrag's "physical count");
 *   - ideal: e4defrag's best count, one extent per block group (per flex group with flex_bg),
 *     but never below what the 32768-block limit of an initialized extent allows;
 *   - ratio = (fragments - ideal) * 100 / blocks, score = CALC_SCORE(ratio):
 *     ratio > 10 ? 80 + 20 * ratio / 100 : 8 * ratio, capped at 100.
 *     e4defrag's reading: 0-30 no problem, 31-55 a little fragmented, 56- needs defrag.
 *
 * Works on a live filesystem without disturbing it: extent maps the inode store has loaded are
 * copied (they may be newer than the tree on disk), others are read from disk into private
 * maps, never into the store (a second loader would race the store's own).
 */
import { FsError } from '../util/errors';
import type { Ext4Fs } from './fs';
import { InodeStore } from './inode-store';
import { Extent, ExtentMap, MAX_INIT_LEN } from './extents';
import { hasBlockMap, loadIndirectMap } from './indirect';
import { Inode, INODE_FLAGS, ROOT_INO } from './inode';
import { INCOMPAT } from './superblock';
import { Volume } from './volume';

export interface FileExtents {
  extents: Extent[];
  /** Index and leaf blocks of the tree (the root lives in the inode). */
  treeBlocks: number[];
}

/** The inode as the live store holds it, else as the inode table has it. */
export async function readInodeView(store: InodeStore, ino: number): Promise<Inode> {
  return store.cached(ino)?.inode ?? store.vol.readInode(ino);
}

/** Whether i_block of this inode holds an extent tree (not a fast symlink or a device number). */
export function hasExtentTree(inode: Inode): boolean {
  if (!inode.hasFlag(INODE_FLAGS.EXTENTS)) return false;
  return inode.isReg() || inode.isDir() || inode.isSymlink();
}

/** A file's extents without touching the store's state (see the file comment). */
export async function readFileExtents(store: InodeStore, ino: number, inode: Inode): Promise<FileExtents | null> {
  const st = store.cached(ino);
  if (st?.extents) return { extents: st.extents.extents.map((e) => ({ ...e })), treeBlocks: st.extents.treeBlocks.slice() };
  if (hasBlockMap(inode)) {
    const map = await loadIndirectMap(ino, inode.f.i_block, store.extentIO);
    return { extents: map.extents, treeBlocks: map.treeBlocks };
  }
  if (!hasExtentTree(inode)) return null;
  const map = await ExtentMap.load(ino, inode.f.i_block, store.extentIO, store.csumSeedOf(inode));
  return { extents: map.extents, treeBlocks: map.treeBlocks };
}

export interface FileFragmentation {
  ino: number;
  /** Path inside the filesystem ("/dir/file"), when known. */
  path: string | null;
  size: number;
  /** Mapped data blocks. */
  blocks: number;
  extents: number;
  fragments: number;
  ideal: number;
  /** Average extent size in KiB (e4defrag's size/ext). */
  kibPerExtent: number;
  ratio: number;
  score: number;
}

/** e4defrag's CALC_SCORE, capped to 0..100. */
export function fragmentationScore(ratio: number): number {
  const s = ratio > 10 ? 80 + (20 * ratio) / 100 : 8 * ratio;
  return Math.max(0, Math.min(100, s));
}

/** Fewest extents a file of `blocks` blocks can have on this volume. */
export function idealExtents(vol: Volume, blocks: number): number {
  if (blocks <= 0) return 0;
  const flex = vol.hasIncompat(INCOMPAT.flex_bg) ? 2 ** vol.sb.s_log_groups_per_flex : 1;
  const perGroup = Math.floor((blocks - 1) / (vol.blocksPerGroup * flex)) + 1;
  return Math.max(perGroup, Math.ceil(blocks / MAX_INIT_LEN));
}

/** Fragmentation of one file from its extents. */
export function measureFile(vol: Volume, ino: number, path: string | null, size: number, extents: Extent[]): FileFragmentation {
  let blocks = 0;
  let fragments = 0;
  let prevEnd = -1;
  for (const e of extents) {
    blocks += e.len;
    if (e.pblk !== prevEnd) fragments++;
    prevEnd = e.pblk + e.len;
  }
  const ideal = idealExtents(vol, blocks);
  const ratio = blocks ? (Math.max(0, fragments - ideal) * 100) / blocks : 0;
  return {
    ino, path, size, blocks, extents: extents.length, fragments, ideal,
    kibPerExtent: extents.length ? Math.floor((blocks * (vol.blockSize / 1024)) / extents.length) : 0,
    ratio, score: fragmentationScore(ratio),
  };
}

export interface FragmentationReport {
  /** The path the walk started from. */
  path: string;
  /** Regular files with data that were measured. */
  files: number;
  /** Files with more fragments than their ideal count. */
  fragmentedFiles: number;
  blocks: number;
  extents: number;
  idealExtents: number;
  kibPerExtent: number;
  /** e4defrag's total score: CALC_SCORE((extents - ideal) * 100 / blocks). */
  score: number;
  verdict: 'no problem' | 'a little fragmented' | 'needs defragmentation';
  /** Most fragmented first (by ratio, then extents). */
  worst: FileFragmentation[];
  /** Files that could not be read (damaged trees), with the reason. */
  errors: { path: string; error: string }[];
}

export interface CheckOptions {
  /** Path inside the filesystem, "/" for all of it. */
  path?: string;
  /** How many of the worst files to name (default 10). */
  top?: number;
  progress?: (done: number, total: number) => void;
}

export function verdictOf(score: number): FragmentationReport['verdict'] {
  if (score <= 30) return 'no problem';
  if (score <= 55) return 'a little fragmented';
  return 'needs defragmentation';
}

/** Resolve a path inside the filesystem to an inode number (no symlinks followed). */
export async function resolveFsPath(fs: Ext4Fs, p: string): Promise<number> {
  let ino = ROOT_INO;
  for (const part of p.split('/').filter((s) => s && s !== '.')) {
    if (part === '..') throw new FsError('EINVAL', `path ${p}: ".." is not allowed`);
    ino = (await fs.lookup(ino, Buffer.from(part))).ino;
  }
  return ino;
}

const DT_DIR = 4;
const DT_REG = 8;

/** Walk the tree under `path` like e4defrag -c does and measure every regular file. */
export async function checkFragmentation(fs: Ext4Fs, opts: CheckOptions = {}): Promise<FragmentationReport> {
  const start = normalizeFsPath(opts.path ?? '/');
  const vol = fs.vol;
  const total = Math.max(1, vol.inodesCount - vol.freeInodeCount);
  const rootIno = await resolveFsPath(fs, start);
  const rootAttr = await fs.getattr(rootIno);
  const files: FileFragmentation[] = [];
  const errors: { path: string; error: string }[] = [];
  const seen = new Set<number>();
  let visited = 0;
  const measure = async (ino: number, p: string): Promise<void> => {
    if (seen.has(ino)) return; // hard links: once
    seen.add(ino);
    try {
      const inode = await readInodeView(fs.store, ino);
      if (!inode.isReg() || inode.mode === 0) return;
      const ext = await readFileExtents(fs.store, ino, inode);
      if (!ext || ext.extents.length === 0) return;
      files.push(measureFile(vol, ino, p, inode.size, ext.extents));
    } catch (e) {
      errors.push({ path: p, error: (e as Error).message });
    }
  };
  if ((rootAttr.mode & 0o170000) !== 0o040000) {
    await measure(rootIno, start);
  } else {
    const stack: { ino: number; path: string }[] = [{ ino: rootIno, path: start }];
    while (stack.length) {
      const d = stack.pop()!;
      let entries;
      try {
        entries = await fs.readdir(d.ino, 0);
      } catch (e) {
        errors.push({ path: d.path, error: (e as Error).message });
        continue;
      }
      for (const ent of entries) {
        const name = ent.name.toString('utf8');
        if (name === '.' || name === '..') continue;
        const p = d.path === '/' ? `/${name}` : `${d.path}/${name}`;
        if (ent.type === DT_DIR) stack.push({ ino: ent.ino, path: p });
        else if (ent.type === DT_REG) await measure(ent.ino, p);
        visited++;
        if (opts.progress && visited % 256 === 0) opts.progress(Math.min(visited, total), total);
      }
    }
  }
  opts.progress?.(total, total);
  return summarize(vol, start, files, errors, opts.top ?? 10);
}

function summarize(vol: Volume, start: string, files: FileFragmentation[], errors: { path: string; error: string }[], top: number): FragmentationReport {
  let blocks = 0;
  let extents = 0;
  let ideal = 0;
  let fragmented = 0;
  for (const f of files) {
    blocks += f.blocks;
    extents += f.extents;
    ideal += f.ideal;
    if (f.fragments > f.ideal) fragmented++;
  }
  const ratio = blocks ? (Math.max(0, extents - ideal) * 100) / blocks : 0;
  const score = fragmentationScore(ratio);
  const worst = files
    .filter((f) => f.fragments > f.ideal)
    .sort((a, b) => b.ratio - a.ratio || b.extents - a.extents || a.ino - b.ino)
    .slice(0, top);
  return {
    path: start, files: files.length, fragmentedFiles: fragmented, blocks, extents, idealExtents: ideal,
    kibPerExtent: extents ? Math.floor((blocks * (vol.blockSize / 1024)) / extents) : 0,
    score, verdict: verdictOf(score), worst, errors,
  };
}

/** "/a/b" form of a path inside the filesystem. */
export function normalizeFsPath(p: string): string {
  const parts = p.split('/').filter((s) => s && s !== '.');
  return '/' + parts.join('/');
}
