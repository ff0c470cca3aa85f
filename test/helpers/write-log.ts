/**
 * Crash images from a BlockDevice write log: the device records every write and barrier of a
 * workload; a crash at any point of it is the starting image plus a prefix of the writes,
 * the last of them possibly torn (only a prefix of its 512-byte sectors reached the disk).
 * Writes after the last barrier might not have reached the disk in a real crash either: a
 * prefix is one of the states a crash can leave (the one where the disk kept issue order);
 * a reordered cut is another: everything up to the last barrier, then a random subset of the
 * writes issued since, applied in random order, some of them torn.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { WriteLogSink } from '../../src/block/device';
import { rng } from './rng';

export const SECTOR = 512;

export type LogEvent =
  | { kind: 'write'; pos: number; data: Buffer }
  | { kind: 'barrier' }
  | { kind: 'mark'; label: string };

export class WriteLog implements WriteLogSink {
  readonly events: LogEvent[] = [];
  enabled = true;

  write(pos: number, data: Buffer): void {
    if (this.enabled) this.events.push({ kind: 'write', pos, data });
  }
  barrier(): void {
    if (this.enabled) this.events.push({ kind: 'barrier' });
  }
  mark(label: string): void {
    if (this.enabled) this.events.push({ kind: 'mark', label });
  }
  get length(): number {
    return this.events.length;
  }
  /** Indices of barrier events. */
  barriers(): number[] {
    const out: number[] = [];
    this.events.forEach((e, i) => e.kind === 'barrier' && out.push(i));
    return out;
  }
  /** Indices of write events. */
  writes(): number[] {
    const out: number[] = [];
    this.events.forEach((e, i) => e.kind === 'write' && out.push(i));
    return out;
  }
}

/** A crash point: events [0, upTo) applied, then `tornSectors` sectors of event upTo (a write). */
export interface CutPoint {
  upTo: number;
  tornSectors?: number;
  /** Seed of a reordered cut: events up to the last barrier before upTo, then a random subset. */
  reorder?: number;
}

/** Index just after the last barrier before event `upTo` (0 when there is none). */
export function epochStart(log: WriteLog, upTo: number): number {
  for (let i = Math.min(upTo, log.length) - 1; i >= 0; i--) if (log.events[i].kind === 'barrier') return i + 1;
  return 0;
}

/**
 * Builds crash images in increasing cut order on one working copy (applying only the new
 * writes each time), then copies the working file to `out` for the check to modify.
 */
export class CrashImageBuilder {
  private applied = 0;
  private fd: number;

  constructor(private log: WriteLog, base: string, private work: string) {
    sparseCopy(base, work);
    this.fd = fs.openSync(work, 'r+');
  }

  /** Write the crash image for `cut` to `out`. Cuts must come in non-decreasing `upTo` order. */
  build(cut: CutPoint, out: string): void {
    const base = cut.reorder !== undefined ? epochStart(this.log, cut.upTo) : cut.upTo;
    if (base < this.applied) throw new Error('cut points must be visited in order');
    for (; this.applied < base; this.applied++) {
      const e = this.log.events[this.applied];
      if (e.kind === 'write') fs.writeSync(this.fd, e.data, 0, e.data.length, e.pos);
    }
    sparseCopy(this.work, out);
    if (cut.reorder !== undefined) {
      this.applyReordered(base, cut.upTo, cut.reorder, out);
      return;
    }
    if (cut.tornSectors) {
      const e = this.log.events[cut.upTo];
      if (e.kind !== 'write') throw new Error('torn cut must point at a write');
      const n = Math.min(e.data.length, cut.tornSectors * SECTOR);
      const fd = fs.openSync(out, 'r+');
      try {
        fs.writeSync(fd, e.data, 0, n, e.pos);
      } finally {
        fs.closeSync(fd);
      }
    }
  }

  /** A random subset of the writes in [from, to), shuffled, each torn with some chance. */
  private applyReordered(from: number, to: number, seed: number, out: string): void {
    const r = rng(seed);
    const picked: { pos: number; data: Buffer }[] = [];
    for (let i = from; i < to; i++) {
      const e = this.log.events[i];
      if (e.kind !== 'write' || r() < 0.5) continue;
      const sectors = sectorsOf(e);
      const n = sectors > 1 && r() < 0.2 ? (1 + Math.floor(r() * (sectors - 1))) * SECTOR : e.data.length;
      picked.push({ pos: e.pos, data: e.data.subarray(0, n) });
    }
    for (let i = picked.length - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [picked[i], picked[j]] = [picked[j], picked[i]];
    }
    const fd = fs.openSync(out, 'r+');
    try {
      for (const w of picked) fs.writeSync(fd, w.data, 0, w.data.length, w.pos);
    } finally {
      fs.closeSync(fd);
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/** Copy an image keeping its holes (most of a test image is holes: copying them costs). */
export function sparseCopy(from: string, to: string): void {
  execFileSync('cp', ['--sparse=always', '--reflink=never', from, to]);
}

/** Sectors of a write event (for choosing a torn prefix). */
export function sectorsOf(e: LogEvent): number {
  return e.kind === 'write' ? Math.ceil(e.data.length / SECTOR) : 0;
}

