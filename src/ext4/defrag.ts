/**
 * Moving defragmentation: what e4defrag does with EXT4_IOC_MOVE_EXT, done inside kfs. A
 * fragmented regular file's blocks are copied into contiguous free space and the file's extent
 * map is switched to the copies in one journal transaction, online (Ext4Fs serving a mount or a
 * VM) or offline (kfsctl on the image), by the same code.
 *
 * A file is moved in pieces: logical ranges of whole extents of at most PIECE_BLOCKS blocks,
 * bounded so that a piece's switch fits a transaction (Volume.maxDirtyBlocks). Per piece:
 *   1. prepare (one transaction): choose free runs from the block bitmaps (first fit at the goal,
 *      the new end of the previous piece or else the file's first block; failing that the
 *      largest runs, and only if they make fewer fragments than the piece has now) and allocate
 *      them to a donor inode as unwritten extents at the piece's logical blocks. The donor is an
 *      O_TMPFILE inode: on the orphan list, so a crash from here on frees its blocks at the next
 *      open, and e2fsck finds every allocated block owned meanwhile.
 *   2. copy, outside the lock: the written data to the new blocks, ≥ 1 MiB per write (holes stay
 *      holes; unwritten extents stay unwritten and are not copied), then a barrier: the copies
 *      are durable before any metadata points at them.
 *   3. switch (one transaction): if the file changed since step 1 (generation, ctime, mtime,
 *      size or the piece's mapping differ), the donor gives its blocks back and the piece starts
 *      over; after RETRIES such rounds it is done entirely under the lock. Otherwise the store's
 *      beforeRelease hook runs for the range (kfsd unmaps DAX windows that show the old
 *      blocks), the new extents move from the donor to the file and the old blocks are freed.
 *      Before this commit the file has its old blocks (and the donor the new ones), after it
 *      the new ones, whose contents were durable first: a crash at any point loses nothing.
 * Freed old blocks stay busy until the commit freeing them is durable (Volume), and a commit
 * first waits for reads that planned on old blocks (Ext4Fs.read), so no reader sees them reused.
 *
 * Concurrent access: Ext4Fs.write changes ctime and mtime, and every mapping change changes the
 * piece's mapping, which is how step 3 notices them. A store through a DAX window changes
 * neither, so when a beforeRelease hook is installed (kfsd with DAX) each piece is copied under
 * the lock, after the hook has unmapped its range. The host's page cache (kfs mount) needs no
 * invalidation: a file's bytes are the same before and after, only where they live changes.
 */
import { CorruptionError, FsError } from '../util/errors';
import { log } from '../util/log';
import type { Ext4Fs } from './fs';
import type { InodeState } from './inode-store';
import { ExtentMap, Mapping, MAX_INIT_LEN } from './extents';
import { INODE_FLAGS, Inode, ROOT_INO } from './inode';
import { BG_BLOCK_UNINIT } from './group-desc';
import { groupBaseMetaBlocks } from './superblock';
import { BlockRun, Volume, findZero, testBit, setBit } from './volume';
import { checkFragmentation, FileFragmentation, FragmentationReport, measureFile, readFileExtents, readInodeView } from './fragmentation';

/**
 * Test hook (crash tests): KFS_TEST_FAULT=kill-in-defrag:STAGE:N kills this process with
 * SIGKILL when the Nth piece (from 1) reaches STAGE: prepared (the donor's blocks committed),
 * copied (copies durable, switch not started) or switched (the switch committed).
 */
const faultCounts = new Map<string, number>();
function faultPoint(stage: 'prepared' | 'copied' | 'switched'): void {
  const spec = process.env.KFS_TEST_FAULT;
  if (!spec) return;
  const n = (faultCounts.get(stage) ?? 0) + 1;
  faultCounts.set(stage, n);
  for (const f of spec.split(',')) {
    const m = /^kill-in-defrag:(\w+):(\d+)$/.exec(f);
    if (m && m[1] === stage && Number(m[2]) === n) process.kill(process.pid, 'SIGKILL');
  }
}

