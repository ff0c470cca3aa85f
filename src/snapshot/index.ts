/**
 * Snapshot operations as the control service and kfsctl use them: on a live Ext4Fs (served or
 * opened offline by kfsctl) or, for a whole restore, on an image nobody has open.
 */
import type { Ext4Fs } from '../ext4/fs';
import { FsError } from '../util/errors';
import { SnapshotStore, SnapshotInfo } from './store';

export { SnapshotStore } from './store';
export type { SnapshotInfo } from './store';
export { openSnapshotFs } from './view';
export { restorePath, restoreWholeImage } from './restore';

export interface SnapshotListing {
  snapshots: SnapshotInfo[];
  /** Bytes of the image file the store takes past the filesystem. */
  storeBytes: number;
  freeSlots: number;
  blockSize: number;
}

/** Take a snapshot at a clean point of the live filesystem (O(1): only the table is written). */
export async function createSnapshot(fs: Ext4Fs, name: string): Promise<SnapshotInfo> {
  if (fs.readOnly) throw new FsError('EROFS', 'the filesystem is read-only: a snapshot needs to write its table');
  return fs.atCleanPoint(async () => {
    const dev = fs.vol.dev;
    if (!dev.snapshots) dev.snapshots = SnapshotStore.initialize(dev);
    return dev.snapshots.create(name);
  });
}

export function listSnapshots(fs: Ext4Fs): SnapshotListing {
  const s = fs.vol.dev.snapshots;
  return { snapshots: s?.list() ?? [], storeBytes: s?.storeBytes ?? 0, freeSlots: s?.freeSlots ?? 0, blockSize: fs.vol.blockSize };
}

export async function deleteSnapshot(fs: Ext4Fs, name: string): Promise<{ name: string; freedBytes: number }> {
  if (fs.readOnly) throw new FsError('EROFS', 'the filesystem is read-only');
  const s = fs.vol.dev.snapshots;
  if (!s?.find(name)) throw new FsError('ENOENT', `snapshot ${name} does not exist`);
  const r = await s.delete(name);
  return { name, freedBytes: r.freedSlots * fs.vol.blockSize };
}
