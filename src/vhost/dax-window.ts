/**
 * The DAX window: virtio shared-memory region 0 of the virtio-fs device, which the guest
 * carves into ranges (Linux fs/fuse/dax.c: 2 MiB each) and asks to have file ranges mapped
 * into (FUSE_SETUPMAPPING) or dropped (FUSE_REMOVEMAPPING). For an image filesystem a file
 * extent is a contiguous range of the image file, so a mapping is a handful of SHMEM_MAP
 * requests on the backend channel, each passing the image fd and an offset in it.
 *
 * Rules that keep the guest from ever seeing blocks that are not its file's:
 * - Only the file's own blocks are mapped. Holes (and unwritten extents) in a read-only
 *   mapping are backed by a sparse zero memfd; a writable mapping has them allocated and
 *   zeroed first by the filesystem. The part of a range past the end of the file is not mapped.
 * - Before the filesystem frees or moves a mapped file's blocks (truncate, punch hole, last
 *   unlink, defrag), it calls invalidate(), which unmaps every window range of that file.
 * - Every offset and length from the guest is checked against the window and page alignment.
 */
import fs from 'node:fs';
import { native } from '../native';
import { FsError } from '../util/errors';
import { log } from '../util/log';
import { BackendChannel } from './backend-channel';

const PAGE = 4096;
export const DAX_SHMID = 0;

/** One contiguous piece of a file range: image bytes, or zeros (imageOffset null). */
export interface DaxRun {
  fileOffset: number;
  imageOffset: number | null;
  len: number;
}

/**
 * What the filesystem provides for mapping (Ext4FuseFs). Window changes run under the
 * filesystem's operation lock, so no truncate, punch or unlink can free a file's blocks between
 * looking them up and mapping them; the filesystem calls DaxWindow.invalidate() from inside its
 * own operations, already holding that lock.
 */
export interface DaxSource {
  /** The image file descriptor the runs point into. */
  readonly imageFd: number;
  /**
   * Under the lock: for an open handle fh of node (writable: open for writing; EBADF otherwise),
   * the runs covering [foffset, foffset+len) clipped to the file's size rounded
   * up to a page (writable: holes and unwritten extents allocated and zeroed first; foffset at
   * or past the end of the file is EINVAL), then use(runs) before the lock is released.
   */
  withDaxRuns(node: number, fh: number, foffset: number, len: number, writable: boolean, use: (runs: DaxRun[]) => Promise<void>): Promise<void>;
  /** Run fn under the lock. */
  exclusive(fn: () => Promise<void>): Promise<void>;
  /** Install (or with null remove) the hook the filesystem calls, under its lock, before it frees bytes [from, to) of node. */
  setReleaseHook(hook: ((node: number, from: number, to: number) => Promise<void>) | null): void;
  /** Install the hook the filesystem calls, under its lock, before a snapshot is taken (the window then drops every mapping). */
  setSnapshotHook?(hook: (() => Promise<void>) | null): void;
}

interface WindowMapping {
  moffset: number;
  len: number;
  node: number;
  foffset: number;
  /** Window ranges actually mapped (moffset-relative runs), for unmapping. */
  mapped: { shmOffset: number; len: number }[];
}

export class DaxWindow {
  private mappings: WindowMapping[] = [];
  private zeroFd = -1;
  readonly stats = { maps: 0, unmaps: 0, invalidations: 0 };

  constructor(readonly size: number, private channel: BackendChannel, private source: DaxSource) {
    source.setReleaseHook((node, from, to) => this.invalidate(node, from, to));
    // A writable mapping relies on the copy-on-write done when it was set up, for the snapshots
    // that existed then: a new snapshot needs every mapping set up again.
    source.setSnapshotHook?.(() => this.dropAll());
  }

  /** Unmap every window range (before a snapshot is taken). */
  async dropAll(): Promise<void> {
    for (const m of [...this.mappings]) await this.drop(m);
  }

  async setup(node: number, fh: number, foffset: number, len: number, moffset: number, writable: boolean): Promise<void> {
    this.checkRange(moffset, len);
    if (foffset % PAGE) throw new FsError('EINVAL', `DAX mapping of file offset ${foffset}: not page aligned`);
    await this.source.withDaxRuns(node, fh, foffset, len, writable, async (runs) => {
      await this.unmapOverlapping(moffset, len);
      const m: WindowMapping = { moffset, len, node, foffset, mapped: [] };
      this.mappings.push(m);
      for (const r of runs) {
        const range = { shmid: DAX_SHMID, shmOffset: moffset + (r.fileOffset - foffset), len: r.len };
        if (r.imageOffset === null) await this.channel.map(range, this.zeroSource(), range.shmOffset, false);
        else await this.channel.map(range, this.source.imageFd, r.imageOffset, writable);
        m.mapped.push({ shmOffset: range.shmOffset, len: range.len });
        this.stats.maps++;
      }
    });
  }

  async remove(items: { moffset: number; len: number }[]): Promise<void> {
    for (const it of items) this.checkRange(it.moffset, it.len);
    await this.source.exclusive(async () => {
      for (const it of items) await this.unmapOverlapping(it.moffset, it.len);
    });
  }

  /**
   * The filesystem, inside one of its operations, is about to free or move bytes [from, to) of
   * node: unmap every window range showing them.
   */
  async invalidate(node: number, from: number, to: number): Promise<void> {
    for (const m of this.mappings.filter((x) => x.node === node && x.foffset < to && from < x.foffset + x.len)) {
      this.stats.invalidations++;
      await this.drop(m);
    }
  }

  /** Is any part of node mapped (cheap check for the filesystem's hot paths)? */
  hasMappings(node: number): boolean {
    return this.mappings.some((m) => m.node === node);
  }

  close(): void {
    this.source.setReleaseHook(null);
    this.source.setSnapshotHook?.(null);
    if (this.zeroFd >= 0) fs.closeSync(this.zeroFd);
    this.zeroFd = -1;
    this.mappings = [];
  }

  private checkRange(moffset: number, len: number): void {
    if (!Number.isSafeInteger(moffset) || !Number.isSafeInteger(len) || len <= 0 || moffset % PAGE || len % PAGE) {
      throw new FsError('EINVAL', `DAX window range ${moffset}+${len}: not page aligned or empty`);
    }
    if (moffset + len > this.size) throw new FsError('EINVAL', `DAX window range ${moffset}+${len} is outside the ${this.size}-byte window`);
  }

  private async unmapOverlapping(moffset: number, len: number): Promise<void> {
    for (const m of this.mappings.filter((x) => x.moffset < moffset + len && moffset < x.moffset + x.len)) await this.drop(m);
  }

  private async drop(m: WindowMapping): Promise<void> {
    this.mappings = this.mappings.filter((x) => x !== m);
    for (const r of m.mapped) {
      try {
        await this.channel.unmap({ shmid: DAX_SHMID, shmOffset: r.shmOffset, len: r.len });
        this.stats.unmaps++;
      } catch (e) {
        // The guest can no longer be trusted to see only its own blocks through this range.
        log.error(`DAX: unmapping window range ${r.shmOffset}+${r.len} failed: ${(e as Error).message}`);
        throw e;
      }
    }
  }

  /** A sparse memfd as large as the window: reads of its holes are zeros and cost no memory. */
  private zeroSource(): number {
    if (this.zeroFd < 0) this.zeroFd = native.memfdCreate('kfs-dax-zero', this.size);
    return this.zeroFd;
  }
}