/** Largest piece moved per transaction: one full initialized extent (128 MiB with 4 KiB blocks). */
const PIECE_BLOCKS = MAX_INIT_LEN;
/** Bytes per copy write (contiguous destination). */
const COPY_CHUNK = 4 << 20;
/** Rounds of copying outside the lock before a piece is copied under it. */
const RETRIES = 3;
/** Most free runs a piece is spread over (it must also be fewer than its fragments now). */
const MAX_RUNS = 1024;

export interface DefragOptions {
  /** Path inside the filesystem, "/" for all of it. */
  path?: string;
  /** How many files to list in the result (all are defragmented). Default 10. */
  top?: number;
  progress?: (phase: string, done: number, total: number) => void;
}

export interface DefragFileResult {
  ino: number;
  path: string | null;
  blocks: number;
  extentsBefore: number;
  extentsAfter: number;
  fragmentsBefore: number;
  fragmentsAfter: number;
  ideal: number;
  movedBlocks: number;
  /** Pieces moved (each switched in a transaction of its own). */
  pieces: number;
  /** Pieces copied again because the file changed during the copy. */
  retries: number;
  /** Why the file is not at its ideal now (no contiguous free space, deleted meanwhile...). */
  note: string | null;
}

export interface DefragResult {
  path: string;
  /** Regular files with data under path. */
  files: number;
  fragmentedBefore: number;
  fragmentedAfter: number;
  /** Files whose fragment count went down. */
  improved: number;
  movedBlocks: number;
  extentsBefore: number;
  extentsAfter: number;
  idealExtents: number;
  scoreBefore: number;
  scoreAfter: number;
  /** The files tried, most fragmented (before) first, at most `top`. */
  worst: DefragFileResult[];
  errors: { path: string; error: string }[];
}

/** Defragment the regular files under opts.path (see the file comment). */
export async function defragment(fs: Ext4Fs, opts: DefragOptions = {}): Promise<DefragResult> {
  fs.vol.assertWritable();
  if (!fs.vol.journal) {
    throw new FsError('EOPNOTSUPP', 'defragmentation needs the journal (each extent switch is one transaction); this filesystem has none or runs with -o nojournal');
  }
  const progress = opts.progress ?? (() => undefined);
  const before = await checkFragmentation(fs, { path: opts.path, top: Infinity, progress: (d, t) => progress('scanning files', d, t) });
  const candidates = before.worst;
  const total = Math.max(1, candidates.reduce((n, f) => n + f.blocks, 0));
  const results: DefragFileResult[] = [];
  const errors = [...before.errors];
  let done = 0;
  progress('moving data', 0, total);
  if (candidates.length) {
    const donor = await fs.tmpfile(ROOT_INO, 0o600, 0, 0);
    const mover = new PieceMover(fs, donor.ino);
    try {
      for (const f of candidates) {
        const base = done;
        try {
          results.push(await mover.file(f, (n) => progress('moving data', Math.min(base + n, total), total)));
        } catch (e) {
          if (!(e instanceof FsError) || e.code === 'EROFS' || e.code === 'EIO') throw e;
          errors.push({ path: f.path ?? `inode ${f.ino}`, error: e.message });
        }
        done = base + f.blocks;
        progress('moving data', Math.min(done, total), total);
      }
    } finally {
      // The donor is empty after each piece; its last release frees the inode.
      await fs.release(donor.ino).catch((e) => log.warn(`defrag: releasing donor inode ${donor.ino}: ${(e as Error).message}`));
    }
  }
  const after = await checkFragmentation(fs, { path: opts.path, top: 0, progress: (d, t) => progress('measuring', d, t) });
  return summarize(before, after, results, errors, opts.top ?? 10);
}

