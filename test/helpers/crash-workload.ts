/**
 * A seeded write-heavy workload through Ext4Fs with the device's write log on, and the oracle
 * for crash images made from that log.
 *
 * Every metadata change reaches the image only through a journal commit, and a commit always
 * happens between operations, so after a crash + replay the tree must be exactly the model's
 * state after the operation during which the last durable commit happened: names, types,
 * sizes and every byte of every file (the workload never overwrites file data in place, so
 * ordered mode makes the data of a committed state exact). A commit block torn by the cut may
 * or may not count, so that cut accepts both states.
 */
import fs from 'node:fs';
import { Ext4Fs } from '../../src/ext4/fs';
import { WriteLog } from './write-log';
import { rng } from './rng';
import { CommitStats } from '../../src/ext4/journal/journal';

export type ModelNode = { kind: 'dir' } | { kind: 'file'; data: Buffer };
export type ModelState = Map<string, ModelNode>;

export interface WorkloadRecord {
  log: WriteLog;
  /** states[k]: the tree after k operations (states[0]: the empty filesystem). */
  states: ModelState[];
  /** For each event index i: the state index of the last commit mark before i (0 if none). */
  committedBefore: Int32Array;
  /** For each commit mark index: the state it makes durable. */
  commitState: Map<number, number>;
  /** Every commit mark ('commit …' durable, 'soft …' log-only) in log order, with its state. */
  marks: { index: number; state: number; durable: boolean }[];
  ops: string[];
  /** The journal's counters at the end of the workload. */
  journal: CommitStats;
}

const join = (dir: string, name: string) => (dir ? `${dir}/${name}` : name);
const parentOf = (p: string) => (p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '');
const baseOf = (p: string) => p.slice(p.lastIndexOf('/') + 1);

function randomBytes(r: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let i = 0;
  for (; i + 4 <= n; i += 4) b.writeUInt32LE((r() * 2 ** 32) >>> 0, i);
  for (; i < n; i++) b[i] = (r() * 256) | 0;
  return b;
}