function summarize(before: FragmentationReport, after: FragmentationReport, results: DefragFileResult[], errors: DefragResult['errors'], top: number): DefragResult {
  return {
    path: before.path,
    files: after.files,
    fragmentedBefore: before.fragmentedFiles,
    fragmentedAfter: after.fragmentedFiles,
    improved: results.filter((r) => r.fragmentsAfter < r.fragmentsBefore).length,
    movedBlocks: results.reduce((n, r) => n + r.movedBlocks, 0),
    extentsBefore: before.extents,
    extentsAfter: after.extents,
    idealExtents: after.idealExtents,
    scoreBefore: before.score,
    scoreAfter: after.score,
    worst: results.slice(0, top),
    errors,
  };
}

/** Physically discontiguous runs of `runs` in order, the first counted unless it starts at prevEnd. */
function countFragments(runs: { pblk: number; len: number }[], prevEnd: number): number {
  let n = 0;
  let end = prevEnd;
  for (const r of runs) {
    if (r.pblk !== end) n++;
    end = r.pblk + r.len;
  }
  return n;
}

/** One block range of the file moving from `from` to `to`. */
interface Move {
  lblk: number;
  len: number;
  from: number;
  to: number;
  unwritten: boolean;
}

type Prepared =
  | { kind: 'end' }
  | { kind: 'gone' }
  | { kind: 'skip'; end: number; pieceEnd: number; blocks: number; note: string | null }
  | {
    kind: 'move'; l0: number; l1: number; blocks: number; moves: Move[];
    /** What the file looked like when the piece was planned (see changed()). */
    version: string; mapping: string;
  };

/** A file's state that any write or mapping change alters. */
function versionOf(i: Inode): string {
  const c = i.ctime;
  const m = i.mtime;
  return `${i.f.i_generation}:${c.sec}.${c.nsec}:${m.sec}.${m.nsec}:${i.size}:${i.links}`;
}

function mappingKey(ms: Mapping[]): string {
  return ms.map((m) => (m.hole ? `h${m.len}` : `${m.lblk}+${m.len}@${m.pblk}${m.unwritten ? 'u' : ''}`)).join(',');
}

class PieceMover {
  private readonly vol: Volume;
  private readonly bs: number;
  private copyBuf: Buffer | null = null;

  constructor(private fs: Ext4Fs, private donorIno: number) {
    this.vol = fs.vol;
    this.bs = fs.vol.blockSize;
  }

  private get store() {
    return this.fs.store;
  }

  /** Move one file, piece by piece; `moved(n)` reports blocks of it handled so far. */
  async file(f: FileFragmentation, moved: (n: number) => void): Promise<DefragFileResult> {
    const r: DefragFileResult = {
      ino: f.ino, path: f.path, blocks: f.blocks, extentsBefore: f.extents, extentsAfter: f.extents,
      fragmentsBefore: f.fragments, fragmentsAfter: f.fragments, ideal: f.ideal, movedBlocks: 0, pieces: 0, retries: 0, note: null,
    };
    let cursor = 0;
    let prevEnd = -1;
    let handled = 0;
    for (;;) {
      const p = await this.piece(f.ino, cursor, prevEnd, r);
      if (p.kind === 'end') break;
      if (p.kind === 'gone') {
        r.note = 'deleted or replaced during defragmentation';
        return r;
      }
      if (p.kind === 'skip') {
        if (p.note) r.note = p.note;
        handled += p.blocks;
        moved(handled);
        cursor = p.end;
        prevEnd = p.pieceEnd;
        continue;
      }
      r.movedBlocks += p.blocks;
      r.pieces++;
      handled += p.blocks;
      moved(handled);
      cursor = p.l1;
      const last = p.moves[p.moves.length - 1];
      prevEnd = last.to + last.len;
    }
    // Measured as the store has it now (the tree on disk is the same after the commit).
    const inode = await readInodeView(this.store, f.ino);
    const ext = await readFileExtents(this.store, f.ino, inode);
    if (ext) {
      const m = measureFile(this.vol, f.ino, f.path, inode.size, ext.extents);
      r.blocks = m.blocks;
      r.extentsAfter = m.extents;
      r.fragmentsAfter = m.fragments;
      r.ideal = m.ideal;
      if (m.fragments > m.ideal && !r.note) r.note = 'not enough contiguous free space';
      if (m.fragments <= m.ideal) r.note = null;
    }
    return r;
  }

  /** One piece from logical block `cursor`: moved, skipped, or the end of the file. */
  private async piece(ino: number, cursor: number, prevEnd: number, r: DefragFileResult): Promise<Prepared> {
    for (let attempt = 0; ; attempt++) {
      if (attempt >= RETRIES || this.store.beforeRelease) {
        // Everything under the lock: nothing can change the file between the copy and the switch.
        const p = await this.fs.transaction(async () => {
          const q = await this.prepare(ino, cursor, prevEnd);
          if (q.kind !== 'move') return q;
          await this.store.beforeRelease?.(ino, q.l0 * this.bs, q.l1 * this.bs);
          await this.copy(q.moves);
          await this.vol.dev.barrier();
          await this.switchPiece(ino, q, false);
          return q;
        });
        if (p.kind === 'move') faultPoint('switched');
        return p;
      }
      const p = await this.fs.transaction(() => this.prepare(ino, cursor, prevEnd));
      if (p.kind !== 'move') return p;
      faultPoint('prepared');
      try {
        await this.copy(p.moves);
        await this.vol.dev.barrier();
      } catch (e) {
        await this.fs.transaction(() => this.emptyDonor()).catch(() => undefined);
        throw e;
      }
      faultPoint('copied');
      const switched = await this.fs.transaction(() => this.switchPiece(ino, p, true));
      if (switched) {
        faultPoint('switched');
        return p;
      }
      r.retries++;
      log.debug(`defrag: inode ${ino} changed while blocks ${p.l0}..${p.l1 - 1} were copied; again`);
    }
  }

  /** Give back whatever the donor holds (a piece abandoned part-way). */
  private async emptyDonor(): Promise<void> {
    const dst = await this.store.get(this.donorIno);
    const dmap = await this.store.extents(dst);
    if (dmap.extents.length) await this.store.release(dst, 0, dmap.endLblk);
  }