/** Run `opCount` random operations on a fresh image; returns the log and the model states. */
export async function runWorkload(image: string, seed: number, opCount: number, opts: { softCommits?: number } = {}): Promise<WorkloadRecord> {
  const log = new WriteLog();
  const r = rng(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)];
  const f = await Ext4Fs.open(image, { commitIntervalMs: 0, writeLog: log });
  f.noAtime = true;
  log.mark('ready');
  const model: ModelState = new Map();
  const inoOf = new Map<string, number>([['', 2]]);
  const states: ModelState[] = [new Map()];
  const ops: string[] = [];
  let counter = 0;
  const files = () => [...model].filter(([, n]) => n.kind === 'file').map(([p]) => p);
  const dirs = () => ['', ...[...model].filter(([, n]) => n.kind === 'dir').map(([p]) => p)];
  // One step = one Ext4Fs call: a commit can follow any call (the dirty-set threshold).
  // softCommits: the chance of a log-only commit after a step (what commit_before_reply does).
  const step = async (desc: string, fn: () => Promise<void>) => {
    await fn();
    if (opts.softCommits && r() < opts.softCommits) await f.commitToLog();
    ops.push(desc);
    states.push(new Map(model));
    log.mark(`op ${ops.length}`);
  };
  /** Append `data` to the file at p in 16 KiB writes (FUSE-sized), one step each. */
  const writeAll = async (p: string, data: Buffer) => {
    for (let o = 0; o < data.length; o += 16384) {
      const part = data.subarray(o, o + 16384);
      await step(`write ${p} ${part.length}`, async () => {
        const n = model.get(p) as { kind: 'file'; data: Buffer };
        await f.write(inoOf.get(p)!, n.data.length, part);
        model.set(p, { kind: 'file', data: Buffer.concat([n.data, part]) });
      });
    }
  };
  const createFile = async (p: string, data: Buffer) => {
    await step(`create ${p}`, async () => {
      const a = await f.create(inoOf.get(parentOf(p))!, Buffer.from(baseOf(p)), 0o644, 0, 0);
      inoOf.set(p, a.ino);
      model.set(p, { kind: 'file', data: Buffer.alloc(0) });
      await f.release(a.ino); // same state: a commit after it holds the same tree
    });
    await writeAll(p, data);
  };
  const removeTree = (p: string) => {
    model.delete(p);
    inoOf.delete(p);
  };
  const renameIn = (from: string, to: string) => {
    const n = model.get(from)!;
    const ino = inoOf.get(from)!;
    removeTree(from);
    model.set(to, n);
    inoOf.set(to, ino);
  };
  for (let k = 0; k < opCount; k++) {
    const x = r();
    const fl = files();
    if (x < 0.28 || fl.length < 3) {
      const p = join(pick(dirs()), `f${counter++}`);
      const data = randomBytes(r, pick([0, 100, 1500, 4096, 5000, 20000, 70000]));
      await createFile(p, data);
      if (r() < 0.3) await step(`fsync ${p}`, () => f.fsync(inoOf.get(p)!));
    } else if (x < 0.42) {
      const p = pick(fl);
      await writeAll(p, randomBytes(r, 1 + Math.floor(r() * 9000)));
      if (r() < 0.2) await step(`fsync ${p}`, () => f.fsync(inoOf.get(p)!));
    } else if (x < 0.50) {
      const p = join(pick(dirs()), `d${counter++}`);
      await step(`mkdir ${p}`, async () => {
        const a = await f.mkdir(inoOf.get(parentOf(p))!, Buffer.from(baseOf(p)), 0o755, 0, 0);
        inoOf.set(p, a.ino);
        model.set(p, { kind: 'dir' });
      });
    } else if (x < 0.62) {
      const p = pick(fl);
      await step(`unlink ${p}`, async () => {
        await f.unlink(inoOf.get(parentOf(p))!, Buffer.from(baseOf(p)));
        removeTree(p);
      });
    } else if (x < 0.72) {
      const from = pick(fl);
      const over = r() < 0.3 ? pick(fl.filter((q) => q !== from)) : undefined;
      const to = over ?? join(pick(dirs()), `f${counter++}`);
      await step(`rename ${from} ${to}`, async () => {
        await f.rename(inoOf.get(parentOf(from))!, Buffer.from(baseOf(from)), inoOf.get(parentOf(to))!, Buffer.from(baseOf(to)));
        if (over) removeTree(over);
        renameIn(from, to);
      });
    } else if (x < 0.82) {
      // The atomic replace applications rely on: write a temporary, fsync it, rename it over.
      const target = pick(fl);
      const tmp = join(parentOf(target), `t${counter++}`);
      const data = randomBytes(r, pick([10, 3000, 9000, 30000]));
      await createFile(tmp, data);
      await step(`fsync ${tmp}`, () => f.fsync(inoOf.get(tmp)!));
      await step(`rename ${tmp} ${target}`, async () => {
        const d = inoOf.get(parentOf(target))!;
        await f.rename(d, Buffer.from(baseOf(tmp)), d, Buffer.from(baseOf(target)));
        removeTree(target);
        renameIn(tmp, target);
      });
    } else if (x < 0.87) {
      // Shrink to a block boundary only: zeroing the tail of a partial block is an in-place data
      // write that ordered mode does not order (ext4 behaves the same).
      const p = pick(fl);
      const n = model.get(p) as { kind: 'file'; data: Buffer };
      const size = Math.floor((n.data.length * r()) / 4096) * 4096;
      await step(`truncate ${p} ${size}`, async () => {
        await f.setattr(inoOf.get(p)!, { size });
        model.set(p, { kind: 'file', data: n.data.subarray(0, size) });
      });
    } else if (x < 0.90) {
      const empty = dirs().filter((d) => d && ![...model.keys()].some((q) => q.startsWith(d + '/')));
      if (!empty.length) continue;
      const p = pick(empty);
      await step(`rmdir ${p}`, async () => {
        await f.rmdir(inoOf.get(parentOf(p))!, Buffer.from(baseOf(p)));
        removeTree(p);
      });
    } else if (x < 0.95) {
      await step('sync', () => f.sync());
    } else {
      const p = join(pick(dirs()), `big${counter++}`);
      await createFile(p, randomBytes(r, 200000 + Math.floor(r() * 400000)));
    }
  }
  const journal = { ...f.vol.journal!.stats };
  await f.close();
  return { log, states, ops, journal, ...commitIndex(log) };
}