  /** Under the lock: choose the next piece and give new blocks for it to the donor. */
  private async prepare(ino: number, cursor: number, prevEnd: number): Promise<Prepared> {
    await this.emptyDonor();
    let st: InodeState;
    try {
      st = await this.store.get(ino);
    } catch (e) {
      if (e instanceof FsError && e.code === 'ESTALE') return { kind: 'gone' };
      throw e;
    }
    if (!st.inode.isReg() || st.inode.links === 0) return { kind: 'gone' };
    if (st.inode.hasFlag(INODE_FLAGS.INLINE_DATA)) return { kind: 'end' }; // no blocks to move
    const map = await this.store.extents(st);
    const ext = map.extents;
    let i = 0;
    while (i < ext.length && ext[i].lblk + ext[i].len <= cursor) i++;
    if (i === ext.length) return { kind: 'end' };

    // The piece: whole extents from the cursor while the switch's transaction stays small:
    // the file's whole tree is rewritten, plus per group touched a bitmap and a descriptor block.
    const vol = this.vol;
    const budget = Math.max(64, Math.floor(vol.maxDirtyBlocks / 2));
    const fixed = ExtentMap.treeBlocksFor(ext.length, this.bs) * 2 + 16;
    const groups = new Set<number>();
    const l0 = Math.max(cursor, ext[i].lblk);
    let l1 = l0;
    let blocks = 0;
    for (let j = i; j < ext.length; j++) {
      const e = ext[j];
      const s = Math.max(e.lblk, l0);
      const n = e.lblk + e.len - s;
      const p = e.pblk + (s - e.lblk);
      const g1 = vol.groupOfBlock(p);
      const g2 = vol.groupOfBlock(p + n - 1);
      const newGroups = (groups.has(g1) ? 0 : 1) + (g2 !== g1 && !groups.has(g2) ? 1 : 0);
      const cost = fixed + 2 * (groups.size + newGroups) + 2 * (Math.ceil((blocks + n) / vol.blocksPerGroup) + 1);
      if (blocks > 0 && (blocks + n > PIECE_BLOCKS || cost > budget)) break;
      groups.add(g1);
      groups.add(g2);
      blocks += n;
      l1 = s + n;
    }
    const segs = map.map(l0, l1 - l0).filter((m) => !m.hole);
    const last = segs[segs.length - 1];
    const pieceEnd = last.pblk + last.len;
    const before = countFragments(segs, prevEnd);
    // Already contiguous (with what precedes it, or as the file's first piece): leave it.
    if (before === 0 || (before === 1 && prevEnd < 0)) return { kind: 'skip', end: l1, pieceEnd, blocks, note: null };

    const goal = prevEnd > 0 ? prevEnd : ext[0].pblk;
    const runs = await planRuns(vol, blocks, goal, Math.min(MAX_RUNS, before));
    if (!runs || countFragments(runs.map((x) => ({ pblk: x.start, len: x.len })), prevEnd) >= before) {
      return { kind: 'skip', end: l1, pieceEnd, blocks, note: 'not enough contiguous free space' };
    }
    const got = await allocate(vol, runs, blocks, goal);

    // The piece's mapped blocks in logical order onto the new runs, in order.
    const moves: Move[] = [];
    let ri = 0;
    let roff = 0;
    for (const m of segs) {
      let l = m.lblk;
      let from = m.pblk;
      let n = m.len;
      while (n > 0) {
        const run = got[ri];
        const k = Math.min(n, run.len - roff);
        moves.push({ lblk: l, len: k, from, to: run.start + roff, unwritten: m.unwritten });
        l += k;
        from += k;
        n -= k;
        roff += k;
        if (roff === run.len) {
          ri++;
          roff = 0;
        }
      }
    }
    // The donor owns the new blocks until the switch (unwritten: it reads as zeros, not as garbage).
    const dst = await this.store.get(this.donorIno);
    const dmap = await this.store.extents(dst);
    let k = 0;
    try {
      for (; k < moves.length; k++) {
        const mv = moves[k];
        await this.store.reserveTree(dst, dmap.extents.length + 1);
        dmap.insert({ lblk: mv.lblk, len: mv.len, pblk: mv.to, unwritten: true });
        this.store.addSectors(dst.inode, mv.len);
      }
    } finally {
      // No room for the donor's tree (ENOSPC): blocks not yet given to it are not left unowned.
      for (const mv of moves.slice(k)) await this.vol.freeBlocks(mv.to, mv.len);
      await this.store.write(dst);
    }
    return { kind: 'move', l0, l1, blocks, moves, version: versionOf(st.inode), mapping: mappingKey(map.map(l0, l1 - l0)) };
  }

  /** Copy the written blocks of the moves, ≥ 1 MiB per write where the destination is contiguous. */
  private async copy(moves: Move[]): Promise<void> {
    const bs = this.bs;
    const dev = this.vol.dev;
    const buf = (this.copyBuf ??= Buffer.allocUnsafe(COPY_CHUNK));
    const perChunk = Math.floor(COPY_CHUNK / bs);
    let parts: { from: number; at: number; len: number }[] = [];
    let dest = -1;
    let filled = 0;
    const flush = async () => {
      if (!filled) return;
      await Promise.all(parts.map((p) => dev.readAt(buf, p.from * bs, p.at * bs, p.len * bs)));
      await dev.writeAt(buf, dest * bs, 0, filled * bs);
      parts = [];
      filled = 0;
    };
    for (const mv of moves) {
      if (mv.unwritten) continue;
      let off = 0;
      while (off < mv.len) {
        if (filled === perChunk || (filled && dest + filled !== mv.to + off)) await flush();
        if (!filled) dest = mv.to + off;
        const k = Math.min(mv.len - off, perChunk - filled);
        parts.push({ from: mv.from + off, at: filled, len: k });
        filled += k;
        off += k;
      }
    }
    await flush();
  }

  /**
   * Under the lock: point the piece at its copies and free the old blocks. With `verify`,
   * nothing happens if the file changed since the piece was prepared (the donor gives its blocks
   * back; false is returned).
   */
  private async switchPiece(ino: number, p: Extract<Prepared, { kind: 'move' }>, verify: boolean): Promise<boolean> {
    let st: InodeState | null = null;
    try {
      st = await this.store.get(ino);
    } catch (e) {
      if (!(e instanceof FsError && e.code === 'ESTALE')) throw e;
    }
    const len = p.l1 - p.l0;
    const map = st ? await this.store.extents(st) : null;
    if (!st || !map || (verify && (versionOf(st.inode) !== p.version || mappingKey(map.map(p.l0, len)) !== p.mapping))) {
      await this.emptyDonor();
      return false;
    }
    // Under the lock since before the copy, the hook has run already (see piece()).
    if (verify) await this.store.beforeRelease?.(ino, p.l0 * this.bs, p.l1 * this.bs);
    // A cursor inside an extent splits it: room for one more entry, before anything changes
    // (the only step here that can fail for want of space).
    await this.store.reserveTree(st, map.extents.length + 1);
    const dst = await this.store.get(this.donorIno);
    const dmap = await this.store.extents(dst);
    // The new blocks leave the donor without being freed: they go to the file.
    const taken = dmap.remove(p.l0, len).reduce((n, x) => n + x.len, 0);
    if (taken !== p.blocks) throw new CorruptionError(`defrag donor inode ${this.donorIno} holds ${taken} blocks of ${p.blocks} for inode ${ino}`);
    this.store.addSectors(dst.inode, -taken);
    await this.store.write(dst);
    let freed = 0;
    for (const x of map.remove(p.l0, len)) {
      await this.vol.freeBlocks(x.pblk, x.len);
      freed += x.len;
    }
    if (freed !== p.blocks) throw new CorruptionError(`defrag: inode ${ino} had ${freed} blocks in ${p.l0}..${p.l1 - 1}, ${p.blocks} were planned`);
    for (const mv of p.moves) map.insert({ lblk: mv.lblk, len: mv.len, pblk: mv.to, unwritten: mv.unwritten });
    // i_blocks is unchanged (as many blocks freed as mapped); times too: the data did not change.
    await this.store.write(st);
    return true;
  }
}

/**
 * Allocate the planned runs (under the lock, right after a commit: the bitmaps hold no busy
 * blocks, so each run is granted as planned); anything short is made up near the goal.
 */
async function allocate(vol: Volume, runs: BlockRun[], need: number, goal: number): Promise<BlockRun[]> {
  const got: BlockRun[] = [];
  let left = need;
  try {
    for (const r of runs) {
      let s = r.start;
      let n = Math.min(r.len, left);
      while (n > 0) {
        // allocBlocks stays inside one group: a run across a group boundary takes two calls.
        const a = await vol.allocBlocks(s, n);
        got.push(a);
        left -= a.len;
        if (a.start !== s) break;
        s += a.len;
        n -= a.len;
      }
    }
    if (left > 0) got.push(...(await vol.allocBlockRuns(goal, left)));
  } catch (e) {
    for (const a of got) await vol.freeBlocks(a.start, a.len);
    throw e;
  }
  // Adjacent grants are one run.
  const out: BlockRun[] = [];
  for (const a of got) {
    const prev = out[out.length - 1];
    if (prev && prev.start + prev.len === a.start) prev.len += a.len;
    else out.push({ ...a });
  }
  return out;
}