function commitIndex(log: WriteLog): { committedBefore: Int32Array; commitState: Map<number, number>; marks: WorkloadRecord['marks'] } {
  const committedBefore = new Int32Array(log.length + 1);
  const commitState = new Map<number, number>();
  const marks: WorkloadRecord['marks'] = [];
  let opsDone = 0;
  let ready = false;
  let last = 0;
  log.events.forEach((e, i) => {
    committedBefore[i] = last;
    if (e.kind !== 'mark') return;
    if (e.label === 'ready') ready = true;
    else if (e.label.startsWith('op ')) opsDone++;
    else if (e.label.startsWith('commit ') || e.label.startsWith('soft ')) {
      // A commit during operation k+1 (or at close, after the last) makes its end state durable
      // (a soft one: as long as the host's page cache survives).
      last = ready ? opsDone + 1 : 0;
      commitState.set(i, last);
      marks.push({ index: i, state: last, durable: e.label.startsWith('commit ') });
    }
  });
  committedBefore[log.length] = last;
  // The commit at close comes after the last op: it holds the final state.
  const n = opsDone;
  for (const [i, s] of commitState) if (s > n) commitState.set(i, n);
  for (const m of marks) if (m.state > n) m.state = n;
  for (let i = 0; i <= log.length; i++) if (committedBefore[i] > n) committedBefore[i] = n;
  return { committedBefore, commitState, marks };
}

/** The tree as kfs reads it, in the model's terms. */
export async function readTree(f: Ext4Fs): Promise<ModelState> {
  const out: ModelState = new Map();
  const walk = async (dir: string, ino: number) => {
    const h = await f.opendir(ino);
    try {
      let off = 0;
      for (;;) {
        const batch = await f.readdir(ino, off, h);
        if (!batch.length) break;
        for (const e of batch) {
          off = e.next;
          const name = e.name.toString();
          if (name === '.' || name === '..' || (dir === '' && name === 'lost+found')) continue;
          const p = join(dir, name);
          const a = await f.getattr(e.ino);
          if ((a.mode & 0o170000) === 0o040000) {
            out.set(p, { kind: 'dir' });
            await walk(p, e.ino);
          } else {
            out.set(p, { kind: 'file', data: await f.read(e.ino, 0, a.size) });
          }
        }
      }
    } finally {
      await f.releasedir(ino, h);
    }
  };
  await walk('', 2);
  return out;
}

/** Differences between two trees (empty: equal). */
export function diffTrees(got: ModelState, want: ModelState, limit = 8): string[] {
  const out: string[] = [];
  for (const [p, w] of want) {
    const g = got.get(p);
    if (!g) out.push(`missing ${p}`);
    else if (g.kind !== w.kind) out.push(`${p}: ${g.kind} instead of ${w.kind}`);
    else if (g.kind === 'file' && w.kind === 'file' && !g.data.equals(w.data)) {
      out.push(`${p}: content differs (${g.data.length} bytes, want ${w.data.length})`);
    }
    if (out.length >= limit) return out;
  }
  for (const p of got.keys()) if (!want.has(p)) out.push(`unexpected ${p}`);
  return out.slice(0, limit);
}

/** Open a crash image with kfs (replaying the journal), read the tree, close. */
/** `replayBoot`: replay as after a reboot into that boot (see VolumeOptions.replayBoot). */
export async function openAndRead(image: string, replayBoot?: Buffer): Promise<ModelState> {
  const f = await Ext4Fs.open(image, { commitIntervalMs: 0, replayBoot });
  try {
    return await readTree(f);
  } finally {
    await f.close();
  }
}

export function fileSize(p: string): number {
  return fs.statSync(p).size;
}