/**
 * Free runs for `need` blocks, from the bitmaps as they are now: the first free run of at
 * least `need` blocks at or after `goal` (wrapping around), else the longest runs, as long as
 * at most `maxRuns` of them suffice (null otherwise). Runs may cross group boundaries.
 */
export async function planRuns(vol: Volume, need: number, goal: number, maxRuns: number): Promise<BlockRun[] | null> {
  if (maxRuns < 1 || need <= 0 || vol.freeBlockCount < need) return null;
  if (!(goal >= vol.firstDataBlock && goal < vol.blocksCount)) goal = vol.firstDataBlock;
  const g0 = vol.groupOfBlock(goal);
  const goalOff = goal - vol.groupFirstBlock(g0);
  /** The longest runs seen, longest first. */
  const best: BlockRun[] = [];
  const keep = (r: BlockRun) => {
    if (best.length === maxRuns && best[best.length - 1].len >= r.len) return;
    let k = best.length;
    while (k > 0 && best[k - 1].len < r.len) k--;
    best.splice(k, 0, r);
    if (best.length > maxRuns) best.pop();
  };
  let cur: BlockRun | null = null;
  const close = () => {
    if (cur) keep(cur);
    cur = null;
  };
  for (let i = 0; i <= vol.groupCount; i++) {
    const g = (g0 + i) % vol.groupCount;
    if (g === 0 && i > 0) close(); // no run wraps from the last block to the first
    const from = i === 0 ? goalOff : 0;
    const to = i === vol.groupCount ? goalOff : vol.blocksInGroup(g);
    if (vol.gds[g].freeBlocks === 0 || from >= to) {
      close();
      continue;
    }
    const bm = await groupBitmap(vol, g);
    const first = vol.groupFirstBlock(g);
    let bit = from;
    while (bit < to) {
      const z = findZero(bm, bit, to);
      if (z < 0) break;
      let e = z + 1;
      while (e < to && !testBit(bm, e)) e++;
      const start = first + z;
      const c = cur as BlockRun | null;
      if (c && c.start + c.len === start) c.len += e - z;
      else {
        close();
        cur = { start, len: e - z };
      }
      if (cur!.len >= need) return [{ start: cur!.start, len: need }];
      bit = e;
      if (e < vol.blocksInGroup(g)) close();
    }
    if (to < vol.blocksInGroup(g)) close();
  }
  close();
  const chosen: BlockRun[] = [];
  let sum = 0;
  for (const r of best) {
    if (sum >= need) break;
    const n = Math.min(r.len, need - sum);
    chosen.push({ start: r.start, len: n });
    sum += n;
  }
  if (sum < need) return null;
  return chosen.sort((a, b) => a.start - b.start);
}

/** A group's block bitmap; for a BLOCK_UNINIT group the one ext4_init_block_bitmap would make. */
async function groupBitmap(vol: Volume, g: number): Promise<Buffer> {
  const gd = vol.gds[g];
  if (!(gd.flags & BG_BLOCK_UNINIT)) return vol.dev.read(gd.blockBitmap);
  const bm = Buffer.alloc(vol.blockSize);
  const first = vol.groupFirstBlock(g);
  const n = vol.blocksInGroup(g);
  const mark = (b: number, count: number) => {
    for (let k = 0; k < count; k++) if (b + k >= first && b + k < first + n) setBit(bm, b + k - first);
  };
  mark(first, groupBaseMetaBlocks(g, vol.sb));
  const itable = Math.ceil((vol.inodesPerGroup * vol.inodeSize) / vol.blockSize);
  for (const o of vol.gds) {
    mark(o.blockBitmap, 1);
    mark(o.inodeBitmap, 1);
    mark(o.inodeTable, itable);
  }
  for (let i = n; i < vol.blockSize * 8; i++) setBit(bm, i);
  return bm;
}
